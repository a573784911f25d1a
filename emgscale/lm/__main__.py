"""``python -m emgscale.lm``: build a character n-gram LM, or show how text is tokenised for it.

Examples::

    python -m emgscale.lm build --text emgscale/data/lm_text/*.txt --order 6 --out lm/char6.bin
    python -m emgscale.lm build --text wikitext-103-raw/wiki.*.raw --order 6 --out lm/wikitext103-char6.bin
    python -m emgscale.lm tokens --text notes.txt | head
"""

from __future__ import annotations

import argparse
import itertools
import sys

import emgscale.lm.build as build_module
from emgscale.cli import cli
from emgscale.lm.build import build_lm
from emgscale.lm.text import text_to_lm_sentences


@cli("python -m emgscale.lm")
def main(argv: list[str] | None = None) -> int:
    """Parse arguments and run a subcommand; returns the exit status."""
    p = argparse.ArgumentParser(prog="python -m emgscale.lm", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="build a KenLM character n-gram from text (lmplz + build_binary)",
                       description=build_module.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    b.add_argument("--text", nargs="+", required=True, help="UTF-8 text files (.gz/.bz2/.xz ok)")
    b.add_argument("--out", required=True, help="LM file to write (.bin, or .arpa for ARPA only)")
    b.add_argument("--order", type=int, default=6, help="n-gram order (default 6, as the paper)")
    b.add_argument("--arpa", default=None, help="also keep the ARPA file here")
    b.add_argument("--memory", default="20%", help="lmplz/build_binary sorting memory (default 20%%)")
    b.add_argument("--prune", type=int, nargs="*", default=[], help="lmplz --prune thresholds per order")
    b.add_argument("--binary-type", choices=["probing", "trie"], default="probing")
    b.add_argument("--paragraphs", action="store_true",
                   help="hard-wrapped text: a sentence is a paragraph (up to a blank line), not a line")
    b.add_argument("--tmp-dir", default=None, help="temporary folder (default: next to --out)")
    b.add_argument("--verbose", action="store_true", help="show lmplz/build_binary output")
    t = sub.add_parser("tokens", help="print the LM sentences a text becomes")
    t.add_argument("--text", nargs="+", required=True)
    t.add_argument("--limit", type=int, default=20, help="sentences to print (default 20)")
    a = p.parse_args(argv)
    if a.cmd == "build":
        build_lm(a.text, a.out, a.order, arpa=a.arpa, memory=a.memory, prune=a.prune,
                 binary_type=a.binary_type, paragraphs=a.paragraphs, tmp_dir=a.tmp_dir, verbose=a.verbose)
    else:
        def sentences():
            for path in a.text:
                with open(path, encoding="utf-8", errors="replace") as f:
                    for line in f:
                        yield from text_to_lm_sentences(line)
        for s in itertools.islice(sentences(), a.limit):
            print(s)
    return 0


if __name__ == "__main__":
    sys.exit(main())
