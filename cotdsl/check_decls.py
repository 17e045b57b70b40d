"""Signatures of the declaration kinds and sections, and the value checks they share with
perturbation calls: argument binding (positional then `key: value`), types, ranges, choices,
paths. Part of `check.py`; split out to keep modules small.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cotdsl import ast
from cotdsl.errors import Collector, did_you_mean
from cotdsl.perturb import REQUIRED


class _Bad:
    def __repr__(self) -> str:
        return "BAD"


BAD = _Bad()  # "this value was wrong; the error is already recorded"


@dataclass(frozen=True)
class P:
    """One parameter. type: int | float | str | bool | "map" | "path_map" (a map of paths, keys
    free) | "path" | "name_or_path" | "list". Duck-compatible with `perturb.Param` (name, type,
    lo, hi, default, choices). `alias` is a second accepted name (`data_files` for `files`, as
    `datasets.load_dataset` spells it)."""

    name: str
    type: Any
    default: Any = REQUIRED
    lo: float | None = None
    hi: float | None = None
    choices: tuple[str, ...] | None = None
    open_lo: bool = False  # lo itself is not allowed (lr > 0)
    alias: str | None = None


DATA_FIELDS = ("question", "choices", "label", "id", "rationale", "highlights")
DATA = {
    "builtin": (P("task", str, choices=("facts", "chain")), P("train", int, lo=1), P("test", int, lo=1),
                P("seed", int, 0, lo=0), P("choices", int, 4, lo=2, hi=10), P("entities", int, None, lo=2)),
    "hf": (P("dataset", "dataset"), P("train", int, None, lo=1), P("test", int, None, lo=1),
           P("config", str, None), P("train_split", str, None), P("test_split", str, None),
           P("files", "path_map", None, alias="data_files"), P("disk", "path", None)),
    "file": (P("train", "path"), P("test", "path"), P("fields", "map", None, choices=DATA_FIELDS),
             P("format", str, None, choices=("jsonl", "csv", "parquet"))),
}
TEACHER = {
    "gold": (),
    "file": (P("path", "path"), P("field", str, "rationale"), P("strip_answer", bool, None)),
    "hf": (P("model", "name_or_path"), P("prompt", str, None), P("samples", int, 1, lo=1),
           P("temperature", float, 0.0, lo=0), P("top_p", float, None, lo=0, hi=1, open_lo=True),
           P("top_k", int, None, lo=1), P("max_new_tokens", int, 128, lo=1), P("filter", bool, True),
           P("batch", int, 8, lo=1), P("trust_remote_code", bool, False), P("revision", str, None),
           P("seed", int, None, lo=0), P("strip_answer", bool, None),
           P("shards", int, None, lo=1), P("engine", str, None, choices=("hf", "vllm"))),
}
STUDENT = {
    "smollm2": (),
    "hf": (P("model", "name_or_path"), P("trust_remote_code", bool, False), P("revision", str, None)),
    "gguf": (P("path", "path"), P("file", str, None)),
    "tiny": (P("arch", str, "llama", choices=("llama", "gpt2")), P("layers", int, 2, lo=1),
             P("d_model", int, 64, lo=8), P("heads", int, 4, lo=1)),
}
TRAIN = (P("epochs", float, lo=0, open_lo=True), P("lr", float, lo=0, open_lo=True), P("batch", int, lo=1),
         P("max_len", int, lo=8), P("warmup", float, lo=0, hi=1), P("weight_decay", float, lo=0),
         P("grad_accum", int, lo=1), P("max_steps", int, lo=1), P("lora", int, lo=1),
         P("precision", str, choices=("auto", "fp32", "bf16")), P("checkpoint_every", int, lo=1),
         P("devices", int, lo=1), P("strategy", str, choices=("ddp", "fsdp")))
EVAL = (P("by", str, choices=("auto", "rank", "generate")), P("max_new_tokens", int, lo=1), P("batch", int, lo=1))
PROBE = (P("lenses", "list", choices=("logit", "tuned")), P("at", str, choices=("label",)),
         P("examples", int, lo=1), P("tuned_steps", int, lo=0))

_WANT = {int: "an integer", float: "a number", str: "a string", bool: "`true` or `false`",
         "map": "a map `{key: value, ...}`", "path_map": 'a map of paths `{train: "...", test: "..."}`',
         "path": "a file path string", "name_or_path": "a name or path string",
         "dataset": "a dataset name (csqa, obqa, quarel or a hub path)"}


def describe(v: ast.Value) -> str:
    if isinstance(v, ast.Num):
        return f"`{v.text}`"
    if isinstance(v, ast.Str):
        return f'the string "{v.value}"'
    if isinstance(v, ast.Name):
        return f"`{v.id}`"
    if isinstance(v, ast.CallV):
        return f"a call `{v.fn}(...)`"
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


def coerce(v: ast.Value, p: Any, col: Collector, where: str, base: Path | None = None) -> Any:
    """Check one value against parameter `p`; return the Python value or BAD (error recorded)."""
    t, name = p.type, p.name
    if t in (int, float):
        if not isinstance(v, ast.Num) or (t is int and not isinstance(v.value, int)):
            col.error(v.pos, f"{where}: `{name}` expects {_WANT[t]}, got {describe(v)}")
            return BAD
        x = float(v.value) if t is float else v.value
        lo, hi = p.lo, p.hi
        if lo == 0 and hi == 1 and not (0 <= x <= 1):
            col.error(v.pos, f"{where}: `{name}` is a ratio and must be between 0 and 1, got {v.text}")
            return BAD
        if lo is not None and (x < lo or (getattr(p, "open_lo", False) and x == lo)):
            if lo == 0 and x < 0:
                col.error(v.pos, f"{where}: `{name}` must not be negative, got {v.text}")
            else:
                col.error(v.pos, f"{where}: `{name}` must be {'greater than' if getattr(p, 'open_lo', False) else 'at least'}"
                                 f" {lo:g}, got {v.text}")
            return BAD
        if hi is not None and x > hi:
            col.error(v.pos, f"{where}: `{name}` must be at most {hi:g}, got {v.text}")
            return BAD
        return x
    if t is bool:
        if isinstance(v, ast.Name) and v.id in ("true", "false"):
            return v.id == "true"
        col.error(v.pos, f"{where}: `{name}` expects {_WANT[bool]}, got {describe(v)}")
        return BAD
    if t in ("map", "path_map"):
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
    x = _word(v, col, where, name)  # str, path, name_or_path, dataset
    if x is BAD:
        return BAD
    if t == "path" or (t == "name_or_path" and x.startswith((".", "/", "~"))):
        return _path(x, v, col, where, name, base)
    if t == "dataset":
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
    if p.choices and not _choice_ok(x, p.choices):
        col.error(v.pos, f"{where}: `{name}` cannot be `{x}`", expected=[f"`{c}`" for c in p.choices],
                  hint=did_you_mean(x, p.choices))
        return BAD
    return x


def bind(call: ast.CallV, params: tuple, col: Collector, what: str, *, base: Path | None = None,
         extra_ok: tuple = ()) -> dict[str, Any] | None:
    """Positional args (in `params` order) and `key: value` args -> {name: value} including
    non-None defaults. Reports arity, unknown/duplicate/missing arguments; None if any failed."""
    names = [p.name for p in params]
    alias = {p.alias: p.name for p in params if getattr(p, "alias", None)}
    given: dict[str, ast.Value] = {}
    ok = True
    if len(call.args) > len(params):
        col.error(call.args[len(params)].pos,
                  f"{what} takes {len(params)} positional argument{'s' if len(params) != 1 else ''}"
                  f"{' (' + ', '.join(names) + ')' if names else ''}, got {len(call.args)}")
        ok = False
    for p, a in zip(params, call.args):
        given[p.name] = a
    for kw in call.kwargs:
        key = alias.get(kw.key, kw.key)
        if key not in names:
            col.error(kw.pos, f"{what} has no argument `{kw.key}`", expected=[f"`{n}`" for n in names] or None,
                      hint=did_you_mean(kw.key, names + list(alias)))
            ok = False
        elif key in given:
            other = next((a for a, n in alias.items() if n == key), None)
            same = f" (`{key}` and `{other}` are the same argument)" if other else ""
            col.error(kw.pos, f"{what}: argument `{kw.key}` given twice{same}")
            ok = False
        else:
            given[key] = kw.value
    out: dict[str, Any] = {}
    for p in params:
        if p.name in given:
            x = coerce(given[p.name], p, col, what, base)
            ok = ok and x is not BAD
            out[p.name] = x
        elif p.default is REQUIRED:
            col.error(call.pos, f"{what}: missing argument `{p.name}`")
            ok = False
        elif p.default is not None:
            out[p.name] = p.default
    return out if ok else None


def arg_values(call: ast.CallV, params: tuple) -> dict[str, ast.Value]:
    """{parameter name: its value as written} (positional, keyword or alias), for positions."""
    alias = {p.alias: p.name for p in params if getattr(p, "alias", None)}
    out = {p.name: a for p, a in zip(params, call.args)}
    for kw in call.kwargs:
        out.setdefault(alias.get(kw.key, kw.key), kw.value)
    return out
