"""`cotdsl run`, `report`, `show` and `probe`: the commands that execute things.

The CLI stays a thin typer layer; these functions take plain arguments and return an exit code
(0 all good, 1 bad input, 2 some jobs failed, 3 an expectation contradicted under `--strict`), so
they are tested without a subprocess.
"""
from __future__ import annotations

import contextlib
import os
import signal
import threading
from pathlib import Path

from rich.console import Console
from rich.table import Table

from .cache import Store
from .errors import CotError, Diagnostic, did_you_mean

EXIT_OK, EXIT_USER, EXIT_JOBS = 0, 1, 2
EXIT_CONTRADICTED = 3  # `--strict`: an `expect` statement is contradicted by the results


def quiet_libraries() -> None:
    """Our progress bars replace the hub's and transformers' per-file ones. Environment only:
    importing transformers here would cost a fully cached run a second (the job runner mutes
    transformers' logger in the process that actually loads a model)."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


EXIT_INTERRUPTED = 130


@contextlib.contextmanager
def stop_on_signals():
    """SIGINT and SIGTERM stop the run at once as a KeyboardInterrupt: the job in flight drops
    its temp dir and lock, finished jobs stay published. Installed explicitly because a shell
    starts background jobs with SIGINT *ignored*, which Python would otherwise inherit."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum, frame):
        raise KeyboardInterrupt(signal.Signals(signum).name)

    saved = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in saved.items():
            signal.signal(s, h)


def default_cache() -> Path:
    """Job store shared by every spec run from this folder (so jobs are reused across specs)."""
    return Path(os.environ.get("COTDSL_JOBS", ".cotdsl-cache"))


def parse_only(items: list[str] | None) -> dict[str, list[str]]:
    """`--only target=after,none --only seed=0` -> {"target": ["after", "none"], "seed": ["0"]}."""
    out: dict[str, list[str]] = {}
    for item in items or []:
        key, sep, vals = item.partition("=")
        if not sep or key not in ("target", "student", "seed", "data") or not vals:
            raise ValueError(f"--only takes KEY=V1,V2 with KEY one of target, student, seed, data; got {item!r}")
        out.setdefault(key, []).extend(v.strip() for v in vals.split(",") if v.strip())
    return out


def check_only(exp, only: dict[str, list[str]]) -> None:
    """Every name in `--only` must exist in the experiment: a typo selects nothing, silently."""
    from .errors import did_you_mean

    known = {"target": [c.name for c in exp.conditions] + [c.family for c in exp.conditions],
             "student": [s.name for s in exp.students], "data": [d.name for d in exp.data],
             "seed": [str(s) for s in exp.seeds]}
    diags = [Diagnostic(None, f"--only {key}={val}: no {key} named {val!r} in {exp.path}",
                        expected=sorted(set(known[key]))[:12], hint=did_you_mean(val, known[key]))
             for key, vals in only.items() for val in vals if val not in known[key]]
    if diags:
        raise CotError(diags)


def plan_table(plan) -> Table:
    from collections import Counter

    t = Table(title=f"{plan.experiment.name}: {len(plan.jobs)} jobs", title_justify="left")
    t.add_column("stage")
    t.add_column("jobs", justify="right")
    t.add_column("examples")
    counts = Counter(j.stage for j in plan.jobs)
    for stage, n in counts.items():
        eg = next(j.label for j in plan.jobs if j.stage == stage)
        t.add_row(stage, str(n), eg)
    return t


def run(path: Path, *, out: Path = Path("runs"), cache: Path | None = None, limit: int | None = None,
        limit_test: int | None = None, only: list[str] | None = None, dry_run: bool = False,
        console: Console | None = None, executor=None, detach: bool = False, strict: bool = False,
        log: tuple[str, ...] = ()) -> int:
    """`executor`: an `executors.ExecutorCfg` (default: local, one process). `detach` (Slurm
    only): submit every job with `afterok` dependencies and return; `cotdsl status` follows them
    and a later `cotdsl run` collects the results. A contradicted `expect` is a finding (exit 0)
    unless `strict` (EXIT_CONTRADICTED); failed jobs decide the exit code first. `log`: trackers
    (cotdsl.tracking) the finished run folder is sent to; their libraries are checked first."""
    quiet_libraries()
    from .tracking import log_run, require

    require(log)
    from . import load
    from .executors import ExecutorCfg, execute
    from .plan import make_plan
    from .figures import figures
    from .expect import print_expectations, write as write_expectations
    from .mech_report import print_mech
    from .report import collect, print_ig, print_lens, print_summary, save_run_header
    from . import html_report

    console = console or Console()
    exp = load(path)
    selected = parse_only(only)
    check_only(exp, selected)
    plan = make_plan(exp, limit=limit, limit_test=limit_test, only=selected)
    store = Store(cache or default_cache())
    done = sum(store.done(j.stage, j.key) for j in plan.jobs)
    console.print(plan_table(plan))
    console.print(f"[dim]{done} of {len(plan.jobs)} jobs already cached in {store.root}[/]")
    if dry_run:
        return EXIT_OK
    run_dir = out / exp.name
    save_run_header(plan, run_dir, Path(path).read_text(encoding="utf-8"))
    if detach:
        return _detach(plan, store, run_dir, executor, console)
    try:
        with stop_on_signals():
            outcomes = execute(plan, store, run_dir=run_dir, console=console, cfg=executor or ExecutorCfg())
    except KeyboardInterrupt as e:
        done = sum(store.done(j.stage, j.key) for j in plan.jobs)
        console.print(f"[yellow]interrupted ({e or 'SIGINT'}): {done} of {len(plan.jobs)} jobs are done and "
                      f"cached in {store.root}; run again to continue[/]")
        return EXIT_INTERRUPTED
    collect(plan, store, outcomes, run_dir)
    write_expectations(run_dir, exp)
    print_summary(run_dir, console)
    print_ig(run_dir, console)
    written = print_lens(run_dir, console) + print_mech(run_dir, console) + figures(run_dir)
    for p in written:
        console.print(f"[dim]figure: {p}[/]")
    print_expectations(run_dir, console)
    console.print(f"[dim]report: {html_report.write(run_dir)}[/]")  # one page to share: results, figures, spec
    log_run(run_dir, log, console)  # after everything is cached and written: a tracker's error loses nothing
    failed = [o for o in outcomes.values() if o.status == "failed"]
    skipped = [o for o in outcomes.values() if o.status == "skipped"]
    if failed:
        console.print(f"[red]{len(failed)} job(s) failed, {len(skipped)} skipped; causes in {run_dir / 'failures'}[/]")
        # exit 1 when every failure is the input's fault (fix the data/spec), 2 when a job crashed
        return EXIT_USER if all(o.user_error for o in failed) else EXIT_JOBS
    return _strict_exit(run_dir, strict, console)


def _strict_exit(run_dir: Path, strict: bool, console: Console) -> int:
    """EXIT_CONTRADICTED when `strict` and an expectation is contradicted, else EXIT_OK."""
    from .expect import contradicted

    n = contradicted(run_dir) if strict else 0
    if n:
        console.print(f"[red]--strict: {n} expectation(s) contradicted[/]")
        return EXIT_CONTRADICTED
    return EXIT_OK


def _detach(plan, store: Store, run_dir: Path, executor, console: Console) -> int:
    from .cache import atomic_write_json
    from .executors.on_slurm import submit_detached

    if executor is None or executor.kind != "slurm":
        raise CotError("--detach needs --executor slurm (Slurm holds the dependencies while nobody waits)")
    ids = submit_detached(plan, store, executor)
    atomic_write_json(run_dir / "detached.json", {"store": str(store.root.resolve()), "slurm": ids,
                                                  "folder": str(store.root.resolve() / "_slurm" / "%j")})
    console.print(f"submitted {len(ids)} Slurm jobs ({len(plan.jobs) - len(ids)} already done); "
                  f"follow them with `cotdsl status {run_dir}`, collect with the same `cotdsl run` when done")
    return EXIT_OK


def status(run_dir: Path, *, cache: Path | None = None, console: Console | None = None) -> int:
    """Progress of a run folder's jobs from the store (and Slurm, for a detached run): done,
    running, waiting or failed per stage, and the cause of each failure."""
    import json
    from collections import Counter

    from rich.markup import escape

    from .executors import mib

    console = console or Console()
    if not (run_dir / "plan.json").exists():
        raise CotError(f"{run_dir} is not a cotdsl run folder (no plan.json)")
    jobs = json.loads((run_dir / "plan.json").read_text())
    det = json.loads((run_dir / "detached.json").read_text()) if (run_dir / "detached.json").exists() else None
    store = Store(Path(det["store"]) if det else (cache or default_cache()))
    states = {}
    if det:
        from .executors.on_slurm import slurm_states

        states = slurm_states(det["folder"], {j: s for j, s in det["slurm"].items() if not store.done(*j.split("/", 1))})
    rows, problems, peak = Counter(), [], {}
    for j in jobs:
        stage = j["id"].split("/", 1)[0]
        if store.done(*j["id"].split("/", 1)):
            what = "done"
            rss = _peak_rss(store, j["id"])
            if rss:
                peak[stage] = max(peak.get(stage, 0), rss)
        elif j["id"] in states:
            st, res = states[j["id"]]
            if res is not None and res.status in ("failed", "skipped"):
                what = res.status
                problems.append((j["label"], res.cause))
            elif st in ("FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL") or st.startswith("CANCELLED"):
                what = "failed"
                problems.append((j["label"], f"Slurm job {det['slurm'][j['id']]} ended {st}"))
            else:
                what = {"RUNNING": "running", "PENDING": "waiting"}.get(st, st.lower())
        else:
            what = "not done"
        rows[(stage, what)] += 1
    t = Table(title=f"{run_dir.name}: {len(jobs)} jobs", title_justify="left")
    order = ["done", "running", "waiting", "not done", "skipped", "failed"]
    seen = {w for _, w in rows}
    cols = [c for c in order if c in seen] + sorted(seen - set(order))
    t.add_column("stage")
    for c in cols:
        t.add_column(c, justify="right")
    if peak:
        t.add_column("peak RSS (largest job)", justify="right")
    for stage in dict.fromkeys(j["id"].split("/", 1)[0] for j in jobs):
        t.add_row(stage, *[str(rows.get((stage, c), 0) or "") for c in cols],
                  *([mib(peak[stage]) if stage in peak else ""] if peak else []))
    console.print(t)
    for label, cause in problems:
        console.print(f"[red]✗[/] {escape(label)}: {escape(str(cause))}", soft_wrap=True)
    return EXIT_OK


def _peak_rss(store: Store, job_id: str) -> int | None:
    """The peak RSS a done job recorded in its job.json (None for jobs published before it was)."""
    import json

    try:
        return json.loads((store.path(*job_id.split("/", 1)) / "job.json").read_text()).get("peak_rss_bytes")
    except (OSError, ValueError):
        return None


def report(run_dir: Path, *, console: Console | None = None, png: bool = True, strict: bool = False,
           log: tuple[str, ...] = ()) -> int:
    from .expect import print_expectations
    from .figures import figures
    from .mech_report import print_mech
    from .report import print_ig, print_lens, print_summary
    from . import html_report

    console = console or Console()
    if not (run_dir / "summary.parquet").exists():
        raise CotError(f"{run_dir} is not a cotdsl run folder (no summary.parquet)")
    print_summary(run_dir, console)
    print_ig(run_dir, console)
    written = print_lens(run_dir, console, png=png) + print_mech(run_dir, console, png=png) \
        + (figures(run_dir) if png else [])
    for p in written:
        console.print(f"[dim]figure: {p}[/]")
    print_expectations(run_dir, console)
    console.print(f"[dim]report: {html_report.write(run_dir)}[/]")  # one page to share: results, figures, spec
    if log:
        from .tracking import log_run

        log_run(run_dir, log, console)
    return _strict_exit(run_dir, strict, console)


def show(path: Path, *, target: str, n: int = 3, seed: int | None = None, console: Console | None = None) -> int:
    """Render the first n training examples of a target with supervised spans coloured."""
    quiet_libraries()
    from . import load
    from .data import load_source
    from .models import load_student
    from .jobs.teacher import rationalize
    from .models import cache_dir
    from .render import Split, render
    from .schema import format_prompt
    from .show import show_rendered
    from rich.markup import escape

    console = console or Console()
    exp = load(path)
    conds = [c for c in exp.conditions if c.name == target or c.family == target]
    if not conds:
        names = [c.name for c in exp.conditions]
        raise CotError([Diagnostic(None, f"no target named {target!r} in {path}", hint=did_you_mean(target, names))])
    train, _ = load_source(exp.data[0])
    # the training split as the render job sees it (swap(...) pairs examples across it): cheap for
    # gold and file teachers; an hf teacher samples only the n shown, so swap pairs within those
    pool = rationalize(exp.teacher, train if exp.teacher.kind != "hf" else train[:n],
                       cache_dir=cache_dir() / "rationales")
    pool = [e for e in pool if e.rationale]
    corpus = [format_prompt(e) + " " + e.rationale for e in pool]
    _, tok = load_student(exp.students[0], corpus=corpus)
    s = exp.seeds[0] if seed is None else seed
    split = Split(pool)
    for cond in conds:
        console.rule(escape(f"{cond.name}  (eval by {cond.eval_by}, seed {s})"))
        for e in pool[:n]:  # choices' mentions in the rationale marked: answer leakage
            show_rendered(console, render(e, cond, tok, seed=s, max_len=exp.train.max_len, split=split), tok,
                          examples=[e])
    return EXIT_OK


def probe(target_dir: Path | None = None, *, checkpoint: Path | None = None, data: Path | None = None,
          target: str = "label", lenses: tuple[str, ...] = ("logit",), n: int = 64, seed: int = 0,
          tuned_steps: int = 20, console: Console | None = None, png: bool = True,
          quantity: str = "choice", mech: tuple[str, ...] = ()) -> int:
    """The layerwise report of a finished run (`target_dir`), or of any checkpoint on a data file.

    For a checkpoint, `target` is a target template in the language (e.g. "label -> rationale")
    saying how the student was trained, so the label is probed where that student emits it.
    `quantity`: "choice" (P(gold) renormalised over the choices) or "full" (full vocabulary).
    `mech`: some of "dla", "patch", "attention": a run's mechanism reports instead of the lens."""
    quiet_libraries()
    import polars as pl

    from .report import print_lens

    console = console or Console()
    if mech:
        from .mech_report import FILES, print_mech

        if checkpoint is not None or target_dir is None:
            raise CotError("--dla / --patch / --attention report a run folder (give RUN_DIR, not --checkpoint)")
        missing = [k for k in mech if not (target_dir / FILES[k]).exists()]
        if missing:
            entry = {"dla": "attribute: dla", "patch": "patch: a -> b", "attention": "attention: rationale"}
            raise CotError(f"{target_dir}: no {FILES[missing[0]]} here; its spec's probe section needs "
                           f"`{entry[missing[0]]}`")
        for p in print_mech(target_dir, console, png=png, only=mech):
            console.print(f"[dim]figure: {p}[/]")
        return EXIT_OK
    if checkpoint is None:
        if target_dir is None or not (target_dir / "lens.parquet").exists():
            raise CotError(f"{target_dir}: no layerwise results here; give a run folder whose spec has a "
                           "`probe { lens: logit }` section, or --checkpoint DIR --data FILE")
        print_lens(target_dir, console, png=png, quantity=quantity)
        return EXIT_OK
    if data is None:
        raise CotError("--checkpoint needs --data FILE (jsonl/csv/parquet with question, choices, label)")
    from . import check_source
    from .cache import stable_hash
    from .data import load_source
    from interp.lens import pad_right

    from .jobs.stages import lens_frame
    from .models import cache_dir, load_student

    lens_list = ", ".join(lenses)
    text = (f'experiment probe {{\n  data d = file(train: {str(data.resolve())!r}, test: {str(data.resolve())!r})\n'
            f'  teacher gold = gold\n  student s = hf({str(checkpoint.resolve())!r})\n'
            f'  target t = {target}\n  probe {{ lens: {lens_list} }}\n}}\n').replace("'", '"')
    exp = check_source(text, "<probe>")
    cond = exp.conditions[0]
    _, test = load_source(exp.data[0])
    model, tok = load_student(exp.students[0])
    test = test[:n]

    def tuned():
        from interp.tuned import cached_tuned_lens

        from .render import render

        seqs = [render(e, cond, tok, seed=seed)[0].input_ids for e in test if e.rationale or cond.eval_by == "rank"]
        pad = tok.pad_token_id or 0
        batches = [pad_right(seqs[i:i + 8], pad) for i in range(0, len(seqs), 8)]
        where = cache_dir() / "probe" / stable_hash([str(checkpoint.resolve()), str(data.resolve())])
        return cached_tuned_lens(model, where, batches, steps=tuned_steps, seed=seed)

    df = lens_frame(model, tok, test, cond, seed, lenses, tuned=tuned)
    out = Path("runs") / f"probe-{checkpoint.name}"
    out.mkdir(parents=True, exist_ok=True)
    df = df.with_columns(pl.lit(target).alias("condition"), pl.lit(checkpoint.name).alias("student"),
                         pl.lit(data.name).alias("data"), pl.lit(seed).alias("seed"),
                         pl.col("ex_id").replace_strict({e.id: len(e.choices) for e in test}).alias("n_choices"))
    df.write_parquet(out / "lens.parquet")
    for p in print_lens(out, console, png=png, quantity=quantity):
        console.print(f"[dim]figure: {p}[/]")
    return EXIT_OK
