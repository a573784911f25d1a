"""Character n-gram language models for the CTC beam-search decoders (KenLM).

``python -m emgscale.lm build --text FILE... --order 6 --out PATH.bin`` builds one;
:mod:`emgscale.lm.text` defines the tokenisation the decoders expect.
"""

from emgscale.lm.build import build_lm, find_kenlm_tool, kenlm_max_order
from emgscale.lm.text import (SENTENCE_END, SPACE_TOKEN, label_lm_tokens, lines_to_lm_sentences,
                              text_to_lm_sentences)

__all__ = ["SENTENCE_END", "SPACE_TOKEN", "build_lm", "find_kenlm_tool", "kenlm_max_order", "label_lm_tokens",
           "lines_to_lm_sentences", "text_to_lm_sentences"]
