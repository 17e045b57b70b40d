"""Fixtures shared across test modules: a plugin folder on sys.path (the perturbation registry
and its modules restored afterwards), and one finished tiny run with an IG rank job, made once per
session (tests that change a run folder copy it first)."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

TINY_IG_SPEC = """experiment tinyig {
  seeds 0
  data    toy  = builtin("facts", train: 16, test: 8)
  teacher gold = gold
  student t    = tiny(arch: "llama", layers: 1, d_model: 16, heads: 2)
  target none  = label
  target keys  = label -> keytokens(rationale, 2, by: ig)
  train { epochs: 1, lr: 3e-3, batch: 8 }
  eval  { by: auto }
  probe { lens: logit; examples: 4 }
}
"""


@pytest.fixture()
def plugin_dir(tmp_path, monkeypatch):
    """A fresh sys.path entry; REGISTRY and the modules imported from it are restored afterwards."""
    from cotdsl import perturb

    monkeypatch.syspath_prepend(str(tmp_path))
    saved, mods = dict(perturb.REGISTRY), set(sys.modules)
    yield tmp_path
    perturb.REGISTRY.clear()
    perturb.REGISTRY.update(saved)
    for name in set(sys.modules) - mods:  # not torch & co. that a test imported first
        m = sys.modules[name]
        try:
            path = list(getattr(m, "__path__", None) or [])
        except TypeError:  # torch.classes: a __path__ that is not iterable
            path = []
        where = [getattr(m, "__file__", None) or "", *path]
        if any(str(tmp_path) in str(w) for w in where):
            del sys.modules[name]


@pytest.fixture(scope="session")
def tiny_ig_run(tmp_path_factory) -> tuple[Path, Path]:
    """(run folder, job store) of a finished tiny run whose `keys` target ranks words by IG:
    results, lens, ig.json, highlights.json and figures. Read-only for the tests that use it."""
    from rich.console import Console

    from cotdsl.run import EXIT_OK, run

    d = tmp_path_factory.mktemp("tiny_ig_run")
    (d / "tinyig.cot").write_text(TINY_IG_SPEC)
    cwd = os.getcwd()
    os.chdir(d)
    try:
        assert run(Path("tinyig.cot"), console=Console(file=open(os.devnull, "w"))) == EXIT_OK
    finally:
        os.chdir(cwd)
    return d / "runs" / "tinyig", d / ".cotdsl-cache"
