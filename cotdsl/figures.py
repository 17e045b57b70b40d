"""Paper-grade figures from a run folder's parquet files (never from models): PNG for a glance,
PDF for the paper. One style for all: accuracy on a fixed 0-100 axis with the chance line, so a
small difference is not drawn as a large one; every interval says what it is.

    accuracy.{png,pdf}        per condition: accuracy with a 95% bootstrap CI over test examples,
                              Δ vs the no-rationale baseline with its paired 95% CI, chance, n
    sweep_<family>.{png,pdf}  accuracy vs the swept parameter with CI bands, the unperturbed target
                              (e.g. `after` for a `mask` sweep, drawn at p = 0) and the baseline
    training_loss.{png,pdf}   training loss per step, one line per condition (mean over seeds)
    ig_highlights.{png,pdf}   a run with a rank job (`keytokens(..., by: ig)`): a few rationales,
                              words shaded by IG attribution, the data's highlights underlined,
                              IG's top-k in bold; the title gives `ig_agreement`'s top-k overlap
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
    ig = [(run_dir / f).read_bytes().hex() for f in IG_FILES if (run_dir / f).exists()]
    digest = hashlib.sha256(json.dumps([__doc__, summary.to_dicts(), curves.to_dicts(), ig], default=str,
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
    written += ig_highlights(run_dir, out_dir)
    stamp.write_text("\n".join([digest] + [p.name for p in written]))
    return written


# ---- IG attribution next to the data's highlights ------------------------------------------------
IG_FILES = ("ig.json", "highlights.json")  # the rank job's IG results and the ranked examples' highlights


def save_highlights(train_jsonl: Path, run_dir: Path) -> None:
    """`highlights.json` {ex_id: highlights} of the examples a rank job attributed (its teacher
    job's train.jsonl): what `ig_agreement` and `ig_highlights` compare IG with."""
    from .cache import atomic_write_json

    marks = {}
    for line in Path(train_jsonl).read_text(encoding="utf-8").splitlines():
        d = json.loads(line)
        if d.get("highlights"):
            marks[d["id"]] = list(d["highlights"])
    atomic_write_json(run_dir / "highlights.json", marks)


def _marked(words: list[str], highlights) -> list[bool]:
    """Which rationale words are highlights, as `keytokens(..., by: field(highlights))` decides
    (case and punctuation ignored, every occurrence)."""
    from types import SimpleNamespace

    from .perturb import rank_words

    ex = SimpleNamespace(id="", highlights=tuple(highlights), meta={}, rationale=" ".join(words))
    return [s > 0 for s in rank_words(ex, "field:highlights", words)]


def _agreement_rows(run_dir: Path) -> tuple[list[dict], dict]:
    """Per attributed example with highlights in its rationale: words, scores, which words are
    highlights and IG's top k (k = how many words are highlights; ties: earlier word first)."""
    rows = json.loads((run_dir / "ig.json").read_text())
    marks = json.loads((run_dir / "highlights.json").read_text())
    out, skipped = [], {"degenerate": 0, "no_highlights": 0}
    for r in rows:
        hl = _marked(r["words"], marks.get(r["ex_id"]) or ())
        k = sum(hl)
        if not k or k == len(hl):  # nothing to find, or every word: overlap says nothing
            skipped["no_highlights"] += 1
        elif r.get("degenerate"):  # f(x) ~ f(baseline): the scores' order is noise (docs/attribution.md)
            skipped["degenerate"] += 1
        else:
            order = sorted(range(len(hl)), key=lambda i: (-r["word_scores"][i], i))
            top = set(order[:k])
            out.append({"ex_id": r["ex_id"], "words": r["words"], "scores": r["word_scores"], "highlight": hl,
                        "top": [i in top for i in range(len(hl))], "k": k,
                        "overlap": sum(hl[i] for i in top) / k, "random": k / len(hl)})
    return out, skipped


def ig_agreement(run_dir: Path) -> dict | None:
    """How well IG's ranking finds the data's highlights, over the rank job's examples.

    Per example: k = the number of its rationale words that are highlights, overlap = the share
    of IG's k top-scored words that are highlights (precision = recall at k); a random ranking's
    expected overlap is k / (words in the rationale). Returns the means over examples, their
    difference with a paired 95% bootstrap CI over examples, and the examples left out
    (degenerate IG items, whose scores are noise; rationales with no highlighted word, or only
    highlighted words). None when the run folder has no ig.json or highlights.json."""
    from .stats import paired_bootstrap

    if not all((run_dir / f).exists() for f in IG_FILES):
        return None
    rows, skipped = _agreement_rows(run_dir)
    out = {"n": len(rows), **skipped, "overlap": None, "random": None, "delta": None, "delta_lo": None,
           "delta_hi": None, "k_mean": None}
    if rows:
        d, lo, hi = paired_bootstrap([r["overlap"] for r in rows], [r["random"] for r in rows])
        out.update(overlap=sum(r["overlap"] for r in rows) / len(rows), random=sum(r["random"] for r in rows) / len(rows),
                   delta=d, delta_lo=lo, delta_hi=hi, k_mean=sum(r["k"] for r in rows) / len(rows))
    return out


def agreement_line(a: dict) -> str:
    """One sentence for the terminal report."""
    left = f"; left out: {a['degenerate']} degenerate, {a['no_highlights']} without highlights"
    if not a["n"]:
        return f"IG vs highlights: no example to compare{left}"
    return (f"IG vs highlights: top-k overlap {a['overlap']:.2f} vs random {a['random']:.2f} (k/len), "
            f"Δ {a['delta']:+.2f} [95% CI {a['delta_lo']:+.2f}, {a['delta_hi']:+.2f}] over {a['n']} rationales "
            f"(k = the rationale's highlighted words, mean {a['k_mean']:.1f}){left}")


def ig_highlights(run_dir: Path, out_dir: Path | None = None, n: int = 4) -> list[Path]:
    """`ig_highlights.{png,pdf}`: the first `n` compared rationales of `ig_agreement`, one panel
    each: words shaded by IG attribution (interp.view's colours, scaled per example), the data's
    highlights underlined, IG's top-k words in bold, the example's overlap beside its id."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import LinearSegmentedColormap, Normalize
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    from interp.view import score_rgb

    a = ig_agreement(run_dir)
    if a is None or not a["n"]:
        return []
    rows = _agreement_rows(run_dir)[0][:n]
    out_dir = out_dir or run_dir / "figures"
    width, margin, fs, line_h = 7.5, 0.3, 9.5, 0.27  # inches, points
    fig = Figure(figsize=(width, 2))
    renderer = FigureCanvasAgg(fig).get_renderer()
    rgb = lambda c: tuple(x / 255 for x in c)  # noqa: E731
    placed, y = [], 0.55  # (text, style, x, y) in inches from the top-left; y: below the title
    for r in rows:
        placed.append((f"{r['ex_id']}:  IG top-{r['k']} ∩ highlights = {round(r['overlap'] * r['k'])}/{r['k']}"
                       f"  (random {r['random']:.2f})", dict(fontsize=fs - 1, color=GREY), margin, y))
        y += line_h
        scale = max(abs(s) for s in r["scores"]) or 1.0
        x = margin
        for w, s, hl, top in zip(r["words"], r["scores"], r["highlight"], r["top"]):
            c = score_rgb(s, scale)
            style = dict(fontsize=fs, fontweight="bold" if top else "normal",
                         color="black" if sum(c) / 3 > 140 else "white",
                         bbox=dict(boxstyle="square,pad=0.12", fc=rgb(c), ec="none"))
            t = fig.text(0, 0, w, **style)
            wi = t.get_window_extent(renderer).width / fig.dpi
            t.remove()
            if x > margin and x + wi > width - margin:
                x, y = margin, y + line_h
            placed.append((w, {**style, "_underline": hl, "_w": wi}, x, y))
            x += wi + 0.07
        y += line_h * 1.4
    height = y + 0.6  # the colour bar and its label below the last panel
    fig.set_size_inches(width, height)
    for text, style, x, yy in placed:
        under, wi = style.pop("_underline", False), style.pop("_w", 0)
        fig.text(x / width, 1 - yy / height, text, va="top", ha="left", **style)
        if under:
            base = 1 - (yy + fs / 72 * 1.25) / height
            fig.add_artist(Line2D([x / width, (x + wi) / width], [base, base], color="black", lw=1.6))
    cmap = LinearSegmentedColormap.from_list("attr", [rgb(score_rgb(v, 1.0)) for v in (-1.0, 0.0, 1.0)])
    cax = fig.add_axes([0.3, 0.42 / height, 0.4, 0.1 / height])
    cb = fig.colorbar(ScalarMappable(Normalize(-1, 1), cmap), cax=cax, orientation="horizontal")
    cb.set_label("IG attribution to log p(label) / the example's largest |score|  (red raises, blue lowers)",
                 fontsize=7)
    cb.ax.tick_params(labelsize=7)
    fig.suptitle(f"IG attribution vs the data's highlights (underlined); bold: IG's top k, k = highlighted words\n"
                 f"top-k overlap {a['overlap']:.2f} vs random {a['random']:.2f}, Δ {a['delta']:+.2f} "
                 f"[95% CI {a['delta_lo']:+.2f}, {a['delta_hi']:+.2f}] over {a['n']} rationales",
                 fontsize=8.5, y=1 - 0.08 / height, va="top")
    return _save(fig, out_dir, "ig_highlights")
