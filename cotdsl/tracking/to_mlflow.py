"""`--log mlflow`: one MLflow run per training job in the MLflow experiment named after the cotdsl
experiment, plus a `summary` run holding summary.parquet as a logged table (summary.parquet).

The store: MLFLOW_TRACKING_URI when set, else a SQLite file RUN_DIR/mlflow.db with artifacts in
RUN_DIR/mlartifacts/ (view: `mlflow ui --backend-store-uri sqlite:///RUN_DIR/mlflow.db`).
Params: the job's columns and the spec's train and eval sections, flattened; the whole resolved
spec is the artifact resolved.json. Logging a run folder again deletes (MLflow's soft delete)
the runs of the same names in that experiment first, so it holds one run per job.
"""
from __future__ import annotations

import logging
import os
import time

from .base import JobLog, RunLog, Tracker

METRICS, PARAMS = 1000, 100  # MLflow's limits per log_batch call


def flat(d: dict, prefix: str = ""):
    for k, v in d.items():
        if isinstance(v, dict):
            yield from flat(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}", v


class MlflowTracker(Tracker):
    def __init__(self, run: RunLog):
        super().__init__(run)
        from mlflow.entities import Metric, Param
        from mlflow.tracking import MlflowClient

        for name in ("mlflow", "alembic"):  # "Creating initial MLflow database tables..." and the like
            logging.getLogger(name).setLevel(logging.WARNING)

        self.Metric, self.Param = Metric, Param
        own = not os.environ.get("MLFLOW_TRACKING_URI")
        self.uri = f"sqlite:///{(run.run_dir / 'mlflow.db').resolve()}" if own else os.environ["MLFLOW_TRACKING_URI"]
        self.client = c = MlflowClient(tracking_uri=self.uri)
        exp = c.get_experiment_by_name(run.experiment)
        if exp is None:
            art = (run.run_dir / "mlartifacts").resolve().as_uri() if own else None
            self.exp_id = c.create_experiment(run.experiment, artifact_location=art)
        else:
            self.exp_id = exp.experiment_id
            if exp.lifecycle_stage == "deleted":
                c.restore_experiment(self.exp_id)
        self.earlier: dict[str, list[str]] = {}  # cotdsl.job -> run ids an earlier logging left active
        token = None
        while True:
            page = c.search_runs([self.exp_id], max_results=1000, page_token=token)
            for r in page:
                if "cotdsl.job" in r.data.tags:
                    self.earlier.setdefault(r.data.tags["cotdsl.job"], []).append(r.info.run_id)
            token = page.token
            if not token:
                break

    def _start(self, name: str, tags: dict[str, str]) -> str:
        for rid in self.earlier.pop(name, []):
            self.client.delete_run(rid)
        return self.client.create_run(self.exp_id, run_name=name, tags={"cotdsl.job": name, **tags}).info.run_id

    def _log(self, run_id: str, metrics: list, params: list) -> None:
        for i in range(0, len(params), PARAMS):
            self.client.log_batch(run_id, params=params[i:i + PARAMS])
        for i in range(0, len(metrics), METRICS):
            self.client.log_batch(run_id, metrics=metrics[i:i + METRICS])

    def job(self, job: JobLog) -> None:
        rid = self._start(job.name, job.tags)
        now = int(time.time() * 1000)
        metrics = [self.Metric(k, float(v[i]), now, step) for i, step in enumerate(job.steps)
                   for k, v in job.series.items()]
        last = job.steps[-1] if job.steps else 0
        metrics += [self.Metric(k, v, now, last) for k, v in job.final.items()]
        config = {k: v for k, v in job.config.items() if k != "spec"}
        params = [self.Param(k, str(v)) for k, v in flat(config)]
        self._log(rid, metrics, params)
        self.client.log_dict(rid, job.config["spec"], "resolved.json")
        self.client.set_terminated(rid)

    def summary(self) -> None:
        rid = self._start("summary", {})
        # parquet: a JSON table would round the numbers to 10 digits
        self.client.log_table(rid, data=self.run.summary.to_pandas(), artifact_file="summary.parquet")
        self.client.log_dict(rid, self.run.spec, "resolved.json")
        self.client.set_terminated(rid)

    def where(self) -> str:
        return f"{self.uri}, experiment {self.run.experiment}"
