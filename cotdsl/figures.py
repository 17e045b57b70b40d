"""Paper-grade figures from a run folder's parquet files (never from models): PNG for a glance,
PDF for the paper. One style for all: accuracy on a fixed 0-100 axis with the chance line, so a
small difference is not drawn as a large one; every interval says what it is.

    accuracy.{png,pdf}        per condition: accuracy with a 95% bootstrap CI over test examples,
                              Δ vs the no-rationale baseline with its paired 95% CI, chance, n
    sweep_<family>.{png,pdf}  accuracy vs the swept parameter with CI bands, the unperturbed target
                              (e.g. `after` for a `mask` sweep, drawn at p = 0) and the baseline
    training_loss.{png,pdf}   training loss per step, one line per condition (mean over seeds)
"""
from __future__ import annotations

import json
from pathlib import Path

import polars as pl

BLUE, GREY, RED = "#4c72b0", "#8c8c8c", "#c44e52"


def _save(fig, out_dir: Path, name: str) -> list[Path]:
    paths = [out_dir / f"{name}.png", out_dir / f"{name}.pdf"]
    fig.savefig(paths[0], dpi=150)
    fig.savefig(paths[1])
    return paths


def _label(r: dict, many_students: bool) -> str:
    return r["condition"] + (f"\n{r['student']}" if many_students else "")


def accuracy(summary: pl.DataFrame, out_dir: Path, title: str) -> list[Path]:
    from matplotlib.figure import Figure

    rows = list(summary.iter_rows(named=True))
    many = summary["student"].n_unique() > 1 or summary["data"].n_unique() > 1
    fig = Figure(figsize=(max(4.5, 0.9 * len(rows) + 1.5), 3.8), layout="constrained")
    ax = fig.subplots()
    x = range(len(rows))
    acc = [100 * r["acc"] for r in rows]
    err = [[100 * (r["acc"] - r["acc_lo"]) for r in rows], [100 * (r["acc_hi"] - r["acc"]) for r in rows]]
    ax.bar(x, acc, color=BLUE, width=0.65)
    ax.errorbar(x, acc, yerr=err, fmt="none", ecolor="black", capsize=3, lw=1)
    for i, r in enumerate(rows):
        note = f"{acc[i]:.1f}"
        if r["delta"] is not None:
            note += f"\nΔ {100 * r['delta']:+.1f} [{100 * r['delta_lo']:+.0f}, {100 * r['delta_hi']:+.0f}]"
        if r["unparseable"]:
            note += f"\n{r['unparseable']} unparsed"
        ax.text(i, min(acc[i] + 100 * (r["acc_hi"] - r["acc"]) + 2, 90), note, ha="center", va="bottom",
                fontsize=7, color=RED if acc[i] == 0 else "black")
    chances = {round(r["chance"], 4) for r in rows if r.get("chance") is not None}
    if len(chances) == 1:
        c = 100 * chances.pop()
        ax.axhline(c, color=GREY, ls="--", lw=1)
        ax.text(len(rows) - 0.5, c + 1, f"chance {c:.0f}%", ha="right", va="bottom", fontsize=7, color=GREY)
    ax.set_xticks(list(x), [_label(r, many) for r in rows], rotation=20 if len(rows) > 5 else 0, fontsize=8)
    ax.set_ylim(0, 100)
    ax.set_ylabel("test accuracy (%)")
    n = sorted({(r["n"] // max(1, r["seeds"]), r["seeds"]) for r in rows})
    size = "; ".join(f"n = {k} test examples × {s} seed{'s' if s > 1 else ''}" for k, s in n)
    ax.set_title(f"{title}  ({size})", fontsize=9)
    ax.set_xlabel("error bars: 95% bootstrap CI over test examples\n"
                  "Δ: vs the no-rationale baseline, paired by example [95% CI]", fontsize=7, color=GREY)
    return _save(fig, out_dir, "accuracy")


def sweeps(summary: pl.DataFrame, out_dir: Path) -> list[Path]:
    """One figure per single-parameter sweep family, with the unperturbed target (summary column
    `reference`, drawn at parameter 0) and the no-rationale baseline when the run has them."""
    from matplotlib.figure import Figure

    written = []
    by_name = {r["condition"]: r for r in summary.iter_rows(named=True)}
    base = next((r["condition"] for r in by_name.values() if r.get("baseline")), None)
    for (fam,), g in summary.group_by("family", maintain_order=True):
        params = [json.loads(p) for p in g["params"]]
        if len(g) < 2 or not params[0] or len(params[0]) != 1:
            continue
        (pname,) = params[0]
        fig = Figure(figsize=(4.8, 3.6), layout="constrained")
        ax = fig.subplots()
        for (stu,), gs in g.group_by("student", maintain_order=True):
            pts = sorted(((json.loads(r["params"])[pname], r) for r in gs.iter_rows(named=True)), key=lambda t: t[0])
            xs = [p for p, _ in pts]
            ax.plot(xs, [100 * r["acc"] for _, r in pts], marker="o", color=BLUE, label=f"{fam} ({stu})")
            ax.fill_between(xs, [100 * r["acc_lo"] for _, r in pts], [100 * r["acc_hi"] for _, r in pts],
                            color=BLUE, alpha=0.2, lw=0)
        ref = g["reference"][0] if "reference" in g.columns else None
        if ref in by_name:
            r = by_name[ref]
            ax.errorbar([0], [100 * r["acc"]], yerr=[[100 * (r["acc"] - r["acc_lo"])], [100 * (r["acc_hi"] - r["acc"])]],
                        fmt="s", color="black", capsize=3, label=f"{ref} (unperturbed, at {pname} = 0)")
        if base in by_name:
            ax.axhline(100 * by_name[base]["acc"], color=RED, ls=":", lw=1.2, label=f"{base} (no rationale)")
        chance = g["chance"].drop_nulls()
        if len(chance):
            ax.axhline(100 * chance.mean(), color=GREY, ls="--", lw=1, label="chance")
        ax.set_ylim(0, 100)
        ax.set_xlabel(pname)
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(f"{fam}: accuracy vs {pname} (bands: 95% CI)", fontsize=9)
        ax.legend(fontsize=7)
        written += _save(fig, out_dir, f"sweep_{fam}")
    return written


def unperturbed(family_cond, conditions) -> str | None:
    """The condition a sweep perturbs: its template with every perturbation call replaced by its
    input (`label -> mask(rationale, p)` -> `label -> rationale`), if the experiment has it."""
    from .spec import Call, Ref

    def strip(seg):
        while isinstance(seg, Call) and seg.args and isinstance(seg.args[0], (Ref, Call)):
            seg = seg.args[0]
        return seg

    want = tuple(strip(s) for s in family_cond.tasks[0].segments)
    return next((c.name for c in conditions if c.family != family_cond.family and len(c.tasks) == 1
                 and c.tasks[0].segments == want), None)


def training_loss(curves: pl.DataFrame, out_dir: Path) -> list[Path]:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5, 3.4), layout="constrained")
    ax = fig.subplots()
    for (cond,), g in curves.group_by("condition", maintain_order=True):
        m = g.group_by("step").agg(pl.col("loss").mean()).sort("step")
        ax.plot(m["step"], m["loss"], lw=1.2, label=cond)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("training loss (supervised tokens)")
    ax.set_title("training loss, mean over seeds", fontsize=9)
    ax.legend(fontsize=7)
    return _save(fig, out_dir, "training_loss")


def figures(run_dir: Path) -> list[Path]:
    """Every figure the run folder has data for; returns the PNG and PDF paths written. Redrawn
    only when the numbers behind them changed (a cached re-run skips matplotlib's seconds)."""
    import hashlib

    path = run_dir / "summary.parquet"
    if not path.exists():
        return []
    summary = pl.read_parquet(path).filter(pl.col("acc").is_not_null())
    curves_path = run_dir / "train_curves.parquet"
    curves = pl.read_parquet(curves_path) if curves_path.exists() else pl.DataFrame()
    out_dir = run_dir / "figures"
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = out_dir / ".inputs"
    digest = hashlib.sha256(json.dumps([__doc__, summary.to_dicts(), curves.to_dicts()], default=str,
                                       sort_keys=True).encode()).hexdigest()
    if stamp.exists():
        old, *names = stamp.read_text().split("\n")
        if old == digest and all((out_dir / n).exists() for n in names if n):
            return [out_dir / n for n in names if n]
    written = []
    if len(summary) and "acc_lo" in summary.columns:
        written += accuracy(summary, out_dir, run_dir.name)
        written += sweeps(summary, out_dir)
    if len(curves):
        written += training_loss(curves, out_dir)
    stamp.write_text("\n".join([digest] + [p.name for p in written]))
    return written
