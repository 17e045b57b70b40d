"""Targets: sweeps expand into one `spec.Condition` per point; segments become `spec.Ref`/`Lit`/
`Call`; perturbation calls are validated against `cotdsl.perturb.REGISTRY`; the evaluation mode
is resolved. Part of `check.py`; `call()` gives Python code the same checks.

A checked call is canonical: `args` holds only the input expression (none for generators such
as `unk`), `kwargs` every parameter in declaration order (defaults filled) and then `unit`, so
`mask(rationale, 0.5)` and `mask(rationale, p: 0.5)` are the same condition (same cache key).
"""
from __future__ import annotations

import dataclasses
import itertools
from typing import Any

from cotdsl import perturb, spec
from cotdsl.errors import Collector, did_you_mean

from . import ast
from .params import BAD, Param, Signature, bind, coerce

FIELDS = ("label", "rationale")
UNITS = ("word", "token")
# keytokens' ranking sources when the registered Param declares no choices of its own
KEYTOKENS_BY = ("ig", "random", "placeholder", "field:*")


def scalar(v: ast.Value, col: Collector, var: str) -> Any:
    """A sweep value or an expectation's sweep point: a number, a string or a bare word (else an
    error on `col`, and BAD)."""
    if isinstance(v, ast.Num):
        return v.value
    if isinstance(v, ast.Str):
        return v.value
    if isinstance(v, ast.Name):
        return v.id
    col.error(v.pos, f"sweep `{var}`: values are numbers, strings or words, got {type(v).__name__.lower()}")
    return BAD


def _fmt(x: Any) -> str:
    return repr(x) if isinstance(x, float) else str(x)


def _uses_var(v: Any, names: set[str]) -> set[str]:
    if isinstance(v, ast.Name):
        return {v.id} & names
    if isinstance(v, ast.CallV):
        out = set()
        for a in v.args:
            out |= _uses_var(a, names)
        for kw in v.kwargs:
            out |= _uses_var(kw.value, names)
        return out
    if isinstance(v, ast.Chain):
        return set().union(*(_uses_var(s, names) for s in v.segments)) if v.segments else set()
    if isinstance(v, ast.Multitask):
        return set().union(*(_uses_var(t.chain, names) | _uses_var(t.weight, names) for t in v.tasks))
    return set()


def build_conditions(t: ast.Target, eval_by: str, col: Collector, notes: list[str]) -> list[spec.Condition]:
    """One target declaration -> its conditions (several for a sweep); errors go to `col`."""
    sweep: list[tuple[str, list[tuple[Any, ast.Value]]]] = []
    if t.sweep is not None:
        if not t.sweep:
            col.error(t.pos, f"empty sweep in target `{t.name}`", hint="write `[p in 0.2, 0.4]`")
            return []
        empty = [v for v in t.sweep if not v.values]
        for var in empty:
            col.error(var.pos, f"empty sweep: `{var.name}` has no values", hint=f"`{var.name} in 0.2, 0.4`")
        if empty:  # expanding without it would only add follow-on errors
            return []
        for var in t.sweep:
            if var.name in FIELDS or var.name in (n for n, _ in sweep):
                col.error(var.pos, f"sweep variable `{var.name}` is "
                          + ("a field name" if var.name in FIELDS else "declared twice"))
                continue
            vals, seen = [], set()
            for v in var.values:
                x = scalar(v, col, var.name)
                if x is BAD:
                    continue
                if (type(x), x) in seen:
                    col.error(v.pos, f"sweep `{var.name}`: duplicate value {_fmt(x)}")
                    continue
                seen.add((type(x), x))
                vals.append((x, v))
            sweep.append((var.name, vals))
        unused = {n for n, _ in sweep} - _uses_var(t.body, {n for n, _ in sweep})
        for var in t.sweep:
            if var.name in unused:
                col.error(var.pos, f"sweep variable `{var.name}` is not used in target `{t.name}`")
    conds = []
    for point in itertools.product(*[vals for _, vals in sweep]):
        env = {name: v for (name, _), (_, v) in zip(sweep, point)}
        params = tuple((name, x) for (name, _), (x, _) in zip(sweep, point))
        cname = t.name if t.sweep is None else f"{t.name}[{','.join(f'{k}={_fmt(x)}' for k, x in params)}]"
        b = _Builder(col, env, notes, t.name)
        tasks = b.tasks(t.body)
        if tasks is None:
            continue
        mode = b.eval_mode(tasks[0], eval_by, t)
        if mode is not None:
            conds.append(spec.Condition(cname, t.name, params, tuple(tasks), mode, t.pos))
    return conds


_SIGNATURES: dict[str, tuple[perturb.Perturbation, Signature]] = {}


def signature(fn: str, pert: perturb.Perturbation) -> Signature:
    """How a perturbation is called: its parameters after the input, then `unit:` (built once per
    registered perturbation)."""
    known = _SIGNATURES.get(fn)
    if known is None or known[0] is not pert:
        _SIGNATURES[fn] = known = (pert, _signature(fn, pert))
    return known[1]


def _signature(fn: str, pert: perturb.Perturbation) -> Signature:
    params = tuple(dataclasses.replace(p, choices=KEYTOKENS_BY) if (fn, p.name) == ("keytokens", "by")
                   and not p.choices else p for p in pert.params)
    required = ", ".join(p.name for p in params if p.required)
    return Signature(f"`{fn}`", params, (Param("unit", str, default=pert.unit, choices=UNITS),),
                     counted="argument{s}" + (" after its input" if pert.takes_input else ""),
                     usage=f"`{fn}({'rationale, ' if pert.takes_input else ''}{required})`", one_of=pert.one_of)


class _Builder:
    def __init__(self, col: Collector, env: dict[str, ast.Value], notes: list[str], cname: str):
        self.col, self.env, self.notes, self.cname = col, env, notes, cname

    def tasks(self, body) -> list[spec.Task] | None:
        if isinstance(body, ast.Chain):
            segs = self.chain(body)
            return None if segs is None else [spec.Task(tuple(segs))]
        out, ok = [], True
        for td in body.tasks:
            segs = self.chain(td.chain)
            w = 1.0
            if td.weight is not None:
                w = coerce(self.subst(td.weight), Param("weight", float, lo=0, open_lo=True), self.col, "task")
            if segs is None or w is BAD:
                ok = False
                continue
            out.append(spec.Task(tuple(segs), td.prefix.value if td.prefix else "", w))
        return out if ok else None

    def subst(self, v: ast.Value) -> ast.Value:
        """A sweep variable -> its value at this point (positioned at the sweep value)."""
        return self.env.get(v.id, v) if isinstance(v, ast.Name) else v

    def chain(self, ch: ast.Chain) -> list | None:
        out, ok = [], True
        for i, s in enumerate(ch.segments):
            if i > 0 and ch.arrows[i - 1] == "" and not isinstance(s, ast.Str) \
                    and not isinstance(ch.segments[i - 1], ast.Str):  # pragma: no cover - grammar forbids
                self.col.error(s.pos, "missing `->` between segments")
            e = self.segment(s)
            ok = ok and e is not None
            out.append(e)
        return out if ok else None

    def segment(self, s: ast.Value):
        if isinstance(s, ast.Str):
            return spec.Lit(s.value, s.pos)
        if isinstance(s, ast.Name):
            if s.id in FIELDS:
                return spec.Ref(s.id, s.pos)
            if s.id in self.env:
                self.col.error(s.pos, f"sweep variable `{s.id}` is a value, not a segment",
                               hint=f"use it as an argument, e.g. `mask(rationale, {s.id})`")
                return None
            self.col.error(s.pos, f"undefined name `{s.id}`", expected=["`label`", "`rationale`", "a call"],
                           hint=did_you_mean(s.id, FIELDS + tuple(perturb.REGISTRY)))
            return None
        if isinstance(s, ast.CallV):
            return self.call(s)
        self.col.error(s.pos, "a target segment is `label`, `rationale`, a string or a call")  # pragma: no cover
        return None

    def call(self, c: ast.CallV) -> spec.Call | None:
        pert = perturb.REGISTRY.get(c.fn)
        if pert is None:
            self.col.error(c.pos, f"unknown perturbation `{c.fn}`", hint=did_you_mean(c.fn, perturb.REGISTRY)
                           or f"known: {', '.join(sorted(perturb.REGISTRY))}; plugins add more")
            return None
        args = list(c.args)
        inputs: tuple = ()
        if pert.takes_input:
            if not args:
                self.col.error(c.pos, f"`{c.fn}` needs an input", hint=f"`{c.fn}(rationale)`")
                return None
            inp = self.input(args.pop(0), c.fn)
            inputs = (inp,)
        elif args and isinstance(args[0], (ast.Name, ast.CallV)) and getattr(args[0], "id", None) in FIELDS:
            self.col.error(args[0].pos, f"`{c.fn}` takes no input (it generates its units)",
                           hint=f"e.g. `{c.fn}(5) -> label`")
            return None
        sig = signature(c.fn, pert)
        kwargs = bind(c, sig, self.col, args=args, value=lambda v, p: self.value(v, p, sig.what))
        if kwargs is None or None in inputs:
            return None
        by = kwargs.get("by")
        if c.fn == "keytokens" and by != "ig":
            how = {"placeholder": "a deterministic placeholder ranking (not an attribution)",
                   "random": "a seeded random ranking (the control for IG, not an attribution)"}.get(by) \
                or f"the data field `{by[6:]}` as its ranking (annotated highlights, not IG)"
            self.notes.append(f"target `{self.cname}`: keytokens uses {how}")
        return spec.Call(c.fn, inputs, tuple(kwargs.items()), c.pos)

    def value(self, v: ast.Value, p: Param, what: str) -> Any:
        """An argument as written -> what `coerce` checks: a sweep variable becomes its value at
        this point; fields, calls and unknown names where a constant belongs are refused (BAD)."""
        v = self.subst(v)
        if isinstance(v, ast.Name) and v.id in FIELDS and p.type in (int, float):
            self.col.error(v.pos, f"{what}: `{p.name}` is a {p.type.__name__}, not a field"
                           + (" (perturbations never touch the label)" if v.id == "label" else ""))
            return BAD
        if isinstance(v, ast.CallV) and v.fn != "field":
            self.col.error(v.pos, f"{what}: `{p.name}` takes a constant, not a call")
            return BAD
        if p.type in (int, float) and isinstance(v, ast.Name):
            self.col.error(v.pos, f"undefined name `{v.id}`", hint=did_you_mean(v.id, self.env)
                           or f"`{p.name}` expects a number")
            return BAD
        return v

    def input(self, v: ast.Value, fn: str):
        if isinstance(v, ast.Name):
            if v.id == "label":
                self.col.error(v.pos, f"`{fn}` cannot take `label` as input: perturbations never touch the label",
                               hint=f"apply it to the rationale: `{fn}(rationale, ...)`")
                return None
            if v.id == "rationale":
                return spec.Ref("rationale", v.pos)
            self.col.error(v.pos, f"undefined name `{v.id}`", hint=did_you_mean(v.id, FIELDS)
                           or f"the input of `{fn}` is `rationale` or another perturbation")
            return None
        if isinstance(v, ast.CallV):
            return self.call(v)
        self.col.error(v.pos, f"the input of `{fn}` must be `rationale` or another perturbation, got "
                       + ("a number" if isinstance(v, ast.Num) else "a string" if isinstance(v, ast.Str) else "a map"))
        return None

    def eval_mode(self, task: spec.Task, eval_by: str, t: ast.Target) -> str | None:
        """rank when nothing that needs the rationale precedes the first label, else generate."""
        labels = [i for i, s in enumerate(task.segments) if isinstance(s, spec.Ref) and s.name == "label"]
        where = "the first task" if isinstance(t.body, ast.Multitask) else "the target"
        if not labels:
            self.col.error(t.pos, f"target `{t.name}`: {where} has no `label` segment, so it cannot be evaluated",
                           hint="put the task with `label` first" if isinstance(t.body, ast.Multitask)
                           else "e.g. `label -> rationale`")
            return None
        if len(labels) > 1:
            self.col.error(task.segments[labels[1]].pos, f"target `{t.name}`: `label` appears more than once")
            return None
        needs = task.rationale_before_label()
        if eval_by == "rank" and needs:
            self.col.error(t.pos, f"target `{t.name}` cannot be evaluated by rank: rationale-dependent text "
                           "precedes the label", hint="use `eval { by: auto }` or `eval { by: generate }`")
            return None
        if eval_by == "generate":
            return "generate"
        return "generate" if needs else "rank"


def call(fn: str, *args: Any, **kwargs: Any) -> spec.Call:
    """The checked `spec.Call` that `fn(args..., key: value)` in a spec gives, built from Python:
    the same binding, checks and defaults (raises CotError). The input is `spec.Ref("rationale")`
    or another call; the other arguments are constants (a keyword given None is left out).
    `call("mask", Ref("rationale"), 0.5)` is
    `Call("mask", (Ref("rationale"),), (("p", 0.5), ("token", None), ("unit", "word")))`.
    """
    col = Collector()
    written = ast.CallV(fn, tuple(_written(a) for a in args),
                        tuple(ast.KwArg(k, _written(v), None) for k, v in kwargs.items() if v is not None), None)
    out = _Builder(col, {}, [], fn).call(written)
    col.raise_if_any()
    return out


def _written(x: Any) -> ast.Value:
    """A Python argument -> the AST value a spec would have written for it."""
    if isinstance(x, spec.Ref):
        return ast.Name(x.name, x.pos)
    if isinstance(x, spec.Lit):
        return ast.Str(x.text, x.pos)
    if isinstance(x, spec.Call):
        return ast.CallV(x.fn, tuple(_written(a) for a in x.args),
                         tuple(ast.KwArg(k, _written(v), None) for k, v in x.kwargs if v is not None), x.pos)
    if isinstance(x, bool):
        return ast.Name("true" if x else "false", None)
    if isinstance(x, (int, float)):
        return ast.Num(x, repr(x), None)
    return ast.Str(str(x), None)
