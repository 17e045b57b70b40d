"""Run one job against the store: the single code path every executor calls.

`run_job(job, store_root)` takes the job's lock, returns "cached" if another process published it
meanwhile, clears temp dirs a killed run left, runs the stage into a temp dir and publishes it by
atomic rename. A job that raises returns a "failed" Outcome with its cause and traceback (a
deterministic failure: bad data, NaN loss — not retried); only a worker that dies (kill -9, node
loss, out of memory) is retried, by the executor, because then no Outcome comes back at all.
"""
from __future__ import annotations

import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ..cache import Store, atomic_write_json

Progress = Callable[[int, int], None]


@dataclass
class Outcome:
    status: str  # ran | cached | failed | skipped
    seconds: float = 0.0
    info: dict = field(default_factory=dict)
    cause: str | None = None
    user_error: bool = False  # failed on the user's input (a CotError), not on a bug or a crash
    trace: str | None = None  # traceback of a failure, written to runs/<exp>/failures/
    attempts: int = 1  # 2+ when a crashed worker's job was retried
    peak_rss: int | None = None  # bytes, of the process that ran the job (see the module's docstring)


def cause_of(exc: BaseException) -> str:
    from ..errors import CotError

    if isinstance(exc, CotError):
        return exc.render()
    name = type(exc).__name__
    msg = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    if "out of memory" in msg.lower() or isinstance(exc, MemoryError):
        return f"out of memory ({name}): {msg}"
    return f"{name}: {msg}"


def run_job(job, store: Store | str | Path, progress: Progress | None = None,
            on_wait: Callable[[], None] | None = None) -> Outcome:
    """Run `job` unless the store has it. Never raises for a job's own failure; a
    KeyboardInterrupt (SIGINT/SIGTERM) propagates after the temp dir and lock are released."""
    from ..errors import CotError
    from .stages import RUNNERS

    if job.stage not in RUNNERS:  # dla / attention / patch: imported on use (mech imports stages)
        from .mech import RUNNERS

    _quiet_transformers()
    store = store if isinstance(store, Store) else Store(Path(store))
    if store.done(job.stage, job.key):
        return Outcome("cached")
    missing = [d for d in job.deps if not store.done(*d.split("/", 1))]
    if missing:  # e.g. a detached Slurm job whose input job failed: never run on absent inputs
        return Outcome("skipped", cause=f"input {missing[0]} is not in the store (it failed or has not run)")
    with store.lock(job.stage, job.key, on_wait=on_wait):
        if store.done(job.stage, job.key):  # another process finished it while we waited
            return Outcome("cached")
        store.clean_stale(job.stage, job.key)
        mem = PeakRss()
        t0 = time.perf_counter()
        try:
            with store.writing(job.stage, job.key) as out:
                info = RUNNERS[job.stage](job, store, out, progress or (lambda i, n: None)) or {}
                rss = mem.read()
                atomic_write_json(out / "job.json", {"label": job.label, "info": info,
                                                     "seconds": time.perf_counter() - t0, **rss})
        except KeyboardInterrupt:
            raise
        except Exception as exc:  # noqa: BLE001 - one job's failure must not stop the others
            return Outcome("failed", time.perf_counter() - t0, cause=cause_of(exc),
                           user_error=isinstance(exc, CotError), trace=traceback.format_exc(),
                           peak_rss=mem.read()["peak_rss_bytes"])
        return Outcome("ran", time.perf_counter() - t0, info, peak_rss=rss["peak_rss_bytes"])


def _status_kib(field: str) -> int | None:
    """A `Vm...:` line of /proc/self/status in bytes (None off Linux)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _maxrss(children: bool = False) -> int:
    """getrusage's peak RSS in bytes (kilobytes on Linux, bytes on macOS; 0 without getrusage)."""
    try:
        import resource
    except ImportError:  # Windows
        return 0
    who = resource.RUSAGE_CHILDREN if children else resource.RUSAGE_SELF
    return resource.getrusage(who).ru_maxrss * (1 if sys.platform == "darwin" else 1024)


class PeakRss:
    """The peak RSS of this process from now on: resets the kernel's high-water mark (VmHWM) to
    the current RSS by writing "5" to /proc/self/clear_refs, where it may."""

    def __init__(self) -> None:
        self.start = _status_kib("VmRSS")
        self.children = _maxrss(children=True)
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            self.scope = "job"
        except OSError:
            self.scope = "process"

    def read(self) -> dict:
        """{"peak_rss_bytes", "peak_rss_scope", "rss_start_bytes"[, "peak_rss_children_bytes"]}."""
        peak = _status_kib("VmHWM") if self.scope == "job" else None
        # the kernel's RSS counters are per-CPU and synced lazily, so a peak read right after the
        # reset can trail the start's VmRSS by a few hundred KiB: the peak is at least the start
        peak = max(peak, self.start or 0) if peak else None
        out = {"peak_rss_bytes": peak or _maxrss(), "peak_rss_scope": self.scope,
               "rss_start_bytes": self.start}
        children = _maxrss(children=True)
        if children > self.children:
            out["peak_rss_children_bytes"] = children
        return out


def _quiet_transformers() -> None:
    """Keep warnings that matter, drop per-file progress bars (ours replace them), once per process."""
    import os

    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    try:
        import transformers

        transformers.utils.logging.disable_progress_bar()
        transformers.utils.logging.set_verbosity_error()
    except Exception:  # noqa: BLE001 - cosmetics only
        pass
