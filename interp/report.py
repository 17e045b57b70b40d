"""Layerwise-confidence reports: a rich terminal heatmap + commit table, and a matplotlib PNG.

Input: `{condition: LensResult}`, `{lens: {condition: LensResult}}`, or the long polars frame
`to_frame` makes (columns lens, condition, example, layer, p_gold, choice_p_gold, rank_gold,
commit_layer, tied; one row per example x lens row; `tied` is optional; optional `context`: what
the label was read after, `n_choices`: the example's number of choices, for the chance level).
Layer 0 is the embeddings, layer i the output of block i-1.
"""
from __future__ import annotations

import textwrap
from pathlib import Path

import polars as pl

PROBS = {"p_gold": "P(gold label), full vocabulary",
         "choice_p_gold": "P(gold label), renormalised over choices"}
QUANTITIES = {"choice": "choice_p_gold", "full": "p_gold"}  # short names (a CLI's --quantity)
# Ten shades, one per tenth of probability (viridis at the middle of each tenth): a cell's colour
# names the tenth its value lies in, so the legend is exact. Dark shades take a white digit.
SCALE = ["#471365", "#463480", "#3b528b", "#2f6c8e", "#25848e", "#1e9c89", "#2fb47c", "#5ec962",
         "#9bd93c", "#dfe318"]
BOOT_DRAWS = 2000


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


def _bootstrap_rows(mat, draws: int = BOOT_DRAWS, seed: int = 0):
    """Mean over rows of `mat` [n, k] and its 95% percentile bootstrap CI (rows resampled
    jointly, so a band over layers comes from whole examples): three [k] arrays."""
    import numpy as np

    mat = np.asarray(mat, dtype=float).reshape(len(mat), -1)
    mean = np.nanmean(mat, 0)
    if len(mat) < 2:
        return mean, mean.copy(), mean.copy()
    idx = np.random.default_rng(seed).integers(0, len(mat), (draws, len(mat)))
    boots = np.nanmean(mat[idx], 1)
    lo, hi = np.nanquantile(boots, [0.025, 0.975], 0)
    return mean, lo, hi


def commit_table(frame) -> pl.DataFrame:
    """Per (lens, condition): n, committed (examples), share_committed, commit_mean with its 95%
    bootstrap CI (commit_lo, commit_hi) and commit_median, over committed examples only (null if
    none), and `context` when the frame has it."""
    frame = to_frame(frame)
    per_ex = frame.unique(["lens", "condition", "example"], maintain_order=True)
    done = pl.col("commit_layer").filter(pl.col("commit_layer") >= 0)
    extra = [pl.col("context").first()] if "context" in frame.columns else []
    out = per_ex.group_by(["lens", "condition"], maintain_order=True).agg(
        pl.len().alias("n"), (pl.col("commit_layer") >= 0).sum().alias("committed"),
        done.mean().alias("commit_mean"), done.median().alias("commit_median"),
        (pl.col("commit_layer") >= 0).mean().alias("share_committed"), done.alias("_done"), *extra)
    cis = [_bootstrap_rows(d)[1:] if len(d) else (None, None) for d in out["_done"].to_list()]
    return out.drop("_done").with_columns(
        pl.Series("commit_lo", [None if lo is None else float(lo[0]) for lo, _ in cis], pl.Float64),
        pl.Series("commit_hi", [None if hi is None else float(hi[0]) for _, hi in cis], pl.Float64))


def _order(frame: pl.DataFrame, col: str) -> list:
    return frame.get_column(col).unique(maintain_order=True).to_list()


def _tenth(v: float) -> int:
    """The tenth of [0, 1] that v lies in (1.0 counts in the top one)."""
    return min(9, max(0, int(v * 10)))


def _shade(level: int) -> str:
    return f"{'black' if level >= 7 else 'white'} on {SCALE[level]}"


def _chance(frame: pl.DataFrame, n_choices) -> tuple[float | None, str]:
    """Mean 1/number of choices over the frame's examples, and how to say it."""
    if n_choices is None and "n_choices" in frame.columns and frame["n_choices"].null_count() < len(frame):
        per = frame.unique(["lens", "condition", "example"])["n_choices"].drop_nulls()
        if per.n_unique() > 1:
            c = float((1 / per).mean())
            return c, f"chance = 1/(number of choices): {1 / per.max():.2f}–{1 / per.min():.2f}, mean {c:.2f}"
        n_choices = int(per[0])
    if n_choices is None:
        return None, "chance = 1/(number of choices)"
    return 1 / n_choices, f"chance = 1/{n_choices} = {1 / n_choices:.2f}"


def _layout(n_layers: int, avail: int) -> tuple[int, int]:
    """(layers per column, cell width): every layer if 2-wide cells fit, else the fewest layers
    per column that do; 3-wide cells (room for a percentage) when those fit too."""
    k = 1
    while -(-n_layers // k) * 2 > avail and k < n_layers:
        k += 1
    return k, 3 if -(-n_layers // k) * 3 <= avail else 2


def _ticks(labels: list[str], cw: int) -> str:
    """One header line: label i over column i (ending with it when it fits in the cell), at every
    `step`-th column, the smallest step in 1, 2, 5, 10, ... that leaves a space between labels."""
    need = max(map(len, labels)) + 1
    step = next(s for s in (1, 2, 5, 10, 20, 50, 100, 10 ** 9) if s * cw >= need)
    line = ""
    for i in range(0, len(labels), step):
        line = line.ljust(i * cw + max(0, cw - len(labels[i]))) + labels[i]
    return line


def heatmap(data, prob: str = "choice_p_gold", width: int = 100, n_choices: int | None = None,
            switch: str | None = None) -> list:
    """The layers x conditions heatmap as rich Text lines no wider than `width`: a title saying
    what is shown and the chance level, per lens one row per condition and one column per layer
    (or per bin of k layers, the mean of their means, when one column per layer does not fit),
    cells shaded by the tenth of mean `prob` they lie in, a header of layer numbers (bin ranges
    "a–b" when binned), the legend and a caption (naming the other quantity and `switch`, how to
    show it; default: the `prob` argument)."""
    from rich.text import Text

    frame = to_frame(data)
    _check(frame, prob)
    means = layer_means(frame, prob)
    grid = {(r["lens"], r["condition"], r["layer"]): r["mean"] for r in means.iter_rows(named=True)}
    layers = sorted({k[2] for k in grid})
    first, last = layers[0], layers[-1]
    lenses = _order(frame, "lens")
    rows = [(lens, c) for lens in lenses for c in _order(means.filter(pl.col("lens") == lens), "condition")]
    label_w = max(len("layers"), min(max(len(c) for _, c in rows) + 2, max(12, width // 3)))
    k, cw = _layout(last - first + 1, width - label_w - 1)
    bins = [list(range(a, min(last, a + k - 1) + 1)) for a in range(first, last + 1, k)]
    chance, chance_text = _chance(frame, n_choices)
    title = {"choice_p_gold": f"mean P(gold) renormalised over the choices, by layer ({chance_text})",
             "p_gold": "mean full-vocabulary P(gold label), by layer"}[prob]
    lines = [Text(t, style="bold") for t in textwrap.wrap(title, width, break_on_hyphens=False)]
    labels = [f"{b[0]}–{b[-1]}" if len(b) > 1 else str(b[0]) for b in bins]
    lines.append(Text(("layers" if k > 1 else "layer").rjust(label_w) + " " + _ticks(labels, cw), style="dim"))
    for lens in lenses:
        lines.append(Text(f"{lens} lens", style="bold"))
        for _, cond in (r for r in rows if r[0] == lens):
            name = cond if len(cond) + 2 <= label_w else cond[:label_w - 3] + "…"
            line = Text("  " + name.ljust(label_w - 2) + " ")
            for b in bins:
                vals = [grid[(lens, cond, x)] for x in b if grid.get((lens, cond, x)) is not None]
                if not vals:
                    line.append(" " * cw)
                    continue
                v = sum(vals) / len(vals)
                line.append(f"{round(100 * v):>3d}" if cw == 3 else f"{_tenth(v):>2d}", style=_shade(_tenth(v)))
            lines.append(line)
    legend = Text("scale".rjust(label_w) + " ", style="dim")
    for d in range(10):
        legend.append(f"{10 * d:>3d}" if cw == 3 else f"{d:>2d}", style=_shade(d))
    lines.append(legend)
    key = ("shade: P from x% to x+10%" if cw == 3 else "shade d: P from d/10 to (d+1)/10") + \
        (f"; chance: shade {_tenth(chance)}" if prob == "choice_p_gold" and chance else "")
    if len(legend) + 1 + len(key) <= width:
        legend.append(" " + key, style="dim")
    else:
        lines += [Text(t, style="dim") for t in textwrap.wrap(key, width, break_on_hyphens=False)]
    cells = "per cent" if cw == 3 else "the shade's digit"
    binned = f"; {k} layers per column (their mean), too narrow for one per layer" if k > 1 else ""
    other = {"choice_p_gold": "full-vocabulary P(gold)", "p_gold": "P(gold) renormalised over the choices"}[prob]
    other += ": " + (switch or f"prob=\"{next(q for q in PROBS if q != prob)}\"")
    caption = f"cells: {cells}{binned}; layer 0 = embeddings; other quantity: {other}"
    return lines + [Text(t, style="dim") for t in textwrap.wrap(caption, width, break_on_hyphens=False)]


def _not_probed(coverage: dict, present: list) -> list[str]:
    """"condition (0 of N test examples: why)" for each condition of `coverage` without rows."""
    return [f"{c} ({v.get('probed', 0)} of {v.get('of', '?')} test examples"
            + (f": {v['why']})" if v.get("why") else ")") for c, v in coverage.items() if c not in present]


def render_report(data, console=None, prob: str = "choice_p_gold", *, n_choices: int | None = None,
                  coverage: dict | None = None, switch: str | None = None):
    """Print the layerwise heatmap of mean `prob` (`heatmap`, fitted to the console's width) and
    the commit-layer table: per lens and condition the context the label was read after (frame
    column `context`), examples probed (of those asked for, from `coverage`), share committed,
    mean commit layer with a 95% bootstrap CI and the median.

    `coverage`: {condition: {"probed": int, "of": int, "why": str}}; conditions in it with no
    rows in the frame are named as not probed, with the reason. `n_choices` gives the chance
    level when the frame has no `n_choices` column; `switch` says how to show the other quantity
    (see `heatmap`). Returns the rich Console used (pass `Console(record=True)` to capture the text).
    """
    from rich import box
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    frame = to_frame(data)
    _check(frame, prob)
    console = console or Console()
    coverage = coverage or {}
    for line in heatmap(frame, prob, width=console.width, n_choices=n_choices, switch=switch):
        console.print(line)
    commits = commit_table(frame)
    lenses = _order(frame, "lens")
    has_ctx = "context" in commits.columns
    console.print(Text("commit layer: the earliest layer from which the gold choice is top-1 among the choices "
                       "through the last layer", style="bold"))
    ct = Table(box=box.SIMPLE_HEAD, pad_edge=False)
    cols = (["lens"] if len(lenses) > 1 else []) + ["condition"] + (["context"] if has_ctx else []) + \
        ["probed", "committed", "mean [95% CI]", "median"]
    for col in cols:
        ct.add_column(col, justify="left" if col in ("lens", "condition", "context") else "right",
                      max_width=max(16, console.width // 3) if col == "condition" else None,
                      no_wrap=col != "condition")
    fmt = lambda v: "–" if v is None else f"{v:.1f}"  # noqa: E731
    for r in commits.iter_rows(named=True):
        cov = coverage.get(r["condition"])
        probed = f"{cov['probed']}/{cov['of']}" if cov and cov.get("of") else str(r["n"])
        mean = fmt(r["commit_mean"]) + ("" if r["commit_lo"] is None else
                                        f" [{r['commit_lo']:.1f}, {r['commit_hi']:.1f}]")
        cells = ([r["lens"]] if len(lenses) > 1 else []) + [Text(str(r["condition"]))] + \
            ([str(r["context"])] if has_ctx else []) + \
            [probed, f"{100 * r['share_committed']:.0f}%", mean, fmt(r["commit_median"])]
        ct.add_row(*cells)
    console.print(ct)
    notes = ["mean, median: over committed examples; 95% CI: bootstrap over them"]
    if coverage:
        notes.append("probed: examples whose label could be read, of the test examples asked for")
    console.print(Text("; ".join(notes), style="dim"))
    for line in _not_probed(coverage, _order(frame, "condition")):
        console.print(Text(f"not probed: {line}", style="yellow"))
    if "tied" in frame.columns:
        for lens in lenses:
            per_ex = frame.filter(pl.col("lens") == lens).unique(["condition", "example"])
            if n := int(per_ex["tied"].sum()):
                console.print(Text(f"{lens} lens: {n} of {len(per_ex)} examples score two choices on identical "
                                   "tokens (a first-token readout of labels sharing a first token): they tie at "
                                   "every layer and never commit", style="yellow"))
    return console


def plot_report(data, path, prob: str = "choice_p_gold", *, n_choices: int | None = None,
                coverage: dict | None = None) -> Path:
    """PNG of mean `prob` vs layer with a 95% bootstrap band over examples, one line per condition
    (one colour per condition across panels), one panel per lens (Figure 2 kind); the chance level
    1/number of choices on the renormalised quantity; conditions in `coverage` with no rows named
    as not probed in a footnote."""
    from matplotlib.figure import Figure  # no pyplot: no global state, no GUI backend
    from matplotlib.ticker import MaxNLocator

    frame = to_frame(data)
    _check(frame, prob)
    lenses, conds = _order(frame, "lens"), _order(frame, "condition")
    colours = {c: f"C{i % 10}" for i, c in enumerate(conds)}
    fig = Figure(figsize=(4.6 * len(lenses) + 2.4, 4.0), dpi=110, layout="constrained")
    axes = fig.subplots(1, len(lenses), squeeze=False, sharey=True)[0]
    chance, _ = _chance(frame, n_choices)
    what = {"choice_p_gold": "P(gold), renormalised over the choices", "p_gold": "P(gold), full vocabulary"}[prob]
    for ax, lens in zip(axes, lenses):
        sub = frame.filter(pl.col("lens") == lens)
        for cond in _order(sub, "condition"):
            wide = sub.filter(pl.col("condition") == cond).pivot(on="layer", index="example", values=prob)
            layers = sorted(int(c) for c in wide.columns if c != "example")
            mat = wide.select([str(x) for x in layers]).to_numpy()
            mean, lo, hi = _bootstrap_rows(mat)
            ax.fill_between(layers, lo, hi, color=colours[cond], alpha=0.18, lw=0)
            ax.plot(layers, mean, marker="o", ms=2.5, lw=1.4, color=colours[cond],
                    label=f"{cond} (n = {len(mat)})")
        if prob == "choice_p_gold" and chance is not None:
            ax.axhline(chance, color="#8c8c8c", ls="--", lw=1, zorder=0)
            ax.text(0.99, chance - 0.01, f"chance {chance:.2f}", transform=ax.get_yaxis_transform(), fontsize=7,
                    color="#6c6c6c", ha="right", va="top")
        ax.set_title(f"{lens} lens", fontsize=10)
        ax.set_xlabel("layer (0 = embeddings)")
        ax.set_ylim(0, 1)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(f"mean {what}\nband: 95% bootstrap CI over examples", fontsize=9)
    handles, labels = [], []
    for ax in axes:  # every condition once, in input order, whichever panel has it
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
    fig.legend(handles, labels, loc="outside right upper", fontsize=8, frameon=False)
    if missing := _not_probed(coverage or {}, conds):
        fig.supxlabel("not probed: " + "; ".join(missing), fontsize=7, color="#c44e52")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path
