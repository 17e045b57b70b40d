"""`--log wandb|tensorboard|mlflow` (cotdsl/tracking/): a tiny spec is run once, logged to each
backend, and what was written is read back with that library's own reader (wandb's `leet
inspect` over the offline .wandb file, TensorBoard's EventAccumulator, MlflowClient on the local
store) and compared with the run folder's parquet files. Expected values are recomputed here
from the parquet files and, for the learning rate, from transformers' own scheduler."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from rich.console import Console
from typer.testing import CliRunner

from cotdsl.cli import app
from cotdsl.run import EXIT_OK, report, run
from cotdsl.tracking.base import learning_rates, plain

SPEC = """
experiment tiny {
  seeds 0, 1
  data    toy  = builtin("facts", train: 24, test: 12)
  teacher gold = gold
  student t    = tiny(arch: "llama", layers: 2, d_model: 32, heads: 4)
  target none  = label
  target after = label -> rationale
  train { epochs: 2, lr: 3e-3, batch: 8, warmup: 0.25 }
  eval  { by: auto, max_new_tokens: 16 }
}
"""
JOBS = [(c, s) for c in ("none", "after") for s in (0, 1)]


def quiet() -> Console:
    return Console(file=open(os.devnull, "w"), width=120)


@pytest.fixture(autouse=True)
def offline_env(tmp_path, monkeypatch):
    """No tracker may reach a server or the user's home: W&B offline, its staging and config
    folders in tmp, MLflow on the run folder's own store; the working folder (where MLflow puts a
    server-less URI's artifacts, ./mlruns) a temporary one."""
    monkeypatch.chdir(tmp_path)
    for var in ("WANDB_MODE", "WANDB_DIR", "WANDB_PROJECT", "MLFLOW_TRACKING_URI"):
        monkeypatch.delenv(var, raising=False)
    for var in ("WANDB_DATA_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_ARTIFACT_DIR"):
        monkeypatch.setenv(var, str(tmp_path / var.lower()))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """The spec run once (seconds): its folder, and the cache a second `run` finds it all in."""
    root = tmp_path_factory.mktemp("tracking")
    spec = root / "tiny.cot"
    spec.write_text(SPEC)
    assert run(spec, out=root / "runs", cache=root / "cache", console=quiet()) == EXIT_OK
    return spec, root / "runs" / "tiny", root / "cache"


def curve(run_dir: Path, cond: str, seed: int) -> pl.DataFrame:
    c = pl.read_parquet(run_dir / "train_curves.parquet")
    return c.filter((pl.col("condition") == cond) & (pl.col("seed") == seed)).sort("step")


def scheduler_lrs(n: int) -> list[float]:
    """What training's optimizer used at each of n steps: transformers' schedule, stepped."""
    import torch
    from transformers import get_linear_schedule_with_warmup

    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=3e-3)
    sched = get_linear_schedule_with_warmup(opt, int(round(0.25 * n)), n)
    out = []
    for _ in range(n):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def expected_final(run_dir: Path, cond: str, seed: int) -> dict[str, float]:
    res = pl.read_parquet(run_dir / "results.parquet").filter((pl.col("condition") == cond) & (pl.col("seed") == seed))
    summ = pl.read_parquet(run_dir / "summary.parquet").filter(pl.col("condition") == cond).row(0, named=True)
    out = {"eval/acc": float(res["correct"].cast(pl.Float64).mean()), "eval/n": float(len(res)),
           "eval/unparseable": float(res["unparseable"].sum())}
    out.update({f"summary/{k}": float(summ[k]) for k in ("acc", "acc_norm", "acc_lo", "acc_hi", "n", "seeds")})
    if cond == "after":  # Δ against the baseline `none`, with its CI
        out.update({f"summary/{k}": float(summ[k]) for k in ("delta", "delta_lo", "delta_hi")})
    return out


def test_learning_rates_equal_the_training_schedule():
    """The lr per step is not recorded by training; tracking recomputes it, and it must be exactly
    what transformers' scheduler gave the optimizer (warmup rounding included)."""
    for n in (1, 2, 6, 7, 40):
        assert learning_rates({"lr": 3e-3, "warmup": 0.25}, n) == scheduler_lrs(n)
    assert learning_rates({"lr": 0.5, "warmup": 0.0}, 4) == [0.5, 0.375, 0.25, 0.125]
    assert learning_rates({}, 3) is None


def test_tensorboard_event_files_hold_the_run(tiny):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.util.tensor_util import make_ndarray

    spec, run_dir, cache = tiny
    # through `run`: every job is cached, the logging happens after the (cached) run
    assert run(spec, out=run_dir.parent, cache=cache, console=quiet(), log=("tensorboard",)) == EXIT_OK
    tb = run_dir / "tb"
    assert sorted(p.parent.relative_to(tb).as_posix() for p in tb.rglob("events.out.tfevents.*")) == \
        ["_summary"] + sorted(f"{c}/t/toy/seed{s}" for c, s in JOBS)
    for cond, seed in JOBS:
        ea = EventAccumulator(str(tb / cond / "t" / "toy" / f"seed{seed}"), size_guidance={"scalars": 0, "tensors": 0})
        ea.Reload()
        want = curve(run_dir, cond, seed)
        loss = ea.Scalars("train/loss")
        assert [e.step for e in loss] == want["step"].to_list()
        # TensorBoard scalars are float32: equal to the parquet's losses rounded to float32
        assert [e.value for e in loss] == [float(np.float32(x)) for x in want["loss"]]
        assert [e.value for e in ea.Scalars("train/lr")] == [float(np.float32(x)) for x in scheduler_lrs(len(want))]
        for tag, value in expected_final(run_dir, cond, seed).items():
            (e,) = ea.Scalars(tag)
            assert (e.step, e.value) == (len(want), float(np.float32(value))), tag
        config = make_ndarray(ea.Tensors("config")[0].tensor_proto)[0].decode()
        cfg = json.loads(config.removeprefix("```json\n").removesuffix("\n```"))
        assert (cfg["condition"], cfg["seed"], cfg["train"]["lr"], cfg["spec"]["name"]) == (cond, seed, 3e-3, "tiny")
    ea = EventAccumulator(str(tb / "_summary"), size_guidance={"tensors": 0})
    ea.Reload()
    table = make_ndarray(ea.Tensors("summary")[0].tensor_proto)[0].decode().splitlines()
    summ = pl.read_parquet(run_dir / "summary.parquet")
    assert table[0] == "| " + " | ".join(summ.columns) + " |" and len(table) == 2 + len(summ)
    assert [row.split(" | ")[0] for row in table[2:]] == [f"| {c}" for c in summ["condition"]]


def test_mlflow_local_store_holds_the_run(tiny, tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    _, run_dir, _ = tiny
    assert report(run_dir, console=quiet(), png=False, log=("mlflow",)) == EXIT_OK
    assert report(run_dir, console=quiet(), png=False, log=("mlflow",)) == EXIT_OK  # again: replaces, no duplicates
    uri = f"sqlite:///{run_dir / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("tiny")
    runs = {r.info.run_name: r for r in client.search_runs([exp.experiment_id])}
    assert sorted(runs) == sorted(["summary"] + [f"{c}/t/toy/seed{s}" for c, s in JOBS])
    assert (run_dir / "mlartifacts").is_dir()
    for cond, seed in JOBS:
        r = runs[f"{cond}/t/toy/seed{seed}"]
        want = curve(run_dir, cond, seed)
        loss = sorted(client.get_metric_history(r.info.run_id, "train/loss"), key=lambda m: m.step)
        assert [(m.step, m.value) for m in loss] == list(zip(want["step"], want["loss"]))  # exact: doubles
        lr = sorted(client.get_metric_history(r.info.run_id, "train/lr"), key=lambda m: m.step)
        assert [m.value for m in lr] == scheduler_lrs(len(want))
        final = expected_final(run_dir, cond, seed)
        assert {k: r.data.metrics[k] for k in final} == final
        assert r.data.params["train.lr"] == "0.003" and r.data.params["seed"] == str(seed)
        assert r.data.tags["condition"] == cond and r.data.tags["cotdsl.job"] == r.info.run_name
        resolved = Path(client.download_artifacts(r.info.run_id, "resolved.json", str(tmp_path)))
        assert json.loads(resolved.read_text()) == plain(json.loads((run_dir / "resolved.json").read_text()))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)  # load_table searches runs through mlflow's global URI
    table = client.load_table(exp.experiment_id, "summary.parquet", run_ids=[runs["summary"].info.run_id])
    summ = pl.read_parquet(run_dir / "summary.parquet")
    assert list(table.columns) == summ.columns and table["condition"].tolist() == summ["condition"].to_list()
    assert table["acc"].tolist() == summ["acc"].to_list()
    # MLFLOW_TRACKING_URI wins over the run folder's store
    other = tmp_path / "other.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{other}")
    assert report(run_dir, console=quiet(), png=False, log=("mlflow",)) == EXIT_OK
    there = MlflowClient(tracking_uri=f"sqlite:///{other}")
    assert len(there.search_runs([there.get_experiment_by_name("tiny").experiment_id])) == 1 + len(JOBS)


def leet(path: Path, summary: bool = False):
    """wandb's own reader of a .wandb transaction log, `wandb leet inspect --json`: its records
    (one JSON object a line), or with `summary` the run's state, config and final summary."""
    p = subprocess.run([sys.executable, "-m", "wandb", "leet", "inspect", "--json", *(["--summary"] if summary else []),
                        str(path)], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout) if summary else [json.loads(line) for line in p.stdout.splitlines() if line.strip()]


def test_wandb_offline_runs_hold_the_run(tiny):
    _, run_dir, _ = tiny
    for _ in range(2):  # logging again replaces the offline runs
        assert report(run_dir, console=quiet(), png=False, log=("wandb",)) == EXIT_OK
    files = sorted((run_dir / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(files) == 1 + len(JOBS)
    found = set()
    for f in files:
        records = leet(f)
        (head,) = [r["run"] for r in records if r["type"] == "run"]
        summary = leet(f, summary=True)
        assert head["run_group"] == "tiny" and head["project"] == "cotdsl" and summary["state"] == "finished"
        name = head["display_name"]
        found.add(name)
        if name == "summary":
            table = json.loads((f.parent / "files" / summary["summary"]["summary"]["path"]).read_text())
            summ = pl.read_parquet(run_dir / "summary.parquet")
            assert table["columns"] == summ.columns and table["data"] == [list(r) for r in summ.iter_rows()]
            continue
        cond, _, _, seed = name.split("/")
        seed = int(seed.removeprefix("seed"))
        assert (summary["config"]["condition"], summary["config"]["seed"]) == (cond, seed)
        assert summary["config"]["spec"] == plain(json.loads((run_dir / "resolved.json").read_text()))
        history = [r["history"] for r in records if r["type"] == "history"]
        want = curve(run_dir, cond, seed)
        assert [h["step"]["num"] for h in history] == want["step"].to_list()
        assert [h["item"]["train/loss"] for h in history] == want["loss"].to_list()  # exact: JSON doubles
        assert [h["item"]["train/lr"] for h in history] == scheduler_lrs(len(want))
        final = expected_final(run_dir, cond, seed)
        assert {k: summary["summary"][k] for k in final} == final
    assert found == {"summary"} | {f"{c}/t/toy/seed{s}" for c, s in JOBS}


def test_cli_log_errors_exit_1_and_lose_nothing(tiny, monkeypatch):
    spec, run_dir, cache = tiny
    cli = CliRunner()
    r = cli.invoke(app, ["report", str(run_dir), "--no-png", "--log", "tensorbord"])
    assert r.exit_code == 1 and "--log: unknown tracker 'tensorbord'" in r.output
    assert "did you mean `tensorboard`?" in r.output and "Traceback" not in r.output
    monkeypatch.setitem(sys.modules, "wandb", None)  # as if wandb were not installed
    before = {p.name: p.stat().st_mtime_ns for p in run_dir.iterdir() if p.suffix == ".parquet"}
    r = cli.invoke(app, ["run", str(spec), "--out", str(run_dir.parent), "--cache", str(cache),
                         "--log", "mlflow,wandb"])
    assert r.exit_code == 1 and "Traceback" not in r.output
    assert "error: --log wandb: wandb is not installed; pip install wandb (or pip install 'cotdsl[track]')" in r.output
    # checked before anything ran: the run folder is as it was
    assert {p.name: p.stat().st_mtime_ns for p in run_dir.iterdir() if p.suffix == ".parquet"} == before
    r = cli.invoke(app, ["report", str(run_dir), "--no-png", "--log", "wandb"])
    assert r.exit_code == 1 and "pip install wandb" in r.output
    monkeypatch.setitem(sys.modules, "alembic", None)  # MLflow's own SQLite store needs it
    r = cli.invoke(app, ["report", str(run_dir), "--no-png", "--log", "mlflow"])
    assert r.exit_code == 1 and "--log mlflow: alembic is not installed; pip install alembic" in r.output
    r = cli.invoke(app, ["report", str(run_dir.parent), "--log", "tensorboard"])
    assert r.exit_code == 1 and "is not a cotdsl run folder" in r.output
