"""Local engines: this process (`--workers 1`, today's behaviour, live per-job progress and the
trained model kept in memory for its eval and probe), or N spawned worker processes on
`concurrent.futures.ProcessPoolExecutor` with live progress through a queue and one GPU per
worker, round-robin over the visible ones (more workers than GPUs share them).
"""
from __future__ import annotations

import concurrent.futures as cf
import multiprocessing as mp
import os
import queue as queue_mod
import shutil
import subprocess
from concurrent.futures.process import BrokenProcessPool

from ..cache import Store
from ..jobs.runner import Outcome, run_job


class InProcess:
    slots = 1

    def __init__(self, store: Store):
        self.store = store

    def submit(self, job, progress):
        fut: cf.Future = cf.Future()  # already done: the job runs right here
        try:
            fut.set_result(run_job(job, self.store, progress))
        except KeyboardInterrupt:
            raise
        except Exception as exc:  # noqa: BLE001 - kept for result(), like a worker's crash
            fut.set_exception(exc)
        return fut

    def wait(self, handles):
        return handles

    def result(self, handle) -> Outcome:
        return handle.result()

    def cancel(self) -> None:
        pass

    def close(self) -> None:
        pass


def visible_gpus() -> list[str]:
    """GPU ids this process may use, without importing torch."""
    vis = os.environ.get("CUDA_VISIBLE_DEVICES")
    if vis is not None:
        return [g.strip() for g in vis.split(",") if g.strip() and g.strip() != "-1"]
    if shutil.which("nvidia-smi") is None:
        return []
    out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True).stdout
    return [str(i) for i, line in enumerate(out.splitlines()) if line.startswith("GPU ")]


_PROGRESS = None  # the worker's end of the progress queue


def _init(progress_q, gpu_q, threads: int) -> None:
    global _PROGRESS
    _PROGRESS = progress_q
    try:
        os.environ["CUDA_VISIBLE_DEVICES"] = gpu_q.get_nowait()
    except queue_mod.Empty:
        pass
    # N workers share the cores: without this each would start one thread per core.
    os.environ["OMP_NUM_THREADS"] = str(threads)
    import torch

    torch.set_num_threads(threads)


def _work(job, root: str) -> Outcome:
    def progress(i, n):
        _PROGRESS.put((job.id, i, n))

    return run_job(job, root, progress)


class LocalPool:
    def __init__(self, store: Store, workers: int):
        self.store, self.workers, self.ctx = store, workers, mp.get_context("spawn")
        self.progress_q = self.ctx.Queue()
        self.callbacks: dict[str, object] = {}
        self.pool = None
        self.slots = workers

    def _pool(self) -> cf.ProcessPoolExecutor:
        if self.pool is None:
            gpus, gpu_q = visible_gpus(), self.ctx.Queue()
            for i in range(self.workers):
                if gpus:
                    gpu_q.put(gpus[i % len(gpus)])
            threads = max(1, (os.cpu_count() or 1) // self.workers)
            self.pool = cf.ProcessPoolExecutor(self.workers, mp_context=self.ctx, initializer=_init,
                                               initargs=(self.progress_q, gpu_q, threads))
        return self.pool

    def submit(self, job, progress):
        self.callbacks[job.id] = progress
        try:
            fut = self._pool().submit(_work, job, str(self.store.root.resolve()))
        except BrokenProcessPool:  # a worker died earlier: start a fresh pool for the retry
            self.pool.shutdown(wait=False, cancel_futures=True)
            self.pool = None
            fut = self._pool().submit(_work, job, str(self.store.root.resolve()))
        return fut

    def wait(self, handles):
        self._drain()
        done, _ = cf.wait(handles, timeout=0.25, return_when=cf.FIRST_COMPLETED)
        self._drain()
        return list(done)

    def _drain(self) -> None:
        while True:
            try:
                job_id, i, n = self.progress_q.get_nowait()
            except (queue_mod.Empty, OSError, EOFError):
                return
            cb = self.callbacks.get(job_id)
            if cb is not None:
                cb(i, n)

    def result(self, handle) -> Outcome:
        return handle.result()

    def cancel(self) -> None:
        if self.pool is not None:
            procs = list(getattr(self.pool, "_processes", {}).values())
            self.pool.shutdown(wait=False, cancel_futures=True)
            for p in procs:  # a running job stops now; its lock and temp dir die with it
                p.terminate()
            self.pool = None

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True)
            self.pool = None
