"""DLA, activation patching and attention in a run folder: the job outputs of `cotdsl/jobs/mech.py`
gathered into `runs/<experiment>/` and reported with `interp.mech_report`.

Files written by `collect` (polars-readable, rebuilt on every run like lens.parquet):
  dla.parquet        one row per dla job x example (job columns + interp.dla's parts)
  attention.parquet  one row per attention job x example x layer x head
  patch.parquet      one row per patch job x example; `pair` names it ("none -> after", or
                     "after: small -> small_sft" for a pair of students)
  mech_coverage.json per job: how many of the probe's examples it read, and why not the others
`print_mech` rebuilds interp's DLAResult / PatchResult / AttentionResult per condition (seeds
pooled: each seed's example is one row), prints the tables after the lens report and draws
figures/dla.png, patching.png and attention.png (only when the numbers changed).
"""
from __future__ import annotations

import json
from pathlib import Path

import polars as pl
from rich.console import Console

# the context a label was read after, when not the condition's own text (lens and interp reports)
CONTEXT_TAGS = {"gold": " [gold rationale]", "prompt": " [prompt only]"}
FILES = {"dla": "dla.parquet", "attention": "attention.parquet", "patch": "patch.parquet"}
FIGURES = {"dla": "dla.png", "attention": "attention.png", "patch": "patching.png"}


def collect(plan, store, run_dir: Path) -> None:
    """Write the mechanism parquet files and mech_coverage.json for every finished job."""
    from .cache import atomic_write_json, atomic_write_parquet

    exp = plan.experiment
    frames: dict[str, list] = {k: [] for k in FILES}
    coverage = []
    for job in plan.jobs:
        if job.stage not in FILES or not store.done(job.stage, job.key):
            continue
        path = store.path(job.stage, job.key)
        df = pl.read_parquet(path / FILES[job.stage])
        cols = _pair_cols(job, exp.name) if job.stage == "patch" else job.columns(exp.name)
        frames[job.stage].append(df.with_columns(*[pl.lit(v).alias(k) for k, v in cols.items()]))
        info = json.loads((path / "job.json").read_text())["info"]
        coverage.append({"stage": job.stage, **cols, **info})
    for stage, name in FILES.items():
        (run_dir / name).unlink(missing_ok=True)  # never a previous run's numbers
        if frames[stage]:
            atomic_write_parquet(run_dir / name, pl.concat(frames[stage], how="diagonal_relaxed"))
    atomic_write_json(run_dir / "mech_coverage.json", coverage)


def _pair_cols(job, exp_name: str) -> dict:
    a, b = job.from_condition.name, job.to_condition.name
    sa, sb = job.from_student.name, job.to_student.name
    pair = f"{a} -> {b}" if sa == sb else f"{b}: {sa} -> {sb}"
    return {"experiment": exp_name, "pair": pair, "from": a, "to": b, "from_student": sa, "student": sb,
            "data": job.source.name, "seed": job.seed}


def print_mech(run_dir: Path, console: Console, png: bool = True, only: tuple[str, ...] = tuple(FILES)) -> list[Path]:
    """The DLA, patching and attention reports of a run folder (those it has), after the lens
    report; `only` picks some of "dla", "patch", "attention". Returns the figures written."""
    from rich.markup import escape

    cov = run_dir / "mech_coverage.json"
    for c in json.loads(cov.read_text()) if cov.exists() else []:
        if c["stage"] in only and c.get("of") is not None and c["examples"] < c["of"]:
            why = [f"{c['unparsed']} generated no parseable answer" if c.get("unparsed") else "",
                   f"{c['no_rationale']} have no gold rationale" if c.get("no_rationale") else "",
                   f"{c['no_rationale_span']} have no rationale before the label" if c.get("no_rationale_span")
                   else ""]
            what = c.get("pair") or c["condition"]
            console.print(f"[yellow]{c['stage']} {escape(what)} · {escape(c['student'])} · seed {c['seed']}[/]: "
                          f"{c['examples']} of {c['of']} test examples read ({'; '.join(w for w in why if w)})")
    written = []
    for stage in ("dla", "patch", "attention"):
        path = run_dir / FILES[stage]
        if stage not in only or not path.exists():
            continue
        df = pl.read_parquet(path)
        if not len(df):
            continue
        results = {"dla": dla_results, "patch": patch_results, "attention": attention_results}[stage](df)
        from interp import mech_report as mr

        if stage == "patch":
            console.print("[dim]patch a -> b: b's student reads b's probe contexts with a's activations patched "
                          "in, one at a time; clean = a's student on that input, corrupted = b's own run[/]")

        {"dla": mr.render_dla, "patch": mr.render_patching, "attention": mr.render_attention}[stage](
            results, console=console)
        if png:
            written.append(_plot(stage, df, results, run_dir))
    return written


def _plot(stage: str, df: pl.DataFrame, results: dict, run_dir: Path) -> Path:
    """The stage's PNG, redrawn only when its numbers changed (a cached re-run skips matplotlib)."""
    from interp import mech_report as mr

    out = run_dir / "figures" / FIGURES[stage]
    out.parent.mkdir(parents=True, exist_ok=True)
    stamp = out.with_name(f".{stage}.inputs")
    digest = f"{df.columns}:{df.shape}:{int(df.hash_rows(seed=0).sum())}"
    if not (out.exists() and stamp.exists() and stamp.read_text() == digest):
        {"dla": mr.plot_dla, "patch": mr.plot_patching, "attention": mr.plot_attention}[stage](results, out)
        stamp.write_text(digest)
    return out


def _labels(df: pl.DataFrame, first: str) -> pl.Expr:
    """A group's label: `first` (the condition or pair), with student and data when the run has
    several, and the lens report's context tag ([gold rationale], [prompt only])."""
    label = pl.col(first)
    if df["student"].n_unique() > 1 or df["data"].n_unique() > 1:
        label = pl.concat_str([label, pl.col("student"), pl.col("data")], separator=" · ")
    return label + pl.col("context").replace_strict(CONTEXT_TAGS, default="")


def _groups(df: pl.DataFrame, first: str) -> dict[str, pl.DataFrame]:
    df = df.with_columns(_labels(df, first).alias("_label"))
    return {k[0]: g.sort(["seed", "ex_id"]) for k, g in df.group_by("_label", maintain_order=True)}


def dla_results(df: pl.DataFrame) -> dict:
    """{label: interp.dla.DLAResult} from dla.parquet rows (seeds pooled)."""
    import torch

    from interp.dla import DLAResult

    out = {}
    for label, g in _groups(df, "condition").items():
        t = lambda c: torch.tensor(g[c].to_list(), dtype=torch.float64)  # noqa: E731
        out[label] = DLAResult(logit_diff=t("logit_diff"), embed=t("embed"), pos_embed=t("pos_embed"),
                               attn=t("attn"), mlp=t("mlp"), heads=t("heads"), attn_bias=t("attn_bias"),
                               final_bias=t("final_bias"), gold=torch.tensor(g["gold"].to_list()),
                               n_choices=torch.tensor(g["n_choices"].to_list()))
    return out


def patch_results(df: pl.DataFrame) -> dict:
    """{pair label: interp.patching.PatchResult} from patch.parquet rows (seeds pooled)."""
    import torch

    from interp.patching import PatchResult

    out = {}
    for label, g in _groups(df, "pair").items():
        t = lambda c: torch.tensor(g[c].to_list(), dtype=torch.float64)  # noqa: E731
        pos = g["positions"][0] if "positions" in g.columns else "label"
        out[label] = PatchResult(clean=t("clean"), corrupted=t("corrupted"),
                                 patched={k: t(k) for k in ("resid", "attn", "mlp")}, positions=pos,
                                 gold=torch.tensor(g["gold"].to_list()))
    return out


def attention_results(df: pl.DataFrame) -> dict:
    """{label: interp.attention.AttentionResult} from attention.parquet rows (seeds pooled)."""
    import torch

    from interp.attention import AttentionResult

    names = ("prompt", "rationale", "other")
    out = {}
    for label, g in _groups(df, "condition").items():
        g = g.sort(["seed", "ex_id", "layer", "head"])
        L, H = g["layer"].max() + 1, g["head"].max() + 1
        mass = torch.tensor(g.select(names).to_numpy(), dtype=torch.float32).reshape(-1, L, H, len(names))
        first = g.filter((pl.col("layer") == 0) & (pl.col("head") == 0))
        lengths = torch.tensor(first.select([f"len_{n}" for n in names]).to_numpy())
        out[label] = AttentionResult(mass=mass, names=names, lengths=lengths)
    return out
