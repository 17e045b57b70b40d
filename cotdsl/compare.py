"""`cotdsl compare RUN_A RUN_B`: two finished runs' accuracy, condition by condition.

Conditions are matched by name (and by student and data when either run has several of them, so
two single-student runs of different students compare condition by condition). Per matching
condition: one row per seed both runs have, and, when either has several seeds (or they share
none), one row on each example's accuracy averaged over that run's seeds. Each row gives both
accuracies over each run's own examples and Δ = B − A:

- paired where the runs evaluated the same examples (same example id and gold answer): Δ over the
  common examples with a paired bootstrap 95% CI (stats.paired_bootstrap, as summary.parquet's Δ);
- unpaired (and said so) where they share no example: the difference of the two accuracies, its
  CI from independent bootstraps of each run's examples.

Only results.parquet is read: no model, no torch.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
from rich.console import Console

from .errors import CotError

DRAWS = 10000
NEED = ("condition", "student", "data", "seed", "ex_id", "correct")


@dataclass(frozen=True)
class Line:
    """One comparison: `keys` (condition[, student][, data]), `seed` (an int, or "mean" for the
    per-example mean over seeds), accuracies and example counts of A and B, Δ = B − A with its CI
    (fractions), and how it was paired (`paired`: the number of common examples, 0: unpaired)."""

    keys: tuple[str, ...]
    seed: int | str
    acc_a: float
    n_a: int
    acc_b: float
    n_b: int
    delta: float
    lo: float
    hi: float
    paired: int


@dataclass(frozen=True)
class Comparison:
    columns: tuple[str, ...]  # the key columns matched on
    lines: tuple[Line, ...]
    notes: tuple[str, ...]  # what only one run has, ids whose gold answers differ


def load_results(run_dir: Path) -> pl.DataFrame:
    """results.parquet of a run folder: the columns a comparison needs, or a CotError."""
    path = Path(run_dir) / "results.parquet"
    if not path.exists():
        raise CotError.one(f"{run_dir} is not a cotdsl run folder (no results.parquet)",
                           hint="give two folders `cotdsl run` wrote, e.g. runs/<experiment>")
    df = pl.read_parquet(path)
    if not len(df):
        raise CotError.one(f"{run_dir}: no evaluations in this run (results.parquet is empty)",
                           hint="`cotdsl status RUN` shows which jobs did not finish")
    missing = [c for c in NEED if c not in df.columns]
    if missing:
        raise CotError.one(f"{path}: not a cotdsl results file (no column {', '.join(missing)})")
    cols = [*NEED, *(["gold"] if "gold" in df.columns else [])]
    return df.select(cols).with_columns(pl.col("correct").cast(pl.Float64), pl.col("seed").cast(pl.Int64))


def _unpaired(a: np.ndarray, b: np.ndarray) -> tuple[float, float, float]:
    """mean(b) − mean(a) with the percentile 95% CI of independent bootstraps of a and b."""
    from .stats import bootstrap_deltas

    boots = bootstrap_deltas(b, n=DRAWS, seed=0) - bootstrap_deltas(a, n=DRAWS, seed=1)
    lo, hi = np.quantile(boots, [0.025, 0.975])
    return float(b.mean() - a.mean()), float(lo), float(hi)


def _line(keys: tuple, seed, a: pl.DataFrame, b: pl.DataFrame, on: list[str]) -> Line:
    """a, b: one value per example (columns `on` + value)."""
    from .stats import paired_bootstrap

    pairs = a.join(b.rename({"value": "other"}), on=on)
    if len(pairs):
        d, lo, hi = paired_bootstrap(pairs["other"].to_numpy(), pairs["value"].to_numpy(), n=DRAWS, seed=0)
    else:
        d, lo, hi = _unpaired(a["value"].to_numpy(), b["value"].to_numpy())
    return Line(keys, seed, float(a["value"].mean()), len(a), float(b["value"].mean()), len(b), d, lo, hi, len(pairs))


def compare(run_a: Path, run_b: Path) -> Comparison:
    a, b = load_results(run_a), load_results(run_b)
    cols = ["condition"] + [k for k in ("student", "data") if a[k].n_unique() > 1 or b[k].n_unique() > 1]
    on = ["ex_id", "gold"] if "gold" in a.columns and "gold" in b.columns else ["ex_id"]
    ga, gb = a.partition_by(cols, as_dict=True), b.partition_by(cols, as_dict=True)
    common = [k for k in ga if k in gb]  # A's order (its spec's condition order)
    if not common:
        what = " × ".join(cols)
        raise CotError.one(f"{run_a} and {run_b} share no {what}: nothing to compare",
                           hint=f"A has {_names(ga)}; B has {_names(gb)}")
    lines, notes = [], []
    for key in common:
        x, y = ga[key], gb[key]
        sa, sb = sorted(set(x["seed"])), sorted(set(y["seed"]))
        for s in (s for s in sa if s in sb):
            xs, ys = (g.filter(pl.col("seed") == s).select(*on, pl.col("correct").alias("value")) for g in (x, y))
            lines.append(_line(key, s, xs, ys, on))
        if len(sa) > 1 or len(sb) > 1 or not set(sa) & set(sb):
            xm, ym = (g.group_by(on, maintain_order=True).agg(pl.col("correct").mean().alias("value")) for g in (x, y))
            lines.append(_line(key, "mean", xm, ym, on))
        label = " · ".join(map(str, key))
        for side, mine, other in (("A", sa, sb), ("B", sb, sa)):
            only = [s for s in mine if s not in other]
            if only:
                notes.append(f"{label}: seed{'s' if len(only) > 1 else ''} {', '.join(map(str, only))} only in "
                             f"{side}")
        if on != ["ex_id"]:
            clash = x.join(y, on=["seed", "ex_id"]).filter(pl.col("gold") != pl.col("gold_right"))
            if len(clash):
                notes.append(f"{label}: {clash['ex_id'].n_unique()} example id(s) in both runs with different "
                             "gold answers (different data): not paired")
    for side, g, other in (("A", ga, gb), ("B", gb, ga)):
        only = [k for k in g if k not in other]
        if only:
            notes.append(f"only in {side} (not compared): {', '.join(' · '.join(map(str, k)) for k in only)}")
    return Comparison(tuple(cols), tuple(lines), tuple(notes))


def _names(groups: dict) -> str:
    return ", ".join(" · ".join(map(str, k)) for k in groups) or "nothing"


def _pp(x: float) -> str:
    return f"{100 * x:+.1f}"


def print_compare(run_a: Path, run_b: Path, console: Console) -> int:
    from rich import box
    from rich.markup import escape
    from rich.table import Table

    c = compare(run_a, run_b)
    console.print(f"A: {escape(str(run_a))}\nB: {escape(str(run_b))}")
    t = Table(title="test accuracy %, A vs B (Δ = B − A, percentage points)", title_justify="left",
              box=box.SIMPLE_HEAD, pad_edge=False)
    for col in c.columns:
        t.add_column(col, no_wrap=True)
    for col in ("seed", "A", "B", "Δ", "95% CI", "n A", "n B", "paired"):
        t.add_column(col, justify="right", no_wrap=True)
    for r in c.lines:
        colour = "green" if r.lo > 0 else "red" if r.hi < 0 else "default"
        t.add_row(*(escape(str(k)) for k in r.keys), str(r.seed), f"{100 * r.acc_a:.1f}", f"{100 * r.acc_b:.1f}",
                  f"[{colour}]{_pp(r.delta)}[/]", escape(f"[{_pp(r.lo)}, {_pp(r.hi)}]"), str(r.n_a), str(r.n_b),
                  str(r.paired) if r.paired else "[yellow]unpaired[/]")
    console.print(t)
    for note in c.notes:
        console.print(f"[yellow]{escape(note)}[/]")
    console.print("[dim]seed mean: each example's accuracy averaged over its run's seeds. A, B: accuracy over "
                  "each run's own n examples. paired: the examples both runs evaluated (same id and gold "
                  "answer); Δ is over them, 95% CI by paired bootstrap. unpaired: no common example; Δ is B − A, "
                  "95% CI from independent bootstraps of each run's examples (10,000 draws).[/]")
    return 0
