"""interp/report.py: frame building, aggregation, rich rendering and the PNG figure."""
import pytest
import torch
from rich.console import Console

from interp.commit import summarize
from interp.lens import LensResult
from interp.report import commit_table, layer_means, plot_report, render_report, to_frame


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
                   "share committed", "0.500", "50%"):
        assert needle in text, needle
    # Cells are shaded: the recorded output carries background colours.
    assert "rgb(" in con.export_html(inline_styles=True) or "background" in con.export_html()
    # Heatmap row for layer 1: conditions in input order, logit lens then tuned lens.
    rows = [ln for ln in text.splitlines() if ln.replace(" ", "").startswith("│1│")]
    assert len(rows) == 2
    assert rows[0].index("0.500") < rows[0].index("0.850")
    assert rows[1].index("0.400") < rows[1].index("0.750")


def test_render_from_polars_frame(data):
    con = Console(record=True, width=100)
    render_report(to_frame(data), console=con)
    assert "full vocabulary" in con.export_text()


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
    assert "1 of 2 examples score two choices on identical tokens" in con.export_text()
    con = Console(record=True, width=200)
    render_report(data, console=con)  # no ties: no note
    assert "identical tokens" not in con.export_text()
