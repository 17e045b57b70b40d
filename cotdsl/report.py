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
from .plan import Plan, is_baseline

KEYS = ["condition", "student", "data"]


def _job_cols(job, exp_name: str) -> dict:
    c = job.condition
    return {"experiment": exp_name, "condition": c.name, "family": c.family,
            "params": json.dumps(dict(c.params)), "student": job.student.name,
            "data": job.source.name, "seed": job.seed}


def collect(plan: Plan, store: Store, outcomes: dict, run_dir: Path) -> None:
    """Write results/summary/lens parquet files for every finished eval/probe job of the plan."""
    exp = plan.experiment
    frames, lens_frames = [], []
    for job in plan.jobs:
        if job.stage not in ("eval", "probe") or not store.done(job.stage, job.key):
            continue
        fname = "predictions.parquet" if job.stage == "eval" else "lens.parquet"
        df = pl.read_parquet(store.path(job.stage, job.key) / fname)
        df = df.with_columns(*[pl.lit(v).alias(k) for k, v in _job_cols(job, exp.name).items()])
        (frames if job.stage == "eval" else lens_frames).append(df)
    results = pl.concat(frames, how="diagonal_relaxed") if frames else pl.DataFrame()
    atomic_write_parquet(run_dir / "results.parquet", results)
    (run_dir / "lens.parquet").unlink(missing_ok=True)  # never a previous run's layers
    if lens_frames:
        atomic_write_parquet(run_dir / "lens.parquet", pl.concat(lens_frames, how="diagonal_relaxed"))
    coverage = []  # how many test examples each probe could read the label of
    for job in plan.by_stage("probe"):
        if store.done("probe", job.key):
            info = json.loads((store.path("probe", job.key) / "job.json").read_text())["info"]
            coverage.append({**_job_cols(job, exp.name), "probed": info.get("examples"), "of": info.get("of")})
    atomic_write_json(run_dir / "probe_coverage.json", coverage)
    failed = {}  # (condition, student, data) -> (evaluations that did not finish, first cause)
    for job in plan.jobs:
        if job.stage == "eval" and outcomes.get(job.id) and outcomes[job.id].status in ("failed", "skipped"):
            k = tuple(_job_cols(job, exp.name)[c] for c in KEYS)
            n, cause = failed.get(k, (0, outcomes[job.id].cause))
            failed[k] = (n + 1, cause)
    ig = [j for j in plan.by_stage("rank") if store.done("rank", j.key)]
    if ig:  # key-token attributions: keep the first scorer's figure and numbers with the run
        import shutil

        src = store.path("rank", ig[0].key)
        (run_dir / "figures").mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src / "ig_example.png", run_dir / "figures" / "ig_example.png")
        shutil.copyfile(src / "ig.json", run_dir / "ig.json")
    baseline = next((c.name for c in exp.conditions if is_baseline(c)), None)
    atomic_write_parquet(run_dir / "summary.parquet", summarize(results, baseline, failed, exp))


# One schema for summary.parquet, whatever finished: a run whose every job failed still gets a
# readable table (rows with acc null and the cause), never a missing column.
SUMMARY_SCHEMA = {"condition": pl.Utf8, "student": pl.Utf8, "data": pl.Utf8, "family": pl.Utf8,
                  "params": pl.Utf8, "seeds": pl.Int64, "n": pl.Int64, "acc": pl.Float64,
                  "acc_std": pl.Float64, "acc_norm": pl.Float64, "unparseable": pl.Int64,
                  "failed": pl.Int64, "cause": pl.Utf8, "delta": pl.Float64, "delta_lo": pl.Float64,
                  "delta_hi": pl.Float64}


def summarize(results: pl.DataFrame, baseline: str | None, failed: dict, exp) -> pl.DataFrame:
    """One row per condition x student x data. `failed` maps such a key to (evaluations that did
    not finish, the first one's cause). acc_std is null with a single seed (undefined)."""
    from .jobs.evaluate import paired_bootstrap

    rows = []
    order = {c.name: i for i, c in enumerate(exp.conditions)}
    failed = dict(failed)
    groups = results.partition_by(KEYS, as_dict=True) if len(results) else {}
    for key, g in groups.items():
        per_seed = g.group_by("seed").agg(pl.col("correct").mean().alias("acc"),
                                          pl.col("correct_norm").mean().alias("acc_norm"))
        n_failed, cause = failed.pop(key, (0, None))
        row = dict(zip(KEYS, key))
        row.update(family=g["family"][0], params=g["params"][0], seeds=len(per_seed),
                   n=len(g), acc=per_seed["acc"].mean(), acc_std=per_seed["acc"].std(ddof=1) if len(per_seed) > 1 else None,
                   acc_norm=per_seed["acc_norm"].mean(), unparseable=int(g["unparseable"].sum()),
                   failed=n_failed, cause=cause, delta=None, delta_lo=None, delta_hi=None)
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
                      f"{escape(r.get('cause') or 'see failures/')}", soft_wrap=True)
    console.print("[dim]Δ: accuracy minus the no-rationale baseline (`target none = label`), paired by example; "
                  "95% CI by paired bootstrap. acc_norm: choice log-likelihood ÷ length in characters "
                  "(rank-evaluated targets); unparsed: generated answers naming no choice (counted wrong).[/]")


def print_lens(run_dir: Path, console: Console, png: bool = True) -> list[Path]:
    """Layer-by-layer confidence report (both lenses) and its PNG, from lens.parquet."""
    from rich.markup import escape

    path, cov = run_dir / "lens.parquet", run_dir / "probe_coverage.json"
    for c in json.loads(cov.read_text()) if cov.exists() else []:
        if c["of"] is not None and c["probed"] < c["of"]:
            console.print(f"[yellow]{escape(c['condition'])} · {escape(c['student'])} · seed {c['seed']}[/]: "
                          f"{c['probed']} of {c['of']} test examples could be probed at the label "
                          "(a rationale-first target needs the example's rationale)", soft_wrap=True)
    if not path.exists():
        return []
    from interp.report import plot_report, render_report

    df = pl.read_parquet(path)
    if not len(df):
        return []
    # One heatmap row per condition (× student when there are several); seeds are pooled.
    label = pl.col("condition")
    if df["student"].n_unique() > 1 or df["data"].n_unique() > 1:
        label = pl.concat_str([pl.col("condition"), pl.col("student"), pl.col("data")], separator=" · ")
    df = df.with_columns(label.alias("condition"), pl.concat_str([pl.col("seed"), pl.col("ex_id")],
                                                                 separator=":").alias("example"))
    render_report(df, console=console)
    if not png:
        return []
    out = run_dir / "figures" / "layerwise_confidence.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    plot_report(df, out)
    return [out]


def print_ig(run_dir: Path, console: Console) -> None:
    """One rationale shaded by Integrated-Gradients attribution, and the completeness figures."""
    path = run_dir / "ig.json"
    if not path.exists():
        return
    from interp.attribution import IGResult, summarize
    from interp.view import print_attribution

    rows = json.loads(path.read_text())
    results = [IGResult.from_dict({k: v for k, v in r.items() if k != "ex_id"}) for r in rows]
    print_attribution(results[0], console=console, title=f"IG key tokens: {rows[0]['ex_id']}")
    s = summarize(results)
    if s["n"]:
        console.print(f"IG completeness over {s['n']} rationales: |delta| / |f(x) - f(baseline)| median "
                      f"{s['median_rel_delta']:.2f}, mean {s['mean_rel_delta']:.2f}, max {s['max_rel_delta']:.2f} "
                      f"({results[0].baseline} baseline, {results[0].steps} steps); large values mean the "
                      "attributions do not add up to the change in log-prob (see docs/attribution.md).")


def figures(run_dir: Path) -> list[Path]:
    """Accuracy per condition, and accuracy against the swept parameter for each sweep."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary = pl.read_parquet(run_dir / "summary.parquet").filter(pl.col("acc").is_not_null())
    summary = summary.with_columns(pl.col("acc_std").fill_null(float("nan")))  # one seed: no error bar
    out_dir = run_dir / "figures"
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    if not len(summary):
        return written
    fig, ax = plt.subplots(figsize=(max(4, 0.8 * len(summary)), 3.2))
    labels = [f"{r['condition']}\n{r['student']}" for r in summary.iter_rows(named=True)]
    ax.bar(range(len(summary)), 100 * summary["acc"].to_numpy(), yerr=100 * summary["acc_std"].to_numpy(),
           color="#4c72b0", capsize=3)
    ax.set_xticks(range(len(summary)), labels, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("accuracy (%)")
    ax.set_title(run_dir.name)
    fig.tight_layout()
    written.append(out_dir / "accuracy.png")
    fig.savefig(written[-1], dpi=120)
    plt.close(fig)
    for fam, g in summary.group_by("family"):
        params = [json.loads(p) for p in g["params"]]
        if len(g) < 2 or not params[0] or len(params[0]) != 1:
            continue
        (pname,) = params[0]
        fig, ax = plt.subplots(figsize=(4, 3))
        for (stu,), gs in g.group_by("student"):
            xs = [json.loads(p)[pname] for p in gs["params"]]
            order = sorted(range(len(xs)), key=xs.__getitem__)
            ax.errorbar([xs[i] for i in order], [100 * gs["acc"][i] for i in order],
                        yerr=[100 * gs["acc_std"][i] for i in order], marker="o", capsize=3, label=stu)
        ax.set_xlabel(pname)
        ax.set_ylabel("accuracy (%)")
        ax.set_title(f"{fam[0]}: accuracy vs {pname}")
        ax.legend(fontsize=8)
        fig.tight_layout()
        written.append(out_dir / f"sweep_{fam[0]}.png")
        fig.savefig(written[-1], dpi=120)
        plt.close(fig)
    return written


# ---- the run folder's header ------------------------------------------------------------------
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
