"""cotdsl.figures: the run folder's figures from its parquet files alone; redrawn only on change."""
import json

import polars as pl

from cotdsl.figures import figures, unperturbed
from cotdsl import check_source


def _summary(tmp_path):
    rows = [dict(condition="none", family="none", params="{}", baseline=True, reference=None, acc=0.3),
            dict(condition="after", family="after", params="{}", baseline=False, reference=None, acc=0.5)]
    rows += [dict(condition=f"masked[p={p}]", family="masked", params=json.dumps({"p": p}), baseline=False,
                  reference="after", acc=0.5 - p / 2) for p in (0.2, 0.6)]
    for r in rows:
        r.update(student="s", data="d", seeds=1, n=100, acc_lo=r["acc"] - 0.1, acc_hi=r["acc"] + 0.1,
                 chance=0.25, unparseable=0, delta=None, delta_lo=None, delta_hi=None)
    pl.DataFrame(rows).write_parquet(tmp_path / "summary.parquet")
    pl.DataFrame({"condition": ["none"] * 3, "seed": [0] * 3, "step": [1, 2, 3], "loss": [3.0, 2.0, 1.5]}) \
        .write_parquet(tmp_path / "train_curves.parquet")


def test_figures_are_written_once_per_change(tmp_path):
    _summary(tmp_path)
    written = figures(tmp_path)
    assert sorted(p.name for p in written) == sorted(
        f"{n}.{ext}" for n in ("accuracy", "sweep_masked", "training_loss") for ext in ("png", "pdf"))
    mtimes = {p: p.stat().st_mtime_ns for p in written}
    assert figures(tmp_path) == written and {p: p.stat().st_mtime_ns for p in written} == mtimes
    df = pl.read_parquet(tmp_path / "summary.parquet").with_columns(pl.col("acc") * 0.9)
    df.write_parquet(tmp_path / "summary.parquet")
    figures(tmp_path)
    assert all(p.stat().st_mtime_ns != mtimes[p] for p in written if p.name.startswith("accuracy"))


def test_a_sweep_references_the_target_it_perturbs():
    exp = check_source("""experiment e {
      seeds 0
      data d = builtin("facts", train: 8, test: 4)
      teacher g = gold
      student s = tiny(arch: "llama", layers: 1, d_model: 16, heads: 2)
      target none = label
      target after = label -> rationale
      target masked[p in 0.2, 0.6] = label -> mask(rationale, p)
      target unk[n in 5, 20] = unk(n) -> label
    }""", "e.cot")
    conds = {c.name: c for c in exp.conditions}
    assert unperturbed(conds["masked[p=0.2]"], exp.conditions) == "after"
    assert unperturbed(conds["unk[n=5]"], exp.conditions) is None  # unk(n) has no input: nothing to strip
