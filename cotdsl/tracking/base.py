"""What `--log` sends to a tracker, read from a finished run folder, and the interface a tracker
implements. Reads only the run folder's files (resolved.json, train_curves.parquet,
results.parquet, summary.parquet), so it works for every executor and after the fact."""
from __future__ import annotations

import json
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path

from cotdsl.errors import CotError

JOB_KEYS = ("condition", "student", "data", "seed")
EVAL = {"acc": "correct", "acc_norm": "correct_norm"}  # eval/<name>: the mean of results.parquet's column


@dataclass
class JobLog:
    """One training job (condition x student x data x seed): one tracking run."""

    name: str  # "condition/student/data/seed0"
    tags: dict[str, str]  # condition, family, params (JSON), student, data, seed
    config: dict  # the job's columns, train and eval sections, and the whole resolved spec ("spec")
    steps: list[int]  # optimizer steps, 1-based
    series: dict[str, list[float]]  # "train/loss", "train/lr": one value per step
    final: dict[str, float] = field(default_factory=dict)  # eval/* (this seed), summary/* (over seeds)


@dataclass
class RunLog:
    experiment: str
    run_dir: Path
    spec: dict  # resolved.json without its "__type__" markers
    jobs: list[JobLog]
    summary: object  # summary.parquet as a polars DataFrame


class Tracker(ABC):
    """A backend: `job` writes one training job's tracking run, `summary` the experiment's summary
    table (one more run of the group), `close` releases the backend; `where` names the output."""

    def __init__(self, run: RunLog):
        self.run = run

    @abstractmethod
    def job(self, job: JobLog) -> None: ...

    @abstractmethod
    def summary(self) -> None: ...

    def close(self) -> None:  # noqa: B027 - a backend holding nothing has nothing to release
        pass

    @abstractmethod
    def where(self) -> str: ...


def plain(obj):
    """resolved.json without the `__type__` markers `spec.to_dict` adds."""
    if isinstance(obj, dict):
        return {k: plain(v) for k, v in obj.items() if k != "__type__"}
    return [plain(v) for v in obj] if isinstance(obj, list) else obj


def learning_rates(train: dict, steps: int) -> list[float] | None:
    """The lr of each of a finished job's `steps` optimizer steps (training records none): train.py
    steps transformers' get_linear_schedule_with_warmup(opt, round(warmup * total), total) after
    each step and ran total = `steps` steps, so step k used lr * factor(k - 1), LambdaLR's
    arithmetic (docs/tracking.md). None without an lr in the spec's train section."""
    if "lr" not in train:
        return None
    lr, warm = float(train["lr"]), int(round(float(train.get("warmup") or 0.0) * steps))

    def factor(k: int) -> float:
        if k < warm:
            return float(k) / float(max(1, warm))
        return max(0.0, float(steps - k) / float(max(1, steps - warm)))

    return [lr * factor(k) for k in range(steps)]


def read_run(run_dir: Path) -> RunLog:
    import polars as pl

    if not (run_dir / "summary.parquet").exists():
        raise CotError.one(f"{run_dir} is not a finished cotdsl run folder (no summary.parquet)",
                           hint="give runs/<experiment> after `cotdsl run` has finished")

    def read(name: str) -> pl.DataFrame:
        return pl.read_parquet(run_dir / name) if (run_dir / name).exists() else pl.DataFrame()

    spec = plain(json.loads((run_dir / "resolved.json").read_text())) if (run_dir / "resolved.json").exists() else {}
    curves, results, summary = read("train_curves.parquet"), read("results.parquet"), read("summary.parquet")
    evals = {}
    if len(results):
        aggs = [pl.col(c).cast(pl.Float64).mean().alias(k) for k, c in EVAL.items() if c in results.columns]
        for r in results.group_by(JOB_KEYS).agg(*aggs, pl.col("unparseable").sum(), pl.len().alias("n")) \
                        .iter_rows(named=True):
            evals[tuple(r[k] for k in JOB_KEYS)] = {f"eval/{k}": r[k] for k in ("acc", "acc_norm", "unparseable", "n")}
    numeric = [c for c, t in summary.schema.items() if t.is_numeric()] if len(summary) else []
    summaries = {tuple(r[k] for k in JOB_KEYS[:3]): {f"summary/{c}": r[c] for c in numeric}
                 for r in summary.iter_rows(named=True)}
    jobs = []
    for key, g in (curves.group_by(JOB_KEYS, maintain_order=True) if len(curves) else []):
        g = g.sort("step")
        cond, student, data, seed = key
        tags = {k: str(g[k][0]) for k in ("condition", "family", "params", "student", "data", "seed")}
        config = {"experiment": spec.get("name"), "condition": cond, "family": tags["family"],
                  "params": json.loads(tags["params"]), "student": student, "data": data, "seed": seed,
                  "train": spec.get("train"), "eval": spec.get("eval"), "spec": spec}
        series = {"train/loss": g["loss"].to_list()}
        lrs = learning_rates(spec.get("train") or {}, len(g))
        if lrs is not None:
            series["train/lr"] = lrs
        final = {**evals.get(key, {}), **summaries.get(key[:3], {})}
        jobs.append(JobLog(f"{cond}/{student}/{data}/seed{seed}", tags, config, g["step"].to_list(), series,
                           {k: float(v) for k, v in final.items() if v is not None}))
    return RunLog(spec.get("name") or run_dir.name, run_dir, spec, jobs, summary)
