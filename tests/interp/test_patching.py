"""interp/patching.py: ground truth on models whose answer is written at a known block, and exact
identities of clean vs corrupted prompts."""
import copy

import pytest
import torch

from cotdsl.tiny import sharpen, tiny_model, train_tokenizer
from interp.bridge import build_bridge
from interp.dla import direct_logit_attribution
from interp.patching import PatchResult, activation_patching, hook_name

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


TOL = 1e-4


@pytest.fixture(scope="module")
def tok():
    return train_tokenizer(["the quick brown fox jumps over the lazy dog", "Question: which is red?"] * 4,
                           vocab_size=300)


def ragged(tok, seed=0, same_lengths=True):
    g = torch.Generator().manual_seed(seed)
    rnd = lambda n: torch.randint(5, len(tok), (n,), generator=g).tolist()  # noqa: E731
    lengths = (5, 9, 3, 7)
    ctxs = [rnd(n) for n in lengths]
    bad = [rnd(n if same_lengths else n + 2 * (i % 2)) for i, n in enumerate(lengths)]
    chs = [[rnd(k) for k in ks] for ks in ([1, 1, 1], [2, 1, 3], [1, 2], [3, 3, 1, 2])]
    return ctxs, bad, chs, torch.tensor([0, 2, 1, 3])


def exact(x, value):
    return bool(((x - value).abs() < TOL).all())


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
@pytest.mark.parametrize("k", [0, 2])
def test_two_models_that_differ_in_block_k(tok, arch, k):
    """Corrupted = the clean model with block k's MLP re-drawn. Before block k the two residual
    streams are identical, so patching there restores exactly nothing; from block k's output on,
    patching the whole residual (every position) hands the rest of the run to identical blocks,
    so it restores exactly everything. Block k's MLP output alone restores everything too."""
    clean = sharpen(tiny_model(tok, arch=arch, layers=4, d_model=32, heads=4), 1)
    bad = copy.deepcopy(clean)
    mlp = bad.transformer.h[k].mlp if arch == "gpt2" else bad.model.layers[k].mlp
    g = torch.Generator().manual_seed(9)
    with torch.no_grad():
        for p in mlp.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.5)
    ctxs, _, chs, gold = ragged(tok)
    res = activation_patching(clean, ctxs, chs, gold, corrupted_model=bad, positions="all", batch=3)
    assert isinstance(res, PatchResult) and res.meta["two_models"]
    assert (res.clean - res.corrupted).abs().min() > 1e-2  # every example has something to restore
    r = res.restored("resid")
    assert r.shape == (4, 5)
    assert exact(r[:, :k + 1], 0.0) and exact(r[:, k + 1:], 1.0)
    m = res.restored("mlp")
    assert m.shape == (4, 4) and exact(m[:, :k], 0.0) and exact(m[:, k], 1.0)
    assert exact(res.restored("attn")[:, :k + 1], 0.0)  # attention up to block k reads identical input
    assert exact(res.restored_mean("resid")[k + 1:], 1.0)
    proj = res.restored_projection("resid")
    assert exact(proj[:k + 1], 0.0) and exact(proj[k + 1:], 1.0)
    # The runs' own differences are DLA's logit differences.
    assert (res.clean - direct_logit_attribution(clean, ctxs, chs, gold).logit_diff).abs().max() < TOL
    assert (res.corrupted - direct_logit_attribution(bad, ctxs, chs, gold).logit_diff).abs().max() < TOL


@pytest.mark.parametrize("k", [0, 1, 2])
def test_answer_written_at_block_k_label_position(tok, planted, k):
    """A Llama whose only writing component is block k's MLP (it writes the answer on the cue) vs
    the same model without that write. Attention writes nothing, so the label position's own
    residual decides: patching it there restores 0 before block k and 1 from its output on."""
    clean, bad = planted(tok, k, push=6.0, layers=3), planted(tok, k, push=0.0, layers=3)
    ctxs = [[30, 40, 10], [50, 10], [10], [60, 61, 62, 10]]
    chs = [[[12], [13]], [[13], [12]], [[12], [13, 20]], [[12, 30], [13]]]
    gold = torch.tensor([0, 1, 0, 0])
    res = activation_patching(clean, ctxs, chs, gold, corrupted_model=bad, positions="label")
    assert (res.clean - res.corrupted).abs().min() > 0.3
    r = res.restored("resid")
    assert exact(r[:, :k + 1], 0.0) and exact(r[:, k + 1:], 1.0)
    m = res.restored("mlp")
    assert exact(m[:, k], 1.0) and exact(m[:, [i for i in range(3) if i != k]], 0.0)
    assert exact(res.restored("attn"), 0.0)


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_clean_vs_corrupted_prompt_identities(tok, arch):
    model = sharpen(tiny_model(tok, arch=arch, layers=3, d_model=32, heads=4), 2)
    br = build_bridge(model)
    ctxs, bad, chs, gold = ragged(tok, seed=4)
    # Every position: patching the embeddings (resid row 0) replays the clean run, and so does any
    # later resid row.
    res = activation_patching(model, ctxs, chs, gold, corrupted_contexts=bad, positions="all", tl_bridge=br)
    assert exact(res.restored("resid"), 1.0)
    # Label sites, contexts of other lengths: the last row is what the unembedding reads.
    ctxs, bad, chs, gold = ragged(tok, seed=5, same_lengths=False)
    res = activation_patching(model, ctxs, chs, gold, corrupted_contexts=bad, tl_bridge=br, sites=("resid", "mlp"))
    assert set(res.patched) == {"resid", "mlp"} and res.positions == "label"
    assert exact(res.restored("resid")[:, -1], 1.0)
    assert not exact(res.restored("resid")[:, 0], 1.0)  # the label token alone is not the prompt
    assert (res.corrupted - direct_logit_attribution(model, bad, chs, gold, tl_bridge=br).logit_diff).abs().max() < TOL
    with pytest.raises(ValueError, match="equal lengths"):
        activation_patching(model, ctxs, chs, gold, corrupted_contexts=bad, positions="all", tl_bridge=br)


def test_restored_nan_where_nothing_differs_and_bad_input(tok):
    res = PatchResult(clean=torch.tensor([2.0, 1.0]), corrupted=torch.tensor([0.0, 1.0]),
                      patched={"resid": torch.tensor([[1.0, 2.0], [1.0, 1.0]])}, positions="label",
                      gold=torch.tensor([0, 0]))
    r = res.restored("resid")
    assert r[0].tolist() == [0.5, 1.0] and torch.isnan(r[1]).all()
    assert res.restored_mean("resid").tolist() == pytest.approx([0.5, 1.0])  # means: clean 1.5, corrupted 0.5
    assert hook_name("resid", 0) == "blocks.0.hook_resid_pre" and hook_name("resid", 3) == "blocks.2.hook_resid_post"
    assert hook_name("mlp", 1) == "blocks.1.hook_mlp_out"
    model = tiny_model(tok, arch="gpt2", layers=2, d_model=16, heads=2)
    ctx, chs = [[5, 6, 7]], [[[8], [9]]]
    with pytest.raises(ValueError, match="identical"):
        activation_patching(model, ctx, chs, 0)
    with pytest.raises(ValueError, match="positions"):
        activation_patching(model, ctx, chs, 0, corrupted_contexts=[[5, 6, 8]], positions="some")
    with pytest.raises(ValueError, match="sites"):
        activation_patching(model, ctx, chs, 0, corrupted_contexts=[[5, 6, 8]], sites=("heads",))
    other = tiny_model(tok, arch="gpt2", layers=3, d_model=16, heads=2)
    with pytest.raises(ValueError, match="differ in shape"):
        activation_patching(model, ctx, chs, 0, corrupted_model=other)


def test_restored_projection_when_the_runs_differ_per_example_but_not_on_average():
    """Gaps +2, -2, +1, -1 (mean 0: `restored_mean` divides by 0). A patch that moves each example
    by a share a of its own gap gives a exactly, and its bootstrap CI collapses on a; one that
    moves the examples away from the clean run gives a negative share; noise averages out."""
    clean, bad = torch.tensor([2.0, -2.0, 1.0, -1.0]), torch.zeros(4)
    gap = clean - bad
    a = torch.tensor([0.0, 0.25, 1.0, -0.5])
    res = PatchResult(clean=clean, corrupted=bad, patched={"resid": bad[:, None] + gap[:, None] * a[None]},
                      positions="label", gold=torch.zeros(4, dtype=torch.long))
    assert not torch.isfinite(res.restored_mean("resid")).any()
    assert res.restored_projection("resid").tolist() == pytest.approx(a.tolist())
    point, lo, hi = res.restored_ci("resid")
    assert point.tolist() == pytest.approx(a.tolist()) and lo.tolist() == pytest.approx(a.tolist())
    assert hi.tolist() == pytest.approx(a.tolist())
    # by hand: shifts (1, 0, 0, 0) against gaps (2, -2, 1, -1): 2 / 10
    one = PatchResult(clean=clean, corrupted=bad, patched={"mlp": torch.tensor([[1.0], [0.0], [0.0], [0.0]])},
                      positions="label", gold=torch.zeros(4, dtype=torch.long))
    assert one.restored_projection("mlp").tolist() == pytest.approx([0.2])
    point, lo, hi = one.restored_ci("mlp", n_boot=500)
    assert lo[0] <= point[0] <= hi[0] and hi[0] > lo[0]
    same = PatchResult(clean=bad, corrupted=bad, patched={"resid": torch.ones(4, 2)}, positions="label",
                       gold=torch.zeros(4, dtype=torch.long))
    assert torch.isnan(same.restored_projection("resid")).all()
    with pytest.raises(ValueError, match="stat"):
        res.restored_ci("resid", stat="median")
    mean_point, _, _ = PatchResult(clean=torch.tensor([2.0, 1.0]), corrupted=torch.zeros(2),
                                   patched={"resid": torch.tensor([[1.0], [0.0]])}, positions="label",
                                   gold=torch.zeros(2, dtype=torch.long)).restored_ci("resid", stat="mean")
    assert mean_point.tolist() == pytest.approx([1 / 3])  # (0.5 - 0) / (1.5 - 0)
