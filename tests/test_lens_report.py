"""The run report's lens section (print_lens: heatmap, commit table, coverage, figure) and sweep
table (print_sweeps), from constructed run folders: no model runs."""
import json

import polars as pl
import pytest
from rich.console import Console
from typer.testing import CliRunner

from cotdsl.report import print_lens, print_summary, sparkline

LAYERS = 31  # SmolLM2-135M: embeddings + 30 blocks


def run_dir(tmp_path, lenses=("logit", "tuned")):
    """Two probed conditions (seeds 0 and 1), `before` read after its own generation with 2 of 6
    examples unparsed, `gold_only` never probed; choice P(gold) rises at layer 25 (`after`) / 20."""
    rows, res = [], []
    for lens in lenses:
        for cond, rise, ctx, exs in (("after", 25, "label first", range(6)), ("before", 20, "generated", range(4))):
            for seed in (0, 1):
                for ex in exs:
                    for layer in range(LAYERS):
                        cp = 0.25 if layer < rise else 0.95
                        rows.append(dict(lens=lens, ex_id=f"q{ex}", layer=layer, p_gold=cp / 10, choice_p_gold=cp,
                                         rank_gold=1, commit_layer=rise, context=ctx, score="label", tied=False,
                                         condition=cond, family=cond, params="{}", student="s", data="d", seed=seed))
    for cond in ("after", "before", "gold_only"):
        for seed in (0, 1):
            res += [dict(condition=cond, seed=seed, ex_id=f"q{ex}", n_choices=4, data="d", student="s",
                         correct=True) for ex in range(6)]
    cov = [dict(condition=c, student="s", data="d", seed=seed, probed=p, of=6, context=ctx, unparsed=u,
                no_rationale=nr, names_choice=0, tied=0)
           for c, p, ctx, u, nr in (("after", 6, "generated", 0, 0), ("before", 4, "generated", 2, 0),
                                    ("gold_only", 0, "gold", 0, 6)) for seed in (0, 1)]
    pl.DataFrame(rows).write_parquet(tmp_path / "lens.parquet")
    pl.DataFrame(res).write_parquet(tmp_path / "results.parquet")
    (tmp_path / "probe_coverage.json").write_text(json.dumps(cov))
    return tmp_path


def test_lens_report_fits_100_columns_and_names_context_coverage_and_chance(tmp_path):
    rd = run_dir(tmp_path)
    con = Console(width=100, record=True)
    (png,) = print_lens(rd, con)
    text = con.export_text()
    assert max(map(len, text.splitlines())) <= 100
    assert "renormalised over the choices, by layer (chance = 1/4 = 0.25)" in text  # from results' n_choices
    header = next(ln.split() for ln in text.splitlines() if ln.split()[:1] == ["layer"])
    assert header[1:] == [str(x) for x in range(0, LAYERS, 2)]  # 31 layers fit unbinned at width 100
    after = next(ln.split() for ln in text.splitlines() if ln.split()[:1] == ["after"])
    assert after == ["after"] + ["2"] * 25 + ["9"] * 6
    # commit table: context, probed of asked (seeds summed), share, mean with CI; never-probed named
    rows = {tuple(ln.split()[:2]): ln.split() for ln in text.splitlines() if ln.split()[:1] in (["logit"], ["tuned"])}
    assert rows[("logit", "before")][2:] == ["generated", "8/12", "100%", "20.0", "[20.0,", "20.0]", "20.0"]
    assert rows[("logit", "after")][2:5] == ["label", "first", "12/12"]
    assert "not probed: gold_only (0 of 12 test examples: 12 have no gold rationale)" in text
    assert "before · s · seed 0: 4 of 6 test examples could be probed" in text
    assert "--quantity full" in " ".join(text.split())  # how to show the other quantity
    assert png.name == "layerwise_confidence.png" and png.stat().st_size > 5000

    con = Console(width=100, record=True)
    print_lens(rd, con, png=False, quantity="full")
    text = con.export_text()
    assert "full-vocabulary P(gold label), by layer" in text and "chance" not in text.split("layer")[0]
    after = next(ln.split() for ln in text.splitlines() if ln.split()[:1] == ["after"])
    assert after == ["after"] + ["0"] * 31  # 0.025 / 0.095: the first tenth everywhere
    with pytest.raises(ValueError):
        print_lens(rd, con, quantity="vocab")


def test_lens_figure_is_redrawn_when_the_quantity_changes(tmp_path):
    rd = run_dir(tmp_path, lenses=("logit",))
    (png,) = print_lens(rd, Console(width=100, record=True))
    first = png.read_bytes()
    print_lens(rd, Console(width=100, record=True))
    assert png.read_bytes() == first
    print_lens(rd, Console(width=100, record=True), quantity="full")
    assert png.read_bytes() != first


def test_cli_probe_quantity(tmp_path):
    from cotdsl.cli import app

    rd = run_dir(tmp_path, lenses=("logit",))
    runner = CliRunner()
    r = runner.invoke(app, ["probe", str(rd), "--quantity", "full", "--no-png"])
    assert r.exit_code == 0, r.output
    assert "full-vocabulary P(gold label)" in r.output
    r = runner.invoke(app, ["probe", str(rd), "--no-png"])
    assert r.exit_code == 0 and "renormalised over the choices" in r.output
    r = runner.invoke(app, ["probe", str(rd), "--quantity", "vocab"])
    assert r.exit_code == 1 and "--quantity" in r.output


def test_sweeps_are_summarised_as_a_small_table_with_a_sparkline(tmp_path):
    rows = [dict(condition="none", family="none", params="{}", baseline=True, reference=None, acc=0.3),
            dict(condition="after", family="after", params="{}", baseline=False, reference=None, acc=0.6)]
    rows += [dict(condition=f"masked[p={p}]", family="masked", params=json.dumps({"p": p}), baseline=False,
                  reference="after", acc=0.6 - p / 2) for p in (0.8, 0.2, 0.5)]
    for r in rows:
        r.update(student="s", data="d", seeds=1, n=100, acc_lo=r["acc"] - 0.1, acc_hi=r["acc"] + 0.1,
                 chance=0.25, unparseable=0, failed=0)
    pl.DataFrame(rows).write_parquet(tmp_path / "summary.parquet")
    con = Console(width=100, record=True)
    print_summary(tmp_path, con)
    text = con.export_text()
    assert max(map(len, text.splitlines())) <= 100
    title = next(ln for ln in text.splitlines() if ln.startswith("sweep masked"))
    assert "accuracy % vs p" in title and sparkline([0.6, 0.5, 0.35, 0.2]) in title
    lines = text.splitlines()
    i = lines.index(next(ln for ln in lines if ln.split()[:1] == ["p"]))
    assert lines[i].split() == ["p", "0", "(after)", "0.2", "0.5", "0.8"]  # sorted, the unperturbed first
    row = lambda head: next(ln for ln in lines[i:] if ln.startswith(head)).split()  # noqa: E731
    assert row("acc %") == ["acc", "%", "60.0", "50.0", "35.0", "20.0"]
    assert row("95% CI")[2:] == ["50–70", "40–60", "25–45", "10–30"]
    assert sparkline([0.0, 0.5, 1.0]) == "▁▅█"
