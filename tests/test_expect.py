"""cotdsl.expect: `expect` statements evaluated from a run's parquet files (constructed results
with known outcomes), and end to end through `cotdsl run` / `cotdsl report` on a tiny student."""
from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest
from rich.console import Console

from cotdsl import spec
from cotdsl.expect import FILE, SCHEMA, commit_layers, evaluate
from cotdsl.lang.check import check_source
from cotdsl.run import EXIT_CONTRADICTED, EXIT_OK, report, run


def E(text: str, op: str, left: str, right: str, metric: str = "acc", **kw) -> spec.Expectation:
    return spec.Expectation(text, op, spec.Measure(metric, left), spec.Measure(metric, right), **kw)


def results(accs: dict[str, list[int]], seeds=(0, 1), student="s", data="d") -> pl.DataFrame:
    """Per condition, the correctness of examples 0..n-1, the same for every seed."""
    rows = [{"condition": c, "student": student, "data": data, "seed": s, "ex_id": f"ex{i}", "correct": bool(x)}
            for c, xs in accs.items() for s in seeds for i, x in enumerate(xs)]
    return pl.DataFrame(rows)


def lens_frame(commits: dict[str, list[int]], layers: int = 4, lens: str = "logit", seeds=(0,)) -> pl.DataFrame:
    rows = [{"condition": c, "student": "s", "data": "d", "seed": s, "lens": lens, "ex_id": f"ex{i}", "layer": layer,
             "commit_layer": x} for c, xs in commits.items() for s in seeds for i, x in enumerate(xs)
            for layer in range(layers + 1)]
    return pl.DataFrame(rows)


GOOD = [1] * 60 + [0] * 40  # 60% right
BETTER = [1] * 60 + [1] * 25 + [0] * 15  # right wherever GOOD is, and on 25 more
ALMOST = [1] * 59 + [0] + [1] + [0] * 39  # GOOD with one pair swapped each way


def verdicts(df: pl.DataFrame) -> dict[str, str]:
    return dict(zip(df["expectation"], df["verdict"]))


def test_accuracy_verdicts_on_known_results():
    res = results({"none": GOOD, "after": BETTER, "shuffled": ALMOST, "tiny": [1, 0, 1], "tiny2": [0, 1, 1]})
    exps = [E("after > none", ">", "after", "none"), E("none > after", ">", "none", "after"),
            E("after < none", "<", "after", "none"), E("shuffled > none", ">", "shuffled", "none"),
            E("shuffled ~ none within 3", "~", "shuffled", "none", within=3.0),
            E("after ~ none within 3", "~", "after", "none", within=3.0),
            E("tiny ~ tiny2 within 3", "~", "tiny", "tiny2", within=3.0)]
    df = evaluate(exps, res)
    assert df.schema == pl.Schema(SCHEMA)
    assert verdicts(df) == {"after > none": "holds", "none > after": "contradicted", "after < none": "contradicted",
                            "shuffled > none": "inconclusive", "shuffled ~ none within 3": "holds",
                            "after ~ none within 3": "contradicted", "tiny ~ tiny2 within 3": "inconclusive"}
    row = df.row(0, named=True)
    # paired by (seed, example): 2 seeds x 100 examples; Δ in percentage points; McNemar on the pairs
    assert (row["n"], row["unit"], row["level"], row["test"]) == (200, "pp", 0.95, "exact McNemar")
    assert row["estimate"] == pytest.approx(25.0) and 0 < row["lo"] < 25 < row["hi"]
    assert row["p"] < 1e-10 and row["lens"] is None and (row["student"], row["data"]) == ("s", "d")
    eq = df.filter(pl.col("op") == "~").row(0, named=True)
    assert eq["level"] == pytest.approx(0.9) and eq["test"] == "TOST (bootstrap)"


def test_alpha_changes_the_interval_and_the_verdict():
    # 6 of 6 discordant pairs favour `after`: McNemar p = 2/64 = 0.031
    res = results({"none": [0] * 6 + [1] * 20, "after": [1] * 26}, seeds=(0,))
    df = evaluate([E("after > none", ">", "after", "none"), E("after > none alpha 0.01", ">", "after", "none",
                                                               alpha=0.01)], res)
    a, b = df.to_dicts()
    assert a["p"] == pytest.approx(2 / 64) and a["verdict"] == "holds"
    assert b["verdict"] == "inconclusive" and b["level"] == pytest.approx(0.99)


def test_pairs_only_matching_seeds_and_examples_and_reports_untested_sides():
    res = pl.concat([results({"none": GOOD}, seeds=(0, 1)), results({"after": BETTER}, seeds=(1, 2))])
    df = evaluate([E("after > none", ">", "after", "none"), E("after > gone", ">", "after", "gone")], res)
    paired, missing = df.to_dicts()
    assert paired["n"] == 100 and paired["verdict"] == "holds"  # seed 1 only
    assert missing["verdict"] == "untested" and missing["n"] == 0 and missing["estimate"] is None
    assert "no results for gone" in missing["note"]
    empty = evaluate([E("after > none", ">", "after", "none")], pl.DataFrame())
    assert empty["verdict"].to_list() == ["untested"]


def test_one_row_per_student_and_data():
    res = pl.concat([results({"none": GOOD, "after": BETTER}, student="a"),
                     results({"none": BETTER, "after": GOOD}, student="b")])
    df = evaluate([E("after > none", ">", "after", "none")], res)
    assert list(zip(df["student"], df["verdict"])) == [("a", "holds"), ("b", "contradicted")]


def test_commit_verdicts_and_the_never_rule():
    late = [3] * 30 + [-1] * 10  # 10 never commit: counted as 5 (4 blocks + embeddings = 5 lens rows)
    early = [1] * 30 + [2] * 10
    lens = pl.concat([lens_frame({"after": early, "none": late}),
                      lens_frame({"after": late, "none": late}, lens="tuned")])
    per = commit_layers(lens).filter((pl.col("condition") == "none") & (pl.col("lens") == "logit"))
    assert sorted(per["value"].unique().to_list()) == [3.0, 5.0]
    res = results({"none": GOOD, "after": BETTER}, seeds=(0,))
    exps = [E("commit(after) < commit(none)", "<", "after", "none", metric="commit"),
            E("commit(none) < commit(after)", "<", "none", "after", metric="commit"),
            E("commit(after) ~ commit(none) within 0.5", "~", "after", "none", metric="commit", within=0.5)]
    df = evaluate(exps, res, lens, ("logit", "tuned"))
    got = {(r["expectation"], r["lens"]): r for r in df.to_dicts()}
    first = got[("commit(after) < commit(none)", "logit")]
    assert (first["verdict"], first["unit"], first["test"], first["n"]) == ("holds", "layers", "exact sign test", 40)
    assert first["estimate"] == pytest.approx(((1 - 3) * 30 + (2 - 5) * 10) / 40)
    assert got[("commit(none) < commit(after)", "logit")]["verdict"] == "contradicted"
    assert got[("commit(after) ~ commit(none) within 0.5", "logit")]["verdict"] == "contradicted"
    # the tuned lens reads the two identically: no difference either way, equivalent within half a layer
    assert got[("commit(after) < commit(none)", "tuned")]["verdict"] == "inconclusive"
    assert got[("commit(after) ~ commit(none) within 0.5", "tuned")]["verdict"] == "holds"
    assert evaluate(exps[:1], res, None, ("logit",))["verdict"].to_list() == ["untested"]


def test_expectations_are_in_no_job_key():
    from cotdsl.plan import make_plan

    head = ('experiment e {\n data toy = builtin("facts", train: 10, test: 10)\n teacher g = gold\n student s = smollm2\n'
            ' target none = label\n target after = label -> rationale\n probe { lens: logit }\n')
    with_ = check_source(head + " expect after > none\n expect commit(after) < commit(none)\n}\n", "x.cot")
    without = check_source(head + "}\n", "x.cot")
    assert with_.expectations and not without.expectations
    keys = [{j.id: j.key for j in make_plan(x, gpu=False).jobs} for x in (with_, without)]
    assert keys[0] == keys[1]


# ---- end to end ----------------------------------------------------------------------------------
SPEC_EXPECT = """
  expect after > none
  expect before > none alpha 0.1
  expect after ~ none within 50
  expect commit(after) < commit(none)
"""


def test_run_prints_the_table_writes_the_file_and_strict_exits_3(tmp_path, monkeypatch):
    """The tiny student's `before` target never names an answer (generation, 0%) while `none` ranks
    the choices (around chance): `before > none` is contradicted, a finding: exit 0; with --strict 3.
    A cached --strict re-run in a fresh process decides the same without importing torch."""
    sys.path.insert(0, str(Path(__file__).parent))
    from test_run import SPEC

    monkeypatch.chdir(tmp_path)
    spec_path = tmp_path / "tiny.cot"
    spec_path.write_text(SPEC.format(extra=SPEC_EXPECT, epochs=1).replace("test: 12", "test: 40"))
    buf = io.StringIO()
    assert run(spec_path, console=Console(file=buf, width=200)) == EXIT_OK
    out = buf.getvalue()
    assert "tiny: expectations" in out and "verdict" in out and "exact McNemar" in out
    assert "before > none alpha 0.1" in out and "contradicted" in out
    rd = tmp_path / "runs" / "tiny"
    df = pl.read_parquet(rd / FILE)
    assert df.schema == pl.Schema(SCHEMA)
    assert df["expectation"].to_list() == ["after > none", "before > none alpha 0.1", "after ~ none within 50",
                                           "commit(after) < commit(none)"]
    v = verdicts(df)
    assert v["before > none alpha 0.1"] == "contradicted" and v["after ~ none within 50"] == "holds"
    assert df.filter(pl.col("metric") == "commit")["lens"].to_list() == ["logit"]
    # the expectation's CI at alpha 0.05 is the summary's Δ CI (same pairs, same bootstrap)
    summ = pl.read_parquet(rd / "summary.parquet").filter(pl.col("condition") == "after").row(0, named=True)
    row = df.row(0, named=True)
    assert (row["lo"], row["hi"]) == pytest.approx((100 * summ["delta_lo"], 100 * summ["delta_hi"]))

    code = ("import sys, os; from pathlib import Path; from cotdsl.run import run; from rich.console import Console; "
            f"rc = run(Path({str(spec_path)!r}), strict=True, console=Console(file=open(os.devnull, 'w'))); "
            "print(rc, sorted(m for m in ('torch', 'transformers') if m in sys.modules))")
    got = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True)
    assert got.stdout.strip().splitlines()[-1] == f"{EXIT_CONTRADICTED} []"

    buf = io.StringIO()
    assert report(rd, console=Console(file=buf, width=200), png=False) == EXIT_OK
    assert "before > none alpha 0.1" in buf.getvalue()
    assert report(rd, console=Console(file=io.StringIO()), png=False, strict=True) == EXIT_CONTRADICTED
    # a spec without expectations leaves no stale file behind
    spec_path.write_text(SPEC.format(extra="", epochs=1).replace("test: 12", "test: 40"))
    assert run(spec_path, console=Console(file=io.StringIO()), strict=True) == EXIT_OK
    assert not (rd / FILE).exists()
