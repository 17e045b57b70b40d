"""`runs/<exp>/report.html`: one self-contained page to share a run (`cotdsl run` and `cotdsl
report` write it). Built from the run folder's files alone (no model, no torch): the results
table (tables.py: the numbers `--format latex` prints), the expectations with their verdicts, the
logit/tuned-lens heatmap (conditions × layers, mean P(gold) renormalised over the choices, as the
terminal heatmap), every PNG of figures/ inlined as base64, environment.json and the spec text.

Readable offline: no external URL anywhere (figures are data: URIs, the CSS is inline, there is
no script), and a Content-Security-Policy meta tag makes a browser refuse anything else. Every
string from the run goes through Jinja2's autoescaping (templates/report.html.j2).
"""
from __future__ import annotations

import base64
import json
from datetime import datetime, timezone
from pathlib import Path

import polars as pl

from .errors import CotError

FILE = "report.html"
TEMPLATE = "report.html.j2"
# figures in reading order; any other PNG of figures/ follows by name
FIGURE_ORDER = ("accuracy", "sweep_", "layerwise_confidence", "training_loss", "ig_example", "dla", "patching",
                "attention")


def _results(run_dir: Path) -> dict | None:
    from .tables import build, read_summary

    summary = read_summary(run_dir)
    if not len(summary):
        return None
    notes = [f"{r['condition']}: {r['failed']} evaluation(s) did not finish: {r['cause'] or 'see failures/'}"
             for r in summary.filter(pl.col("failed") > 0).iter_rows(named=True)]
    notes += [f"{r['condition']}: {r['unparseable']} generated answer(s) named no choice (counted wrong)"
              for r in summary.filter(pl.col("unparseable") > 0).iter_rows(named=True)]
    return {"table": build(summary, run_dir.name), "notes": notes}


def _expectations(run_dir: Path) -> dict | None:
    from .expect import FILE as EXPECT, _num

    path = run_dir / EXPECT
    df = pl.read_parquet(path) if path.exists() else pl.DataFrame()
    if not len(df):
        return None
    extra = [k for k in ("student", "data") if df[k].n_unique() > 1] + \
        (["lens"] if df["lens"].drop_nulls().n_unique() > 0 else [])
    rows = []
    for r in df.iter_rows(named=True):
        tested, unit = r["estimate"] is not None, r["unit"]
        rows.append({"text": r["expectation"], "extra": [str(r[k] or "") for k in extra], "n": r["n"],
                     "estimate": f"{_num(r['estimate'], unit)} {unit}" if tested else "–",
                     "ci": f"[{_num(r['lo'], unit)}, {_num(r['hi'], unit)}] {100 * r['level']:.0f}%" if tested else "",
                     "p": ("<0.001" if r["p"] < 0.001 else f"{r['p']:.3f}") if tested else "",
                     "test": r["test"] or "", "verdict": r["verdict"], "note": r["note"]})
    return {"extra": extra, "rows": rows}


def _lens(run_dir: Path) -> dict | None:
    """Per lens: the layers and one row per condition label of (mean, background, text colour)."""
    from interp.report import SCALE, layer_means

    from .mech_report import _labels

    path = run_dir / "lens.parquet"
    df = pl.read_parquet(path) if path.exists() else pl.DataFrame()
    if not len(df):
        return None
    if "context" not in df.columns:
        df = df.with_columns(pl.lit("").alias("context"))  # older lens files: no tag
    df = df.with_columns(_labels(df, "condition").alias("condition"),
                         pl.concat_str([pl.col("seed"), pl.col("ex_id")], separator=":").alias("example"))
    means = layer_means(df, "choice_p_gold")
    layers = sorted(set(means["layer"]))
    blocks = []
    for (lens,), g in means.group_by("lens", maintain_order=True):
        grid = {(r["condition"], r["layer"]): r["mean"] for r in g.iter_rows(named=True)}
        rows = []
        for cond in g["condition"].unique(maintain_order=True):
            cells = []
            for layer in layers:
                v = grid.get((cond, layer))
                tenth = None if v is None else min(9, max(0, int(v * 10)))
                cells.append(None if v is None else {"text": f"{round(100 * v)}", "title": f"layer {layer}: {v:.3f}",
                                                     "bg": SCALE[tenth], "fg": "#000" if tenth >= 7 else "#fff"})
            rows.append({"label": cond, "cells": cells})
        blocks.append({"lens": lens, "rows": rows})
    return {"layers": layers, "blocks": blocks, "scale": [{"from": 10 * i, "bg": c, "fg": "#000" if i >= 7 else "#fff"}
                                                          for i, c in enumerate(SCALE)]}


def _figures(run_dir: Path) -> list[dict]:
    folder = run_dir / "figures"
    pngs = sorted(folder.glob("*.png")) if folder.is_dir() else []

    def rank(p: Path) -> tuple:
        return next((i for i, k in enumerate(FIGURE_ORDER) if p.stem.startswith(k)), len(FIGURE_ORDER)), p.name

    return [{"name": p.name, "data": base64.b64encode(p.read_bytes()).decode("ascii")}
            for p in sorted(pngs, key=rank) if not p.name.startswith(".")]


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def render(run_dir: Path) -> str:
    """The page's HTML for a run folder (a CotError when it is not one)."""
    from jinja2 import Environment, PackageLoader, StrictUndefined

    run_dir = Path(run_dir)
    env_json = _read_json(run_dir / "environment.json")
    spec = run_dir / "spec.cot"
    chance = None
    results = _results(run_dir)  # raises for a folder without summary.parquet
    if results is not None:
        s = pl.read_parquet(run_dir / "summary.parquet")
        values = {round(x, 4) for x in s["chance"].drop_nulls()} if "chance" in s.columns else set()
        chance = f"{values.pop():.2f}" if len(values) == 1 else None
    env = Environment(loader=PackageLoader("cotdsl", "templates"), autoescape=True, undefined=StrictUndefined,
                      trim_blocks=True, lstrip_blocks=True)
    return env.get_template(TEMPLATE).render(
        name=run_dir.name, folder=str(run_dir), results=results, expectations=_expectations(run_dir),
        lens=_lens(run_dir), chance=chance, figures=_figures(run_dir),
        environment=sorted((env_json or {}).items()) if isinstance(env_json, dict) else [],
        spec=spec.read_text(encoding="utf-8", errors="replace") if spec.exists() else None,
        generated=datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"))


def write(run_dir: Path) -> Path:
    """Write `run_dir/report.html` (atomically) and return its path."""
    from .cache import atomic_write_bytes

    if not (Path(run_dir) / "summary.parquet").exists():
        raise CotError.one(f"{run_dir} is not a cotdsl run folder (no summary.parquet)",
                           hint="give the folder `cotdsl run` wrote, e.g. runs/<experiment>")
    path = Path(run_dir) / FILE
    atomic_write_bytes(path, render(run_dir).encode("utf-8"))
    return path
