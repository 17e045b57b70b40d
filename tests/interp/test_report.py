"""interp/report.py: frame building, aggregation, rich rendering and the PNG figure."""
import polars as pl
import pytest
import torch
from rich.console import Console

from interp.commit import summarize
from interp.lens import LensResult
from interp.report import SCALE, _shade, commit_table, heatmap, layer_means, plot_report, render_report, to_frame


def result(p0_rows, lens="logit", gold=None):
    """LensResult with B examples x (L+1) rows, 2 choices; p0_rows [B][L+1] = P(choice 0)."""
    p = torch.tensor(p0_rows, dtype=torch.float)
    choice = torch.stack([p, 1 - p], -1)
    B = p.shape[0]
    gold = torch.zeros(B, dtype=torch.long) if gold is None else torch.tensor(gold)
    return LensResult(probs=choice * 0.5, ranks=torch.ones_like(choice, dtype=torch.long),
                      choice_probs=choice, gold=gold, lens=lens)


@pytest.fixture
def data():
    return {
        "logit": {"no_cot": result([[0.2, 0.3, 0.6], [0.4, 0.7, 0.8]]),
                  "cot_after": result([[0.6, 0.9, 0.9], [0.7, 0.8, 0.3]])},
        "tuned": {"no_cot": result([[0.5, 0.6, 0.6], [0.4, 0.2, 0.8]], "tuned"),
                  "cot_after": result([[0.9, 0.9, 0.9], [0.6, 0.6, 0.3]], "tuned")},
    }


def test_frame_and_aggregates(data):
    frame = to_frame(data)
    assert frame.height == 2 * 2 * 2 * 3
    means = layer_means(frame, "choice_p_gold")
    row = means.filter((means["lens"] == "logit") & (means["condition"] == "no_cot")
                       & (means["layer"] == 1))
    assert row["mean"].item() == pytest.approx(0.5)
    assert layer_means(frame)["mean"].max() <= 0.5  # full-vocab probs are half the choice ones
    ct = commit_table(data)
    s = summarize(data["logit"]["cot_after"])
    got = ct.filter((ct["lens"] == "logit") & (ct["condition"] == "cot_after")).row(0, named=True)
    assert got["n"] == 2 and got["share_committed"] == s["share_committed"] == 0.5
    assert got["commit_mean"] == s["commit_mean"] == 0
    # A flat {condition: LensResult} dict takes the lens name from the results.
    flat = to_frame({"a": result([[0.6, 0.7]]), "b": result([[0.3, 0.2]])})
    assert flat["lens"].unique().to_list() == ["logit"]
    none = commit_table(flat).filter(commit_table(flat)["condition"] == "b").row(0, named=True)
    assert none["commit_mean"] is None and none["share_committed"] == 0.0


def test_render_report_text(data):
    con = Console(record=True, width=120, color_system="truecolor")
    render_report(data, console=con, prob="choice_p_gold")
    text = con.export_text()
    for needle in ("logit lens", "tuned lens", "no_cot", "cot_after", "commit layer",
                   "committed", "50%", "renormalised over the choices"):
        assert needle in text, needle
    # Cells are shaded: the recorded output carries background colours.
    assert "rgb(" in con.export_html(inline_styles=True) or "background" in con.export_html()
    # One row per condition, one column per layer (3 layers fit: cells in per cent), the logit
    # lens's rows first, conditions in input order; layer 1 of no_cot is mean(0.3, 0.7) = 50%.
    rows = [ln.split() for ln in text.splitlines() if ln.split()[:1] in (["no_cot"], ["cot_after"])]
    assert rows[:4] == [["no_cot", "30", "50", "70"], ["cot_after", "65", "85", "60"],
                        ["no_cot", "45", "40", "70"], ["cot_after", "75", "75", "60"]]
    assert text.index("logit lens") < text.index("tuned lens")


def test_render_from_polars_frame(data):
    con = Console(record=True, width=100)
    render_report(to_frame(data), console=con, prob="p_gold")
    text = con.export_text()
    assert "full-vocabulary P(gold label)" in text
    # full-vocabulary probabilities are half the renormalised ones in this fixture: 25% at layer 1
    assert ["no_cot", "15", "25", "35"] in [ln.split() for ln in text.splitlines()]


def test_png_written(data, tmp_path):
    path = plot_report(data, tmp_path / "figs" / "lens.png", prob="choice_p_gold")
    raw = path.read_bytes()
    assert raw[:8] == b"\x89PNG\r\n\x1a\n" and len(raw) > 5000
    import matplotlib.image as mpimg
    img = mpimg.imread(path)
    assert img.shape[1] > img.shape[0] > 200  # two panels side by side


def test_bad_report_input(data, tmp_path):
    with pytest.raises(ValueError):
        to_frame({})
    with pytest.raises(ValueError):
        to_frame({"x": 3})
    with pytest.raises(ValueError):
        render_report(data, console=Console(record=True), prob="nope")
    with pytest.raises(ValueError):
        plot_report(to_frame(data).drop("commit_layer"), tmp_path / "x.png")


def test_ties_are_flagged_in_the_frame_and_the_report(data):
    tied = result([[0.5, 0.5, 0.5], [0.2, 0.7, 0.8]])
    tied.tied = torch.tensor([True, False])
    frame = to_frame({"first": tied})
    assert frame.filter(frame["example"] == 0)["tied"].all() and not frame.filter(frame["example"] == 1)["tied"].any()
    con = Console(record=True, width=200)
    render_report({"first": tied}, console=con)
    assert "logit lens: 1 of 2 examples score two choices on identical tokens" in con.export_text()
    con = Console(record=True, width=200)
    render_report(data, console=con)  # no ties: no note
    assert "identical tokens" not in con.export_text()


def lens_frame(curves: dict, lenses=("logit",), n: int = 4, n_choices: int = 4, commit=None, context=None):
    """Long frame: every example of condition c has choice_p_gold = curves[c][layer] and half of it
    as p_gold; commit[c] its commit layer (-1 by default)."""
    rows = []
    for lens in lenses:
        for cond, curve in curves.items():
            for ex in range(n):
                for layer, v in enumerate(curve):
                    rows.append(dict(lens=lens, condition=cond, example=ex, layer=layer, p_gold=v / 2,
                                     choice_p_gold=v, rank_gold=1, commit_layer=(commit or {}).get(cond, -1),
                                     tied=False, context=(context or {}).get(cond, "generated"),
                                     n_choices=n_choices))
    return pl.DataFrame(rows)


def cells(line) -> list[tuple[str, str]]:
    """(text, style) of each shaded cell of a heatmap row (rich Text spans)."""
    return [(line.plain[s.start:s.end], str(s.style)) for s in line.spans]


def test_heatmap_shape_labels_and_legend():
    rise = [0.25] * 5 + [0.92] * 3  # P rises at layer 5
    lines = heatmap(lens_frame({"flat": [0.25] * 8, "rises": rise}, lenses=("logit", "tuned")), width=100)
    text = [ln.plain for ln in lines]
    assert "renormalised over the choices" in text[0] and "chance = 1/4 = 0.25" in text[0]
    assert text[1].split() == ["layer", *map(str, range(8))]  # one column per layer: all fit
    assert [t for t in text if t.endswith(" lens")] == ["logit lens", "tuned lens"]
    rows = [ln for ln in lines if ln.plain.split()[:1] in (["flat"], ["rises"])]
    assert [r.plain.split() for r in rows[:2]] == [["flat"] + ["25"] * 8, ["rises"] + ["25"] * 5 + ["92"] * 3]
    assert len(rows) == 4  # both conditions under both lenses
    # shaded by tenth: 0.25 in the third shade, 0.92 in the tenth (with a dark digit)
    assert cells(rows[1])[4] == (" 25", f"white on {SCALE[2]}") and cells(rows[1])[5] == (" 92", f"black on {SCALE[9]}")
    legend = next(ln for ln in lines if ln.plain.strip().startswith("scale"))
    assert [c[0].strip() for c in cells(legend)[:10]] == [str(10 * d) for d in range(10)]
    assert [c[1] for c in cells(legend)[:10]] == [_shade(d) for d in range(10)]
    assert "chance: shade 2" in legend.plain
    assert all(len(t) <= 100 for t in text)


def test_heatmap_bins_layers_when_narrow():
    curve = [i / 29 for i in range(30)]  # 30 layers, P = layer / 29
    lines = heatmap(lens_frame({"ramp": curve}), width=60)
    text = [ln.plain for ln in lines]
    assert all(len(t) <= 60 for t in text)
    header = next(t.split() for t in text if t.split()[:1] == ["layers"])
    assert header[:4] == ["layers", "0–1", "4–5", "8–9"]  # bin ranges in the header
    (row,) = [ln for ln in lines if ln.plain.split()[:1] == ["ramp"]]
    shown = [int(c[0]) for c in cells(row)]
    # 2 layers per column (15 columns, room for per cent): the bin's mean, e.g. layers 10-11 -> 10.5/29
    assert len(shown) == 15 and shown[5] == round(100 * 10.5 / 29) and shown[-1] == round(100 * 28.5 / 29)
    assert cells(row)[5][1] == _shade(3)
    assert "2 layers per column" in " ".join(text)
    # at width 80 it needs no bins: one 2-wide cell per layer, its digit the tenth
    wide = heatmap(lens_frame({"ramp": curve}), width=80)
    (row,) = [ln for ln in wide if ln.plain.split()[:1] == ["ramp"]]
    assert [int(c[0]) for c in cells(row)] == [min(9, int(10 * v)) for v in curve]
    assert "layers per column" not in " ".join(ln.plain for ln in wide)


def test_both_quantities_are_selectable():
    frame = lens_frame({"rises": [0.25] * 5 + [0.92] * 3})
    choice = [ln.plain for ln in heatmap(frame, "choice_p_gold", width=100)]
    full = [ln.plain for ln in heatmap(frame, "p_gold", width=100)]
    assert "renormalised" in choice[0] and "full-vocabulary" in full[0] and "chance" not in full[0]
    assert ["rises"] + ["12"] * 5 + ["46"] * 3 in [t.split() for t in full]
    assert 'prob="p_gold"' in choice[-1] and 'prob="choice_p_gold"' in full[-1]  # the caption names the other
    with pytest.raises(ValueError):
        heatmap(frame, "rank_gold")


def test_report_fits_100_columns_with_commit_table_context_and_coverage():
    names = {f"masked[p={p}] · SmolLM2-135M · commonsense_qa [gold rationale]": [0.25] * 25 + [0.8] * 6
             for p in (0.2, 0.5)}
    names["after"] = [0.25] * 20 + [0.7] * 11
    frame = lens_frame(names, lenses=("logit", "tuned"), n=6, commit={"after": 21},
                       context={"after": "label first"})
    cov = {"after": {"probed": 6, "of": 8, "why": "2 generated no parseable answer"},
           "before": {"probed": 0, "of": 8, "why": "8 generated no parseable answer"}}
    con = Console(record=True, width=100, color_system="truecolor")
    render_report(frame, console=con, coverage=cov)
    text = con.export_text()
    assert max(map(len, text.splitlines())) <= 100
    row = next(ln.split() for ln in text.splitlines() if ln.split()[:2] == ["logit", "after"])
    # lens, condition, context, probed of asked, share committed, mean [95% CI], median
    assert row == ["logit", "after", "label", "first", "6/8", "100%", "21.0", "[21.0,", "21.0]", "21.0"]
    assert "not probed: before (0 of 8 test examples: 8 generated no parseable answer)" in text
    # long names: cut short in the heatmap's label column, whole (wrapped) in the commit table
    assert any(ln.startswith("  masked[p=0.2] · SmolLM2-135M ·…") for ln in text.splitlines())
    assert "commonsense_qa [gold" in text and "rationale]" in text
    assert "generated" in text and "0%" in text


def test_commit_table_ci():
    frame = lens_frame({"a": [0.5] * 4}, n=1)
    frame = pl.concat([frame.with_columns(example=pl.lit(i), commit_layer=pl.lit(c)) for i, c in
                       enumerate([1, 2, 3, -1])])
    row = commit_table(frame).row(0, named=True)
    assert (row["n"], row["committed"], row["share_committed"], row["commit_mean"]) == (4, 3, 0.75, 2.0)
    assert 1.0 <= row["commit_lo"] < 2.0 < row["commit_hi"] <= 3.0 and row["context"] == "generated"


def test_png_with_bands_chance_and_not_probed(tmp_path):
    import matplotlib.image as mpimg

    frame = lens_frame({"flat": [0.25] * 8, "rises": [0.25] * 5 + [0.92] * 3}, lenses=("logit", "tuned"))
    path = plot_report(frame, tmp_path / "lens.png", coverage={"gone": {"probed": 0, "of": 4, "why": "no rationale"}})
    img = mpimg.imread(path)
    assert img.shape[1] > img.shape[0] > 200
    full = plot_report(frame, tmp_path / "full.png", prob="p_gold")
    assert full.read_bytes() != path.read_bytes()
