"""Run a plan on an engine: this process, local worker processes, a Ray cluster or Slurm.

Every engine runs the same `jobs.runner.run_job(job, store)`, so results are identical whatever
runs them, and the store stays the single source of truth: a job is done when its directory is
published; its lock keeps two runs (or two nodes) from computing it twice. This module walks the
DAG (a job is handed to the engine once its inputs are published) and reports: failures isolated
with their cause, dependants skipped, crashed workers' jobs retried, a rich progress display.
"""
from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn,
                           TimeElapsedColumn, TimeRemainingColumn)

from ..cache import Store, atomic_write_json
from ..jobs.runner import Outcome
from ..plan import Plan

__all__ = ["ExecutorCfg", "Outcome", "execute", "load_cfg"]


@dataclass(frozen=True)
class ExecutorCfg:
    """How to run, not what: from `cotdsl run` flags or an executor config file (the .cot file
    stays about the experiment)."""

    kind: str = "local"  # local | ray | slurm
    workers: int = 1  # local: worker processes (1 = in this process)
    retries: int = 1  # re-runs of a job whose worker crashed; a job that raises is not retried
    address: str | None = None  # ray: join this cluster (else a local one is started)
    partition: str | None = None  # slurm settings, passed to submitit
    time_min: int = 240
    gpus: int | None = None  # slurm: GPUs per training job (default: what the job asks for)
    account: str | None = None
    constraint: str | None = None
    sbatch: tuple[str, ...] = ()  # extra `#SBATCH` flags, e.g. ("--qos=high",)


def load_cfg(path: Path | None = None, **flags) -> ExecutorCfg:
    """Settings from a TOML file (`[executor]` table or top level) overridden by the flags given
    (None = not given). Unknown keys and bad values are user errors naming the file."""
    import dataclasses
    import tomllib

    from ..errors import CotError, Diagnostic, did_you_mean

    names = {f.name: f for f in dataclasses.fields(ExecutorCfg)}
    values: dict = {}
    if path is not None:
        try:
            data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, tomllib.TOMLDecodeError) as e:
            raise CotError(f"{path}: cannot read the executor config: {e}") from None
        data = data.get("executor", data)
        diags = [Diagnostic(None, f"{path}: unknown executor setting `{k}`", expected=sorted(names),
                            hint=did_you_mean(k, names)) for k in data if k not in names]
        if diags:
            raise CotError(diags)
        values.update(data)
    values.update({k: v for k, v in flags.items() if v is not None})
    if "sbatch" in values:
        values["sbatch"] = tuple(values["sbatch"])
    cfg = ExecutorCfg(**values)
    if cfg.kind not in ("local", "ray", "slurm"):
        raise CotError([Diagnostic(None, f"unknown executor {cfg.kind!r}", expected=["local", "ray", "slurm"],
                                   hint=did_you_mean(cfg.kind, ["local", "ray", "slurm"]))])
    if cfg.workers < 1 or cfg.retries < 0:
        raise CotError("--workers must be at least 1 and --retries at least 0")
    return cfg


def engine(cfg: ExecutorCfg, store: Store):
    if cfg.kind == "local":
        from .local import InProcess, LocalPool

        return InProcess(store) if cfg.workers <= 1 else LocalPool(store, cfg.workers)
    if cfg.kind == "ray":
        from .on_ray import RayEngine

        return RayEngine(store, cfg)
    if cfg.kind == "slurm":
        from .on_slurm import SlurmEngine

        return SlurmEngine(store, cfg)
    raise ValueError(f"unknown executor {cfg.kind!r}")


def execute(plan: Plan, store: Store, *, run_dir: Path, console: Console | None = None,
            cfg: ExecutorCfg = ExecutorCfg()) -> dict[str, Outcome]:
    """Run every job of `plan` not already in `store`. Returns job id -> Outcome."""
    console = console or Console(stderr=True)
    failures = run_dir / "failures"
    shutil.rmtree(failures, ignore_errors=True)  # the run folder shows this run's state only
    failures.mkdir(parents=True, exist_ok=True)
    columns = (SpinnerColumn(), TextColumn("{task.description}", style="bold"), BarColumn(),
               MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console, transient=False, refresh_per_second=4) as prog:
        overall = prog.add_task(escape(f"{plan.experiment.name}: jobs"), total=len(plan.jobs))
        view = _View(prog, failures)
        eng = engine(cfg, store)
        try:
            if hasattr(eng, "run"):  # the engine orders the DAG itself (Ray)
                outcomes = drive_engine(plan, eng, view, advance=lambda: prog.advance(overall))
            else:
                outcomes = drive(plan, store, eng, view, retries=cfg.retries, advance=lambda: prog.advance(overall))
        finally:
            eng.close()
    atomic_write_json(run_dir / "jobs.json", {
        j.id: {"label": j.label, "stage": j.stage, "status": outcomes[j.id].status,
               "seconds": round(outcomes[j.id].seconds, 2), "cause": outcomes[j.id].cause,
               "attempts": outcomes[j.id].attempts, "peak_rss_bytes": outcomes[j.id].peak_rss,
               "info": outcomes[j.id].info} for j in plan.jobs})
    return outcomes


def _root_cause(plan: Plan, job, outcomes: dict[str, Outcome]) -> str | None:
    """Why `job` cannot run: the first input that failed (through any chain of skipped ones)."""
    bad = [d for d in job.deps if d in outcomes and outcomes[d].status in ("failed", "skipped")]
    if not bad:
        return None
    up = outcomes[bad[0]]
    return up.cause if up.status == "skipped" else f"{plan.get(bad[0]).label} failed: {up.cause}"


def drive_engine(plan: Plan, eng, view, *, advance=lambda: None) -> dict[str, Outcome]:
    """For engines that take the whole DAG at once (`eng.run(plan, view, finish)`)."""
    outcomes: dict[str, Outcome] = {}

    def finish(job, out: Outcome) -> None:
        root = _root_cause(plan, job, outcomes)
        if root is not None and out.status in ("failed", "skipped"):
            out = Outcome("skipped", cause=root)
        outcomes[job.id] = out
        view.done(job, out)
        advance()

    try:
        eng.run(plan, view, finish)
    except BaseException:
        eng.cancel()
        raise
    return outcomes


def drive(plan: Plan, store: Store, eng, view, *, retries: int = 1, advance=lambda: None) -> dict[str, Outcome]:
    """Hand each job to `eng` once every input is published; collect outcomes as they come.

    `eng.submit(job, progress)` returns a handle (or `eng.submit_many([(job, progress), ...])`,
    when the engine has it, takes all the jobs that became ready together: one Slurm job array);
    `eng.wait(handles)` returns those finished;
    `eng.result(handle)` gives the Outcome, or raises when the worker died (then the job is
    retried up to `retries` times: a training job resumes from its checkpoint)."""
    outcomes: dict[str, Outcome] = {}
    pending, running, attempts, wave = list(plan.jobs), {}, {}, []

    def finish(job, out: Outcome) -> None:
        outcomes[job.id] = out
        view.done(job, out)
        advance()

    try:
        while pending or running:
            rest = []
            for job in pending:
                if any(d not in outcomes for d in job.deps) or len(running) + len(wave) >= eng.slots:
                    rest.append(job)
                    continue
                root = _root_cause(plan, job, outcomes)
                if root is not None:
                    finish(job, Outcome("skipped", cause=root))
                elif store.done(job.stage, job.key):
                    finish(job, Outcome("cached"))
                else:
                    attempts[job.id] = attempts.get(job.id, 0) + 1
                    wave.append(job)
            pending = rest
            if wave:  # every job that became ready together: an engine may submit them as one array
                items = [(job, view.start(job)) for job in wave]
                handles = (eng.submit_many(items) if hasattr(eng, "submit_many")
                           else [eng.submit(job, progress) for job, progress in items])
                running.update(zip(handles, wave))
                wave = []
            for h in eng.wait(list(running)):
                job = running.pop(h)
                try:
                    out = eng.result(h)
                except Exception as exc:  # noqa: BLE001 - the worker died: no Outcome came back
                    from ..jobs.runner import cause_of

                    if attempts[job.id] <= retries:
                        view.retry(job, cause_of(exc))
                        pending.insert(0, job)
                        continue
                    out = Outcome("failed", cause=f"worker crashed {attempts[job.id]} time(s): {cause_of(exc)}")
                out.attempts = attempts[job.id]
                finish(job, out)
    except BaseException:
        eng.cancel()
        raise
    return outcomes


class _View:
    """The run log: one progress bar per running job, a ✓/✗ line per finished one."""

    def __init__(self, prog: Progress, failures: Path):
        self.prog, self.failures, self.tasks = prog, failures, {}

    def start(self, job):
        task = self.tasks[job.id] = self.prog.add_task(escape(job.label), total=None)

        def progress(i: int, n: int) -> None:
            # A worker's last messages can arrive after its result: the bar may be gone by then.
            if self.tasks.get(job.id) == task:
                self.prog.update(task, completed=i, total=n)

        return progress

    def retry(self, job, cause: str) -> None:
        self.prog.console.print(f"[yellow]↻[/] {escape(job.label)}: worker crashed ({escape(cause)}); retrying")
        self._drop(job)

    def _drop(self, job) -> None:
        task = self.tasks.pop(job.id, None)
        if task is not None:
            self.prog.remove_task(task)

    def done(self, job, out: Outcome) -> None:
        self._drop(job)
        if out.status == "ran":
            shown = ", ".join(f"{k} {v}" for k, v in out.info.items())
            rss = f", peak RSS {mib(out.peak_rss)}" if out.peak_rss else ""
            self.prog.console.print(f"[green]✓[/] {escape(job.label)} [dim]({out.seconds:.1f} s{rss}"
                                    f"{'; ' + escape(shown) if shown else ''})[/]")
        elif out.status == "failed":
            safe = job.id.replace("/", "-")
            (self.failures / f"{safe}.txt").write_text(f"{job.label}\n{out.cause}\n\n{out.trace or ''}")
            self.prog.console.print(f"[red]✗[/] {escape(job.label)}: {escape(out.cause or '')}")


def mib(n: int) -> str:
    """Bytes as MiB, or GiB from 10 GiB up."""
    return f"{n / 2**30:.1f} GiB" if n >= 10 * 2**30 else f"{n / 2**20:,.0f} MiB"
