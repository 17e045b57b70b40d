"""The one way a bench hands its figures to bench/run_all.py: `emit(bench, figures, **params)`
prints a final line `BENCH_RESULT {json}` and, when $BENCH_RESULT_PATH is set (run_all sets it),
writes the same JSON there.

A figure is `figure(name, value, unit, ratio=, vs=, goal=)`: `ratio` is value-like but relative
(× `vs`, e.g. "plain forward"); `goal` is (op, bound) with op one of < <= > >= ==, and applies to
the ratio when there is one, else to the value. `params` are the bench's settings (its arguments),
so a quick run's figures are never mistaken for a full run's."""
from __future__ import annotations

import json
import math
import operator
import os

OPS = {"<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge, "==": operator.eq}


def figure(name: str, value: float, unit: str, *, ratio: float | None = None, vs: str | None = None,
           goal: tuple[str, float] | None = None) -> dict:
    if goal is not None and goal[0] not in OPS:
        raise ValueError(f"goal operator {goal[0]!r} is not one of {', '.join(OPS)}")
    return {"name": name, "value": value, "unit": unit, "ratio": ratio, "vs": vs,
            "goal": list(goal) if goal else None}


def met(f: dict) -> bool | None:
    """Whether a figure meets its goal (None: it has none, or its number is not finite)."""
    if not f.get("goal"):
        return None
    x = f["ratio"] if f.get("ratio") is not None else f["value"]
    if x is None or not math.isfinite(x):
        return None
    op, bound = f["goal"]
    return OPS[op](x, bound)


def emit(bench: str, figures: list[dict], **params) -> None:
    text = json.dumps({"bench": bench, "params": params, "figures": figures})
    path = os.environ.get("BENCH_RESULT_PATH")
    if path:
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
    print("BENCH_RESULT " + text, flush=True)
