"""Run a plan: skip finished jobs, run the rest in order with rich progress, isolate failures.

A job that raises is recorded with its cause (and the traceback in the run folder), the jobs
that need its output are skipped, every other job still runs. Results are only ever published by
an atomic rename (see `cache.Store.writing`), so `kill -9` at any moment loses at most the job in
flight — and a training job resumes from its last checkpoint.
"""
from __future__ import annotations

import shutil
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn,
                           TimeElapsedColumn, TimeRemainingColumn)

from .cache import Store, atomic_write_json
from .plan import Plan


@dataclass
class Outcome:
    status: str  # ran | cached | failed | skipped
    seconds: float = 0.0
    info: dict = field(default_factory=dict)
    cause: str | None = None
    user_error: bool = False  # failed on the user's input (a CotError: bad data, bad file), not a crash


def _cause(exc: BaseException) -> str:
    from .errors import CotError

    if isinstance(exc, CotError):
        return exc.render() if hasattr(exc, "render") else str(exc)
    name = type(exc).__name__
    msg = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    if "out of memory" in msg.lower() or isinstance(exc, MemoryError):
        return f"out of memory ({name}): {msg}"
    return f"{name}: {msg}"


def execute(plan: Plan, store: Store, *, run_dir: Path, console: Console | None = None) -> dict[str, Outcome]:
    """Run every job of `plan` not already in `store`. Returns job id -> Outcome.

    Each job runs under its store lock, so a second `cotdsl run` on the same cache waits for a
    job the first is running and then reuses its result instead of computing it again."""
    from rich.markup import escape

    from .jobs.stages import Ctx

    console = console or Console(stderr=True)
    outcomes: dict[str, Outcome] = {}
    failures = run_dir / "failures"
    shutil.rmtree(failures, ignore_errors=True)  # the run folder shows this run's state only
    failures.mkdir(parents=True, exist_ok=True)
    columns = (SpinnerColumn(), TextColumn("{task.description}", style="bold"), BarColumn(),
               MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console, transient=False, refresh_per_second=4) as prog:
        overall = prog.add_task(escape(f"{plan.experiment.name}: jobs"), total=len(plan.jobs))
        ctx = Ctx(store=store, plan=plan)
        for job in plan.jobs:
            bad = [d for d in job.deps if outcomes.get(d) and outcomes[d].status in ("failed", "skipped")]
            if bad:
                up = outcomes[bad[0]]
                root = up.cause if up.status == "skipped" else f"{plan.get(bad[0]).label} failed: {up.cause}"
                outcomes[job.id] = Outcome("skipped", cause=root)
            elif store.done(job.stage, job.key):
                outcomes[job.id] = Outcome("cached")
            else:
                task = prog.add_task(escape(job.label), total=None)
                waiting = lambda: prog.update(task, description=escape(f"{job.label} (waiting: another run has it)"))  # noqa: E731
                with store.lock(job.stage, job.key, on_wait=waiting):
                    if store.done(job.stage, job.key):  # another process finished it meanwhile
                        outcomes[job.id] = Outcome("cached")
                    else:
                        store.clean_stale(job.stage, job.key)
                        outcomes[job.id] = _run_one(job, ctx, store, prog, task, failures, escape)
                prog.remove_task(task)
            prog.advance(overall)
    atomic_write_json(run_dir / "jobs.json", {
        j.id: {"label": j.label, "stage": j.stage, "status": outcomes[j.id].status,
               "seconds": round(outcomes[j.id].seconds, 2), "cause": outcomes[j.id].cause,
               "info": outcomes[j.id].info} for j in plan.jobs})
    return outcomes


def _run_one(job, ctx, store: Store, prog, task, failures: Path, escape) -> Outcome:
    from .jobs.stages import RUNNERS

    ctx.progress = lambda jid, i, n, _t=task: prog.update(_t, completed=i, total=n)
    t0 = time.perf_counter()
    try:
        with store.writing(job.stage, job.key) as out:
            info = RUNNERS[job.stage](job, ctx, out) or {}
            atomic_write_json(out / "job.json", {"label": job.label, "info": info,
                                                 "seconds": time.perf_counter() - t0})
    except KeyboardInterrupt:
        raise
    except BaseException as exc:  # noqa: BLE001 - one job's failure must not stop the others
        cause = _cause(exc)
        safe = job.id.replace("/", "-")
        (failures / f"{safe}.txt").write_text(f"{job.label}\n{cause}\n\n{traceback.format_exc()}")
        prog.console.print(f"[red]✗[/] {escape(job.label)}: {escape(cause)}")
        from .errors import CotError

        return Outcome("failed", time.perf_counter() - t0, cause=cause, user_error=isinstance(exc, CotError))
    dt = time.perf_counter() - t0
    shown = ", ".join(f"{k} {v}" for k, v in info.items())
    prog.console.print(f"[green]✓[/] {escape(job.label)} [dim]({dt:.1f} s{'; ' + escape(shown) if shown else ''})[/]")
    return Outcome("ran", dt, info)


def environment() -> dict:
    """Versions and device, saved beside the results."""
    import platform

    import torch

    from importlib.metadata import version

    vers = {}
    for mod in ("transformers", "datasets", "transformer_lens", "tuned_lens", "captum", "lark", "polars"):
        try:
            vers[mod] = __import__(mod).__version__
        except Exception:  # noqa: BLE001 - a missing optional library is just not reported
            vers[mod] = None
    return {"cotdsl": version("cotdsl"), "python": platform.python_version(), "torch": torch.__version__,
            "platform": platform.platform(), "cpu_threads": torch.get_num_threads(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None, **vers}


def save_run_header(plan: Plan, run_dir: Path, spec_text: str) -> None:
    from .spec import to_dict

    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "spec.cot").write_text(spec_text)
    atomic_write_json(run_dir / "resolved.json", to_dict(plan.experiment))
    atomic_write_json(run_dir / "environment.json", environment())
    atomic_write_json(run_dir / "plan.json", [{"id": j.id, "label": j.label, "deps": list(j.deps)}
                                              for j in plan.jobs])
