"""Perturbation calls through the one binder: `cotdsl.lang.call` gives Python code the call a spec
would give (canonical: the input, every parameter by name with defaults, then `unit`), and refuses
a bad one with the checker's own message; plugins' `Param` is the language's."""
from __future__ import annotations

import pytest

from cotdsl import perturb
from cotdsl.errors import CotError
from cotdsl.lang import call, check_source
from cotdsl.lang.params import REQUIRED, Param
from cotdsl.spec import Call, Ref

R = Ref("rationale")


def test_calls_are_canonical():
    assert call("mask", R, 0.5) == call("mask", R, p=0.5) == \
        Call("mask", (R,), (("p", 0.5), ("token", None), ("unit", "word")))
    assert call("unk", 3) == Call("unk", (), (("n", 3), ("token", None), ("like", None), ("unit", "token")))
    assert call("unk", like=R) == Call("unk", (), (("n", None), ("token", None), ("like", R), ("unit", "token")))
    assert call("shuffle", call("truncate", R, 4)).args == (call("truncate", R, n=4),)
    assert call("mask", R, 1, unit="token").kwargs[0] == ("p", 1.0)  # a float parameter, as in a spec


def test_field_arguments_and_random_rankings_in_a_spec():
    e = check_source('experiment e {\n data d = builtin("facts", train: 4, test: 2)\n teacher g = gold\n'
                     ' student s = smollm2\n target u = label -> unk(like: rationale)\n'
                     ' target b = unk(like: rationale) -> label\n target w = label -> swap(rationale)\n'
                     ' target k = label -> keytokens(rationale, 3, by: random)\n}\n')
    u, b, w, k = e.conditions
    assert u.tasks[0].segments[1] == call("unk", like=R) and u.eval_by == "rank"
    assert b.eval_by == "generate"  # its length comes from the rationale: not rankable at test time
    assert w.tasks[0].segments[1] == call("swap", R)
    assert k.scorer() is None and not list(k.ig_calls())  # no IG ranking job for the control
    assert any("seeded random ranking" in n for n in e.notes)


def test_python_call_equals_the_checked_one():
    e = check_source('experiment e {\n data d = builtin("facts", train: 4, test: 2)\n teacher g = gold\n'
                     ' student s = smollm2\n target k = label -> keytokens(rationale, 3, by: placeholder)\n'
                     ' target m = label -> shuffle(mask(rationale, 0.5))\n}\n')
    k, m = (c.tasks[0].segments[1] for c in e.conditions)
    assert k == call("keytokens", R, 3, by="placeholder")
    assert m == call("shuffle", call("mask", R, 0.5))


@pytest.mark.parametrize("args, kwargs, message", [
    (("nope", R), {}, "unknown perturbation `nope`"),
    (("mask", R, 1.5), {}, "`mask`: `p` is a ratio and must be between 0 and 1, got 1.5"),
    (("mask", R), {}, "`mask`: missing argument `p`"),
    (("unk", -1), {}, "`unk`: `n` must not be negative, got -1"),
    (("mask", R, 0.5), {"q": 1}, "`mask` has no argument `q`"),
    (("truncate", R, 2.5), {}, "`truncate`: `n` expects an integer, got `2.5`"),
    (("mask", R, 0.5, "x", 3), {}, "`mask` takes 2 arguments after its input (p, token), got 3"),
    (("shuffle", Ref("label")), {}, "`shuffle` cannot take `label` as input"),
    (("keytokens", R, 2), {"by": "igg"}, "`keytokens`: `by` cannot be `igg`"),
    (("unk",), {}, "`unk`: give one of `n` or `like`"),
    (("unk", 3), {"like": R}, "`unk`: give only one of `n` and `like`"),
    (("unk",), {"like": Ref("label")}, "`unk`: `like` expects `rationale`, got `label`"),
    (("unk",), {"like": "rationale"}, "`unk`: `like` expects `rationale`, got the string"),
])
def test_bad_calls_are_refused_with_the_checkers_messages(args, kwargs, message):
    with pytest.raises(CotError) as e:
        call(*args, **kwargs)
    assert e.value.diagnostics[0].message.startswith(message)


def test_one_parameter_type():
    assert perturb.Param is Param and perturb.REQUIRED is REQUIRED
    p = Param("frac", float, 0.0, 1.0)  # plugins pass name, type, lo, hi positionally
    assert (p.lo, p.hi, p.required) == (0.0, 1.0, True)
