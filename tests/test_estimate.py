"""`cotdsl plan --estimate`: FLOPs by hand, data sizes without loading, the table per device,
device errors, and no torch import."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cotdsl import estimate as E
from cotdsl.lang.check import check_source, load
from cotdsl.cli import app
from cotdsl.errors import CotError
from cotdsl.jobs.types import student_params
from cotdsl.spec import Source

ROOT = Path(__file__).resolve().parent.parent
PAPER = ROOT / "specs" / "paper_grid.cot"

SMALL = """experiment small {
  seeds 0, 1
  data toy = builtin("facts", train: 40, test: 20)
  teacher gold = gold
  student t = tiny(layers: 2, d_model: 64)
  target none  = label
  target after = label -> rationale
  train { epochs: 2, lr: 1e-3, batch: 4 }
  eval { by: rank }
}
"""


def stage(est, name):
    return next(r for r in est.stages() if r[0] == name)


def test_train_and_eval_flops_equal_a_hand_computation():
    exp = check_source(SMALL, "small.cot")
    est = E.estimate(exp)
    n = student_params(exp.students[0])
    assert n == 12 * 2 * 64 * 64 + 2000 * 64
    # builtin facts, 4 choices: prompt 19.1 + 4.25 * 4 = 36.1, rationale 17.4, label 1.3 tokens
    none = 36.1 + 1.3 + 1  # prompt + label + eos
    after = 36.1 + 1.3 + 1 + 17.4 + 1  # prompt + label + "\n" + rationale + eos
    tokens = 2 * 40 * (none + after) * 2  # epochs x train examples x (both targets) x seeds
    _, jobs, tok, flops, basis = stage(est, "train")
    assert jobs == 4 and basis == "6N"
    assert tok == pytest.approx(tokens)
    assert flops == pytest.approx(6 * n * tokens)
    # rank evaluation: the context (the prompt) once + the 4 choices' labels, for each test question
    _, jobs, tok, flops, _ = stage(est, "eval")
    assert tok == pytest.approx(4 * 20 * (36.1 + 4 * 1.3))
    assert flops == pytest.approx(2 * n * tok)
    assert stage(est, "data")[3] == 0 and stage(est, "teacher")[3] == 0 and stage(est, "render")[3] == 0
    assert est.flops == pytest.approx(6 * n * tokens + 2 * n * 4 * 20 * (36.1 + 4 * 1.3))
    # device-hours are FLOPs over the sustained rate
    a100 = E.device("a100")
    assert a100.hours(est.flops) == pytest.approx(est.flops / (312e12 * 0.35) / 3600)


def test_ig_ranking_and_hf_teacher_flops():
    text = SMALL.replace("teacher gold = gold",
                         'teacher s = hf("smollm2", samples: 2, temperature: 0.7, max_new_tokens: 50)')
    text = text.replace("target after = label -> rationale", "target keys = label -> keytokens(rationale, 3, by: ig)")
    exp = check_source(text, "small.cot")
    est = E.estimate(exp)
    n = student_params(exp.students[0])
    _, jobs, tok, flops, basis = stage(est, "rank")
    assert jobs == 1 and basis == f"6N·{E.IG_STEPS}" and E.IG_STEPS == 20
    assert tok == pytest.approx(40 * (36.1 + 17.4 + 1.3 + 2))
    assert flops == pytest.approx(6 * n * tok * 20)
    # teacher sampling: default prompt (194 tokens) + the example's prompt + 1, + max_new_tokens; x samples
    _, jobs, tok, flops, _ = stage(est, "sample")
    assert tok == pytest.approx(40 * (194 + 36.1 + 1 + 50))
    assert flops == pytest.approx(2 * 135e6 * tok * 2)
    # keytokens(k=3 words) shortens the rationale to ~3 x 1.3 tokens
    train = [c for c in est.costs if c.job.stage == "train" and c.job.condition.name == "keys"][0]
    assert train.tokens == pytest.approx(2 * 40 * (36.1 + 1.3 + 1 + 3 * 1.3 + 1))


def test_limit_max_steps_and_lora():
    exp = check_source(SMALL.replace("batch: 4 }", "batch: 4, max_steps: 5, lora: 8 }"), "small.cot")
    est = E.estimate(exp, limit=10)
    n = student_params(exp.students[0])
    c = next(c for c in est.costs if c.job.stage == "train" and c.job.condition.name == "none")
    assert c.tokens == pytest.approx(5 * 4 * (36.1 + 1.3 + 1))  # max_steps x batch sequences
    assert c.flops == pytest.approx(4 * n * c.tokens) and c.basis.startswith("4N")
    exp = check_source(SMALL, "small.cot")
    c = next(c for c in E.estimate(exp, limit=10, limit_test=3).costs if c.job.stage == "eval")
    assert c.tokens == pytest.approx(3 * (36.1 + 4 * 1.3))


def test_paper_grid_jobs_and_sizes_without_downloads():
    exp = load(PAPER)
    est = E.estimate(exp)
    counts = {st: n for st, n, *_ in est.stages()}
    assert counts == {"data": 3, "sample": 24, "teacher": 3, "rank": 9, "render": 405, "train": 405, "eval": 405}
    assert sum(counts.values()) == 1254
    assert (est.sizes["csqa"].train, est.sizes["csqa"].test) == (9741, 1221)
    assert (est.sizes["obqa"].train, est.sizes["obqa"].test) == (4957, 500)
    assert (est.sizes["quarel"].train, est.sizes["quarel"].test) == (1941, 552)
    # the numbers docs/scaling.md quotes are the current estimate
    doc = (ROOT / "docs" / "scaling.md").read_text()
    for name in ("a100", "h100"):
        assert f"{E.hours(E.device(name).hours(est.flops))} GPU-hours" in doc, name
    assert "1254 jobs" in doc


def test_hf_counts_cap_and_unknown_split():
    s = E.size_source(Source("d", "hf", (("dataset", "csqa"), ("train", 100))))
    assert (s.train, s.test, s.profile.choices) == (100, 1221, 5)
    with pytest.raises(CotError, match="no known size"):
        E.size_source(Source("d", "hf", (("dataset", "quarel"), ("test_split", "dev"))))
    assert E.size_source(Source("d", "hf", (("dataset", "quarel"), ("test_split", "dev"), ("test", 7)))).test == 7


def test_file_sources_count_rows_cheaply(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    j = tmp_path / "a.jsonl"
    j.write_text("\n".join(json.dumps({"question": f"q{i}", "choices": ["a", "b"], "label": "a"}) for i in range(5))
                 + "\n\n")
    c = tmp_path / "b.csv"
    c.write_text('question,choices,label\n"two\nlines",a|b,a\nq,a|b,b\n')
    p = tmp_path / "c.parquet"
    pq.write_table(pa.table({"question": ["x"] * 7, "label": ["a"] * 7}), p)
    assert (E.count_rows(j), E.count_rows(c), E.count_rows(p)) == (5, 2, 7)
    s = E.size_source(Source("d", "file", (("train", str(j)), ("test", str(c)))))
    assert (s.train, s.test) == (5, 2)
    s = E.size_source(Source("d", "hf", (("dataset", "obqa"), ("files", {"train": str(p), "test": str(j)}))))
    assert (s.train, s.test) == (7, 5)


def test_unknown_device_did_you_mean():
    with pytest.raises(CotError, match="did you mean `h100`"):
        E.device("h10")
    assert E.device(" A100 ").name == "a100"


runner = CliRunner()


@pytest.mark.parametrize("dev,unit", [("a100", "GPU-h"), ("h100", "GPU-h"), ("cpu", "CPU-h")])
def test_cli_table_per_device(dev, unit):
    r = runner.invoke(app, ["plan", str(ROOT / "specs" / "quickstart.cot"), "--estimate", "--device", dev],
                      env={"COLUMNS": "120"})
    assert r.exit_code == 0, r.output
    out = r.output
    assert "estimate: experiment quickstart" in out and unit in out and "total" in out
    assert f"{dev}: " in out and "assumptions:" in out
    others = {"a100", "h100", "cpu"} - {dev}
    assert not any(f"device {o}:" in out for o in others)
    for st in ("data", "teacher", "render", "train", "eval", "probe"):
        assert f"│ {st}" in out


def test_cli_all_devices_by_default_and_errors():
    spec = str(ROOT / "specs" / "quickstart.cot")
    r = runner.invoke(app, ["plan", spec, "--estimate"], env={"COLUMNS": "120"})
    assert r.exit_code == 0 and all(f"device {d}:" in r.output for d in ("a100", "h100", "cpu"))
    r = runner.invoke(app, ["plan", spec, "--estimate", "--device", "h10"])
    assert r.exit_code == 1 and "did you mean `h100`?" in r.output and "Traceback" not in r.output
    r = runner.invoke(app, ["plan", spec, "--device", "cpu"])
    assert r.exit_code == 1 and "--device needs --estimate" in r.output
    r = runner.invoke(app, ["plan", spec, "--estimate", "--device", "cpu,cpu", "--limit", "8"], env={"COLUMNS": "120"})
    assert r.exit_code == 0 and r.output.count("cpu CPU-h") == 1, r.output
    r = runner.invoke(app, ["plan", spec])  # without --estimate: the grid only
    assert r.exit_code == 0 and "estimate:" not in r.output


def test_estimate_does_not_import_torch():
    code = ("import sys\nfrom typer.testing import CliRunner\nfrom cotdsl.cli import app\n"
            f"r = CliRunner().invoke(app, ['plan', {str(PAPER)!r}, '--estimate'])\n"
            "assert r.exit_code == 0, r.output\n"
            "print(sorted(m for m in ('torch', 'transformers', 'datasets') if m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                         env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_fit_pool_is_the_tuned_lens_fit_tokens():
    # estimate.py copies the constant so that `plan --estimate` imports no torch
    from cotdsl.estimate import FIT_POOL
    from interp.tuned import FIT_TOKENS

    assert FIT_POOL == FIT_TOKENS
