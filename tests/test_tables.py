"""Paper tables (cotdsl/tables.py: `cotdsl report RUN --format latex|markdown|csv`) on a summary
with known numbers, and `cotdsl compare` (cotdsl/compare.py) on constructed results and on two
real tiny runs whose test examples overlap or do not."""
from __future__ import annotations

import csv
import io
import re

import polars as pl
import pytest
from rich.console import Console
from typer.testing import CliRunner

from cotdsl.cli import app
from cotdsl.compare import compare, print_compare
from cotdsl.errors import CotError
from cotdsl.report import SUMMARY_SCHEMA
from cotdsl.run import EXIT_OK, run
from cotdsl.tables import build, export, latex, latex_escape, markdown, markdown_escape, to_csv


def summary_rows() -> list[dict]:
    """Two students; student s1 has a baseline, two conditions tied for best (29.54 and 29.46
    both print 29.5), one with its CI above 0; s2 has one seed (no std) and a failed condition."""
    def row(cond, stu, acc, std, seeds=3, delta=None, lo=None, hi=None, base=False, failed=0):
        return {"condition": cond, "student": stu, "data": "toy", "family": cond, "params": "{}", "seeds": seeds,
                "n": 200 * seeds if acc is not None else None, "acc": acc, "acc_std": std, "acc_norm": acc,
                "unparseable": 0, "failed": failed, "cause": "boom" if failed else None, "delta": delta,
                "delta_lo": lo, "delta_hi": hi, "acc_lo": None, "acc_hi": None, "chance": 0.25, "baseline": base,
                "reference": None}
    return [row("none", "s1", 0.26667, 0.041932, base=True),
            row("after_1&2", "s1", 0.2954, 0.03, delta=0.028333, lo=-0.013333, hi=0.071667),
            row("masked[p=0.8]", "s1", 0.2946, 0.0325, delta=0.03, lo=0.0051, hi=0.0549),
            row("none", "s2", 0.5, None, seeds=1, base=True),
            row("after_1&2", "s2", 0.4, None, seeds=1, delta=-0.1, lo=-0.2, hi=-0.004),
            row("masked[p=0.8]", "s2", None, None, seeds=0, failed=2)]


@pytest.fixture
def summary() -> pl.DataFrame:
    return pl.DataFrame(summary_rows(), schema=SUMMARY_SCHEMA)


def test_rows_hold_the_summary_numbers_as_printed(summary):
    t = build(summary, "demo_run")
    assert t.columns == ("condition", "student")
    r = {(x.keys): x for x in t.rows}
    assert r[("none", "s1")].acc == "26.7" and r[("none", "s1")].std == "4.2" and r[("none", "s1")].delta is None
    after = r[("after_1&2", "s1")]
    assert (after.acc, after.std, after.delta, after.lo, after.hi) == ("29.5", "3.0", "+2.8", "-1.3", "+7.2")
    assert after.side == 0 and r[("masked[p=0.8]", "s1")].side == 1 and r[("after_1&2", "s2")].side == -1
    # best per student: the tie on s1 (both print 29.5) is bold twice, s2's best is its baseline
    assert [x.keys for x in t.rows if x.best] == [("after_1&2", "s1"), ("masked[p=0.8]", "s1"), ("none", "s2")]
    assert r[("none", "s2")].std is None and r[("masked[p=0.8]", "s2")].acc is None
    assert "mean ± std over seeds" in t.title and "200 test examples × 3 seeds" in t.title
    assert "200 test examples × 1 seed" in t.title and "baseline (none)" in t.footnote


def test_latex_is_booktabs_with_bold_best_pm_ci_and_escaping(summary):
    tex = latex(build(summary, "demo_run"))
    assert "\\toprule" in tex and "\\midrule" in tex and "\\bottomrule" in tex and "{llrrr}" in tex
    assert "\\label{tab:demo_run}" in tex and "\\caption{demo\\_run: test accuracy \\%" in tex
    lines = tex.splitlines()
    body = lines[lines.index("    \\midrule") + 1:lines.index("    \\bottomrule")]
    assert body == [
        "    none & s1 & 26.7 $\\pm$ 4.2 & -- & -- \\\\",
        "    after\\_1\\&2 & s1 & \\textbf{29.5} $\\pm$ 3.0 & $+2.8$ & [$-1.3$, $+7.2$] \\\\",
        "    masked[p=0.8] & s1 & \\textbf{29.5} $\\pm$ 3.2 & $+3.0$ & [$+0.5$, $+5.5$] \\\\",
        "    none & s2 & \\textbf{50.0} & -- & -- \\\\",
        "    after\\_1\\&2 & s2 & 40.0 & $-10.0$ & [$-20.0$, $-0.4$] \\\\",
        "    masked[p=0.8] & s2 & -- & -- & -- \\\\"]
    assert all(line.count(" & ") == 4 for line in body)  # 5 columns in every row


def test_latex_escape():
    assert latex_escape(r"a_b&c%d$e#f{g}h~i^j\k") == \
        r"a\_b\&c\%d\$e\#f\{g\}h\textasciitilde{}i\textasciicircum{}j\textbackslash{}k"
    assert latex_escape("[p] Δ ± ×") == r"{[}p] $\Delta$ $\pm$ $\times$"  # a leading [ after \\ is an option


def test_markdown_and_csv_carry_the_same_numbers(summary):
    t = build(summary, "demo_run")
    md = markdown(t)
    assert md.startswith("**demo\\_run**: test accuracy %")
    assert "| condition | student | acc % | Δ pp | 95% CI |" in md and "|:--|:--|--:|--:|--:|" in md
    assert "| after\\_1&2 | s1 | **29.5** ± 3.0 | +2.8 | [-1.3, +7.2] |" in md
    assert "| masked\\[p=0.8\\] | s1 | **29.5** ± 3.2 | +3.0 | [+0.5, +5.5] |" in md
    assert "| none | s2 | **50.0** | – | – |" in md and "| masked\\[p=0.8\\] | s2 | – | – | – |" in md
    assert markdown_escape("a|b*c") == "a\\|b\\*c"
    rows = list(csv.DictReader(io.StringIO(to_csv(t))))
    assert rows[1] == {"condition": "after_1&2", "student": "s1", "acc_pct": "29.5", "acc_std_pct": "3.0",
                       "delta_pp": "2.8", "ci_lo_pp": "-1.3", "ci_hi_pp": "7.2", "best": "true", "baseline": "false"}
    assert rows[0]["baseline"] == "true" and rows[0]["delta_pp"] == "" and rows[5]["acc_pct"] == ""
    # every number of the markdown table is in the csv, and the other way round
    nums = lambda s: sorted(x.lstrip("+") for x in re.findall(r"[-+]?\d+\.\d", s))  # noqa: E731
    assert nums(md.split("\n\n")[1]) == nums(to_csv(t))


def test_one_student_no_student_column(summary):
    one = summary.filter(pl.col("student") == "s1")
    t = build(one, "r")
    assert t.columns == ("condition",) and "{lrrr}" in latex(t) and "| condition | acc % |" in markdown(t)


def test_cli_report_format_and_output(summary, tmp_path):
    rd = tmp_path / "demo_run"
    rd.mkdir()
    summary.write_parquet(rd / "summary.parquet")
    cli = CliRunner()
    r = cli.invoke(app, ["report", str(rd), "--format", "latex"])
    assert r.exit_code == 0 and r.stdout == export(rd, "latex") == latex(build(summary, "demo_run"))
    out = tmp_path / "t.md"
    r = cli.invoke(app, ["report", str(rd), "--format", "markdown", "--output", str(out)])
    assert r.exit_code == 0 and out.read_text() == markdown(build(summary, "demo_run"))
    r = cli.invoke(app, ["report", str(rd), "--format", "xlsx"])
    assert r.exit_code == 1 and "unknown format 'xlsx'" in r.stderr and "latex, markdown, csv" in r.stderr
    r = cli.invoke(app, ["report", str(rd), "--output", str(out)])
    assert r.exit_code == 1 and "--output needs --format" in r.stderr
    r = cli.invoke(app, ["report", str(tmp_path / "nope"), "--format", "csv"])
    assert r.exit_code == 1 and "not a cotdsl run folder" in r.stderr and "Traceback" not in r.output
    r = cli.invoke(app, ["report", str(rd), "--format", "csv", "--output", str(tmp_path / "no" / "dir.csv")])
    assert r.exit_code == 1 and "cannot write" in r.stderr


# ---- compare ------------------------------------------------------------------------------------
def results(run_dir, rows: list[tuple]) -> None:
    """results.parquet from (condition, seed, ex_id, gold, correct) rows, one student and data."""
    run_dir.mkdir(parents=True)
    pl.DataFrame([{"condition": c, "student": "t", "data": "toy", "seed": s, "ex_id": e, "gold": g, "correct": ok}
                  for c, s, e, g, ok in rows]).write_parquet(run_dir / "results.parquet")


def test_compare_paired_partly_overlapping_and_unpaired(tmp_path):
    # A: after wrong on e0..e9; B: after right on e5..e14 -> paired on e5..e9, B - A = +100 pp there
    results(tmp_path / "a", [("after", 0, f"e{i}", 1, False) for i in range(10)]
            + [("none", 0, f"e{i}", 1, i < 5) for i in range(10)] + [("only_a", 0, "e0", 1, True)])
    results(tmp_path / "b", [("after", 0, f"e{i}", 1, True) for i in range(5, 15)]
            + [("none", 1, f"x{i}", 1, i < 8) for i in range(10)])
    c = compare(tmp_path / "a", tmp_path / "b")
    assert c.columns == ("condition",)
    by = {(line.keys, line.seed): line for line in c.lines}
    after = by[(("after",), 0)]
    assert (after.acc_a, after.n_a, after.acc_b, after.n_b, after.paired) == (0.0, 10, 1.0, 10, 5)
    assert (after.delta, after.lo, after.hi) == (1.0, 1.0, 1.0)
    # none: A has seed 0 on e*, B seed 1 on x*: no common seed, no common example -> one unpaired mean row
    assert [k for k in by if k[0] == ("none",)] == [(("none",), "mean")]
    none = by[(("none",), "mean")]
    assert none.paired == 0 and none.acc_a == 0.5 and none.acc_b == 0.8 and abs(none.delta - 0.3) < 1e-12
    assert none.lo < 0.3 < none.hi
    assert any("only in A (not compared): only_a" in n for n in c.notes)
    assert any("none: seed 0 only in A" in n for n in c.notes) and any("seed 1 only in B" in n for n in c.notes)
    con = Console(record=True, width=100)
    print_compare(tmp_path / "a", tmp_path / "b", con)
    text = con.export_text()
    assert "unpaired" in text and "+100.0" in text and "[+100.0, +100.0]" in text


def test_compare_does_not_pair_examples_whose_gold_answer_differs(tmp_path):
    results(tmp_path / "a", [("after", 0, f"e{i}", 0, i % 2 == 0) for i in range(6)])
    results(tmp_path / "b", [("after", 0, f"e{i}", 0 if i < 4 else 2, True) for i in range(6)])
    c = compare(tmp_path / "a", tmp_path / "b")
    (line,) = c.lines
    assert line.paired == 4 and abs(line.delta - 0.5) < 1e-12  # e0..e3: B right, A right on e0 and e2
    assert any("2 example id(s) in both runs with different gold answers" in n for n in c.notes)


def test_compare_errors(tmp_path):
    results(tmp_path / "a", [("after", 0, "e0", 0, True)])
    results(tmp_path / "b", [("before", 0, "e0", 0, True)])
    with pytest.raises(CotError, match="share no condition: nothing to compare") as e:
        compare(tmp_path / "a", tmp_path / "b")
    assert "A has after; B has before" in str(e.value)
    with pytest.raises(CotError, match="not a cotdsl run folder"):
        compare(tmp_path / "a", tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    pl.DataFrame().write_parquet(tmp_path / "empty" / "results.parquet")
    with pytest.raises(CotError, match="no evaluations"):
        compare(tmp_path / "empty", tmp_path / "a")
    r = CliRunner().invoke(app, ["compare", str(tmp_path / "a"), str(tmp_path / "b")])
    assert r.exit_code == 1 and "share no condition" in r.stderr and "Traceback" not in r.output


SPEC = """
experiment tiny_cmp {{
  seeds 0, 1
  data    toy  = builtin("facts", train: 16, test: 8{data})
  teacher gold = gold
  student t    = tiny(arch: "llama", layers: 2, d_model: 32, heads: 4)
  target none  = label
  target after = label -> rationale
  train {{ epochs: 1, lr: 3e-3, batch: 8 }}
}}
"""


@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory):
    """Three real runs on one job store: all 8 test examples, the first 5 of them (the same
    models), and the same spec on another builtin world (no example in common)."""
    root = tmp_path_factory.mktemp("cmp")
    quiet = Console(file=io.StringIO())
    spec, other = root / "a.cot", root / "c.cot"
    spec.write_text(SPEC.format(data=""))
    other.write_text(SPEC.format(data=", seed: 1"))
    kw = dict(cache=root / "cache", console=quiet)
    assert run(spec, out=root / "all", **kw) == EXIT_OK
    assert run(spec, out=root / "five", limit_test=5, **kw) == EXIT_OK
    assert run(other, out=root / "other", **kw) == EXIT_OK
    return {k: root / k / "tiny_cmp" for k in ("all", "five", "other")}


def _per_example(run_dir, cond, seed) -> dict:
    df = pl.read_parquet(run_dir / "results.parquet").filter((pl.col("condition") == cond) & (pl.col("seed") == seed))
    return dict(zip(df["ex_id"], df["correct"].cast(pl.Float64)))


def test_compare_two_tiny_runs(tiny_runs):
    a, five, other = tiny_runs["all"], tiny_runs["five"], tiny_runs["other"]
    c = compare(a, five)
    assert [(line.keys, line.seed) for line in c.lines] == [(("none",), 0), (("none",), 1), (("none",), "mean"),
                                                            (("after",), 0), (("after",), 1), (("after",), "mean")]
    for line in c.lines:
        assert (line.n_a, line.n_b, line.paired) == (8, 5, 5) and line.lo <= line.delta <= line.hi
        if line.seed != "mean":  # Δ over the 5 common examples, from the results themselves
            xa, xb = _per_example(a, line.keys[0], line.seed), _per_example(five, line.keys[0], line.seed)
            assert abs(line.delta - sum(xb[e] - xa[e] for e in xb) / 5) < 1e-12
            assert line.acc_a == sum(xa.values()) / 8 and line.acc_b == sum(xb.values()) / 5
    c = compare(a, other)
    assert {line.paired for line in c.lines} == {0} and len(c.lines) == 6
    for line in c.lines:
        assert abs(line.delta - (line.acc_b - line.acc_a)) < 1e-12 and line.lo <= line.delta <= line.hi
    r = CliRunner().invoke(app, ["compare", str(a), str(other)], env={"COLUMNS": "100"})
    assert r.exit_code == 0 and r.stdout.count("unpaired") >= 6 and "Δ = B − A" in r.stdout
