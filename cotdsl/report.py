"""Results: gather job outputs into `runs/<experiment>/`, print the tables, draw the figures.

Files written (all polars-readable parquet):
  results.parquet  one row per eval job × test example
  summary.parquet  one row per condition × student × data: accuracy mean ± std over seeds,
                   Δ vs the no-rationale baseline with a paired bootstrap 95% CI, failures
  lens.parquet     one row per probe job × lens × example × layer (when the spec has a probe)
`cotdsl report RUN_DIR` reads only these files, so it works on a copied run folder.
"""
from __future__ import annotations

import json
from pathlib import Path

import polars as pl
from rich.console import Console
from rich.table import Table

from .cache import Store, atomic_write_json, atomic_write_parquet
from .mech_report import CONTEXT_TAGS
from .plan import Plan

KEYS = ["condition", "student", "data"]


def collect(plan: Plan, store: Store, outcomes: dict, run_dir: Path) -> None:
    """Write results/summary/lens parquet files for every finished eval/probe job of the plan."""
    exp = plan.experiment
    frames, lens_frames = [], []
    for job in plan.jobs:
        if job.stage not in ("eval", "probe") or not store.done(job.stage, job.key):
            continue
        fname = "predictions.parquet" if job.stage == "eval" else "lens.parquet"
        df = pl.read_parquet(store.path(job.stage, job.key) / fname)
        df = df.with_columns(*[pl.lit(v).alias(k) for k, v in job.columns(exp.name).items()])
        (frames if job.stage == "eval" else lens_frames).append(df)
    results = pl.concat(frames, how="diagonal_relaxed") if frames else pl.DataFrame()
    atomic_write_parquet(run_dir / "results.parquet", results)
    (run_dir / "lens.parquet").unlink(missing_ok=True)  # never a previous run's layers
    if lens_frames:
        atomic_write_parquet(run_dir / "lens.parquet", pl.concat(lens_frames, how="diagonal_relaxed"))
    curves = []  # training loss per optimizer step, for figures and the paper
    for job in plan.by_stage("train"):
        if store.done("train", job.key):
            losses = json.loads((store.path("train", job.key) / "train.json").read_text()).get("losses") or []
            cols = job.columns(exp.name)
            curves += [{**cols, "step": i + 1, "loss": float(x)} for i, x in enumerate(losses)]
    atomic_write_parquet(run_dir / "train_curves.parquet", pl.DataFrame(curves) if curves else pl.DataFrame())
    coverage = []  # how many test examples each probe could read the label of
    for job in plan.by_stage("probe"):
        if store.done("probe", job.key):
            info = json.loads((store.path("probe", job.key) / "job.json").read_text())["info"]
            coverage.append({**job.columns(exp.name), "probed": info.get("examples"), "of": info.get("of"),
                             **{k: info.get(k) for k in ("context", "score", "unparsed", "no_rationale",
                                                         "names_choice", "tied")}})
    atomic_write_json(run_dir / "probe_coverage.json", coverage)
    failed = {}  # (condition, student, data) -> (evaluations that did not finish, first cause)
    for job in plan.jobs:
        if job.stage == "eval" and outcomes.get(job.id) and outcomes[job.id].status in ("failed", "skipped"):
            k = tuple(job.columns(exp.name)[c] for c in KEYS)
            n, cause = failed.get(k, (0, outcomes[job.id].cause))
            failed[k] = (n + 1, cause)
    ig = [j for j in plan.by_stage("rank") if store.done("rank", j.key)]
    if ig:  # key-token attributions: keep the first scorer's figure and numbers with the run
        import shutil

        src = store.path("rank", ig[0].key)
        (run_dir / "figures").mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src / "ig_example.png", run_dir / "figures" / "ig_example.png")
        shutil.copyfile(src / "ig.json", run_dir / "ig.json")
        from .figures import save_highlights  # what ig_highlights.png and the IG/highlights overlap compare

        save_highlights(store.path(*ig[0].teacher_job.split("/", 1)) / "train.jsonl", run_dir)
    baseline = next((c.name for c in exp.conditions if c.is_baseline()), None)
    atomic_write_parquet(run_dir / "summary.parquet", summarize(results, baseline, failed, exp))
    save_teacher(plan, store, run_dir)
    from .mech_report import collect as collect_mech  # dla / attention / patch jobs (probe section)

    collect_mech(plan, store, run_dir)


# One schema for summary.parquet, whatever finished: a run whose every job failed still gets a
# readable table (rows with acc null and the cause), never a missing column.
SUMMARY_SCHEMA = {"condition": pl.Utf8, "student": pl.Utf8, "data": pl.Utf8, "family": pl.Utf8,
                  "params": pl.Utf8, "seeds": pl.Int64, "n": pl.Int64, "acc": pl.Float64,
                  "acc_std": pl.Float64, "acc_norm": pl.Float64, "unparseable": pl.Int64,
                  "failed": pl.Int64, "cause": pl.Utf8, "delta": pl.Float64, "delta_lo": pl.Float64,
                  "delta_hi": pl.Float64, "acc_lo": pl.Float64, "acc_hi": pl.Float64, "chance": pl.Float64,
                  "baseline": pl.Boolean, "reference": pl.Utf8}


def summarize(results: pl.DataFrame, baseline: str | None, failed: dict, exp) -> pl.DataFrame:
    """One row per condition x student x data. `failed` maps such a key to (evaluations that did
    not finish, the first one's cause). acc_std is null with a single seed (undefined)."""
    from .stats import bootstrap_mean, paired_bootstrap

    rows = []
    from .figures import unperturbed

    order = {c.name: i for i, c in enumerate(exp.conditions)}
    refs = {c.name: unperturbed(c, exp.conditions) for c in exp.conditions if c.params}
    failed = dict(failed)
    groups = results.partition_by(KEYS, as_dict=True) if len(results) else {}
    for key, g in groups.items():
        per_seed = g.group_by("seed").agg(pl.col("correct").mean().alias("acc"),
                                          pl.col("correct_norm").mean().alias("acc_norm"))
        n_failed, cause = failed.pop(key, (0, None))
        per_ex = g.group_by("ex_id").agg(pl.col("correct").mean())["correct"].to_numpy()  # over seeds
        _, acc_lo, acc_hi = bootstrap_mean(per_ex, seed=0)
        chance = float((1 / g["n_choices"]).mean()) if "n_choices" in g.columns and g["n_choices"].null_count() == 0 else None
        row = dict(zip(KEYS, key))
        row.update(family=g["family"][0], params=g["params"][0], seeds=len(per_seed),
                   n=len(g), acc=per_seed["acc"].mean(), acc_std=per_seed["acc"].std(ddof=1) if len(per_seed) > 1 else None,
                   acc_norm=per_seed["acc_norm"].mean(), unparseable=int(g["unparseable"].sum()),
                   failed=n_failed, cause=cause, delta=None, delta_lo=None, delta_hi=None,
                   acc_lo=acc_lo, acc_hi=acc_hi, chance=chance, baseline=key[0] == baseline,
                   reference=refs.get(key[0]))
        base_key = (baseline, key[1], key[2])
        if baseline is not None and key[0] != baseline and base_key in groups:
            b = groups[base_key].select("seed", "ex_id", pl.col("correct").alias("base"))
            pair = g.select("seed", "ex_id", "correct").join(b, on=["seed", "ex_id"])
            if len(pair):
                d, lo, hi = paired_bootstrap(pair["correct"].to_numpy(), pair["base"].to_numpy(), seed=0)
                row.update(delta=float(d), delta_lo=float(lo), delta_hi=float(hi))
        rows.append(row)
    cond = {c.name: c for c in exp.conditions}
    for key, (n, cause) in failed.items():  # conditions none of whose evaluations finished
        c = cond.get(key[0])
        rows.append({**dict(zip(KEYS, key)), "failed": n, "cause": cause,
                     "family": c.family if c else key[0], "params": json.dumps(dict(c.params)) if c else "{}"})
    df = pl.DataFrame(rows, schema=SUMMARY_SCHEMA) if rows else pl.DataFrame(schema=SUMMARY_SCHEMA)
    return df.with_columns(pl.col("condition").replace_strict(order, default=len(order)).alias("_o")) \
             .sort(["_o", "student", "data"]).drop("_o")


def _pct(x) -> str:
    return "–" if x is None else f"{100 * x:.1f}"


def print_summary(run_dir: Path, console: Console) -> None:
    from rich.markup import escape

    print_teacher(run_dir, console)
    summary = pl.read_parquet(run_dir / "summary.parquet") if (run_dir / "summary.parquet").exists() else pl.DataFrame()
    if not len(summary):
        console.print("[yellow]no evaluations in this run[/]")
        return
    summary = pl.concat([pl.DataFrame(schema=SUMMARY_SCHEMA), summary], how="diagonal_relaxed")  # older files
    many = [k for k in ("student", "data") if summary[k].n_unique() > 1]
    done = summary.filter(pl.col("acc").is_not_null())
    sizes = sorted({(r["n"] // max(1, r["seeds"]), r["seeds"]) for r in done.iter_rows(named=True)})
    size = "; ".join(f"{n} test examples × {k} seed{'s' if k > 1 else ''}" for n, k in sizes)
    spread = " (mean ± std over seeds)" if any(k > 1 for _, k in sizes) else ""
    t = Table(title=escape(f"{run_dir.name}: test accuracy %{spread}; {size or 'nothing finished'}"),
              title_justify="left")
    t.add_column("condition", no_wrap=True)
    for k in many:
        t.add_column(k, no_wrap=True)
    for col in ("acc", "norm", "Δ", "95% CI", "unparsed", "failed"):
        t.add_column(col, justify="right", no_wrap=True)
    for r in summary.iter_rows(named=True):
        acc = "–" if r.get("acc") is None else _pct(r["acc"]) + ("" if r.get("acc_std") is None else f" ± {_pct(r['acc_std'])}")
        delta, ci = "", ""
        if r.get("delta") is not None:
            colour = "green" if r["delta_lo"] > 0 else "red" if r["delta_hi"] < 0 else "default"
            delta = f"[{colour}]{100 * r['delta']:+.1f}[/]"
            ci = f"[{100 * r['delta_lo']:+.1f}, {100 * r['delta_hi']:+.1f}]"
        t.add_row(escape(r["condition"]), *[escape(str(r[k])) for k in many], acc, _pct(r.get("acc_norm")),
                  delta, escape(ci), str(r.get("unparseable") or 0),
                  f"[red]{r['failed']}[/]" if r.get("failed") else "0")
    console.print(t)
    for r in summary.filter(pl.col("failed") > 0).iter_rows(named=True):
        console.print(f"[red]{escape(r['condition'])}[/]: {r['failed']} evaluation(s) did not finish: "
                      f"{escape(r.get('cause') or 'see failures/')}")
    console.print("[dim]Δ: accuracy minus the no-rationale baseline (`target none = label`), paired by example; "
                  "95% CI by paired bootstrap. acc_norm: choice log-likelihood ÷ length in characters "
                  "(rank-evaluated targets); unparsed: generated answers naming no choice (counted wrong).[/]")
    print_sweeps(summary, console)


SPARK = "▁▂▃▄▅▆▇█"


def sparkline(values) -> str:
    """One block per value in [0, 1] on a fixed 0-1 scale (a small difference stays small)."""
    return "".join(" " if v is None else SPARK[min(len(SPARK) - 1, max(0, int(v * len(SPARK))))] for v in values)


def print_sweeps(summary: pl.DataFrame, console: Console) -> None:
    """Per single-parameter sweep (per student and data when several): accuracy vs the swept value
    as a small table with a sparkline, the unperturbed target first (at the value 0) when the
    run has it, as figures.sweeps draws it."""
    from rich import box
    from rich.text import Text

    done = summary.filter(pl.col("acc").is_not_null())
    by_name = {(r["condition"], r["student"], r["data"]): r for r in done.iter_rows(named=True)}
    for (fam, stu, data), g in done.group_by(["family", "student", "data"], maintain_order=True):
        params = [json.loads(x) for x in g["params"]]
        if len(g) < 2 or any(len(x) != 1 for x in params) or len({next(iter(x)) for x in params}) != 1:
            continue
        (pname,) = params[0]
        pts = sorted(((x[pname], r) for x, r in zip(params, g.iter_rows(named=True))), key=lambda t: t[0])
        ref = by_name.get((g["reference"][0], stu, data)) if "reference" in g.columns else None
        cols = ([(f"0 ({ref['condition']})", ref)] if ref else []) + [(str(v), r) for v, r in pts]
        where = f" · {stu} · {data}" if summary["student"].n_unique() > 1 or summary["data"].n_unique() > 1 else ""
        title = Text(f"sweep {fam}{where}: test accuracy % vs {pname}  ", style="bold")
        title.append(sparkline([r["acc"] for _, r in cols]), style="cyan")
        title.append("  (blocks: 0–100 %)", style="dim")
        console.print(title)
        t = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False)
        t.add_column(pname, no_wrap=True)
        for name, _ in cols:
            t.add_column(Text(name), justify="right", no_wrap=True)
        t.add_row("acc %", *[_pct(r["acc"]) for _, r in cols])
        t.add_row("95% CI", *["" if r.get("acc_lo") is None else f"{100 * r['acc_lo']:.0f}–{100 * r['acc_hi']:.0f}"
                              for _, r in cols])
        console.print(t)


CONTEXTS = {"label first": "the target's own text before the label (label first: no rationale)",
            "generated": "its own generated rationale (the evaluation's greedy text, up to its answer)",
            "gold": "the GOLD rationale, teacher-forced (probe { context: gold })",
            "prompt": "the prompt only (probe { context: none })"}
def _print_contexts(df: pl.DataFrame, covs: list[dict], console: Console) -> None:
    """Which text each condition's label was read after; gold contexts naming a choice; ties."""
    from rich.markup import escape

    if "context" not in df.columns:
        return
    by_ctx: dict[str, list[str]] = {}
    for cond, ctx in df.select("condition", "context").unique(maintain_order=True).iter_rows():
        by_ctx.setdefault(ctx, []).append(cond)
    console.print("label read after: " + "; ".join(f"{escape(', '.join(dict.fromkeys(cs)))} — {CONTEXTS.get(k, k)}"
                                                   for k, cs in by_ctx.items()))
    gold: dict[str, list[int]] = {}
    for c in covs:
        if c.get("context") == "gold" and c.get("probed"):
            n = gold.setdefault(c["condition"], [0, 0])
            n[0], n[1] = n[0] + (c.get("names_choice") or 0), n[1] + c["probed"]
    for cond, (k, n) in gold.items():
        if k and cond in by_ctx.get("gold", []):
            console.print(f"[yellow]{escape(cond)}[/]: {k} of {n} gold contexts contain a choice's text: its "
                          "P(label) reads the answer off the given rationale, not the student's own reasoning "
                          "(compare with probe { context: generated })")
    if "score" in df.columns and (df["score"] == "first_token").any():
        ex = df.filter(pl.col("score") == "first_token").unique(["condition", "seed", "ex_id"])
        console.print(f"first-token readout (probe {{ score: first_token }}): {int(ex['tied'].sum())} of {len(ex)} "
                      "probed examples have choices sharing a first token; they tie at every layer, so such an "
                      "example never commits (the default score: label reads whole labels)")


def _coverage(covs: list[dict], label) -> dict:
    """{condition label: {probed, of, why}} summed over seeds, from probe_coverage.json rows."""
    out: dict[str, dict] = {}
    for c in covs:
        n = out.setdefault(label(c), {"probed": 0, "of": 0, "unparsed": 0, "no_rationale": 0})
        n["probed"] += c.get("probed") or 0
        n["of"] += c.get("of") or 0
        n["unparsed"] += c.get("unparsed") or 0
        n["no_rationale"] += c.get("no_rationale") or 0
    for n in out.values():
        why = [f"{n.pop('unparsed')} generated no parseable answer", f"{n.pop('no_rationale')} have no gold rationale"]
        n["why"] = "; ".join(w for w in why if not w.startswith("0 "))
    return out


def print_lens(run_dir: Path, console: Console, png: bool = True, quantity: str = "choice") -> list[Path]:
    """Layer-by-layer confidence report (both lenses) and its PNG, from lens.parquet. `quantity`:
    "choice" (P(gold) renormalised over the choices) or "full" (full-vocabulary P(gold))."""
    from rich.markup import escape

    from interp.report import QUANTITIES

    if quantity not in QUANTITIES:
        raise ValueError(f"quantity must be one of {', '.join(QUANTITIES)}")
    path, cov = run_dir / "lens.parquet", run_dir / "probe_coverage.json"
    covs = json.loads(cov.read_text()) if cov.exists() else []
    for c in covs:
        if c["of"] is not None and c["probed"] < c["of"]:
            why = [f"{c['unparsed']} generated no parseable answer" if c.get("unparsed") else "",
                   f"{c['no_rationale']} have no gold rationale" if c.get("no_rationale") else ""]
            why = "; ".join(w for w in why if w) or "a rationale-first target needs the example's rationale"
            console.print(f"[yellow]{escape(c['condition'])} · {escape(c['student'])} · seed {c['seed']}[/]: "
                          f"{c['probed']} of {c['of']} test examples could be probed at the label ({why})")
    if not path.exists():
        return []
    from interp.report import plot_report, render_report

    df = pl.read_parquet(path)
    if not len(df):
        return []
    _print_contexts(df, covs, console)
    # One heatmap row per condition (× student when there are several); seeds are pooled.
    many = df["student"].n_unique() > 1 or df["data"].n_unique() > 1
    base = (lambda c: " · ".join((c["condition"], c["student"], c["data"]))) if many else (lambda c: c["condition"])
    label = pl.concat_str([pl.col("condition"), pl.col("student"), pl.col("data")], separator=" · ") if many \
        else pl.col("condition")
    if "context" in df.columns:  # a teacher-forced gold rationale is named where the numbers are
        label = label + pl.col("context").replace_strict(CONTEXT_TAGS, default="")
    keyed = df.select(*KEYS, label.alias("l")).unique(maintain_order=True)
    tags = {base(r): r["l"] for r in keyed.iter_rows(named=True)}  # base label -> label with its context tag
    coverage = _coverage(covs, lambda c: tags.get(base(c), base(c)))
    results = run_dir / "results.parquet"
    if "n_choices" not in df.columns and results.exists():  # for the chance level 1/number of choices
        res = pl.read_parquet(results)
        if {"data", "ex_id", "n_choices"} <= set(res.columns):
            df = df.join(res.select("data", "ex_id", "n_choices").unique(["data", "ex_id"]), on=["data", "ex_id"],
                         how="left")
    df = df.with_columns(label.alias("condition"), pl.concat_str([pl.col("seed"), pl.col("ex_id")],
                                                                 separator=":").alias("example"))
    prob = QUANTITIES[quantity]
    other = next(q for q in QUANTITIES if q != quantity)
    render_report(df, console=console, prob=prob, coverage=coverage,
                  switch=f"cotdsl probe {run_dir} --quantity {other}")
    if not png:
        return []
    out = run_dir / "figures" / "layerwise_confidence.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    # Redrawn only when the numbers changed: a cached re-run skips matplotlib.
    stamp = out.with_name(".layerwise.inputs")
    digest = f"{prob}:{sorted(coverage.items())}:{df.columns}:{df.shape}:{int(df.hash_rows(seed=0).sum())}"
    if not (out.exists() and stamp.exists() and stamp.read_text() == digest):
        plot_report(df, out, prob=prob, coverage=coverage)
        stamp.write_text(digest)
    return [out]


def print_ig(run_dir: Path, console: Console) -> None:
    """One rationale shaded by Integrated-Gradients attribution, and the completeness figures."""
    path = run_dir / "ig.json"
    if not path.exists():
        return
    from statistics import mean, median
    from types import SimpleNamespace

    from interp.view import print_attribution  # reads the fields only: no torch (interp.attribution imports it)

    from .figures import agreement_line, ig_agreement

    rows = json.loads(path.read_text())
    print_attribution(SimpleNamespace(**rows[0]), console=console, title=f"IG key tokens: {rows[0]['ex_id']}")
    rel = [r["rel_delta"] for r in rows if r.get("rel_delta") is not None]  # interp.attribution.summarize's
    if rel:
        console.print(f"IG completeness over {len(rel)} rationales: |delta| / |f(x) - f(baseline)| median "
                      f"{median(rel):.2f}, mean {mean(rel):.2f}, max {max(rel):.2f} "
                      f"({rows[0]['baseline']} baseline, {rows[0]['steps']} steps); large values mean the "
                      "attributions do not add up to the change in log-prob (see docs/attribution.md).")
    agree = ig_agreement(run_dir)
    if agree is not None:
        console.print(agreement_line(agree))


# ---- teacher rationales -----------------------------------------------------------------------
def save_teacher(plan: Plan, store: Store, run_dir: Path) -> None:
    """`teacher.json`: each finished teacher job's `diagnostics.json` (jobs/teacher.py), by data."""
    rows = []
    for job in plan.by_stage("teacher"):
        path = store.path("teacher", job.key) / "diagnostics.json"
        if path.exists():
            rows.append({"label": job.label, "teacher": job.teacher.name, **json.loads(path.read_text())})
    atomic_write_json(run_dir / "teacher.json", rows)


def print_teacher(run_dir: Path, console: Console) -> None:
    """What the training rationales look like: label mentions (leakage), length, SCoTD kept rate."""
    from rich.markup import escape

    path = run_dir / "teacher.json"
    rows = json.loads(path.read_text()) if path.exists() else []
    if not rows:
        return
    scotd = any("scotd" in r for r in rows)
    t = Table(title="teacher rationales (training set)", title_justify="left")
    for col in ("teacher", "n", "names gold %", "names other %", "states answer %", "words") \
            + (("kept / question", "none kept %") if scotd else ()):
        t.add_column(col, justify="left" if col == "teacher" else "right")
    for r in rows:
        w = r.get("words") or {}
        s = r.get("scotd")
        t.add_row(escape(r["label"].removeprefix("teacher ")), f"{r['rationales']}/{r['questions']}",
                  _pct(r.get("gold_label")), _pct(r.get("other_choice")), _pct(r.get("states_answer")),
                  f"{w['median']} ({w['p10']}–{w['p90']})" if w else "–",
                  *((f"{s['kept_mean']:g} of {s['samples']}" + ("" if s.get("filter") else " (no filter)"),
                     _pct(s["none_kept"])) if s else ("–", "–")) if scotd else ())
    console.print(t)
    console.print("[dim]names gold / other: rationales containing the gold label's / another choice's text "
                  "(whole words, case and punctuation ignored; `cotdsl show` marks them): a student can copy "
                  "the answer from such a rationale. words: median (10th–90th percentile). "
                  "Details: teacher.json.[/]")


# ---- the run folder's header ------------------------------------------------------------------
def environment() -> dict:
    """Versions and device, saved beside the results. Read from package metadata, not by import:
    a fully cached run must not pay for torch."""
    import os
    import platform
    import shutil
    import subprocess
    import sys
    from importlib.metadata import PackageNotFoundError, version

    def ver(dist: str) -> str | None:
        try:
            return version(dist)
        except PackageNotFoundError:
            return None

    vers = {m: ver(d) for m, d in (("torch", "torch"), ("transformers", "transformers"), ("datasets", "datasets"),
                                   ("transformer_lens", "transformer-lens"), ("tuned_lens", "tuned-lens"),
                                   ("captum", "captum"), ("lark", "lark"), ("polars", "polars"))}
    torch = sys.modules.get("torch")  # already loaded when a job ran in this process
    threads = torch.get_num_threads() if torch is not None else os.cpu_count()
    cuda = None
    if shutil.which("nvidia-smi"):
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True).stdout.splitlines()
        cuda = out[0].split(":", 1)[1].split("(")[0].strip() if out and ":" in out[0] else None
    return {"cotdsl": ver("cotdsl"), "python": platform.python_version(), "platform": platform.platform(),
            "cpu_threads": threads, "cuda": cuda, **vers}


def save_run_header(plan: Plan, run_dir: Path, spec_text: str) -> None:
    from .spec import to_dict

    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "spec.cot").write_text(spec_text)
    atomic_write_json(run_dir / "resolved.json", to_dict(plan.experiment))
    atomic_write_json(run_dir / "environment.json", environment())
    atomic_write_json(run_dir / "plan.json", [{"id": j.id, "label": j.label, "deps": list(j.deps)}
                                              for j in plan.jobs])
