"""Character LM tokenisation and building (emgscale.lm)."""

import gzip
import sys

import pytest

from emgscale.data.charset import charset
from emgscale.lm import SPACE_TOKEN, build_lm, label_lm_tokens, text_to_lm_sentences
from emgscale.lm.__main__ import main as lm_main
from emgscale.lm.build import find_kenlm_tool

TEXT = ("The cat sat on the mat.\nThe dog sat on the log.\n\n"
        "Then the cat and the dog ate the other cat's food.\n") * 5


def _have_lmplz() -> bool:
    try:
        find_kenlm_tool("lmplz")
        find_kenlm_tool("build_binary")
        return True
    except FileNotFoundError:
        return False


needs_kenlm_tools = pytest.mark.skipif(not _have_lmplz(),
                                       reason="KenLM lmplz/build_binary not built (run scripts/build_kenlm.sh)")


def test_tokenisation_rules():
    """Spaces become <sp> (collapsed, trimmed), lines are sentences, ⌫ edits, ⇧ vanishes, é -> e."""
    text = "Hi  there \r\nab\u232bc\td\n\n\u21e7Hey caf\u00e9\u23ceok"
    assert list(text_to_lm_sentences(text)) == [
        "H i <sp> t h e r e", "a c <sp> d", "H e y <sp> c a f e", "o k"]
    assert SPACE_TOKEN not in charset().chars  # the space token can never be a typed key


def test_label_tokens_cover_the_charset():
    """One LM token per key label: characters as themselves, <sp>, </s> for enter, none for ⌫ and ⇧."""
    cs = charset()
    toks = label_lm_tokens()
    assert len(toks) == len(cs) == 98
    assert toks[cs.char_to_label("a")] == "a" and toks[cs.char_to_label("~")] == "~"
    assert toks[cs.space_label] == "<sp>" and toks[cs.char_to_label("\u23ce")] == "</s>"
    assert toks[cs.backspace_label] == "" and toks[cs.char_to_label("\u21e7")] == ""


@needs_kenlm_tools
def test_build_lm_writes_a_loadable_model(tmp_path):
    """build_lm writes a KenLM binary atomically; in-domain text scores higher than shuffled text."""
    kenlm = pytest.importorskip("kenlm", reason="kenlm Python module not installed")
    src = tmp_path / "text.txt"
    src.write_text(TEXT)
    out = build_lm([src], tmp_path / "lm" / "char4.bin", order=4, arpa=tmp_path / "lm" / "char4.arpa")
    assert out.is_file() and (tmp_path / "lm" / "char4.arpa").read_text().startswith("\\data\\")
    assert sorted(p.name for p in (tmp_path / "lm").iterdir()) == ["char4.arpa", "char4.bin"]  # no temp files
    m = kenlm.Model(str(out))
    assert m.order == 4 and "<sp>" in m and "c" in m
    assert m.score("t h e <sp> c a t") > m.score("c t e <sp> h t a")


@needs_kenlm_tools
def test_cli_builds_arpa_and_rejects_bad_order(tmp_path):
    """`python -m emgscale.lm build` writes ARPA for a .arpa output; an impossible order is a ValueError."""
    src = tmp_path / "t.txt.gz"
    with gzip.open(src, "wt") as f:
        f.write(TEXT)
    assert lm_main(["build", "--text", str(src), "--order", "3", "--out", str(tmp_path / "m.arpa")]) == 0
    assert "\\3-grams:" in (tmp_path / "m.arpa").read_text()
    with pytest.raises(ValueError, match="order 40"):
        build_lm([src], tmp_path / "x.bin", order=40)


def test_missing_tools_error_says_what_to_run(tmp_path, monkeypatch):
    """Without lmplz on PATH or beside python, the error names scripts/build_kenlm.sh."""
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(sys, "executable", str(tmp_path / "python"))
    with pytest.raises(FileNotFoundError, match="build_kenlm.sh"):
        find_kenlm_tool("lmplz")


def test_empty_text_is_rejected(tmp_path):
    """Text with nothing typeable is a ValueError, not an empty model."""
    if not _have_lmplz():
        pytest.skip("KenLM lmplz/build_binary not built (run scripts/build_kenlm.sh)")
    src = tmp_path / "empty.txt"
    src.write_text("\n\n \u4e2d\u6587\n")
    with pytest.raises(ValueError, match="no typeable text"):
        build_lm([src], tmp_path / "e.bin", order=3)
    assert not (tmp_path / "e.bin").exists()

