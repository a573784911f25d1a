"""CER and edit counts (emgscale.metrics) against hand-computed cases."""

import math

import numpy as np
import pytest
import torch

from emgscale.data.charset import charset, render_text
from emgscale.metrics import CERMeter, EditCounts, cer, edit_counts, edit_distance, rendered_edit_counts

CS = charset()


def L(text: str) -> list[int]:
    return CS.str_to_labels(text)


@pytest.mark.parametrize("target,pred,ins,dels,subs", [
    ("hello", "hello", 0, 0, 0),
    ("abc", "abxc", 1, 0, 0),        # one extra key
    ("abcd", "acd", 0, 1, 0),        # one missed key
    ("abc", "abd", 0, 0, 1),         # one wrong key
    ("kitten", "sitting", 1, 0, 2),  # k->s, e->i, +g
    ("ab\u232bc", "ac", 0, 2, 0),     # backspace is a character: 'b' and '⌫' missing
    ("\u21e7Hi", "Hi", 0, 1, 0),      # so is shift
    ("", "ab", 2, 0, 0),
    ("ab", "", 0, 2, 0),
])
def test_edit_counts_hand_computed(target, pred, ins, dels, subs):
    """Insertions/deletions/substitutions match hand counts and add up to the Levenshtein distance."""
    c = edit_counts(L(pred), L(target))
    assert (c.insertions, c.deletions, c.substitutions) == (ins, dels, subs)
    assert c.errors == edit_distance(L(pred), L(target)) == ins + dels + subs
    assert c.target_length == len(L(target))


def test_meter_pools_errors_over_target_length_not_mean_of_ratios():
    """CER is summed errors / summed target length, per user, per session and overall (the paper's)."""
    m = CERMeter()
    m.update(L("abcdefghij"), L("abcdefghiX"), session="s1", user="u1")  # 1 error / 10
    m.update(L("a"), L("ab"), session="s2", user="u1")                   # 1 error / 2
    m.update(L("xyz"), L("xyz"), session="s3", user="u2")                # 0 errors / 3
    assert m.cer == pytest.approx(2 / 15)
    assert m.per_user()["u1"]["cer"] == pytest.approx(2 / 12)
    assert m.per_user()["u2"]["cer"] == 0.0
    assert m.per_session()["s2"]["cer"] == pytest.approx(0.5)
    assert m.per_session()["s2"]["user"] == "u1"
    s = m.summary()
    assert (s["errors"], s["target_length"], s["num_sessions"], s["num_users"]) == (2, 15, 3, 2)
    assert s["mean_user_cer"] == pytest.approx((2 / 12 + 0) / 2)
    assert s["deletions"] == 1 and s["substitutions"] == 1 and s["insertions"] == 0


def test_windows_of_one_session_add_up():
    """Several updates for the same session accumulate into one per-session entry."""
    m = CERMeter()
    m.update(L("ab"), L("ab"), session="s", user="u")
    m.update(L("c"), L("d"), session="s", user="u")
    assert m.per_session()["s"]["utterances"] == 2
    assert m.per_session()["s"]["cer"] == pytest.approx(1 / 3)


def test_accepts_numpy_and_torch_labels():
    """Lists, numpy arrays and torch tensors give the same counts."""
    t, p = L("typing"), L("tyoing")
    ref = edit_counts(p, t)
    assert edit_counts(np.array(p), np.array(t)) == ref
    assert edit_counts(torch.tensor(p), torch.tensor(t, dtype=torch.int32)) == ref
    with pytest.raises(TypeError):
        edit_counts("abc", t)


def test_merge_equals_single_meter():
    """Merging two meters (e.g. from two workers) equals one meter that saw everything."""
    pairs = [(L("abc"), L("abd"), "s1", "u1"), (L("hello"), L("help"), "s2", "u2"), (L("x"), L("x"), "s1", "u1")]
    one, a, b = CERMeter(), CERMeter(), CERMeter()
    for i, (p, t, s, u) in enumerate(pairs):
        one.update(p, t, session=s, user=u)
        (a if i % 2 else b).update(p, t, session=s, user=u)
    merged = a.merge(b)
    assert merged.summary() == one.summary()
    assert merged.per_session() == one.per_session() and merged.per_user() == one.per_user()


def test_empty_targets():
    """0/0 is NaN, errors over an empty target are infinite, and cer() pools pairs."""
    assert math.isnan(EditCounts().cer)
    assert edit_counts(L("a"), []).cer == math.inf
    assert cer([L("ab"), L("")], [L("ab"), L("c")]) == pytest.approx(1 / 3)


@pytest.mark.parametrize("keys,text", [
    ("ab\u232bc", "ac"),               # backspace deletes the previous character
    ("\u21e7a", "A"),                   # shift folds into the next key
    ("\u21e7A", "A"),                   # an already shifted character stays (the dataset's labels)
    ("\u21e7\u21e71x", "!x"),           # US-keyboard shift of a digit, repeated shift counts once
    ("\u232b\u232bx", "x"),             # nothing to delete at the start
    ("a\u23ceb", "a\nb"),               # enter is a line break
    ("Hi \u21e7\u232bx\u21e7", "Hix"),   # shift before backspace shows nothing; a trailing shift neither
    ("", ""),
])
def test_render_text_hand_computed(keys, text):
    """Rendering applies backspaces and folds shift into the next key, as a user sees the text."""
    assert render_text(keys) == text
    assert CS.render(L(keys)) == text


@pytest.mark.parametrize("target,pred,rates", [
    ("kitten", "sitting", (1 / 6, 0.0, 2 / 6)),
    ("abcd", "acdx", (1 / 4, 1 / 4, 0.0)),
    ("ab\u232bc", "ac", (0.0, 2 / 4, 0.0)),
])
def test_rates_are_counts_over_target_length_and_add_up_to_cer(target, pred, rates):
    """insertion, deletion and substitution rates are each count / target length; their sum is the CER."""
    c = edit_counts(L(pred), L(target))
    r = c.rates()
    assert (r["insertion_rate"], r["deletion_rate"], r["substitution_rate"]) == pytest.approx(rates)
    assert sum(r.values()) == pytest.approx(c.cer) and c.to_dict()["deletion_rate"] == r["deletion_rate"]


def test_rendered_cer_compares_the_texts_a_user_sees():
    """rendered_cer: edit distance of the rendered texts, pooled over rendered target characters."""
    assert rendered_edit_counts(L("ac"), L("ab\u232bc")).errors == 0  # corrected typo: free once rendered
    assert rendered_edit_counts(L("\u21e7ac"), L("\u21e7Ac")).errors == 0  # ⇧a and ⇧A both show A
    c = rendered_edit_counts(L("ab"), L("ab\u232bc"))  # "ab" against "ac"
    assert (c.substitutions, c.target_length) == (1, 2)
    m = CERMeter()
    m.update(L("ac"), L("ab\u232bc"), session="s1", user="u1")   # keys: 2 / 4, rendered 0 / 2
    m.update(L("ab"), L("ab\u232bc"), session="s2", user="u1")   # keys: 2 / 4, rendered 1 / 2
    m.update(L("xyz"), L("xy"), session="s3", user="u2")         # keys: 1 / 2, rendered 1 / 2
    assert m.cer == pytest.approx(5 / 10) and m.rendered_cer == pytest.approx(2 / 6)
    s = m.summary()
    assert (s["rendered_errors"], s["rendered_length"], s["rendered_cer"]) == (2, 6, pytest.approx(2 / 6))
    assert s["insertion_rate"] + s["deletion_rate"] + s["substitution_rate"] == pytest.approx(s["cer"])
    assert m.per_user()["u1"]["rendered_cer"] == pytest.approx(1 / 4)
    assert m.per_session()["s1"]["rendered_cer"] == 0.0 and m.per_session()["s2"]["rendered_errors"] == 1
