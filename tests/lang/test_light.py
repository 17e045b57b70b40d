"""The front end stays light: importing `cotdsl.lang` and running `cotdsl check` import no torch,
transformers, polars or `datasets`, and nothing from planning, jobs or rendering (a fresh
interpreter, so nothing another test imported counts)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HEAVY = ("torch", "transformers", "polars", "datasets")
ABOVE = ("cotdsl.plan", "cotdsl.jobs", "cotdsl.executors", "cotdsl.report", "cotdsl.render", "cotdsl.run")

_PROBE = r"""
import json, sys
import cotdsl.lang
seen = {"import": sorted(sys.modules)}
from cotdsl.cli import app
sys.argv = ["cotdsl", "check", *sys.argv[1:]]
try:
    app()
except SystemExit as e:
    seen["exit"] = e.code
seen["check"] = sorted(sys.modules)
print("\n" + json.dumps(seen))
"""


def _offending(modules: list[str]) -> list[str]:
    return [m for m in modules if m.split(".")[0] in HEAVY or m.startswith(ABOVE)]


def test_import_and_check_stay_light():
    specs = sorted(str(p) for p in (ROOT / "specs").glob("*.cot"))
    assert specs
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    r = subprocess.run([sys.executable, "-c", _PROBE, *specs], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=300)
    seen = json.loads(r.stdout.strip().splitlines()[-1])
    assert seen["exit"] in (0, None), r.stdout + r.stderr
    assert r.stdout.count("ok ") == len(specs)
    assert "cotdsl.lang.check" not in seen["import"]  # `import cotdsl.lang` loads its names on first use
    assert _offending(seen["import"]) == []
    assert _offending(seen["check"]) == [], "cotdsl check imported heavy or downstream modules"
