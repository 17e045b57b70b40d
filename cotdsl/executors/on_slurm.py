"""Slurm through submitit: each job an sbatch job sized by its resource request (CPUs, memory,
GPUs for model stages), submitted once its inputs are published. The job store must be on a
filesystem the nodes share (it is where workers read inputs and publish outputs); submitit's
own pickles and logs go to `<store>/_slurm/`.

A Slurm job whose node or process dies comes back without an Outcome (submitit raises): the
driver resubmits it (training resumes from its checkpoint in the store).
"""
from __future__ import annotations

import time

from ..cache import Store
from ..jobs.runner import Outcome, run_job


class SlurmEngine:
    slots = 10_000  # Slurm queues and places; the driver only respects dependencies

    def __init__(self, store: Store, cfg):
        import submitit

        self.cfg, self.root = cfg, store.root.resolve()
        self.ex = submitit.AutoExecutor(folder=str(self.root / "_slurm" / "%j"), cluster="slurm")
        self.live: list = []

    def _params(self, job) -> dict:
        r, c = job.resources, self.cfg
        extra = {}
        for flag in c.sbatch:  # "--qos=high" -> {"qos": "high"}
            k, _, v = flag.lstrip("-").partition("=")
            extra[k.replace("-", "_")] = v or True
        gpus = int(c.gpus if c.gpus is not None and r.gpus else round(r.gpus))
        p = dict(timeout_min=c.time_min, cpus_per_task=r.cpus, mem_gb=max(1, round(r.mem_gb)),
                 name=f"cotdsl-{job.stage}", slurm_additional_parameters=extra)
        if gpus:
            p["gpus_per_node"] = gpus
        for key, val in (("slurm_partition", c.partition), ("slurm_account", c.account),
                         ("slurm_constraint", c.constraint)):
            if val:
                p[key] = val
        return p

    def submit(self, job, progress):
        self.ex.update_parameters(**self._params(job))
        h = self.ex.submit(run_job, job, str(self.root))
        self.live.append(h)
        return h

    def wait(self, handles):
        done = [h for h in handles if h.done()]
        if not done:
            time.sleep(0.5)  # submitit polls squeue/sacct itself, at most every few seconds
        return done

    def result(self, handle) -> Outcome:
        return handle.result()

    def cancel(self) -> None:
        for h in self.live:
            try:
                if not h.done():
                    h.cancel(check=False)
            except Exception:  # noqa: BLE001 - already gone
                pass

    def close(self) -> None:
        self.live.clear()


def submit_detached(plan, store: Store, cfg) -> dict[str, str]:
    """Submit every unfinished job at once, each held by `afterok` on the Slurm jobs of its
    inputs (cancelled if one of those dies), and return {job id: Slurm job id} without waiting.
    A job whose input failed inside cotdsl (its Slurm job still ends OK) finds the input missing
    from the store and records itself as skipped."""
    eng = SlurmEngine(store, cfg)
    ids: dict[str, str] = {}
    for job in plan.jobs:  # topological: inputs are submitted first
        if store.done(job.stage, job.key):
            continue
        params = eng._params(job)
        after = [ids[d] for d in job.deps if d in ids]
        if after:
            params["slurm_additional_parameters"] = {**params["slurm_additional_parameters"],
                                                     "dependency": "afterok:" + ":".join(after),
                                                     "kill_on_invalid_dep": "yes"}
        eng.ex.update_parameters(**params)
        ids[job.id] = eng.ex.submit(run_job, job, str(eng.root)).job_id
    return ids


def slurm_states(folder, ids: dict[str, str]) -> dict[str, tuple[str, Outcome | None]]:
    """{job id: (Slurm state, the Outcome it returned if finished)} for detached jobs."""
    import submitit

    out = {}
    for jid, sid in ids.items():
        sj = submitit.SlurmJob(folder=folder, job_id=sid)
        state, result = sj.state, None
        if state == "COMPLETED" or sj.paths.result_pickle.exists():
            try:
                result = sj.result()
            except Exception as exc:  # noqa: BLE001 - the job died: no Outcome
                from ..jobs.runner import cause_of

                result = Outcome("failed", cause=cause_of(exc))
        out[jid] = (state, result)
    return out
