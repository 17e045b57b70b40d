"""interp/mech_report.py: terminal tables (rich recording console) and PNG figures for DLA,
activation patching and attention to the rationale, on hand-made results."""
import pytest
import torch
from rich.console import Console

from interp.attention import AttentionResult
from interp.dla import DLAResult
from interp.mech_report import (plot_attention, plot_dla, plot_patching, render_attention, render_dla,
                                render_patching)
from interp.patching import PatchResult

L, H, B = 3, 4, 5


def dla_result(seed=0):
    g = torch.Generator().manual_seed(seed)
    heads = torch.randn(B, L, H, generator=g)
    heads[:, 2, 1] += 5.0  # L2H1 dominates
    attn_bias = torch.zeros(B, L)
    attn = heads.sum(-1) + attn_bias
    mlp = torch.randn(B, L, generator=g)
    embed, pos, fb = torch.randn(B, generator=g), torch.zeros(B), torch.full((B,), 0.25)
    diff = embed + pos + attn.sum(1) + mlp.sum(1) + fb
    return DLAResult(logit_diff=diff, embed=embed, pos_embed=pos, attn=attn, mlp=mlp, heads=heads,
                     attn_bias=attn_bias, final_bias=fb, gold=torch.zeros(B, dtype=torch.long),
                     n_choices=torch.full((B,), 2))


def patch_result():
    clean, corrupted = torch.full((B,), 2.0), torch.zeros(B)
    resid = torch.tensor([0.0, 0.0, 2.0, 2.0]).expand(B, L + 1)
    mlp = torch.tensor([0.0, 2.0, 0.0]).expand(B, L)
    patched = {"resid": resid, "attn": torch.zeros(B, L), "mlp": mlp}
    return PatchResult(clean=clean, corrupted=corrupted, patched=patched, positions="all",
                       gold=torch.zeros(B, dtype=torch.long))


def attention_result():
    g = torch.Generator().manual_seed(3)
    mass = torch.softmax(torch.randn(B, L, H, 3, generator=g), -1)
    mass[:, 1, 2] = torch.tensor([0.05, 0.9, 0.05])  # L1H2 reads the rationale
    return AttentionResult(mass=mass, names=("prompt", "rationale", "other"), lengths=torch.tensor([[5, 9, 3]] * B))


def text_of(render, data, **kw):
    con = Console(record=True, width=100, color_system="truecolor")
    render(data, console=con, **kw)
    return con, con.export_text(clear=False)


def body_rows(text, first_cell):
    """Table body lines whose first cell is `first_cell`."""
    return [ln for ln in text.splitlines() if ln.strip("│┃ ").split(" ")[0] == first_cell]


def test_render_dla():
    res = dla_result()
    con, text = text_of(render_dla, {"after": res, "none": dla_result(1)}, top_k=3)
    assert "DLA [after]" in text and "DLA [none]" in text
    assert f"model's own {float(res.logit_diff.mean()):+.3f}" in text
    for needle in ("attn", "mlp", "embed", "final bias", "total", "top 3 heads", "L2H1"):
        assert needle in text, needle
    assert "pos_embed" not in text  # all-zero position embeddings are not listed
    # One row per block per condition, and block 1's cells are its mean contributions.
    assert len(body_rows(text, "1")) >= 2
    row = body_rows(text, "1")[0]
    assert f"{float(res.attn[:, 1].mean()):+.3f}" in row and f"{float(res.mlp[:, 1].mean()):+.3f}" in row
    # The top head is listed first.
    first = [ln for ln in text.splitlines() if "L2H1" in ln][0]
    assert first.strip("│ ").startswith("1")
    assert "background-color: #c82828" in con.export_html(inline_styles=True)  # the top head, full red
    assert max(len(ln) for ln in text.splitlines()) <= 100


def test_render_patching():
    con, text = text_of(render_patching, patch_result())
    assert "activation patching (all positions)" in text and "restored fraction" in text
    rows = {n: body_rows(text, str(n)) for n in range(L + 1)}
    assert all(len(v) == 1 for v in rows.values())
    cells = {n: [c.strip() for c in v[0].split("│")[2:-1]] for n, v in rows.items()}  # resid, attn, mlp
    assert cells[0] == ["0.00", "0.00", "0.00"]
    assert cells[1] == ["0.00", "0.00", "1.00"]  # block 1's MLP restores everything
    assert cells[2] == ["1.00", "0.00", "0.00"]
    assert cells[3] == ["1.00", "", ""]  # resid has one more row than the blocks
    assert "resid row 0 = embeddings" in text


def test_render_attention():
    res = attention_result()
    con, text = text_of(render_attention, {"cot": res}, top_k=2, n_boot=200)
    assert "attention of the label position [cot]: mean mass per span (5 examples)" in text
    assert "95% bootstrap CI" in text
    for needle in ("prompt", "rationale", "other", "top 2 heads", "L1H2"):
        assert needle in text, needle
    mean = res.mass.mean((0, 2))
    assert f"{float(mean[0, 1]):.2f} [" in body_rows(text, "0")[0]
    first = [ln for ln in text.splitlines() if "L1H2" in ln][0]
    assert "0.900" in first


def test_figures(tmp_path):
    from matplotlib.image import imread

    for fn, data, name in ((plot_dla, {"a": dla_result(), "b": dla_result(2)}, "dla.png"),
                           (plot_patching, patch_result(), "patch.png"),
                           (plot_attention, attention_result(), "attn.png")):
        path = fn(data, tmp_path / "sub" / name)
        assert path.exists() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        img = imread(path)
        assert img.shape[0] > 200 and img.shape[1] > 400


def test_bad_input():
    with pytest.raises(ValueError, match="DLAResult"):
        render_dla({})
    with pytest.raises(ValueError, match="PatchResult"):
        plot_patching([patch_result()], "x.png")
