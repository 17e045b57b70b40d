"""`expect` statements, checked after a run from its parquet files alone (no model, no torch):
`results.parquet` for accuracy, `lens.parquet` for commit layers. One row per expectation ×
student × data (× lens for `commit`) goes to `runs/<experiment>/expectations.parquet`;
`cotdsl run` and `cotdsl report` print it. The statistics are `stats.compare`'s; what they mean
is in docs/language.md ("Expectations").

Pairing: both sides' values are joined on (seed, example), so a seed's example is compared with
the same seed's same example; the bootstrap resamples these pairs. Commit layers: an example
whose label never wins through the last lens row counts as committing one row past it (the number
of lens rows, i.e. blocks + 1), later than any example that commits.
"""
from __future__ import annotations

from pathlib import Path

import polars as pl
from rich.console import Console

from .spec import Expectation

FILE = "expectations.parquet"
SCHEMA = {"expectation": pl.Utf8, "op": pl.Utf8, "metric": pl.Utf8, "left": pl.Utf8, "right": pl.Utf8,
          "within": pl.Float64, "alpha": pl.Float64, "student": pl.Utf8, "data": pl.Utf8, "lens": pl.Utf8,
          "unit": pl.Utf8, "n": pl.Int64, "estimate": pl.Float64, "lo": pl.Float64, "hi": pl.Float64,
          "level": pl.Float64, "p": pl.Float64, "test": pl.Utf8, "verdict": pl.Utf8, "note": pl.Utf8}
VERDICTS = ("holds", "contradicted", "inconclusive", "untested")
UNITS = {"acc": "pp", "commit": "layers"}
SCALE = {"acc": 100.0, "commit": 1.0}  # accuracy differences in percentage points


def commit_layers(lens: pl.DataFrame) -> pl.DataFrame:
    """lens.parquet (a row per layer) -> one row per (condition, student, data, seed, lens, ex_id)
    with its commit layer; "never" (-1) becomes the number of lens rows."""
    keys = ["condition", "student", "data", "seed", "lens", "ex_id"]
    per = lens.group_by(keys, maintain_order=True).agg(pl.col("commit_layer").first(),
                                                       pl.col("layer").max().alias("top"))
    value = pl.when(pl.col("commit_layer") < 0).then(pl.col("top") + 1).otherwise(pl.col("commit_layer"))
    return per.with_columns(value.cast(pl.Float64).alias("value")).drop("commit_layer", "top")


def _side(frame: pl.DataFrame, cond: str) -> pl.DataFrame:
    return frame.filter(pl.col("condition") == cond).select("seed", "ex_id", "value")


def _row(e: Expectation, frame: pl.DataFrame, group: dict) -> dict:
    """One expectation on one group's values (columns condition, seed, ex_id, value)."""
    from .stats import compare

    row = {"expectation": e.text, "op": e.op, "metric": e.metric, "left": e.left.condition,
           "right": e.right.condition, "within": e.within, "alpha": e.alpha, **group, "unit": UNITS[e.metric],
           "n": 0, "verdict": "untested"}
    a, b = _side(frame, e.left.condition), _side(frame, e.right.condition)
    missing = [c for c, x in ((e.left.condition, a), (e.right.condition, b)) if not len(x)]
    if missing:
        what = "lens results" if e.metric == "commit" else "results"
        return {**row, "note": f"no {what} for {', '.join(missing)} (not run, filtered by --only, or failed)"}
    pairs = a.join(b.rename({"value": "other"}), on=["seed", "ex_id"])
    if not len(pairs):
        return {**row, "note": "no (seed, example) pairs in common"}
    k = SCALE[e.metric]
    c = compare(pairs["value"].to_numpy() * k, pairs["other"].to_numpy() * k, e.op, alpha=e.alpha,
                within=e.within, binary=e.metric == "acc")
    return {**row, "n": c.n, "estimate": c.estimate, "lo": c.lo, "hi": c.hi, "level": c.level, "p": c.p,
            "test": c.test, "verdict": c.verdict, "note": None}


def evaluate(expectations: tuple[Expectation, ...] | list[Expectation], results: pl.DataFrame,
             lens: pl.DataFrame | None = None, lenses: tuple[str, ...] = ("logit",)) -> pl.DataFrame:
    """Every expectation on every student × data of `results` (and, for `commit`, every lens in
    `lenses` order) -> a frame with SCHEMA. Rows whose sides have no results are `untested`."""
    rows = []
    acc = results.select("condition", "student", "data", "seed", "ex_id", pl.col("correct").cast(pl.Float64)
                         .alias("value")) if len(results) else pl.DataFrame()
    groups = (results.select("student", "data").unique(maintain_order=True).to_dicts() if len(results)
              else [{"student": None, "data": None}])
    commits = commit_layers(lens) if lens is not None and len(lens) else pl.DataFrame()
    for e in expectations:
        for g in groups:
            if e.metric == "acc":
                frame = acc.filter((pl.col("student") == g["student"]) & (pl.col("data") == g["data"])) \
                    if len(acc) else _EMPTY
                rows.append(_row(e, frame, {**g, "lens": None}))
                continue
            for name in lenses:
                frame = commits.filter((pl.col("student") == g["student"]) & (pl.col("data") == g["data"])
                                       & (pl.col("lens") == name)) if len(commits) else _EMPTY
                rows.append(_row(e, frame, {**g, "lens": name}))
    return pl.DataFrame(rows, schema=SCHEMA) if rows else pl.DataFrame(schema=SCHEMA)


_EMPTY = pl.DataFrame(schema={"condition": pl.Utf8, "seed": pl.Int64, "ex_id": pl.Utf8, "value": pl.Float64})


def write(run_dir: Path, exp) -> pl.DataFrame:
    """Evaluate `exp.expectations` on the run folder's results into `expectations.parquet` (the
    file is removed when the spec states none, so it never shows an earlier spec's)."""
    from .cache import atomic_write_parquet

    path = run_dir / FILE
    if not exp.expectations:
        path.unlink(missing_ok=True)
        return pl.DataFrame(schema=SCHEMA)
    res = run_dir / "results.parquet"
    results = pl.read_parquet(res) if res.exists() else pl.DataFrame()
    lens = pl.read_parquet(run_dir / "lens.parquet") if (run_dir / "lens.parquet").exists() else None
    lenses = exp.probe.lenses if exp.probe is not None else ()
    df = evaluate(exp.expectations, results, lens, lenses)
    atomic_write_parquet(path, df)
    return df


def contradicted(run_dir: Path) -> int:
    """How many rows of the run's expectations are contradicted (0 without the file)."""
    path = run_dir / FILE
    return int((pl.read_parquet(path)["verdict"] == "contradicted").sum()) if path.exists() else 0


def _num(x: float, unit: str) -> str:
    return f"{x:+.1f}" if unit == "pp" else f"{x:+.2f}"


COLOURS = {"holds": "green", "contradicted": "red", "inconclusive": "yellow", "untested": "dim"}


def print_expectations(run_dir: Path, console: Console) -> None:
    """The table: expectation as written, estimate, CI, p, verdict (nothing without the file)."""
    from rich import box
    from rich.markup import escape
    from rich.table import Table

    path = run_dir / FILE
    if not path.exists():
        return
    df = pl.read_parquet(path)
    if not len(df):
        return
    extra = [k for k in ("student", "data") if df[k].n_unique() > 1]
    if df["lens"].drop_nulls().n_unique() > 0:
        extra.append("lens")
    t = Table(title=escape(f"{run_dir.name}: expectations (left − right, paired by seed and example)"),
              title_justify="left", box=box.SIMPLE_HEAD)
    # Numbers never wrap or shrink (an ellipsis in a number is a wrong number); the expectation
    # wraps instead, and the test's name is in the footnote (and in expectations.parquet), so the
    # table fits an 80-column terminal.
    t.add_column("expectation", overflow="fold", min_width=16)
    for k in extra:
        t.add_column(k, overflow="fold")
    for col, w in (("n", 3), ("estimate", 9), ("CI", 17), ("p", 6)):
        t.add_column(col, justify="right", no_wrap=True, min_width=w)
    t.add_column("verdict", no_wrap=True, min_width=12)
    for r in df.iter_rows(named=True):
        unit, tested = r["unit"], r["estimate"] is not None
        est = f"{_num(r['estimate'], unit)} {unit}" if tested else "–"
        ci = f"[{_num(r['lo'], unit)}, {_num(r['hi'], unit)}] {100 * r['level']:.0f}%" if tested else ""
        p = ("<0.001" if r["p"] < 0.001 else f"{r['p']:.3f}") if tested else ""
        verdict = f"[{COLOURS[r['verdict']]}]{r['verdict']}[/]"
        t.add_row(escape(r["expectation"]), *[escape(str(r[k] or "")) for k in extra], str(r["n"]), est,
                  escape(ci), p, verdict)
    console.print(t)
    for r in df.filter(pl.col("note").is_not_null()).iter_rows(named=True):
        console.print(f"[dim]{escape(r['expectation'])}: {escape(r['note'])}[/]")
    console.print("[dim]CI: percentile bootstrap over (seed, example) pairs (10,000 draws) at 1 − alpha for `>`/`<`, "
                  "1 − 2·alpha for `~` (TOST). `>`/`<` hold when the CI excludes 0 on the expected side and the "
                  "exact test (exact McNemar for accuracy, sign test for commit layers) gives p < alpha; contradicted "
                  "when both point the other way. `~ within D` holds when the CI lies inside (−D, D), contradicted "
                  "when it lies outside. Commit: a never-committing example counts as the number of lens rows."
                  "[/]")
