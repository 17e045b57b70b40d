"""cotdsl.figures: the run folder's figures from its parquet files alone; redrawn only on change."""
import json

import polars as pl
import pytest

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


# ---- IG attribution next to the data's highlights --------------------------------------------------
def _ig_row(ex_id, text, scores, degenerate=False):
    return dict(ex_id=ex_id, words=text.split(), word_scores=scores, degenerate=degenerate)


def test_ig_agreement_is_the_top_k_overlap_against_k_over_len(tmp_path):
    from cotdsl.figures import ig_agreement, ig_highlights

    assert ig_agreement(tmp_path) is None and ig_highlights(tmp_path) == []  # no rank job: nothing
    rows = [
        # k = 2 (glass, clear.); IG's top 2: "is", "glass" -> 1/2; random 2/10
        _ig_row("a", "The zorv is made of glass so it is clear.", [0, 0, 5, 0, 0, 4, 0, 0, 0, 1]),
        # case and punctuation ignored, every occurrence counts: k = 2; top 2 = both -> 1; random 2/4
        _ig_row("b", "Glass, copper and glass.", [3, 0, 0, 2]),
        # ties: the earlier word first (as keytokens keeps): top 1 = "a" -> 0; random 1/4
        _ig_row("e", "a b c d", [1, 1, 1, 1]),
        _ig_row("c", "made of wool", [1, 2, 3], degenerate=True),  # noise-ordered scores: left out
        _ig_row("d", "made of wool", [1, 2, 3]),  # no highlights: left out
        _ig_row("f", "glass glass", [1, 2]),  # every word a highlight: any ranking finds them, left out
    ]
    (tmp_path / "ig.json").write_text(json.dumps(rows))
    (tmp_path / "highlights.json").write_text(json.dumps({"a": ["glass", "clear"], "b": ["glass"], "e": ["d"],
                                                          "c": ["wool"], "f": ["glass"]}))
    a = ig_agreement(tmp_path)
    assert (a["n"], a["degenerate"], a["no_highlights"]) == (3, 1, 2)
    assert a["overlap"] == pytest.approx((0.5 + 1 + 0) / 3)
    assert a["random"] == pytest.approx((2 / 10 + 2 / 4 + 1 / 4) / 3)
    assert a["delta"] == pytest.approx(a["overlap"] - a["random"]) and a["delta_lo"] <= a["delta"] <= a["delta_hi"]
    assert a["k_mean"] == pytest.approx(5 / 3)
    written = ig_highlights(tmp_path, tmp_path)
    assert [p.name for p in written] == ["ig_highlights.png", "ig_highlights.pdf"]
    assert all(p.stat().st_size > 0 for p in written)


def test_ig_highlights_of_a_tiny_run(tiny_ig_run, tmp_path):
    """The run folder carries the rank job's IG results and the ranked examples' highlights; the
    overlap, recomputed here from the store's files, is what the report prints and the figure shows."""
    import shutil
    from statistics import mean

    from rich.console import Console

    from cotdsl.figures import ig_agreement
    from cotdsl.run import report

    src, store = tiny_ig_run
    run_dir = tmp_path / "tinyig"
    shutil.copytree(src, run_dir)
    train = [json.loads(x) for x in next(store.glob("teacher/*/train.jsonl")).read_text().splitlines()]
    marks = json.loads((run_dir / "highlights.json").read_text())
    assert marks == {e["id"]: e["highlights"] for e in train if e["highlights"]} and len(marks) == 16
    rows = json.loads((run_dir / "ig.json").read_text())
    assert rows == json.loads(next(store.glob("rank/*/ig.json")).read_text())
    overlap, rand = [], []
    for r in rows:
        keys = {h.lower() for h in marks[r["ex_id"]]}
        hl = [w.strip(".,").lower() in keys for w in r["words"]]
        k = sum(hl)
        if r["degenerate"] or not 0 < k < len(hl):
            continue
        top = sorted(range(len(hl)), key=lambda i: (-r["word_scores"][i], i))[:k]
        overlap.append(sum(hl[i] for i in top) / k)
        rand.append(k / len(hl))
    a = ig_agreement(run_dir)
    assert a["n"] == len(overlap) > 0 and a["degenerate"] == sum(r["degenerate"] for r in rows)
    assert a["overlap"] == pytest.approx(mean(overlap)) and a["random"] == pytest.approx(mean(rand))
    for name in ("ig_highlights.png", "ig_highlights.pdf"):
        assert (run_dir / "figures" / name).stat().st_size > 1000
    con = Console(record=True, width=250)
    report(run_dir, console=con, png=False)
    text = con.export_text()
    assert f"IG vs highlights: top-k overlap {a['overlap']:.2f} vs random {a['random']:.2f}" in text
    assert f"over {a['n']} rationales" in text
