"""cotdsl: a small language and runner for chain-of-thought distillation studies.

    import cotdsl
    exp = cotdsl.load("specs/quickstart.cot")   # -> cotdsl.spec.Experiment, or raises CotError
"""
from __future__ import annotations

from cotdsl.errors import CotError, Diagnostic

__version__ = "0.1.0"
__all__ = ["load", "check_source", "CotError", "Diagnostic", "__version__"]


def load(path):
    """Read, parse and check a .cot file -> `spec.Experiment`. Raises `CotError`."""
    from cotdsl.lang import load as _load  # lazy: `import cotdsl` stays cheap for submodules
    return _load(path)


def check_source(text, path: str = "<string>"):
    """Parse and check spec text -> `spec.Experiment`. Raises `CotError`."""
    from cotdsl.lang import check_source as _check
    return _check(text, path)
