"""Slurm through submitit: each job an sbatch job sized by its resource request (CPUs, memory,
GPUs for model stages), submitted once its inputs are published. The job store must be on a
filesystem the nodes share (it is where workers read inputs and publish outputs); submitit's
own pickles and logs go to `<store>/_slurm/`.

A Slurm job whose node or process dies comes back without an Outcome (submitit raises): the
driver resubmits it (training resumes from its checkpoint in the store).
"""
from __future__ import annotations

import contextlib
import time

from ..cache import Store
from ..jobs.runner import Outcome, run_job


def _task(job, root: str) -> Outcome:
    """A Slurm job's entry point: torch gets as many threads as the job was given CPUs. Clusters
    that do not bind a job to its cores (task/none) leave torch one thread per core of the node,
    and N such jobs on one node then fight over the cores (on the 2-core test cluster: a training
    step 40x slower)."""
    import os

    cpus = os.environ.get("SLURM_CPUS_PER_TASK") or os.environ.get("SLURM_CPUS_ON_NODE")
    if cpus and cpus.isdigit():
        os.environ["OMP_NUM_THREADS"] = cpus
        import torch

        torch.set_num_threads(int(cpus))
    return run_job(job, root)


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
        return self.submit_many([(job, progress)])[0]

    def submit_many(self, items) -> list:
        """Jobs that became ready together and ask for the same resources go in as one job
        array (one sbatch call, one entry in the queue); the others one by one."""
        handles = {}
        for key, jobs in _groups([job for job, _ in items], self._params).items():
            self.ex.update_parameters(**_unfreeze(key))
            with self.ex.batch() if len(jobs) > 1 else contextlib.nullcontext():
                subs = [(job, self.ex.submit(_task, job, str(self.root))) for job in jobs]
            handles.update((job.id, h) for job, h in subs)  # array ids exist only after the batch
        out = [handles[job.id] for job, _ in items]
        self.live += out
        return out

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


def _groups(jobs, params) -> dict[tuple, list]:
    """Jobs by their submitit parameters; keys are hashable (nested dicts as sorted tuples)."""
    out: dict[tuple, list] = {}
    for job in jobs:
        p = params(job)
        key = tuple(sorted((k, tuple(sorted(v.items())) if isinstance(v, dict) else v) for k, v in p.items()))
        out.setdefault(key, []).append(job)
    return out


def _unfreeze(key: tuple) -> dict:
    return {k: dict(v) if k == "slurm_additional_parameters" else v for k, v in key}


def submit_detached(plan, store: Store, cfg) -> dict[str, str]:
    """Submit every unfinished job at once and return {job id: Slurm job id} without waiting.

    Jobs go in by wave (depth in the DAG); the jobs of one wave that ask for the same resources
    form one job array, held by `afterany` on the Slurm jobs of all its members' inputs. A job
    whose input failed (inside cotdsl, or its Slurm job died) finds that input missing from the
    store when it starts and records itself as skipped; a later `cotdsl run` collects."""
    eng = SlurmEngine(store, cfg)
    ids: dict[str, str] = {}
    depth: dict[str, int] = {}
    todo = [j for j in plan.jobs if not store.done(j.stage, j.key)]
    for job in todo:  # topological: a job's inputs come before it
        depth[job.id] = 1 + max((depth[d] for d in job.deps if d in depth), default=-1)
    for wave in sorted(set(depth.values())):
        for key, group in _groups([j for j in todo if depth[j.id] == wave], eng._params).items():
            params = _unfreeze(key)
            after = sorted({ids[d] for j in group for d in j.deps if d in ids})
            if after:
                params["slurm_additional_parameters"] = {**params["slurm_additional_parameters"],
                                                         "dependency": "afterany:" + ":".join(after)}
            eng.ex.update_parameters(**params)
            with eng.ex.batch() if len(group) > 1 else contextlib.nullcontext():
                subs = [(j, eng.ex.submit(_task, j, str(eng.root))) for j in group]
            ids.update((j.id, h.job_id) for j, h in subs)  # array ids exist only after the batch
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
