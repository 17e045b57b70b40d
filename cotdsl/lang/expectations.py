"""Expectations: `expect after > none`, `expect shuffled ~ after within 3`,
`expect masked[p=0.8] < masked[p=0.2] alpha 0.01`, `expect commit(after) < commit(none)` ->
`spec.Expectation`s, every name, sweep point and metric checked against the built conditions.
Part of `check.py`; they are evaluated after the run by `cotdsl/expect.py`.
"""
from __future__ import annotations

from typing import Any

from cotdsl import spec
from cotdsl.errors import Collector, did_you_mean

from . import ast
from .fmt import expect as expect_text, value as value_text
from .params import BAD, Param, coerce
from .targets import scalar  # the sweep values' own reader

METRICS = {"acc": "test accuracy", "commit": "the lens commit layer (needs a `probe` section)"}
ALPHA = 0.05
MAX_ALPHA = 0.25  # the equivalence CI is at 1 - 2 alpha


def build_expectations(stmts: list[ast.Expect], conds: list[spec.Condition], declared: set[str],
                       probe: spec.ProbeCfg | None, col: Collector) -> tuple[spec.Expectation, ...]:
    """Checked expectations in source order; errors go to `col`. `declared` holds every target
    name written, so a target whose own errors left it without conditions is not also unknown."""
    families: dict[str, list[spec.Condition]] = {}
    for c in conds:
        families.setdefault(c.family, []).append(c)
    out: list[spec.Expectation] = []
    seen: dict[tuple, ast.Expect] = {}
    for s in stmts:
        left = _side(s.left, families, declared, probe, col)
        right = _side(s.right, families, declared, probe, col)
        within = _within(s, left, right, col)
        alpha = ALPHA if s.alpha is None else coerce(s.alpha, Param("alpha", float, lo=0, open_lo=True,
                                                                    hi=MAX_ALPHA), col, "`expect`")
        if None in (left, right) or BAD in (within, alpha):
            continue
        if left.metric != right.metric:
            col.error(s.op_pos, f"both sides of `{s.op}` must measure the same thing: `{left}` is "
                      f"{left.metric}, `{right}` is {right.metric}",
                      hint=f"e.g. `{_as(left, left.metric)} {s.op} {_as(right, left.metric)}`")
            continue
        if left == right:
            col.error(s.pos, f"this expectation compares `{left}` with itself")
            continue
        e = spec.Expectation(expect_text(s), s.op, left, right, within, alpha, s.pos)
        key = (e.op, e.left, e.right, e.within, e.alpha)  # the text may differ: `p=.8` is `p=0.8`
        if key in seen:
            col.error(s.pos, f"duplicate expectation `{e.text}` (first at {seen[key].pos})")
            continue
        seen[key] = s
        out.append(e)
    return tuple(out)


def _as(m: spec.Measure, metric: str) -> str:
    return str(spec.Measure(metric, m.condition))


def _within(s: ast.Expect, left: spec.Measure | None, right: spec.Measure | None, col: Collector) -> Any:
    if s.op != "~":
        if s.within is not None:
            col.error(s.within.pos, f"`within` belongs to `~` (equivalence); `{s.op}` takes no margin",
                      hint=f"`expect a ~ b within {value_text(s.within)}`, or drop `within`")
            return BAD
        return None
    commit = "commit" in (getattr(left, "metric", None), getattr(right, "metric", None))
    if s.within is None:
        col.error(s.op_pos, "`~` needs a margin: `a ~ b within D`",
                  hint="D in percentage points of accuracy (layers for commit), e.g. `within 3`")
        return BAD
    return coerce(s.within, Param("within", float, lo=0, open_lo=True, hi=None if commit else 100), col,
                  "`expect`")


def _side(s: ast.Side, families: dict[str, list[spec.Condition]], declared: set[str],
          probe: spec.ProbeCfg | None, col: Collector) -> spec.Measure | None:
    metric = s.metric or "acc"
    ok = True
    if metric not in METRICS:
        col.error(s.pos, f"unknown metric `{metric}`", expected=[f"`{m}(...)`: {d}" for m, d in METRICS.items()],
                  hint=did_you_mean(metric, METRICS))
        ok = False
    cond = _condition(s, families, declared, col)
    if metric == "commit" and probe is None:
        col.error(s.pos, f"`commit({cond.name if cond else s.name})` needs a `probe` section: commit layers "
                  "come from the lens", hint="add `probe { lens: logit }` to the experiment")
        ok = False
    return spec.Measure(metric, cond.name) if ok and cond is not None else None


def _condition(s: ast.Side, families: dict[str, list[spec.Condition]], declared: set[str],
               col: Collector) -> spec.Condition | None:
    fam = families.get(s.name)
    if fam is None:
        if s.name not in declared:  # a declared target with errors of its own is reported there
            names = list(families) + [c.name for cs in families.values() for c in cs]
            col.error(s.name_pos, f"unknown condition `{s.name}`", expected=[f"`{n}`" for n in families],
                      hint=did_you_mean(s.name, names))
        return None
    sweep = [k for k, _ in fam[0].params]
    if s.point is None:
        if not sweep:
            return fam[0]
        col.error(s.name_pos, f"`{s.name}` is a sweep: name one of its points",
                  expected=[f"`{c.name}`" for c in fam[:8]] + (["..."] if len(fam) > 8 else []),
                  hint=f"e.g. `{fam[0].name}`")
        return None
    if not sweep:
        col.error(s.name_pos, f"`{s.name}` is not a sweep: it has no points", hint=f"write `{s.name}`")
        return None
    given: dict[str, Any] = {}
    ok = True
    for kv in s.point:
        values = list(dict.fromkeys(dict(c.params).get(kv.key) for c in fam))
        if kv.key not in sweep:
            col.error(kv.pos, f"`{s.name}` has no sweep variable `{kv.key}`", expected=[f"`{k}`" for k in sweep],
                      hint=did_you_mean(kv.key, sweep))
            ok = False
        elif kv.key in given:
            col.error(kv.pos, f"sweep variable `{kv.key}` given twice")
            ok = False
        else:
            x = scalar(kv.value, col, kv.key)  # a number, string or word, as sweep values are
            if x is not BAD and not any(_same(x, v) for v in values):
                col.error(kv.value.pos, f"`{kv.key}={value_text(kv.value)}` is not a point of `{s.name}`'s sweep",
                          expected=[f"`{kv.key}={v!r}`" if isinstance(v, float) else f"`{kv.key}={v}`"
                                    for v in values])
            ok = ok and x is not BAD and any(_same(x, v) for v in values)
            given[kv.key] = x
    missing = [k for k in sweep if k not in given]
    if missing and ok:
        col.error(s.name_pos, f"the point of `{s.name}` leaves out `{missing[0]}`: name every sweep variable",
                  hint=f"e.g. `{fam[0].name}`")
        return None
    if not ok:
        return None
    return next((c for c in fam if all(_same(given[k], v) for k, v in c.params)), None)


def _same(x: Any, v: Any) -> bool:
    """A written point value equals a sweep value: numbers by value (0.8 is .8, 1 is 1.0), words
    and strings by text; a number never equals a string."""
    return isinstance(x, str) == isinstance(v, str) and x == v
