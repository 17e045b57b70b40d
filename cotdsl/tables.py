"""The results table for a paper: `cotdsl report RUN --format latex|markdown|csv`.

The numbers are summary.parquet's, as the terminal table prints them (report.print_summary):
accuracy mean ± std over seeds, Δ vs the no-rationale baseline and its paired bootstrap 95% CI
(computed once, by report.summarize), each rounded to 0.1 percentage point. Nothing is
recomputed here; the formats only differ in markup. The best accuracy of each student × data
group (ties included, compared as printed) is bold. The HTML report (html_report.py) shows the
same rows.
"""
from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from .errors import CotError, did_you_mean

FORMATS = ("terminal", "latex", "markdown", "csv")
FOOTNOTE = ("Δ: accuracy minus the no-rationale baseline{base}, paired by example; 95% CI by paired "
            "bootstrap (10,000 draws) over the (seed, example) pairs both conditions have.")


@dataclass(frozen=True)
class Row:
    """One condition × student × data, its numbers as printed (percent, one decimal; None: none)."""

    keys: tuple[str, ...]  # condition, then student / data when the run has several
    acc: str | None
    std: str | None  # None with one seed (undefined)
    delta: str | None  # signed, e.g. "+2.8"
    lo: str | None
    hi: str | None
    best: bool
    baseline: bool
    side: int = 0  # 1: the CI lies above 0, -1: below, 0: it contains 0 (or no Δ); the terminal's colours


@dataclass(frozen=True)
class Table:
    name: str  # the experiment (run folder) name
    columns: tuple[str, ...]  # key columns: condition[, student][, data]
    rows: tuple[Row, ...]
    title: str  # "test accuracy %, mean ± std over seeds; 200 test examples × 3 seeds"
    footnote: str


def pct(x, sign: bool = False) -> str | None:
    """A fraction as printed percent: one decimal (signed with `sign`), None for a missing value."""
    return None if x is None else f"{100 * x:+.1f}" if sign else f"{100 * x:.1f}"


def sizes(summary: pl.DataFrame) -> tuple[str, str]:
    """("200 test examples × 3 seeds", " (mean ± std over seeds)" or "") of the finished rows."""
    done = summary.filter(pl.col("acc").is_not_null())
    got = sorted({(r["n"] // max(1, r["seeds"]), r["seeds"]) for r in done.iter_rows(named=True)})
    size = "; ".join(f"{n} test examples × {k} seed{'s' if k > 1 else ''}" for n, k in got)
    return size, " (mean ± std over seeds)" if any(k > 1 for _, k in got) else ""


def read_summary(run_dir: Path) -> pl.DataFrame:
    """summary.parquet of a run folder, with every column of report.SUMMARY_SCHEMA (older files)."""
    from .report import SUMMARY_SCHEMA

    path = Path(run_dir) / "summary.parquet"
    if not path.exists():
        raise CotError.one(f"{run_dir} is not a cotdsl run folder (no summary.parquet)",
                       hint="give the folder `cotdsl run` wrote, e.g. runs/<experiment>")
    return pl.concat([pl.DataFrame(schema=SUMMARY_SCHEMA), pl.read_parquet(path)], how="diagonal_relaxed")


def _side(r: dict) -> int:
    if r["delta"] is None:
        return 0
    return 1 if r["delta_lo"] > 0 else -1 if r["delta_hi"] < 0 else 0


def build(summary: pl.DataFrame, name: str) -> Table:
    """The rows of the results table from a summary frame (report.SUMMARY_SCHEMA)."""
    many = [k for k in ("student", "data") if summary[k].n_unique() > 1]
    rows = [Row(keys=(r["condition"], *[str(r[k]) for k in many]), acc=pct(r["acc"]),
                std=pct(r["acc_std"]) if r["acc"] is not None else None, delta=pct(r["delta"], True),
                lo=pct(r["delta_lo"], True), hi=pct(r["delta_hi"], True), best=False,
                baseline=bool(r["baseline"]), side=_side(r)) for r in summary.iter_rows(named=True)]
    # best per student x data group, compared as printed (29.50 and 29.54 both print 29.5: a tie)
    groups: dict[tuple, list[int]] = {}
    for i, r in enumerate(summary.iter_rows(named=True)):
        if rows[i].acc is not None:
            groups.setdefault((r["student"], r["data"]), []).append(i)
    best = set()
    for idx in groups.values():
        if len(idx) > 1:
            top = max(float(rows[i].acc) for i in idx)
            best |= {i for i in idx if float(rows[i].acc) == top}
    rows = [Row(**{**r.__dict__, "best": i in best}) for i, r in enumerate(rows)]
    size, spread = sizes(summary)
    base = sorted(set(summary.filter(pl.col("baseline").fill_null(False))["condition"]))
    return Table(name=name, columns=("condition", *many), rows=tuple(rows),
                 title=f"test accuracy %{spread}; {size or 'nothing finished'}",
                 footnote=FOOTNOTE.format(base=f" ({', '.join(base)})" if base else ""))


# ---- formats -----------------------------------------------------------------------------------
_LATEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
          "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
          "Δ": r"$\Delta$", "±": r"$\pm$", "×": r"$\times$", "–": "--", "−": "-"}


def latex_escape(text: str) -> str:
    """Text for a LaTeX document: the ten special characters and the few non-ASCII ones this
    table uses; a leading `[` is braced (after `\\\\` it would start an optional argument)."""
    out = "".join(_LATEX.get(ch, ch) for ch in text)
    return "{[}" + out[1:] if out.startswith("[") else out


def _num_tex(s: str) -> str:
    return f"${s}$" if s.startswith(("+", "-")) else s


def latex(t: Table) -> str:
    """A booktabs `table` (needs \\usepackage{booktabs})."""
    head = [latex_escape(c.capitalize()) for c in t.columns] + [r"Accuracy (\%)", r"$\Delta$ (pp)", r"95\% CI"]
    lines = ["% cotdsl report --format latex; needs \\usepackage{booktabs}", r"\begin{table}[t]", r"  \centering",
             f"  \\caption{{{latex_escape(t.name)}: {latex_escape(t.title)}. {latex_escape(t.footnote)}}}",
             f"  \\label{{tab:{re.sub(r'[^A-Za-z0-9:._-]', '-', t.name)}}}",
             f"  \\begin{{tabular}}{{{'l' * len(t.columns)}rrr}}", r"    \toprule", "    " + " & ".join(head) + r" \\",
             r"    \midrule"]
    for r in t.rows:
        acc = "--" if r.acc is None else (rf"\textbf{{{r.acc}}}" if r.best else r.acc)
        acc += "" if r.std is None else rf" $\pm$ {r.std}"
        ci = "--" if r.lo is None else f"[{_num_tex(r.lo)}, {_num_tex(r.hi)}]"
        cells = [latex_escape(k) for k in r.keys] + [acc, "--" if r.delta is None else _num_tex(r.delta), ci]
        lines.append("    " + " & ".join(cells) + r" \\")
    lines += [r"    \bottomrule", r"  \end{tabular}", r"\end{table}"]
    return "\n".join(lines) + "\n"


def markdown_escape(text: str) -> str:
    r"""Text for a Markdown table cell: `\`, the emphasis, link, code and HTML characters and `|`
    backslash-escaped."""
    return re.sub(r"([\\`*_\[\]<>|#])", r"\\\1", text)


def markdown(t: Table) -> str:
    head = [*t.columns, "acc %", "Δ pp", "95% CI"]
    lines = [f"**{markdown_escape(t.name)}**: {markdown_escape(t.title)}", "",
             "| " + " | ".join(head) + " |", "|" + "|".join([":--"] * len(t.columns) + ["--:"] * 3) + "|"]
    for r in t.rows:
        acc = "–" if r.acc is None else (f"**{r.acc}**" if r.best else r.acc)
        acc += "" if r.std is None else f" ± {r.std}"
        ci = "–" if r.lo is None else f"[{r.lo}, {r.hi}]"
        lines.append("| " + " | ".join([markdown_escape(k) for k in r.keys] + [acc, r.delta or "–", ci]) + " |")
    return "\n".join(lines + ["", markdown_escape(t.footnote)]) + "\n"


def to_csv(t: Table) -> str:
    """One line per row, numbers as printed without the sign's `+` (empty: none); `best` marks the
    bold ones, `baseline` the condition Δ is measured against."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow([*t.columns, "acc_pct", "acc_std_pct", "delta_pp", "ci_lo_pp", "ci_hi_pp", "best", "baseline"])
    for r in t.rows:
        nums = [r.acc, r.std, r.delta, r.lo, r.hi]
        w.writerow([*r.keys, *["" if x is None else x.removeprefix("+") for x in nums],
                    str(r.best).lower(), str(r.baseline).lower()])
    return buf.getvalue()


RENDER = {"latex": latex, "markdown": markdown, "csv": to_csv}


def check_format(fmt: str) -> str:
    if fmt not in FORMATS:
        raise CotError.one(f"--format: unknown format {fmt!r}", expected=list(FORMATS), hint=did_you_mean(fmt, FORMATS))
    return fmt


def export(run_dir: Path, fmt: str) -> str:
    """The run folder's results table in `fmt` (latex, markdown or csv)."""
    if check_format(fmt) == "terminal":
        raise ValueError("the terminal table is report.print_summary's")
    summary = read_summary(run_dir)
    if not len(summary):
        raise CotError.one(f"{run_dir}: no evaluations in this run (summary.parquet is empty)",
                       hint="`cotdsl status RUN` shows which jobs did not finish")
    return RENDER[fmt](build(summary, Path(run_dir).name))
