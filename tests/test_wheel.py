"""The built wheel ships the grammar: build it, install it (no deps) into a fresh venv, and run
`cotdsl check` from outside the repo, with the dependencies taken from the dev venv."""
from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_wheel_ships_grammar_and_cli_works(tmp_path):
    pytest.importorskip("hatchling")
    dist = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(dist), str(ROOT)], check=True, capture_output=True)
    wheel, = dist.glob("cotdsl-*.whl")
    assert "cotdsl/lang/cot.lark" in zipfile.ZipFile(wheel).namelist()

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    py = venv / "bin" / "python"
    subprocess.run([sys.executable, "-m", "pip", "--python", str(py), "install", "--no-deps", "-q", str(wheel)],
                   check=True, capture_output=True)
    work = tmp_path / "work"
    shutil.copytree(ROOT / "specs", work)
    env = {"PYTHONPATH": sysconfig.get_paths()["purelib"], "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"}
    where = subprocess.run([str(py), "-c", "import cotdsl.lang.grammar as g; print(g.__file__); print(len(g.grammar_text()))"],
                           cwd=work, env=env, capture_output=True, text=True, check=True).stdout.split()
    assert where[0].startswith(str(venv)), where  # the installed copy, not the repo
    r = subprocess.run([str(venv / "bin" / "cotdsl"), "check", "quickstart.cot", "placement.cot"],
                       cwd=work, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.count("ok ") == 2
