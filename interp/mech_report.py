"""Terminal reports (rich) and PNG figures (matplotlib) for DLA, activation patching and attention
to the rationale.

Each `render_*` takes one result or `{condition: result}` and prints to a rich Console (returned;
pass `Console(record=True)` to capture the text). Each `plot_*` writes a PNG and returns its path.
Cells are shaded: diverging (blue negative, red positive) for logit contributions, dark-to-light
for fractions in [0, 1].
"""
from __future__ import annotations

from pathlib import Path


def _as_dict(results, kind) -> dict:
    if isinstance(results, kind):
        return {"": results}
    if isinstance(results, dict) and results and all(isinstance(v, kind) for v in results.values()):
        return {str(k): v for k, v in results.items()}
    raise ValueError(f"expected a {kind.__name__} or a non-empty dict of them")


def _diverging(v: float, vmax: float) -> str:
    """Background for a signed value: white at 0, red for positive, blue for negative."""
    t = 0.0 if vmax <= 0 else max(-1.0, min(1.0, v / vmax))
    end = (200, 40, 40) if t > 0 else (40, 70, 200)
    r, g, b = (round(255 + (c - 255) * abs(t)) for c in end)
    return f"{'white' if abs(t) > 0.6 else 'black'} on rgb({r},{g},{b})"


def _sequential(v: float) -> str:
    """Background for a fraction: dark blue (<= 0) to yellow (>= 1)."""
    t = max(0.0, min(1.0, v))
    r, g, b = (round(a + (c - a) * t) for a, c in zip((20, 30, 90), (250, 220, 60)))
    return f"{'black' if t > 0.55 else 'white'} on rgb({r},{g},{b})"


def _title(console, text: str, note: str | None = None):
    """A bold title line (not a table title: that would wrap to the table's width) and a dim note."""
    from rich.text import Text

    console.print(Text(text, style="bold"))
    if note:
        console.print(Text(note, style="dim"))


def _conditions(results, kind, console):
    """-> (console, [(" [condition]" or "", result)]) for one result or {condition: result}."""
    from rich.console import Console

    return console or Console(), [(f" [{c}]" if c else "", r) for c, r in _as_dict(results, kind).items()]


# ---- DLA ---------------------------------------------------------------------------------------
def render_dla(results, console=None, top_k: int = 8):
    """Per condition: a layers x (attention, MLP) table of mean contributions to the gold logit
    difference (shaded), the embedding / bias rows and the model's own difference, then the
    top-k heads by mean |contribution|."""
    from rich.table import Table
    from rich.text import Text

    from interp.dla import DLAResult

    console, items = _conditions(results, DLAResult, console)
    for name, res in items:
        n = res.logit_diff.shape[0]
        _title(console, f"DLA{name}: mean contribution to the gold - distractors logit difference ({n} examples)",
               f"model's own {float(res.logit_diff.mean()):+.3f}; the components add up to it within {res.error():.1e}")
        lt = res.layer_table()  # [L, 2]
        vmax = float(lt.abs().max()) or 1.0
        tab = Table()
        for col in ("layer", "attn", "mlp", "attn+mlp"):
            tab.add_column(col, justify="right")
        for i in range(res.num_layers):
            a, m = float(lt[i, 0]), float(lt[i, 1])
            tab.add_row(str(i), Text(f"{a:+.3f}", style=_diverging(a, vmax)),
                        Text(f"{m:+.3f}", style=_diverging(m, vmax)), f"{a + m:+.3f}")
        for label, val in (("embed", res.embed), ("pos_embed", res.pos_embed), ("final bias", res.final_bias)):
            if label == "pos_embed" and not bool(val.abs().max() > 0):
                continue
            tab.add_row(label, "", "", f"{float(val.mean()):+.3f}")
        tab.add_row(Text("total", style="bold"), "", "", Text(f"{float(res.total().mean()):+.3f}", style="bold"))
        console.print(tab)
        heads = res.heads.mean(0)
        hv = float(heads.abs().max()) or 1.0
        _title(console, f"top {min(top_k, heads.numel())} heads{name} by mean |contribution|")
        ht = Table()
        for col, just in (("rank", "right"), ("head", "left"), ("mean", "right"), ("sd", "right"),
                          ("share of |attn|", "right")):
            ht.add_column(col, justify=just)
        total_attn = float(res.heads.mean(0).abs().sum()) or 1.0
        for r, (layer, h, v) in enumerate(res.top_heads(top_k), 1):
            sd = float(res.heads[:, layer, h].std()) if n > 1 else 0.0
            ht.add_row(str(r), f"L{layer}H{h}", Text(f"{v:+.3f}", style=_diverging(v, hv)), f"{sd:.3f}",
                       f"{100 * abs(v) / total_attn:.0f}%")
        console.print(ht)
    return console


def plot_dla(results, path) -> Path:
    """PNG: per condition, per-layer attention vs MLP bars and a layers x heads heatmap."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    from interp.dla import DLAResult

    results = _as_dict(results, DLAResult)
    fig = Figure(figsize=(10, 3.4 * len(results)), dpi=110, layout="constrained")
    axes = fig.subplots(len(results), 2, squeeze=False)
    for (cond, res), (ax, hx) in zip(results.items(), axes):
        lt = res.layer_table().numpy()
        x = range(res.num_layers)
        ax.bar([i - 0.2 for i in x], lt[:, 0], width=0.4, label="attention", color="C0")
        ax.bar([i + 0.2 for i in x], lt[:, 1], width=0.4, label="MLP", color="C1")
        ax.axhline(0, color="black", lw=0.6)
        ax.set_xlabel("block")
        ax.set_ylabel("mean logit-diff contribution")
        ax.set_title(f"DLA {cond}".strip() + f" (own diff {float(res.logit_diff.mean()):+.2f})")
        ax.legend(fontsize=8)
        heads = res.heads.mean(0).numpy()
        v = float(abs(heads).max()) or 1.0
        im = hx.imshow(heads, cmap="RdBu_r", vmin=-v, vmax=v, aspect="auto")
        hx.set_xlabel("head")
        hx.set_ylabel("block")
        hx.set_title("per head")
        _int_ticks(hx)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        fig.colorbar(im, ax=hx)
    return _save(fig, path)


# ---- activation patching -----------------------------------------------------------------------
def render_patching(results, console=None):
    """Per condition: rows (resid row i / block i) x site kinds, the restored fraction of the mean
    gold logit difference, shaded 0 -> 1."""
    from rich.table import Table
    from rich.text import Text

    from interp.patching import PatchResult

    console, items = _conditions(results, PatchResult, console)
    for name, res in items:
        _title(console, f"activation patching{name} ({res.positions} positions): restored fraction "
                        f"(patched - corrupted) / (clean - corrupted)",
               f"mean logit difference: clean {float(res.clean.mean()):+.3f}, corrupted "
               f"{float(res.corrupted.mean()):+.3f} ({res.clean.shape[0]} examples)")
        kinds = list(res.patched)
        frac = {k: res.restored_mean(k).tolist() for k in kinds}
        tab = Table()
        tab.add_column("layer", justify="right")
        for k in kinds:
            tab.add_column("resid (row)" if k == "resid" else k, justify="right")
        rows = max(len(v) for v in frac.values())
        for i in range(rows):
            cells = [Text(f"{frac[k][i]:.2f}", style=_sequential(frac[k][i])) if i < len(frac[k]) else Text("")
                     for k in kinds]
            tab.add_row(str(i), *cells)
        console.print(tab)
        console.print(Text("resid row 0 = embeddings, row i = output of block i-1; attn/mlp row i = block i",
                           style="dim"))
    return console


def plot_patching(results, path) -> Path:
    """PNG: restored fraction vs layer, one line per site kind, one panel per condition."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    from interp.patching import PatchResult

    results = _as_dict(results, PatchResult)
    fig = Figure(figsize=(5 * len(results), 3.6), dpi=110, layout="constrained")
    axes = fig.subplots(1, len(results), squeeze=False)[0]
    for ax, (cond, res) in zip(axes, results.items()):
        for j, k in enumerate(res.patched):
            y = res.restored_mean(k).tolist()
            # resid row i sits after block i-1: put it at x = i - 0.5 so it lines up with the blocks
            x = [i - 0.5 for i in range(len(y))] if k == "resid" else list(range(len(y)))
            ax.plot(x, y, marker="o", ms=3, label=k, color=f"C{j}")
        ax.axhline(0, color="black", lw=0.5)
        ax.axhline(1, color="grey", lw=0.5, ls="--")
        ax.set_xlabel("block (resid: between blocks)")
        ax.set_ylabel("restored fraction")
        ax.set_title(f"patching {cond}".strip() + f" ({res.positions})")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend(fontsize=8)
    return _save(fig, path)


# ---- attention to the rationale -----------------------------------------------------------------
def render_attention(results, console=None, top_k: int = 5, n_boot: int = 2000, seed: int = 0):
    """Per condition: a layers x spans table of the label position's mean attention mass with 95%
    bootstrap CIs (heads averaged per example), then the top-k heads by mass on the rationale."""
    from rich.table import Table
    from rich.text import Text

    from interp.attention import AttentionResult

    console, items = _conditions(results, AttentionResult, console)
    for name, res in items:
        _title(console, f"attention of the label position{name}: mean mass per span ({res.mass.shape[0]} examples)",
               "heads averaged per example; [95% bootstrap CI] over examples")
        mean, lo, hi = res.ci("layer", n_boot=n_boot, seed=seed)
        tab = Table()
        tab.add_column("layer", justify="right")
        for s in res.names:
            tab.add_column(s, justify="right")
        for i in range(mean.shape[0]):
            tab.add_row(str(i), *[Text(f"{float(mean[i, k]):.2f} [{float(lo[i, k]):.2f}, {float(hi[i, k]):.2f}]",
                                       style=_sequential(float(mean[i, k]))) for k in range(len(res.names))])
        console.print(tab)
        span = "rationale" if "rationale" in res.names else res.names[0]
        hm = res.span(span).mean(0)  # [L, H]
        H = hm.shape[1]
        order = hm.flatten().argsort(descending=True)[:top_k]
        _title(console, f"top {len(order)} heads{name} by mass on the {span}")
        ht = Table()
        for col in ("rank", "head", f"mass on {span}"):
            ht.add_column(col, justify="right")
        for r, idx in enumerate(order.tolist(), 1):
            ht.add_row(str(r), f"L{idx // H}H{idx % H}", f"{float(hm.flatten()[idx]):.3f}")
        console.print(ht)
    return console


def plot_attention(results, path, n_boot: int = 2000, seed: int = 0) -> Path:
    """PNG: per condition, mean mass per span vs layer with 95% bootstrap bands, and a layers x
    heads heatmap of the mass on the rationale."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    from interp.attention import AttentionResult

    results = _as_dict(results, AttentionResult)
    fig = Figure(figsize=(10, 3.4 * len(results)), dpi=110, layout="constrained")
    axes = fig.subplots(len(results), 2, squeeze=False)
    for (cond, res), (ax, hx) in zip(results.items(), axes):
        mean, lo, hi = res.ci("layer", n_boot=n_boot, seed=seed)
        x = list(range(mean.shape[0]))
        for k, s in enumerate(res.names):
            ax.plot(x, mean[:, k].tolist(), marker="o", ms=3, label=s, color=f"C{k}")
            ax.fill_between(x, lo[:, k].tolist(), hi[:, k].tolist(), alpha=0.2, color=f"C{k}")
        ax.set_ylim(0, 1)
        ax.set_xlabel("block")
        ax.set_ylabel("attention mass of the label position")
        ax.set_title(f"attention {cond}".strip())
        ax.legend(fontsize=8)
        span = "rationale" if "rationale" in res.names else res.names[0]
        im = hx.imshow(res.span(span).mean(0).numpy(), cmap="viridis", vmin=0, vmax=1, aspect="auto")
        hx.set_xlabel("head")
        hx.set_ylabel("block")
        hx.set_title(f"mass on the {span}, per head")
        _int_ticks(hx)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        fig.colorbar(im, ax=hx)
    return _save(fig, path)


def _int_ticks(*axes):
    from matplotlib.ticker import MaxNLocator

    for ax in axes:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))


def _save(fig, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path
