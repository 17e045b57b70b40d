"""specs/paper/: the papers' setting as specs. Every spec checks and plans offline (no socket is
opened, no torch or datasets imported), states at least one `expect`, shares the setting through
its library, and plans to the job counts and A100/H100 hours that specs/paper/README.md gives."""
from __future__ import annotations

import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cotdsl import estimate as E
from cotdsl.cli import app
from cotdsl.lang import load
from cotdsl.plan import STAGES, make_plan

ROOT = Path(__file__).resolve().parent.parent
PAPER = ROOT / "specs" / "paper"
SPECS = sorted(PAPER.glob("*.cot"))
LIBS = sorted((PAPER / "lib").glob("*.cot"))
README = (PAPER / "README.md").read_text(encoding="utf-8")


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    """No hub, no network: any connection attempt fails the test."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")

    def refuse(*a, **k):
        raise AssertionError("network access while checking or planning a paper spec")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def readme_row(name: str) -> list[str]:
    row = next((line for line in README.splitlines() if line.startswith(f"| `{name}` |")), None)
    assert row is not None, f"{name} is not listed in specs/paper/README.md"
    return [c.strip() for c in row.strip("|").split("|")]


def test_there_are_paper_specs_and_libraries():
    assert {p.name for p in SPECS} >= {"placement.cot", "coherence.cot", "masking.cot", "unk.cot",
                                       "keytokens.cot", "lens.cot", "scotd_n.cot", "scotd_1.cot",
                                       "multitask.cot"}
    assert {p.name for p in LIBS} == {"setting.cot", "teacher.cot"}


@pytest.mark.parametrize("path", SPECS, ids=[p.name for p in SPECS])
def test_spec_checks_plans_and_expects(path):
    exp = load(path)
    assert exp.expectations, f"{path.name} states no `expect`"
    # the setting comes from the library: the same data, students and seeds in every spec
    assert [(d.name, d.kind, d.arg("dataset")) for d in exp.data] == [
        ("csqa", "hf", "csqa"), ("obqa", "hf", "obqa"), ("quarel", "hf", "quarel")]
    assert [s.arg("model") for s in exp.students] == ["gpt2", "microsoft/phi-1_5", "google/gemma-2b"]
    assert exp.seeds == (0, 1, 2)
    assert exp.teacher.kind == "hf" and exp.teacher.arg("model") == "mistralai/Mistral-7B-Instruct-v0.2"
    assert "none" in {c.name for c in exp.conditions}
    plan = make_plan(exp, versions={s: "" for s in STAGES}, gpu=False)
    runs = len(exp.conditions) * len(exp.students) * len(exp.data) * len(exp.seeds)
    assert len(plan.by_stage("train")) == runs > 0


@pytest.mark.parametrize("path", SPECS, ids=[p.name for p in SPECS])
def test_estimate_matches_the_readme(path):
    r = CliRunner().invoke(app, ["plan", str(path), "--estimate", "--device", "a100", "--device", "h100"])
    assert r.exit_code == 0, r.output
    runs = re.search(r"= (\d+) training runs", r.output).group(1)
    jobs = re.search(r"│ total\s+│\s+(\d+) │", r.output).group(1)
    a100 = re.search(r"^a100: ([\d.]+) GPU-hours", r.output, re.M).group(1)
    h100 = re.search(r"^h100: ([\d.]+) GPU-hours", r.output, re.M).group(1)
    row = readme_row(path.name)
    assert row[1] == f"`{load(path).name}`"
    assert (row[4], row[5], row[6], row[7]) == (runs, jobs, a100, h100), (path.name, r.output)


def test_all_specs_together_share_jobs():
    """The README's figure for running all of them on one job store: the union of their jobs."""
    seen = {}
    for path in SPECS:
        for c in E.estimate(load(path)).costs:
            seen.setdefault(c.job.id, c)
    trains = sum(c.job.stage == "train" for c in seen.values())
    hours = E.device("a100").hours(sum(c.flops for c in seen.values()))
    assert f"**{len(seen):,} distinct jobs, {trains:,} training runs, {hours:.1f} A100 GPU-hours**" in \
        README.replace("\n", " ")


def test_libraries_check_on_their_own():
    r = CliRunner().invoke(app, ["check", *map(str, LIBS)])
    assert r.exit_code == 0, r.output
    assert r.output.count("library (no experiment block)") == len(LIBS)


def test_nothing_heavy_is_imported(tmp_path):
    """check + plan --estimate of every paper spec import neither torch nor datasets/transformers
    (nothing can be fetched before `run`)."""
    code = ("import sys, socket\n"
            "def refuse(*a, **k): raise SystemExit('network access')\n"
            "socket.socket.connect = refuse; socket.create_connection = refuse\n"
            "from typer.testing import CliRunner\nfrom cotdsl.cli import app\n"
            f"specs = {[str(p) for p in SPECS]!r}\n"
            "r = CliRunner().invoke(app, ['check', *specs]); assert r.exit_code == 0, r.output\n"
            "for s in specs:\n"
            "    r = CliRunner().invoke(app, ['plan', s, '--estimate']); assert r.exit_code == 0, r.output\n"
            "heavy = [m for m in ('torch', 'datasets', 'transformers', 'huggingface_hub') if m in sys.modules]\n"
            "assert not heavy, heavy\n")
    env = {"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HOME": str(tmp_path)}
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
