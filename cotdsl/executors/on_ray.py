"""Ray: every job a Ray task with its `num_cpus`/`num_gpus`/`memory`, its inputs' tasks passed
as arguments, so Ray itself orders the DAG and places the work (`--address` joins a running
cluster; otherwise a local one is started for the run and shut down after it).

A task whose worker dies is retried by Ray (`max_retries`); a job that raises returns a
"failed" Outcome instead of raising, so Ray never retries a deterministic error and its
dependants run just far enough to say they were skipped.
"""
from __future__ import annotations

import os

from ..cache import Store
from ..jobs.runner import Outcome, run_job

# Settings a worker must share with the driver (offline hub, cache locations).
_ENV = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE", "HF_HOME", "COTDSL_CACHE",
        "COTDSL_CPU_BF16", "PYTHONPATH")


def _task(job, root: str, *inputs: Outcome) -> Outcome:
    if any(o.status in ("failed", "skipped") for o in inputs):
        return Outcome("skipped")  # the driver names the root cause
    return run_job(job, root)


class RayEngine:
    def __init__(self, store: Store, cfg):
        import ray

        self.ray, self.cfg, self.store = ray, cfg, store
        self.started = not ray.is_initialized()
        if self.started:
            env = {k: os.environ[k] for k in _ENV if k in os.environ}
            ray.init(address=cfg.address, include_dashboard=False, log_to_driver=False,
                     configure_logging=False, runtime_env={"env_vars": env} if env else None)
        self.remote = ray.remote(_task)
        self.refs: dict = {}

    def run(self, plan, view, finish) -> None:
        """Submit every job not in the store, inputs as arguments; report outcomes as they land."""
        ray, root = self.ray, str(self.store.root.resolve())
        owner = {}
        for job in plan.jobs:
            if self.store.done(job.stage, job.key):
                finish(job, Outcome("cached"))
                continue
            r = job.resources
            gpus = r.gpus if self.cfg.gpus is None or not r.gpus else float(self.cfg.gpus)
            opts = dict(num_cpus=r.cpus, num_gpus=gpus, memory=int(r.mem_gb * 2**30),
                        max_retries=self.cfg.retries, retry_exceptions=False, name=job.label[:100])
            view.start(job)
            ref = self.remote.options(**opts).remote(job, root, *[self.refs[d] for d in job.deps if d in self.refs])
            self.refs[job.id], owner[ref] = ref, job
        pending = list(owner)
        while pending:
            ready, pending = ray.wait(pending, num_returns=1, timeout=1.0)
            for ref in ready:
                job = owner[ref]
                try:
                    out = ray.get(ref)
                except Exception as exc:  # noqa: BLE001 - the worker died more than max_retries times
                    from ..jobs.runner import cause_of

                    out = Outcome("failed", cause=f"Ray task lost: {cause_of(exc)}")
                finish(job, out)

    def cancel(self) -> None:
        for ref in self.refs.values():
            try:
                self.ray.cancel(ref, force=True)
            except Exception:  # noqa: BLE001 - already finished
                pass

    def close(self) -> None:
        if self.started and self.ray.is_initialized():
            self.ray.shutdown()
