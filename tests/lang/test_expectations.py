"""`expect` statements: parsing (fast path and lark agree), canonical formatting, and the
checker's names, sweep points, metrics and margins -> spec.Expectation."""
from __future__ import annotations

import pytest

from cotdsl import spec
from cotdsl.errors import CotError
from cotdsl.lang.check import check_source
from cotdsl.lang.fmt import format_source
from test_parse_fast import both

HEAD = '''experiment e {
  data    toy  = builtin("facts", train: 10, test: 10)
  teacher gold = gold
  student s    = smollm2
  target none     = label
  target after    = label -> rationale
  target shuffled = label -> shuffle(rationale)
  target masked[p in 0.2, 0.8] = label -> mask(rationale, p)
  target k[k in 1, 3; by in ig, placeholder] = label -> keytokens(rationale, k, by: by)
'''
PROBE = "  probe { lens: logit, tuned }\n"


def exp(*lines: str, probe: bool = True) -> spec.Experiment:
    return check_source(HEAD + (PROBE if probe else "") + "".join(f"  {x}\n" for x in lines) + "}\n", "x.cot")


def error(*lines: str, probe: bool = True) -> str:
    with pytest.raises(CotError) as e:
        exp(*lines, probe=probe)
    return e.value.render()


def test_expectations_become_typed_spec_objects():
    e = exp("expect after > none", "expect shuffled ~ after within 3",
            "expect masked[p=0.8] < masked[p=0.2] alpha 0.01", "expect commit(after) < commit(none)",
            "expect k[k=3, by=placeholder] > acc(k[by=ig; k=1])")
    a, s, m, c, k = e.expectations
    assert a == spec.Expectation("after > none", ">", spec.Measure("acc", "after"), spec.Measure("acc", "none"))
    assert (a.alpha, a.within, a.metric, a.pos.line) == (0.05, None, "acc", 11)
    assert (s.op, s.within, s.text) == ("~", 3.0, "shuffled ~ after within 3")
    assert (m.left.condition, m.right.condition, m.alpha) == ("masked[p=0.8]", "masked[p=0.2]", 0.01)
    assert (c.metric, str(c.left), str(c.right)) == ("commit", "commit(after)", "commit(none)")
    # a point names the condition whatever the order of its variables
    assert (k.left.condition, k.right.condition) == ("k[k=3,by=placeholder]", "k[k=1,by=ig]")
    assert {x.name for x in e.conditions} >= {k.left.condition, k.right.condition}


def test_parse_fast_and_lark_agree_on_expectations():
    text = HEAD + PROBE + ('  expect masked[p=0.8;] < masked[p=.2,] within 2 alpha 0.1\n'
                           '  expect commit(k[k=1, by="ig"])\n    ~ commit(none) within 1.5\n}\n')
    slow, fast = both(text)
    assert slow != "syntax error" and fast == slow
    assert both("experiment e { expect a > }") == ("syntax error", "syntax error")


def test_fmt_prints_expectations_canonically_and_round_trips():
    messy = HEAD + PROBE + ("  expect   after>none\n  expect shuffled~after within 3 alpha 0.01  # eq\n"
                            "  expect masked[ p = 0.8 ; ] < masked[p=.2]\n  expect commit( after ) < commit(none)\n}\n")
    out = format_source(messy)
    assert "  expect after > none\n" in out
    assert "  expect shuffled ~ after within 3 alpha 0.01  # eq\n" in out
    assert "  expect masked[p=0.8] < masked[p=.2]\n" in out
    assert "  expect commit(after) < commit(none)\n" in out
    assert format_source(out) == out
    assert check_source(out, "x.cot").expectations == check_source(messy, "x.cot").expectations


def test_unknown_condition_is_an_error_with_a_suggestion():
    msg = error("expect aftr > none")
    assert "x.cot:11:10: error: unknown condition `aftr`" in msg
    assert "    expect aftr > none\n           ^" in msg
    assert "did you mean `after`?" in msg
    assert "unknown condition `shufled`" in error("expect after ~ commit(shufled) within 1")


def test_sweep_points_are_checked():
    msg = error("expect masked[p=0.5] > none")
    assert "x.cot:11:19: error: `p=0.5` is not a point of `masked`'s sweep" in msg
    assert "expected: `p=0.2`, `p=0.8`" in msg and "^" in msg
    msg = error("expect masked > none")
    assert "`masked` is a sweep: name one of its points" in msg and "`masked[p=0.2]`" in msg
    assert "`after` is not a sweep" in error("expect after[p=0.2] > none")
    msg = error("expect masked[q=0.2] > none")
    assert "`masked` has no sweep variable `q`" in msg and "expected: `p`" in msg
    assert "leaves out `by`" in error("expect k[k=1] > none")
    assert "`by=field` is not a point" in error("expect k[k=1, by=field] > none")
    assert "given twice" in error("expect masked[p=0.2, p=0.8] > none")
    assert 'p="0.2"` is not a point' in error('expect masked[p="0.2"] > none')  # a string is not a number


def test_metrics_are_checked_and_commit_needs_a_probe():
    msg = error("expect comit(after) < commit(none)")
    assert "x.cot:11:10: error: unknown metric `comit`" in msg and "did you mean `commit`?" in msg
    msg = error("expect commit(after) < commit(none)", probe=False)
    assert "x.cot:10:10: error: `commit(after)` needs a `probe` section" in msg
    assert "x.cot:10:26: error: `commit(none)` needs a `probe` section" in msg
    assert "add `probe { lens: logit }`" in msg
    msg = error("expect commit(after) < none")
    assert "both sides of `<` must measure the same thing" in msg and "commit(after) < commit(none)" in msg


def test_margins_alpha_and_duplicates():
    assert "`~` needs a margin" in error("expect after ~ none")
    assert "`within` belongs to `~`" in error("expect after > none within 3")
    assert "`within` must be greater than 0" in error("expect after ~ none within 0")
    assert "`within` must be at most 100" in error("expect after ~ none within 101")
    assert exp("expect commit(after) ~ commit(none) within 200").expectations[0].within == 200
    assert "`alpha` must be at most 0.25" in error("expect after > none alpha 0.5")
    assert "`alpha` expects a number" in error('expect after > none alpha "x"')
    assert "compares `after` with itself" in error("expect acc(after) > after")
    msg = error("expect masked[p=0.8] > none", "expect masked[p=.8] > none")
    assert "duplicate expectation `masked[p=.8] > none` (first at x.cot:11:3)" in msg


def test_syntax_errors_name_the_form():
    msg = error("expect after none")
    assert "an expectation is written `expect a > b`" in msg and "unexpected `none`" in msg
    # names that are keywords elsewhere are condition names here
    e = check_source(HEAD.replace("target none ", "target alpha") + "  expect after > alpha alpha 0.1\n}\n", "x.cot")
    assert e.expectations[0].right == spec.Measure("acc", "alpha") and e.expectations[0].alpha == 0.1
