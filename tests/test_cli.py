"""The CLI: check / plan / fmt, exit codes, errors on stderr without tracebacks, --help."""
from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from cotdsl.cli import app

ROOT = Path(__file__).resolve().parent.parent
runner = CliRunner()


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_check_ok_on_all_specs_with_notes():
    r = run("check", *sorted(ROOT.glob("specs/*.cot")))
    assert r.exit_code == 0, r.output
    assert r.output.count("ok ") == len(list(ROOT.glob("specs/*.cot")))
    assert "note: target `highlights`" in r.output


def test_check_errors_exit_1_without_traceback(tmp_path):
    bad = tmp_path / "bad.cot"
    bad.write_text("experiment e {\n  target a = label -> shufle(rationale)\n}\n")
    r = run("check", bad, ROOT / "specs/quickstart.cot")
    assert r.exit_code == 1
    assert "bad.cot:2:23: error: unknown perturbation `shufle`" in r.output
    assert "did you mean `shuffle`?" in r.output and "Traceback" not in r.output
    assert "ok " in r.output  # the good file is still checked


def test_check_missing_file(tmp_path):
    r = run("check", tmp_path / "nope.cot")
    assert r.exit_code == 1 and "cannot read" in r.output


def test_check_accepts_a_library_file(tmp_path):
    """A file without an experiment block (what `import` merges) is checked as a library: its
    declarations as written, no section required; `plan` still needs an experiment (#11)."""
    r = run("check", ROOT / "specs/lib/common.cot")
    assert r.exit_code == 0, r.output
    assert "ok " in r.output and "library (no experiment block): 1 data source, 1 teacher, 1 student, " \
        "1 condition" in r.output
    lib = tmp_path / "lib.cot"
    lib.write_text('student s = smollm2\ntarget t = label -> rationale\n')  # no data, teacher: still fine
    r = run("check", lib)
    assert r.exit_code == 0 and "0 data sources, 0 teachers, 1 student, 1 condition" in r.output, r.output
    bad = tmp_path / "bad.cot"
    bad.write_text('data d = builtin("facts", train: 4, test: 2)\ntarget x = label -> shufle(rationale)\n')
    r = run("check", bad)
    assert r.exit_code == 1 and "bad.cot:2:21: error: unknown perturbation `shufle`" in r.output
    assert "no `experiment" not in r.output
    r = run("plan", ROOT / "specs/lib/common.cot")
    assert r.exit_code == 1 and "no `experiment NAME { ... }` block in this file" in r.output


def test_plan_counts():
    r = run("plan", ROOT / "specs/mask_sweep.cot")
    assert r.exit_code == 0, r.output
    assert "7 conditions x 1 students x 1 data x 3 seeds = 21 training runs" in r.output
    assert "masked[p=0.2]" in r.output


def test_fmt_check_and_write(tmp_path):
    f = tmp_path / "x.cot"
    f.write_text("experiment e{seeds 0}")
    assert run("fmt", "--check", f).exit_code == 1
    r = run("fmt", f)
    assert r.exit_code == 0 and r.output == "experiment e {\n  seeds 0\n}\n"
    assert run("fmt", "--write", f).exit_code == 0
    assert f.read_text() == "experiment e {\n  seeds 0\n}\n"
    assert run("fmt", "--check", f).exit_code == 0


def test_fmt_syntax_error(tmp_path):
    f = tmp_path / "x.cot"
    f.write_text("experiment e { target = }")
    r = run("fmt", f)
    assert r.exit_code == 1 and "error:" in r.output


@pytest.mark.parametrize("cmd", [[], ["check"], ["plan"], ["fmt"]])
def test_help_everywhere(cmd):
    r = run(*cmd, "--help")
    assert r.exit_code == 0 and "Usage" in r.output


def test_help_check_and_report_import_neither_torch_nor_transformers(tiny_ig_run, tmp_path):
    """Startup: `--help`, `check` and `report` (of a run with IG, lens and figures) in a fresh
    interpreter load no torch or transformers (measured times: docs/design.md, "Startup")."""
    import json
    import os
    import shutil
    import subprocess
    import sys

    run_dir = tmp_path / "tinyig"
    shutil.copytree(tiny_ig_run[0], run_dir)
    code = ("import json, sys\nfrom cotdsl.cli import app\nsys.argv = ['cotdsl', *sys.argv[1:]]\nrc = 0\n"
            "try:\n    app()\nexcept SystemExit as e:\n    rc = e.code\n"
            "print(json.dumps([rc, sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers'))]))")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    for args in (["--help"], ["check", str(ROOT / "specs/quickstart.cot")], ["report", str(run_dir)]):
        r = subprocess.run([sys.executable, "-c", code, *args], cwd=tmp_path, env=env, capture_output=True, text=True,
                           timeout=300)
        rc, heavy = json.loads(r.stdout.strip().splitlines()[-1])
        assert rc in (0, None) and heavy == [], (args, heavy, r.stderr[-2000:])
    assert "IG vs highlights" in r.stdout and "IG completeness" in r.stdout  # report read ig.json
