"""The `cotdsl` command line (typer + rich): check, plan, fmt (run/show/report/probe join the
same `app`). Every CotError is printed to stderr and exits 1; users never see a traceback.

To add a command elsewhere: `from cotdsl.cli import app, guard` and decorate with
`@app.command()`; wrap the body in `with guard():` to get the same error handling.
"""
from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from cotdsl.errors import CotError

app = typer.Typer(help="cotdsl: a small language and runner for chain-of-thought distillation studies.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
out = Console(highlight=False)
err = Console(stderr=True, highlight=False)


@contextlib.contextmanager
def guard():
    """CotError -> its rendering on stderr and exit 1; any other exception -> a one-line
    internal-error message (exit 2) instead of a traceback."""
    try:
        yield
    except CotError as e:
        sys.stderr.write(e.render() + "\n")  # not rich: wrapping would misplace the carets
        raise typer.Exit(1)
    except (typer.Exit, typer.Abort, KeyboardInterrupt):
        raise
    except Exception as e:  # a bug in cotdsl, not the user's fault: say so, briefly
        err.print(f"internal error: {type(e).__name__}: {e} (please report this)", markup=False)
        raise typer.Exit(2)


def _load(path: Path, library: bool = False):
    from cotdsl.lang import load
    return load(path, library=library)


def _counted(n: int, what: str) -> str:
    return f"{n} {what}" + ("" if n == 1 else "s")


@app.command()
def check(files: List[Path] = typer.Argument(..., help="spec files (.cot)")):
    """Parse and check spec files; print `ok` or every error of each. Exit 1 on any error. A file
    without an experiment block is checked as a library (declarations for `import`)."""
    failed = 0
    for f in files:
        try:
            with guard():
                exp = _load(f, library=True)
                if not exp.name:  # a library: declarations only, for `import`
                    parts = [_counted(len(exp.data), "data source"), _counted(int(exp.teacher is not None), "teacher"),
                             _counted(len(exp.students), "student"), _counted(len(exp.conditions), "condition")]
                    out.print(f"[green]ok[/green] {f}: library (no experiment block): {', '.join(parts)}",
                              soft_wrap=True)
                    for note in exp.notes:
                        out.print(f"  note: {note}", markup=False, soft_wrap=True)
                    continue
                n = len(exp.conditions) * len(exp.students) * len(exp.data) * len(exp.seeds)
                out.print(f"[green]ok[/green] {f}: experiment {exp.name}, {len(exp.conditions)} conditions, "
                          f"{n} training runs")
                for note in exp.notes:
                    out.print(f"  note: {note}", markup=False, soft_wrap=True)
        except typer.Exit:
            failed += 1
    if failed:
        raise typer.Exit(1)


def _params(cond) -> str:
    return ", ".join(f"{k}={v}" for k, v in cond.params) or "-"


def _segments(cond) -> str:
    from cotdsl import spec

    def show(e) -> str:
        if isinstance(e, spec.Ref):
            return e.name
        if isinstance(e, spec.Lit):
            return repr(e.text)
        args = [show(a) for a in e.args] + [f"{k}: {show(v) if isinstance(v, (spec.Ref, spec.Call)) else v}"
                                            for k, v in e.kwargs if v is not None]
        return f"{e.fn}({', '.join(args)})"

    tasks = [(repr(t.prefix) + ": " if t.prefix else "") + " -> ".join(show(s) for s in t.segments)
             + (f" (weight {t.weight:g})" if len(cond.tasks) > 1 else "") for t in cond.tasks]
    return "\n".join(tasks)


@app.command()
def plan(file: Path = typer.Argument(..., help="a spec file (.cot)"),
         estimate: bool = typer.Option(False, "--estimate", help="also print tokens, FLOPs and device-hours per stage"),
         device: Optional[List[str]] = typer.Option(None, "--device", help="with --estimate: a100 | h100 | cpu (repeatable; default all)"),
         limit: Optional[int] = typer.Option(None, "--limit", help="with --estimate: as `run --limit N`"),
         limit_test: Optional[int] = typer.Option(None, "--limit-test", help="with --estimate: as `run --limit-test N`")):
    """Show the resolved grid: conditions x students x data x seeds, with counts; with --estimate,
    what it costs (jobs, tokens, FLOPs, GPU/CPU-hours per stage) without loading models or data."""
    with guard():
        given = [f for f, v in (("--device", device), ("--limit", limit), ("--limit-test", limit_test)) if v]
        if given and not estimate:
            raise CotError(f"{given[0]} needs --estimate")
        if estimate:  # an unknown device fails before the spec is even read
            from cotdsl import estimate as est_mod
            names = [d for name in (device or list(est_mod.DEVICES)) for d in name.split(",") if d.strip()]
            devs = list(dict.fromkeys(est_mod.device(d) for d in names))
        exp = _load(file)
        t = Table(title=escape(f"experiment {exp.name}"))
        for col in ("condition", "family", "params", "target", "eval"):
            t.add_column(col)
        for c in exp.conditions:
            t.add_row(*(escape(x) for x in (c.name, c.family, _params(c), _segments(c), c.eval_by)))
        out.print(t)
        out.print(f"students: {', '.join(f'{s.name} ({s.kind})' for s in exp.students)}", markup=False)
        out.print(f"data:     {', '.join(f'{d.name} ({d.kind})' for d in exp.data)}", markup=False)
        out.print(f"teacher:  {exp.teacher.name} ({exp.teacher.kind})", markup=False)
        out.print(f"seeds:    {', '.join(map(str, exp.seeds))}", markup=False)
        n = len(exp.conditions) * len(exp.students) * len(exp.data) * len(exp.seeds)
        out.print(f"{len(exp.conditions)} conditions x {len(exp.students)} students x {len(exp.data)} data "
                  f"x {len(exp.seeds)} seeds = [bold]{n}[/bold] training runs")
        for note in exp.notes:
            out.print(f"note: {note}", markup=False, soft_wrap=True)
        if estimate:
            est = est_mod.estimate(exp, limit=limit, limit_test=limit_test)
            out.print(est_mod.table(est, devs))
            for line in est_mod.summary(est, devs):
                out.print(line, markup=False, soft_wrap=True)


@app.command()
def fmt(files: List[Path] = typer.Argument(..., help="spec files (.cot)"),
        check_only: bool = typer.Option(False, "--check", help="exit 1 if a file is not formatted"),
        write: bool = typer.Option(False, "--write", "-w", help="rewrite the files in place")):
    """Print specs in canonical form (or --write them back, or --check them)."""
    from cotdsl.lang.fmt import format_source
    from cotdsl.lang.parse import read_source
    bad = 0
    with guard():
        for f in files:
            text = read_source(f)
            new = format_source(text, str(f))
            if check_only:
                if new != text:
                    err.print(f"would reformat {f}", markup=False)
                    bad += 1
            elif write:
                if new != text:
                    f.write_text(new, encoding="utf-8")
                    out.print(f"formatted {f}", markup=False)
            else:
                sys.stdout.write(new)
    if bad:
        raise typer.Exit(1)


@app.command()
def lsp():
    """Run the language server for .cot files over stdin/stdout (for editors: diagnostics, hover,
    completion, go to definition; docs/language.md, "Editor support")."""
    with guard():
        try:
            from cotdsl.lsp.server import serve
        except ImportError as e:
            raise CotError(f"`cotdsl lsp` needs {e.name or 'pygls'}: pip install 'cotdsl[lsp]'")
    serve()


@app.command()
def run(file: Path = typer.Argument(..., help="a spec file (.cot)"),
        limit: Optional[int] = typer.Option(None, "--limit", help="use only the first N train examples (and test, unless --limit-test)"),
        limit_test: Optional[int] = typer.Option(None, "--limit-test", help="use only the first N test examples"),
        only: Optional[List[str]] = typer.Option(None, "--only", help="filter: target=a,b | student=x | seed=0 | data=d"),
        dry_run: bool = typer.Option(False, "--dry-run", help="show the plan and what is cached; run nothing"),
        out_dir: Path = typer.Option(Path("runs"), "--out", help="folder for run results"),
        cache: Optional[Path] = typer.Option(None, "--cache", help="job store (default .cotdsl-cache or $COTDSL_JOBS)"),
        executor: Optional[str] = typer.Option(None, "--executor", help="local | ray | slurm (default local)"),
        workers: Optional[int] = typer.Option(None, "--workers", help="local: worker processes (default 1)"),
        retries: Optional[int] = typer.Option(None, "--retries", help="re-runs of a job whose worker crashed (default 1)"),
        address: Optional[str] = typer.Option(None, "--address", help="ray: address of a running cluster"),
        partition: Optional[str] = typer.Option(None, "--partition", help="slurm: partition"),
        time_min: Optional[int] = typer.Option(None, "--time", help="slurm: minutes per job (default 240)"),
        gpus: Optional[int] = typer.Option(None, "--gpus", help="slurm: GPUs per training job"),
        account: Optional[str] = typer.Option(None, "--account", help="slurm: account"),
        constraint: Optional[str] = typer.Option(None, "--constraint", help="slurm: node constraint"),
        sbatch: Optional[List[str]] = typer.Option(None, "--sbatch", help="slurm: extra sbatch flag (repeatable)"),
        executor_config: Optional[Path] = typer.Option(None, "--executor-config", help="TOML file with these settings"),
        detach: bool = typer.Option(False, "--detach", help="slurm: submit everything with dependencies and exit"),
        strict: bool = typer.Option(False, "--strict", help="exit 3 when an `expect` statement is contradicted"),
        log: Optional[List[str]] = typer.Option(None, "--log", help="wandb | tensorboard | mlflow: log the finished run there too (repeatable; docs/tracking.md)")):
    """Run every job of a spec (cached and resumable); print results, layerwise reports and the
    verdicts of its `expect` statements. Exit 0 when all jobs finished (a contradicted expectation
    is a finding), 1 on bad input, 2 when some jobs failed, 3 with --strict when an expectation
    is contradicted, 130 when interrupted."""
    from cotdsl.executors import load_cfg
    from cotdsl.run import run as _run
    from cotdsl.tracking import backends

    with guard():
        cfg = load_cfg(executor_config, kind=executor, workers=workers, retries=retries, address=address,
                       partition=partition, time_min=time_min, gpus=gpus, account=account,
                       constraint=constraint, sbatch=sbatch or None)
        try:
            code = _run(file, out=out_dir, cache=cache, limit=limit, limit_test=limit_test, only=only,
                        dry_run=dry_run, console=out, executor=cfg, detach=detach, strict=strict,
                        log=backends(log))
        except ValueError as e:  # --only syntax
            raise CotError(str(e))
    raise typer.Exit(code)


@app.command()
def status(run_dir: Path = typer.Argument(..., help="a run folder, e.g. runs/quickstart"),
           cache: Optional[Path] = typer.Option(None, "--cache", help="job store (default .cotdsl-cache or $COTDSL_JOBS)")):
    """Progress of a run's jobs: done / running / waiting / failed per stage (Slurm-detached runs too)."""
    from cotdsl.run import status as _status

    with guard():
        raise typer.Exit(_status(run_dir, cache=cache, console=out))


@app.command()
def report(run_dir: Path = typer.Argument(..., help="a run folder, e.g. runs/quickstart"),
           png: bool = typer.Option(True, "--png/--no-png", help="write PNG figures into RUN_DIR/figures"),
           strict: bool = typer.Option(False, "--strict", help="exit 3 when an `expect` statement is contradicted"),
           fmt: str = typer.Option("terminal", "--format", help="terminal | latex | markdown | csv: the results table alone for a paper"),
           output: Optional[Path] = typer.Option(None, "--output", "-o", help="with --format: write the table to FILE, not stdout"),
           log: Optional[List[str]] = typer.Option(None, "--log", help="wandb | tensorboard | mlflow: log this run folder there (repeatable; docs/tracking.md)")):
    """Print a finished run's results table, layerwise reports and expectations again, and write
    its figures and report.html. With --format latex|markdown|csv: only the results table (mean ±
    std over seeds, Δ vs the baseline with its paired 95% CI, best bold), to stdout or --output."""
    from cotdsl.run import report as _report
    from cotdsl.tracking import backends

    with guard():
        trackers = backends(log)
        from cotdsl.tables import check_format, export
        if check_format(fmt) == "terminal":
            if output is not None:
                raise CotError("--output needs --format latex, markdown or csv")
            raise typer.Exit(_report(run_dir, console=out, png=png, strict=strict, log=trackers))
        if trackers:
            raise CotError("--log goes with the terminal report (without --format)")
        text = export(run_dir, fmt)
        if output is None:
            sys.stdout.write(text)
        else:
            try:
                output.write_text(text, encoding="utf-8")
            except OSError as e:
                raise CotError(f"--output: cannot write {output}: {e.strerror or e}")
            err.print(f"wrote {output}", markup=False)


@app.command()
def compare(run_a: Path = typer.Argument(..., help="a run folder (A)"),
            run_b: Path = typer.Argument(..., help="another run folder (B)")):
    """Two finished runs' test accuracy per matching condition and seed, and Δ = B − A: paired
    by example id with a bootstrap 95% CI where both evaluated the same examples, unpaired (said
    so) where they share none."""
    from cotdsl.compare import print_compare

    with guard():
        raise typer.Exit(print_compare(run_a, run_b, console=out))


@app.command()
def show(file: Path = typer.Argument(..., help="a spec file (.cot)"),
         target: str = typer.Option(..., "--target", "-t", help="target (or sweep family) to render"),
         n: int = typer.Option(3, "-n", help="how many training examples"),
         seed: Optional[int] = typer.Option(None, "--seed", help="render seed (default: the spec's first)")):
    """Render training sequences of a target: tokens, with supervised spans coloured."""
    from cotdsl.run import show as _show

    with guard():
        raise typer.Exit(_show(file, target=target, n=n, seed=seed, console=out))


@app.command()
def probe(run_dir: Optional[Path] = typer.Argument(None, help="a run folder whose spec had a probe section"),
          checkpoint: Optional[Path] = typer.Option(None, "--checkpoint", help="any HF checkpoint folder"),
          data: Optional[Path] = typer.Option(None, "--data", help="jsonl/csv/parquet examples (with --checkpoint)"),
          target: str = typer.Option("label", "--target", help='how the checkpoint was trained, e.g. "label -> rationale"'),
          lens: str = typer.Option("logit", "--lens", help="logit, tuned or logit,tuned"),
          n: int = typer.Option(64, "-n", help="examples to probe"),
          quantity: str = typer.Option("choice", "--quantity",
                                       help="choice: P(gold) renormalised over the choices; full: full vocabulary"),
          png: bool = typer.Option(True, "--png/--no-png"),
          dla: bool = typer.Option(False, "--dla", help="a run's direct logit attribution report instead"),
          patch: bool = typer.Option(False, "--patch", help="a run's activation patching report instead"),
          attention: bool = typer.Option(False, "--attention", help="a run's attention-to-rationale report instead")):
    """Layer-by-layer confidence in the label (logit / tuned lens) for a run or a checkpoint; with
    --dla / --patch / --attention, a run's mechanism reports (probe { attribute / patch / attention })."""
    from cotdsl.run import probe as _probe

    with guard():
        lenses = tuple(x.strip() for x in lens.split(",") if x.strip())
        bad = [x for x in lenses if x not in ("logit", "tuned")]
        if bad:
            raise CotError(f"--lens: unknown lens {bad[0]!r} (logit, tuned)")
        if quantity not in ("choice", "full"):
            raise CotError(f"--quantity: unknown quantity {quantity!r} (choice, full)")
        mech = tuple(k for k, on in (("dla", dla), ("patch", patch), ("attention", attention)) if on)
        raise typer.Exit(_probe(run_dir, checkpoint=checkpoint, data=data, target=target, lenses=lenses,
                                n=n, console=out, png=png, quantity=quantity, mech=mech))


cache_app = typer.Typer(help="The job store: what it holds (ls); removing what no spec uses (gc).",
                        no_args_is_help=True)
app.add_typer(cache_app, name="cache")
_CACHE = "job store (default .cotdsl-cache or $COTDSL_JOBS)"


@cache_app.command("ls")
def cache_ls(cache: Optional[Path] = typer.Option(None, "--cache", help=_CACHE)):
    """Entries per stage (finished, unfinished, running now) and their size on disk."""
    from cotdsl.cache_cli import ls

    with guard():
        raise typer.Exit(ls(cache, console=out))


@cache_app.command("gc")
def cache_gc(specs: List[Path] = typer.Argument(..., help="specs (.cot) or run folders whose jobs to keep"),
             dry_run: bool = typer.Option(False, "--dry-run", help="list what would be removed; remove nothing"),
             cache: Optional[Path] = typer.Option(None, "--cache", help=_CACHE),
             limit: Optional[int] = typer.Option(None, "--limit", help="plan the specs as `run --limit N` did"),
             limit_test: Optional[int] = typer.Option(None, "--limit-test", help="as `run --limit-test N`")):
    """Remove every store entry that none of the given specs' full plans (every condition, student,
    data source and seed) or run folders uses, and print what goes and the bytes freed. Entries of
    running jobs stay; nothing is removed while a job none of them plans is running."""
    from cotdsl.cache_cli import gc

    with guard():
        raise typer.Exit(gc(cache, specs, console=out, dry_run=dry_run, limit=limit, limit_test=limit_test))


def main() -> None:  # pragma: no cover - `python -m cotdsl.cli`
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
