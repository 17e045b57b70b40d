"""The probe section's mechanism entries, checked against the built conditions and students:
`patch: none -> after` (pairs of conditions, or of students of one base model) and
`attention: rationale` (needs a target whose rationale precedes the label). Part of `check.py`;
the jobs are planned by `cotdsl/plan.py` and run by `cotdsl/jobs/mech.py`.
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

from cotdsl import spec
from cotdsl.errors import Collector, did_you_mean

from . import ast
from .expectations import _condition
from .fmt import value as value_text

SMOLLM2 = "HuggingFaceTB/SmolLM2-135M"
SMOLLM2_SHAPE = ("llama", 30, 576, 9)  # model type, blocks, d_model, heads


def build_mechanisms(probe: spec.ProbeCfg, pairs: tuple[ast.Pair, ...], entries: dict[str, ast.Entry],
                     conds: list[spec.Condition], students: list[spec.Student], declared: set[str],
                     col: Collector) -> spec.ProbeCfg:
    """`probe` with its `patch` pairs resolved to condition (or student) names; errors go to
    `col`. `declared` holds every target name written (a target with errors of its own is not
    also unknown here)."""
    families: dict[str, list[spec.Condition]] = {}
    for c in conds:
        families.setdefault(c.family, []).append(c)
    by_student = {s.name: s for s in students}
    out: list[tuple[str, str]] = []
    seen: dict[tuple[str, str], ast.Pair] = {}
    for p in pairs:
        sides = [_side(s, families, declared, by_student, col) for s in (p.left, p.right)]
        if None in sides:
            continue
        (ka, a), (kb, b) = sides
        text = value_text(p)
        if ka != kb:
            col.error(p.pos, f"`{text}` pairs a {ka} with a {kb}: patch between two conditions (one "
                      "student: `none -> after`) or two students (every condition: `small -> small_sft`)")
            continue
        if a == b:
            col.error(p.pos, f"`{text}` patches a run into itself", hint="name two different " + ka + "s")
            continue
        if (a, b) in seen:
            col.error(p.pos, f"duplicate pair `{text}` (first at {seen[(a, b)].pos})")
            continue
        seen[(a, b)] = p
        if ka == "student" and not _same_base(by_student[a], by_student[b]):
            col.error(p.pos, f"`{text}`: students `{a}` ({describe(by_student[a])}) and `{b}` "
                      f"({describe(by_student[b])}) have different base models; activation patching needs "
                      "two models of one architecture",
                      hint="patch between conditions of one student (`none -> after`), or between students "
                           "of one base model")
            continue
        out.append((a, b))
    att = entries.get("attention")
    if probe.attention and att is not None:
        if probe.context == "none":
            col.error(att.pos, "`attention: rationale` reads the label position's attention to the rationale "
                      "before it, but `context: none` reads every label right after the prompt",
                      hint="use `context: generated` (default) or `context: gold`")
        elif conds and not any(c.tasks[0].rationale_before_label() for c in conds):
            col.error(att.pos, "`attention: rationale` needs a target whose rationale comes before the label; "
                      f"{', '.join(f'`{n}`' for n in list(families)[:6])} read the label first",
                      hint="e.g. `target before = rationale -> \"So the answer is: \" label`")
    return dataclasses.replace(probe, patch=tuple(out))


def _side(s: ast.Side, families, declared: set[str], students: dict[str, spec.Student],
          col: Collector) -> tuple[str, str] | None:
    """("condition", its name) or ("student", its name), or None (error recorded)."""
    is_target = s.name in families or s.name in declared
    if is_target and s.name in students:
        col.error(s.name_pos, f"`{s.name}` names both a target and a student", hint="rename one of them")
        return None
    if s.name in students:
        if s.point is not None:
            col.error(s.name_pos, f"`{s.name}` is a student: it has no sweep points", hint=f"write `{s.name}`")
            return None
        return "student", s.name
    if not is_target:
        names = list(families) + [c.name for cs in families.values() for c in cs] + list(students)
        col.error(s.name_pos, f"unknown condition `{s.name}` in `patch`",
                  expected=[f"`{n}`" for n in families] + [f"`{n}` (student)" for n in students],
                  hint=did_you_mean(s.name, names))
        return None
    c = _condition(s, families, declared, col)
    return ("condition", c.name) if c is not None else None


def shape(s: spec.Student) -> tuple | None:
    """(model type, blocks, d_model, heads) when known at check time without the hub: tiny
    students, the bundled SmolLM2, a local checkpoint folder's config.json; else None."""
    if s.kind == "tiny":
        return (s.arg("arch", "llama"), s.arg("layers", 2), s.arg("d_model", 64), s.arg("heads", 4))
    if s.kind == "smollm2" or (s.kind == "hf" and s.arg("model") == SMOLLM2):
        return SMOLLM2_SHAPE
    model = s.arg("model") if s.kind == "hf" else None
    cfg = os.path.join(model, "config.json") if isinstance(model, str) and os.path.isabs(model) else None
    if cfg and os.path.isfile(cfg):
        try:
            with open(cfg, encoding="utf-8") as f:
                c: dict[str, Any] = json.load(f)
        except (OSError, ValueError):
            return None
        get = lambda *keys: next((c[k] for k in keys if k in c), None)  # noqa: E731
        return (c.get("model_type"), get("num_hidden_layers", "n_layer"), get("hidden_size", "n_embd"),
                get("num_attention_heads", "n_head"))
    return None


def _same_base(a: spec.Student, b: spec.Student) -> bool:
    """Known shapes must agree; otherwise the students must name the same model (a revision may
    differ)."""
    sa, sb = shape(a), shape(b)
    if sa is not None and sb is not None:
        return sa == sb
    name = lambda s: (s.kind, s.arg("model") or s.arg("path"), s.arg("file"))  # noqa: E731
    return name(a) == name(b)


def describe(s: spec.Student) -> str:
    sh = shape(s)
    what = {"tiny": "tiny", "smollm2": "smollm2"}.get(s.kind) or str(s.arg("model") or s.arg("path") or s.kind)
    if sh is None:
        return what
    return f"{what}: {sh[0]}, {sh[1]} blocks × d_model {sh[2]}, {sh[3]} heads"
