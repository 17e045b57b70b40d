"""Layerwise-confidence reports: a rich terminal heatmap + commit table, and a matplotlib PNG.

Input: `{condition: LensResult}`, `{lens: {condition: LensResult}}`, or the long polars frame
`to_frame` makes (columns lens, condition, example, layer, p_gold, choice_p_gold, rank_gold,
commit_layer, tied; one row per example x lens row; `tied` is optional). Layer 0 is the
embeddings, layer i the output of block i-1.
"""
from __future__ import annotations

from pathlib import Path

import polars as pl

PROBS = {"p_gold": "P(gold label), full vocabulary",
         "choice_p_gold": "P(gold label), renormalised over choices"}


def to_frame(results) -> pl.DataFrame:
    """Long frame from `{condition: LensResult}` or `{lens: {condition: LensResult}}`."""
    if isinstance(results, pl.DataFrame):
        return results
    # Imported here: reporting a saved frame (a cached run) must not pay for torch.
    from interp.commit import commit_layers
    from interp.lens import LensResult
    if not isinstance(results, dict) or not results:
        raise ValueError("report input must be a non-empty dict of LensResults or a polars frame")
    nested = {}
    for key, val in results.items():
        if isinstance(val, LensResult):
            nested.setdefault(val.lens, {})[str(key)] = val
        elif isinstance(val, dict) and all(isinstance(v, LensResult) for v in val.values()):
            nested.setdefault(str(key), {}).update({str(c): r for c, r in val.items()})
        else:
            raise ValueError(f"report input {key!r} is neither a LensResult nor a dict of them")
    cols = {k: [] for k in ("lens", "condition", "example", "layer", "p_gold", "choice_p_gold",
                            "rank_gold", "commit_layer", "tied")}
    for lens, conds in nested.items():
        for cond, res in conds.items():
            p, cp, rk = res.gold_probs(), res.gold_probs(renormalised=True), res.gold_ranks()
            commit = commit_layers(res).tolist()
            B, rows = p.shape
            tied = res.tied.tolist() if res.tied is not None else [False] * B
            for b in range(B):
                for layer in range(rows):
                    cols["lens"].append(lens)
                    cols["condition"].append(cond)
                    cols["example"].append(b)
                    cols["layer"].append(layer)
                    cols["p_gold"].append(float(p[b, layer]))
                    cols["choice_p_gold"].append(float(cp[b, layer]))
                    cols["rank_gold"].append(int(rk[b, layer]))
                    cols["commit_layer"].append(int(commit[b]))
                    cols["tied"].append(bool(tied[b]))
    return pl.DataFrame(cols)


def _check(frame: pl.DataFrame, prob: str) -> None:
    need = {"lens", "condition", "example", "layer", "commit_layer", prob}
    if prob not in PROBS:
        raise ValueError(f"prob must be one of {', '.join(PROBS)}")
    if missing := need - set(frame.columns):
        raise ValueError(f"report frame lacks columns: {', '.join(sorted(missing))}")


def layer_means(frame, prob: str = "p_gold") -> pl.DataFrame:
    """Mean `prob` per (lens, condition, layer), in input order of lenses/conditions."""
    frame = to_frame(frame)
    _check(frame, prob)
    return (frame.group_by(["lens", "condition", "layer"], maintain_order=True)
            .agg(pl.col(prob).mean().alias("mean")))


def commit_table(frame) -> pl.DataFrame:
    """Per (lens, condition): n, commit_mean, commit_median (committed examples only; null if
    none), share_committed."""
    frame = to_frame(frame)
    per_ex = frame.unique(["lens", "condition", "example"], maintain_order=True)
    done = pl.col("commit_layer").filter(pl.col("commit_layer") >= 0)
    return per_ex.group_by(["lens", "condition"], maintain_order=True).agg(
        pl.len().alias("n"), done.mean().alias("commit_mean"),
        done.median().alias("commit_median"),
        (pl.col("commit_layer") >= 0).mean().alias("share_committed"))


def _cell_style(v: float) -> str:
    """Background shade for a probability: dark blue (0) -> yellow (1), readable foreground."""
    v = min(max(v, 0.0), 1.0)
    lo, hi = (20, 30, 90), (250, 220, 60)
    r, g, b = (round(a + (c - a) * v) for a, c in zip(lo, hi))
    fg = "black" if v > 0.55 else "white"
    return f"{fg} on rgb({r},{g},{b})"


def _order(frame: pl.DataFrame, col: str) -> list:
    return frame.get_column(col).unique(maintain_order=True).to_list()


def render_report(data, console=None, prob: str = "p_gold"):
    """Print, per lens, a layers x conditions heatmap of mean `prob` and a commit-layer table.

    Returns the rich Console used (pass `Console(record=True)` to capture the text).
    """
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    frame = to_frame(data)
    _check(frame, prob)
    console = console or Console()
    means, commits = layer_means(frame, prob), commit_table(frame)
    for lens in _order(frame, "lens"):
        m = means.filter(pl.col("lens") == lens)
        conds = _order(m, "condition")
        # Titles printed as lines of their own: a table title would wrap to the table's width.
        console.print(Text(f"{lens} lens: mean {PROBS[prob]} by layer (0 = embeddings)",
                           style="bold"))
        heat = Table()
        heat.add_column("layer", justify="right")
        for c in conds:  # Text, not markup: a sweep point's name "masked[p=0.2]" is not a style
            heat.add_column(Text(str(c)), justify="center")
        grid = {(r["condition"], r["layer"]): r["mean"] for r in m.iter_rows(named=True)}
        for layer in sorted({k[1] for k in grid}):
            cells = [Text(f"{grid[(c, layer)]:.3f}", style=_cell_style(grid[(c, layer)]))
                     if (c, layer) in grid else Text("") for c in conds]
            heat.add_row(str(layer), *cells)
        console.print(heat)
        console.print(Text(f"{lens} lens: commit layer (gold top-1 among the choices from "
                           f"that layer to the last)", style="bold"))
        ct = Table()
        for col, just in (("condition", "left"), ("n", "right"), ("mean", "right"),
                          ("median", "right"), ("share committed", "right")):
            ct.add_column(col, justify=just)
        for r in commits.filter(pl.col("lens") == lens).iter_rows(named=True):
            fmt = lambda v: "-" if v is None else f"{v:.2f}"  # noqa: E731
            ct.add_row(Text(str(r["condition"])), str(r["n"]), fmt(r["commit_mean"]),
                       fmt(r["commit_median"]), f"{100 * r['share_committed']:.0f}%")
        console.print(ct)
        if "tied" in frame.columns:
            per_ex = frame.filter(pl.col("lens") == lens).unique(["condition", "example"])
            if n := int(per_ex["tied"].sum()):
                console.print(Text(f"{n} of {len(per_ex)} examples score two choices on identical tokens (a "
                                   "first-token readout of labels sharing a first token): they tie at every "
                                   "layer and never commit", style="yellow"))
    return console


def plot_report(data, path, prob: str = "p_gold") -> Path:
    """PNG of mean `prob` vs layer, one line per condition, one panel per lens (Figure 2 kind)."""
    from matplotlib.figure import Figure  # no pyplot: no global state, no GUI backend
    from matplotlib.ticker import MaxNLocator

    frame = to_frame(data)
    _check(frame, prob)
    means = layer_means(frame, prob)
    lenses = _order(frame, "lens")
    # One colour per condition across all panels, so lenses compare at a glance.
    colours = {c: f"C{i % 10}" for i, c in enumerate(_order(frame, "condition"))}
    fig = Figure(figsize=(5 * len(lenses), 3.8), dpi=110, layout="constrained")
    axes = fig.subplots(1, len(lenses), squeeze=False)[0]
    for ax, lens in zip(axes, lenses):
        m = means.filter(pl.col("lens") == lens)
        for cond in _order(m, "condition"):
            rows = m.filter(pl.col("condition") == cond)
            ax.plot(rows["layer"].to_list(), rows["mean"].to_list(), marker="o", ms=3, label=cond,
                    color=colours[cond])
        ax.set_title(f"{lens} lens")
        ax.set_xlabel("layer (0 = embeddings)")
        ax.set_ylabel(PROBS[prob])
        ax.set_ylim(0, 1)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path
