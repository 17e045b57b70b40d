"""Parameters and the one binder: how a value written in a spec is checked against what it may be.

`Param` describes one parameter of a declaration kind (`builtin(...)`), a section entry
(`train { lr: ... }`) or a perturbation (`mask(rationale, p)`; plugin authors import it as
`cotdsl.perturb.Param`). `coerce` checks one written value against a `Param` (type, range,
choices, paths); `bind` matches a call's positional and `key: value` arguments to a `Signature`
(arity, unknown, duplicate and missing arguments) and coerces each. Problems go to a `Collector`.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Callable, Sequence

from cotdsl.errors import Collector, did_you_mean
from cotdsl.spec import Ref

from . import ast


class _Sentinel:
    def __init__(self, name: str):
        self.name = name

    def __repr__(self) -> str:
        return self.name


REQUIRED = _Sentinel("REQUIRED")  # a Param default: the argument must be given
BAD = _Sentinel("BAD")  # "this value was wrong; the error is already recorded"


@dataclass(frozen=True)
class Param:
    """One parameter. `type` is int, float, str or bool, or a kind of value the checker knows:
    "map" (a map of strings whose keys are `choices`), "path_map" (a map of paths, keys free),
    "path", "name_or_path", "dataset" (a name with a data adapter), "list" (a section entry's
    one or more words from `choices`) or "field" (a field of the example, one of `choices`, as a
    `spec.Ref`: `unk(like: rationale)`). `lo`/`hi` are inclusive bounds for numbers (`open_lo`: lo
    itself is not allowed, as for lr > 0); `choices` restricts strings ("field:*" allows any
    "field:NAME"); `default=REQUIRED` makes the parameter mandatory; `alias` is a second accepted
    name (`data_files` for `files`, as `datasets.load_dataset` spells it)."""

    name: str
    type: Any
    lo: float | None = None
    hi: float | None = None
    default: Any = REQUIRED
    choices: tuple[str, ...] | None = None
    doc: str = ""
    open_lo: bool = False
    alias: str | None = None

    @property
    def required(self) -> bool:
        return self.default is REQUIRED


@dataclass(frozen=True)
class Signature:
    """What a call accepts: `params` by position (in order) or by keyword, then the keyword-only
    `extra`. `what` names the callee in messages ("`data builtin`", "`mask`"); `counted` is what
    the arity message counts; `usage` is the hint for a missing argument."""

    what: str
    params: tuple[Param, ...]
    extra: tuple[Param, ...] = ()
    counted: str = "positional argument{s}"
    usage: str | None = None
    one_of: tuple[tuple[str, ...], ...] = ()  # groups of parameters of which a call gives exactly one

    @cached_property
    def every(self) -> tuple[Param, ...]:
        return self.params + self.extra

    @cached_property
    def aliases(self) -> dict[str, str]:
        """{alias: parameter name}."""
        return {p.alias: p.name for p in self.every if p.alias}


_WANT = {int: "an integer", float: "a number", str: "a string", bool: "`true` or `false`",
         "map": "a map `{key: value, ...}`", "path_map": 'a map of paths `{train: "...", test: "..."}`',
         "path": "a file path string", "name_or_path": "a name or path string",
         "dataset": "a dataset name (csqa, obqa, quarel or a hub path)", "field": "a field"}


def describe(v: ast.Value) -> str:
    if isinstance(v, ast.Num):
        return f"`{v.text}`"
    if isinstance(v, ast.Str):
        return f'the string "{v.value}"'
    if isinstance(v, ast.Name):
        return f"`{v.id}`"
    if isinstance(v, ast.CallV):
        return f"a call `{v.fn}(...)`"
    if isinstance(v, ast.Pair):
        return f"a pair `{v.left.name} -> {v.right.name}`"
    return "a map"


def _choice_ok(x: str, choices) -> bool:
    return x in choices or any(c.endswith("*") and x.startswith(c[:-1]) and len(x) > len(c) - 1 for c in choices)


def _word(v: ast.Value, col: Collector, where: str, name: str) -> Any:
    """A string-like value: "text", a bare word, or `field(NAME)` -> "field:NAME"."""
    if isinstance(v, ast.Str):
        return v.value
    if isinstance(v, ast.Name):
        return v.id
    if isinstance(v, ast.CallV) and v.fn == "field" and not v.kwargs and len(v.args) == 1 \
            and isinstance(v.args[0], (ast.Name, ast.Str)):
        return "field:" + (v.args[0].id if isinstance(v.args[0], ast.Name) else v.args[0].value)
    col.error(v.pos, f"{where}: `{name}` expects a string, got {describe(v)}")
    return BAD


def _path(x: str, v: ast.Value, col: Collector, where: str, name: str, base: Path | None) -> Any:
    p = Path(os.path.expanduser(x))
    p = p if p.is_absolute() else (base or Path.cwd()) / p
    p = Path(os.path.normpath(p))
    if not p.exists():
        col.error(v.pos, f"{where}: `{name}`: no such file or folder: {p}",
                  hint="relative paths are resolved against the spec file's folder")
        return BAD
    return str(p)


def _number(v: ast.Value, p: Param, col: Collector, where: str) -> Any:
    t, name = p.type, p.name
    if not isinstance(v, ast.Num) or (t is int and not isinstance(v.value, int)):
        col.error(v.pos, f"{where}: `{name}` expects {_WANT[t]}, got {describe(v)}")
        return BAD
    x = float(v.value) if t is float else v.value
    lo, hi = p.lo, p.hi
    if lo == 0 and hi == 1 and not (0 <= x <= 1):
        col.error(v.pos, f"{where}: `{name}` is a ratio and must be between 0 and 1, got {v.text}")
        return BAD
    if lo is not None and (x < lo or (p.open_lo and x == lo)):
        if lo == 0 and x < 0:
            col.error(v.pos, f"{where}: `{name}` must not be negative, got {v.text}")
        else:
            col.error(v.pos, f"{where}: `{name}` must be {'greater than' if p.open_lo else 'at least'}"
                             f" {lo:g}, got {v.text}")
        return BAD
    if hi is not None and x > hi:
        col.error(v.pos, f"{where}: `{name}` must be at most {hi:g}, got {v.text}")
        return BAD
    return x


def _map(v: ast.Value, p: Param, col: Collector, where: str, base: Path | None) -> Any:
    t, name = p.type, p.name
    if not isinstance(v, ast.MapV):
        col.error(v.pos, f"{where}: `{name}` expects {_WANT[t]}, got {describe(v)}")
        return BAD
    out: dict[str, str] = {}
    ok = True
    for kv in v.items:
        if p.choices and kv.key not in p.choices:
            col.error(kv.pos, f"{where}: unknown key `{kv.key}` in `{name}`",
                      expected=[f"`{c}`" for c in p.choices], hint=did_you_mean(kv.key, p.choices))
            continue
        if kv.key in out:
            col.error(kv.pos, f"{where}: duplicate key `{kv.key}` in `{name}`")
            continue
        x = _word(kv.value, col, where, kv.key)
        if x is not BAD and t == "path_map":
            x = _path(x, kv.value, col, where, f"{name}.{kv.key}", base)
        if x is not BAD:
            out[kv.key] = x
        ok = ok and x is not BAD
    return out if ok or t == "map" else BAD  # a path map with a missing file is not usable


def _dataset(x: str, v: ast.Value, col: Collector, where: str) -> Any:
    try:
        from cotdsl.data.adapters import ADAPTERS, resolve
    except ImportError:  # pragma: no cover - data package absent
        return x
    try:
        resolve(x)
    except ValueError:
        col.error(v.pos, f"{where}: no adapter for dataset `{x}`", expected=[f"`{k}`" for k in ADAPTERS],
                  hint=did_you_mean(x, ADAPTERS) or "local data: `file(train: ..., test: ..., fields: {...})`")
        return BAD
    return x


def coerce(v: ast.Value, p: Param, col: Collector, where: str, base: Path | None = None) -> Any:
    """Check one written value against `p`; return the Python value or BAD (error recorded).
    Relative paths are resolved against `base` (the spec's folder)."""
    t, name = p.type, p.name
    if t in (int, float):
        return _number(v, p, col, where)
    if t is bool:
        if isinstance(v, ast.Name) and v.id in ("true", "false"):
            return v.id == "true"
        col.error(v.pos, f"{where}: `{name}` expects {_WANT[bool]}, got {describe(v)}")
        return BAD
    if t in ("map", "path_map"):
        return _map(v, p, col, where, base)
    if t == "field":
        allowed = p.choices or ("label", "rationale")
        if isinstance(v, ast.Name) and v.id in allowed:
            return Ref(v.id, v.pos)
        col.error(v.pos, f"{where}: `{name}` expects {' or '.join(f'`{c}`' for c in allowed)}, got {describe(v)}",
                  hint="perturbations never touch the label" if getattr(v, "id", None) == "label" else None)
        return BAD
    x = _word(v, col, where, name)  # str, path, name_or_path, dataset, a "list" item
    if x is BAD:
        return BAD
    if t == "path" or (t == "name_or_path" and x.startswith((".", "/", "~"))):
        return _path(x, v, col, where, name, base)
    if t == "dataset":
        return _dataset(x, v, col, where)
    if p.choices and not _choice_ok(x, p.choices):
        col.error(v.pos, f"{where}: `{name}` cannot be `{x}`", expected=[f"`{c}`" for c in p.choices],
                  hint=did_you_mean(x, p.choices))
        return BAD
    return x


def bind(call: ast.CallV, sig: Signature, col: Collector, *, args: Sequence[ast.Value] | None = None,
         base: Path | None = None, value: Callable[[ast.Value, Param], Any] | None = None) -> dict[str, Any] | None:
    """A call's positional arguments (`args`, default all of `call.args`) in `sig.params` order and
    its `key: value` arguments -> {name: value} for every parameter of `sig`, in order (an optional
    one not given takes its default, possibly None). Reports arity, unknown, duplicate, missing
    and wrong arguments to `col`, every one of them; returns None if any failed. `value(v, p)` may
    replace a written value before it is coerced (a sweep variable by its value) or refuse it
    (return BAD after reporting)."""
    args = call.args if args is None else args
    params, alias = sig.every, sig.aliases
    names = [p.name for p in params]
    ok = True
    if len(args) > len(sig.params):
        n, listed = len(sig.params), ", ".join(p.name for p in sig.params)
        col.error(args[n].pos, f"{sig.what} takes {n} {sig.counted.format(s='s' if n != 1 else '')}"
                               f"{' (' + listed + ')' if listed else ''}, got {len(args)}")
        ok = False
    given: dict[str, ast.Value] = {p.name: a for p, a in zip(sig.params, args)}
    for kw in call.kwargs:
        key = alias.get(kw.key, kw.key)
        if key not in names:
            col.error(kw.pos, f"{sig.what} has no argument `{kw.key}`", expected=[f"`{n}`" for n in names] or None,
                      hint=did_you_mean(kw.key, names + list(alias)))
            ok = False
        elif key in given:
            other = next((a for a, n in alias.items() if n == key), None)
            same = f" (`{key}` and `{other}` are the same argument)" if other else ""
            col.error(kw.pos, f"{sig.what}: argument `{kw.key}` given twice{same}")
            ok = False
        else:
            given[key] = kw.value
    for group in sig.one_of:
        named = [f"`{n}`" for n in group if n in given]
        if len(named) != 1:
            col.error(call.pos, f"{sig.what}: " + (f"give one of {' or '.join(f'`{n}`' for n in group)}" if not named
                                                   else f"give only one of {' and '.join(named)}"))
            ok = False
    out: dict[str, Any] = {}
    for p in params:
        if p.name not in given:
            if p.required:
                col.error(call.pos, f"{sig.what}: missing argument `{p.name}`", hint=sig.usage)
                ok = False
            out[p.name] = p.default
            continue
        v = given[p.name] if value is None else value(given[p.name], p)
        x = BAD if v is BAD else coerce(v, p, col, sig.what, base)
        ok = ok and x is not BAD
        out[p.name] = x
    return out if ok else None


def arg_values(call: ast.CallV, sig: Signature) -> dict[str, ast.Value]:
    """{parameter name: its value as written} (positional, keyword or alias), for positions."""
    alias = sig.aliases
    out = {p.name: a for p, a in zip(sig.params, call.args)}
    for kw in call.kwargs:
        out.setdefault(alias.get(kw.key, kw.key), kw.value)
    return out
