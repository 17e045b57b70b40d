"""`--log wandb`: one W&B run per training job, grouped by experiment (the run group), plus a
`summary` run holding summary.parquet as a W&B Table.

Offline by default: the runs are written under RUN_DIR/wandb/offline-run-*/ (upload them later
with `wandb sync RUN_DIR/wandb/offline-run-*`); WANDB_MODE=online logs straight to the server.
WANDB_PROJECT (default "cotdsl") and WANDB_ENTITY are honoured as usual. Logging a run folder
again replaces the offline runs an earlier logging left in it.
"""
from __future__ import annotations

import os
import shutil

from .base import JobLog, RunLog, Tracker


class WandbTracker(Tracker):
    def __init__(self, run: RunLog):
        super().__init__(run)
        import wandb

        self.wandb = wandb
        self.mode = os.environ.get("WANDB_MODE") or "offline"
        self.root = run.run_dir / "wandb"
        if self.mode in ("offline", "dryrun"):
            shutil.rmtree(self.root, ignore_errors=True)  # one set of offline runs: this logging's
        self.root.mkdir(parents=True, exist_ok=True)

    def _init(self, name: str, job_type: str, config: dict, tags: list[str]):
        w = self.wandb
        settings = w.Settings(console="off", silent=True, x_disable_stats=True, disable_git=True,
                              save_code=False, x_save_requirements=False)
        return w.init(mode=self.mode, dir=str(self.run.run_dir), project=os.environ.get("WANDB_PROJECT") or "cotdsl",
                      group=self.run.experiment, name=name, job_type=job_type, config=config, tags=tags,
                      reinit="create_new", settings=settings)

    def job(self, job: JobLog) -> None:
        t = job.tags
        r = self._init(job.name, "train", job.config, [t["condition"], t["student"], t["data"], f"seed{t['seed']}"])
        try:
            for i, step in enumerate(job.steps):
                r.log({k: v[i] for k, v in job.series.items()}, step=step)
            r.summary.update(job.final)  # eval/* and summary/*: one value per run, not a series
        finally:
            r.finish()

    def summary(self) -> None:
        s = self.run.summary
        r = self._init("summary", "summary", {"experiment": self.run.experiment, "spec": self.run.spec}, ["summary"])
        try:
            r.log({"summary": self.wandb.Table(columns=list(s.columns), data=[list(x) for x in s.iter_rows()])})
        finally:
            r.finish()

    def close(self) -> None:
        self.wandb.teardown()  # stop wandb's service process: `cotdsl` exits without waiting on it

    def where(self) -> str:
        if self.mode in ("offline", "dryrun"):
            return f"{self.root}/offline-run-* (upload: wandb sync {self.root}/offline-run-*)"
        return f"W&B project {os.environ.get('WANDB_PROJECT') or 'cotdsl'}, group {self.run.experiment}"
