"""spec: the questions the language, the planner, render and report ask of a condition."""
from __future__ import annotations

from cotdsl.lang import call
from cotdsl.spec import Condition, Lit, Ref, Task, reads

L, R = Ref("label"), Ref("rationale")


def cond(*segs, tasks=None) -> Condition:
    return Condition("c", "c", (), tasks or (Task(tuple(segs)),), "rank")


def test_calls_and_ig_scorer():
    ig = call("keytokens", R, 3, scorer="before")
    c = cond(L, call("shuffle", ig), tasks=(Task((L, call("shuffle", ig))), Task((call("unk", 2), L))))
    assert [x.fn for x in c.calls()] == ["shuffle", "keytokens", "unk"]
    assert list(c.ig_calls()) == [ig] and c.scorer() == "before"
    assert cond(L, call("keytokens", R, 3)).scorer() == "student"
    assert cond(L, call("keytokens", R, 3, by="placeholder")).scorer() is None
    assert cond(L, R).scorer() is None


def test_baseline_is_the_label_alone():
    assert cond(L).is_baseline()
    assert not cond(L, R).is_baseline() and not cond(Lit("A: "), L).is_baseline()
    assert not cond(tasks=(Task((L,)), Task((R,)))).is_baseline()


def test_rationale_before_label():
    assert Task((R, L)).rationale_before_label() and Task((call("mask", R, 0.5), Lit(" So: "), L)).rationale_before_label()
    assert not Task((call("unk", 5), L, R)).rationale_before_label()
    assert not Task((R,)).rationale_before_label() and Task((R,)).label_index() is None
    assert Task((Lit("x"), L, L)).label_index() == 1
    assert reads(call("shuffle", call("truncate", R, 2)), "rationale") and not reads(call("unk", 2), "rationale")
