"""interp/attention.py: masses on the rationale vs the prompt equal a direct computation from HF's
eager-attention `output_attentions`, sum to 1, and the bootstrap CIs behave."""
import copy

import pytest
import torch

from cotdsl.tiny import sharpen, tiny_model, train_tokenizer
from interp.attention import AttentionResult, bootstrap_mean_ci, rationale_attention, rationale_inputs

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py

PROMPTS = ["Question: what colour is the sky?\nAnswer:", "Question: how does the blicket feel?\nAnswer:",
           "Question: which is red?\nAnswer:"]
RATIONALES = ["the sky scatters blue light so it looks blue", "the blicket is made of wool",
              "an apple is red and a leaf is green"]


@pytest.fixture(scope="module")
def tok():
    return train_tokenizer(PROMPTS + RATIONALES + ["So the answer is: blue soft apple"] * 2, vocab_size=320)


def hf_masses(model, contexts, spans):
    """Direct computation: HF eager attention, one example at a time, summing the last row."""
    m = copy.deepcopy(model)
    m.set_attn_implementation("eager")
    out = []
    for ctx, sp in zip(contexts, spans):
        with torch.no_grad():
            att = m(torch.tensor([ctx]), output_attentions=True).attentions  # L x [1, H, T, T]
        row = torch.stack([a[0, :, -1, :] for a in att])  # [L, H, T]
        named = [row[..., a:e].sum(-1) for a, e in sp.values()]
        out.append(torch.stack(named + [row.sum(-1) - sum(named)], -1))
    return torch.stack(out)


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_masses_equal_hf_output_attentions(tok, arch):
    model = sharpen(tiny_model(tok, arch=arch, layers=3, d_model=32, heads=4), 1)
    inp = rationale_inputs(tok, PROMPTS, RATIONALES)
    res = rationale_attention(model, **inp, batch=2)  # padded chunks
    assert isinstance(res, AttentionResult) and res.names == ("prompt", "rationale", "other")
    assert res.mass.shape == (3, 3, 4, 3)
    assert (res.mass.sum(-1) - 1).abs().max() < 1e-5  # prompt + rationale + other = 1
    want = hf_masses(model, inp["contexts"], inp["spans"])
    assert (res.mass - want).abs().max() < 1e-5
    assert res.span("rationale").max() > 0.05 and res.span("prompt").max() > 0.05  # not trivial
    assert res.lengths.sum(1).tolist() == [len(c) for c in inp["contexts"]]


def test_hand_computed_pattern_on_a_uniform_model(tok):
    """Zero query/key weights make every attention row uniform over the causal prefix, so the
    label position (index t) puts exactly len(span) / (t + 1) on each span."""
    model = tiny_model(tok, arch="llama", layers=2, d_model=32, heads=4)
    with torch.no_grad():
        for blk in model.model.layers:
            blk.self_attn.q_proj.weight.zero_()
            blk.self_attn.k_proj.weight.zero_()
    contexts = [[5, 6, 7, 8, 9, 10, 11], [5, 6, 7, 8]]
    spans = [{"prompt": (0, 3), "rationale": (3, 6)}, {"prompt": (0, 1), "rationale": (1, 4)}]
    res = rationale_attention(model, contexts, spans)
    want = torch.tensor([[3 / 7, 3 / 7, 1 / 7], [1 / 4, 3 / 4, 0.0]])
    assert (res.mass - want[:, None, None, :]).abs().max() < 1e-6
    assert res.lengths.tolist() == [[3, 3, 1], [1, 3, 0]]
    pt = res.per_token()
    assert pt[0, 0, 0].tolist() == pytest.approx([1 / 7] * 3) and torch.isnan(pt[1, 0, 0, 2])


def test_rationale_inputs_spans(tok):
    inp = rationale_inputs(tok, PROMPTS[:1], RATIONALES[:1])
    ctx, sp = inp["contexts"][0], inp["spans"][0]
    (pa, pb), (ra, rb) = sp["prompt"], sp["rationale"]
    assert pa == 0 and pb == ra and rb < len(ctx)  # the suffix tokens come after, as "other"
    assert tok.decode(ctx[ra:rb]).split() == RATIONALES[0].split()
    assert tok.decode(ctx[pa:pb]).strip() == PROMPTS[0].strip()


def test_bootstrap_ci():
    x = torch.arange(100, dtype=torch.float).reshape(100, 1) / 100  # mean 0.495
    mean, lo, hi = bootstrap_mean_ci(x, n_boot=4000, seed=1)
    assert mean.item() == pytest.approx(0.495)
    # Standard error of the mean: sd / sqrt(n) = 0.2887 / 10; the 95% CI is about ±1.96 SE.
    assert lo.item() == pytest.approx(0.495 - 1.96 * 0.02887, abs=0.01)
    assert hi.item() == pytest.approx(0.495 + 1.96 * 0.02887, abs=0.01)
    again = bootstrap_mean_ci(x, n_boot=4000, seed=1)
    assert again[1].item() == lo.item()  # seeded
    const = bootstrap_mean_ci(torch.full((7, 2, 3), 0.25))
    assert all(torch.allclose(t, torch.full((2, 3), 0.25)) for t in const)
    with pytest.raises(ValueError):
        bootstrap_mean_ci(x, level=1.5)


def test_result_ci_and_bad_input(tok):
    mass = torch.tensor([[0.2, 0.5, 0.3], [0.4, 0.5, 0.1]])[:, None, None, :].expand(2, 3, 4, 3)
    res = AttentionResult(mass=mass, names=("prompt", "rationale", "other"), lengths=torch.ones(2, 3))
    m, lo, hi = res.ci("layer")
    assert m.shape == (3, 3) and m[0].tolist() == pytest.approx([0.3, 0.5, 0.2])
    assert (lo <= m + 1e-6).all() and (hi >= m - 1e-6).all()
    assert res.ci("head")[0].shape == (3, 4, 3)
    with pytest.raises(ValueError):
        res.span("question")
    model = tiny_model(tok, arch="gpt2", layers=1, d_model=16, heads=2)
    with pytest.raises(ValueError, match="overlaps"):
        rationale_attention(model, [[5, 6, 7]], [{"prompt": (0, 2), "rationale": (1, 3)}])
    with pytest.raises(ValueError, match="within"):
        rationale_attention(model, [[5, 6, 7]], [{"prompt": (0, 2), "rationale": (2, 5)}])
    with pytest.raises(ValueError, match="reserved"):
        rationale_attention(model, [[5, 6, 7]], [{"other": (0, 2)}])
