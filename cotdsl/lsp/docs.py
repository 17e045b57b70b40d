"""What the language server says about perturbations and section keys (hover, completion), read
from where the language defines them: the perturbation registry (`cotdsl.perturb.REGISTRY`: each
function's docstring and its parameters' `doc`) and the section tables of the checker
(`cotdsl.lang.check.SECTIONS`: a key's type, bounds, choices and default), with the comments on
the fields of the `spec` dataclasses those tables are built from.
"""
from __future__ import annotations

import dataclasses
import inspect
import re
from functools import lru_cache

from cotdsl.lang.params import Param

_TYPES = {int: "integer", float: "number", str: "string", bool: "true | false", "list": "one or more words",
          "pairs": "pairs `a -> b`", "field": "a field of the example", "path": "a file path",
          "map": "a map `{key: value}`", "path_map": "a map of paths"}


def describe(p: Param) -> str:
    """`name` (type, bounds, choices, default), on one line."""
    parts = [_TYPES.get(p.type, str(p.type))]
    if p.lo is not None:
        parts.append(f"{'>' if p.open_lo else '≥'} {p.lo:g}")
    if p.hi is not None:
        parts.append(f"≤ {p.hi:g}")
    if p.choices:
        parts.append(" | ".join(p.choices))
    if p.required:
        parts.append("required")
    elif p.default not in (None, ()):
        default = ", ".join(map(str, p.default)) if isinstance(p.default, tuple) else p.default
        parts.append(f"default {default}")
    alias = f" (or `{p.alias}`)" if p.alias else ""
    return f"`{p.name}`{alias}: {', '.join(parts)}"


def perturbations() -> dict:
    from cotdsl.perturb import REGISTRY
    return REGISTRY


def signature(name: str) -> str:
    pert = perturbations()[name]
    args = (["input"] if pert.takes_input else []) + [p.name if p.required else f"{p.name}: …" for p in pert.params]
    return f"{name}({', '.join(args)})"


def perturbation_doc(name: str) -> str | None:
    """Markdown for a perturbation: signature, docstring, one line per parameter."""
    pert = perturbations().get(name)
    if pert is None:
        return None
    lines = [f"**{signature(name)}** — perturbation (unit: {pert.unit})", "", inspect.cleandoc(pert.doc) or "(no docstring)", ""]
    lines += [f"- {describe(p)}" + (f" — {p.doc}" if p.doc else "") for p in pert.params]
    lines.append("- `unit`: word | token (every call)")
    if pert.one_of:
        lines.append("\nGive exactly one of " + "; ".join(" or ".join(f"`{n}`" for n in g) for g in pert.one_of) + ".")
    return "\n".join(lines)


def section_params(kind: str) -> dict[str, Param]:
    """A section's keys, by name and by alias."""
    from cotdsl.lang.check import SECTIONS
    if kind not in SECTIONS:
        return {}
    params = SECTIONS[kind][1]
    return {**{p.alias: p for p in params if p.alias}, **{p.name: p for p in params}}


@lru_cache(maxsize=None)
def _field_comments(kind: str) -> dict[str, str]:
    """{field: its comments} for a section's spec dataclass: the comment lines just above a
    field and the one after it on its line (the dataclass's source is its documentation)."""
    from cotdsl.lang.check import SECTIONS
    cls = SECTIONS[kind][0]
    names = {f.name for f in dataclasses.fields(cls)}
    out, above = {}, []
    for line in inspect.getsource(cls).splitlines():
        if re.match(r"\s*#", line):
            above.append(line.strip().lstrip("#").strip())
            continue
        m = re.match(r"\s*(\w+)\s*:[^#]*(?:#\s*(.*))?$", line)
        if m and m.group(1) in names:
            out[m.group(1)] = " ".join(above + [m.group(2) or ""]).strip()
        above = []
    return out


def key_doc(kind: str, key: str) -> str | None:
    """Markdown for a section key: `kind.key`, its type and default, and its spec comments."""
    p = section_params(kind).get(key)
    if p is None:
        return None
    comment = _field_comments(kind).get(p.name, "")
    return f"**{kind}** key {describe(p)}" + (f"\n\n{comment}" if comment else "")


def key_values(kind: str, key: str) -> tuple[str, ...]:
    """Words a key's value may be (its choices, or true/false)."""
    p = section_params(kind).get(key)
    if p is None:
        return ()
    if p.type is bool:
        return ("true", "false")
    return tuple(c for c in p.choices or () if not c.endswith("*"))


def section_doc(kind: str) -> str:
    return f"**{kind}** section\n\n" + "\n".join(f"- {describe(p)}" for p in dict.fromkeys(
        section_params(kind).values()))

