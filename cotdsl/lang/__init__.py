"""The language front end: a .cot file's text -> a checked `spec.Experiment`, or a `CotError`.

    cot.lark ─► grammar ─► parse (parse_fast; recover on errors) ─► ast ─► check (params, targets, data) ─► spec
                                                                       └─► fmt

It imports no torch, transformers or polars, and nothing from planning or jobs. The names below
are imported on first use, so `import cotdsl.lang.params` (which `cotdsl.perturb` needs) stays
cheap.
"""
from __future__ import annotations

import importlib

_WHERE = {"load": "check", "check_source": "check", "parse_source": "parse", "format_source": "fmt",
          "call": "targets"}
__all__ = list(_WHERE)


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
