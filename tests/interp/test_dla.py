"""interp/dla.py: the decomposition adds up to the model's own logit difference, equals
TransformerLens's own `logit_attrs` numbers, and finds a planted answer-writing MLP."""
import warnings

import pytest
import torch

from cotdsl.tiny import sharpen, tiny_model, train_tokenizer
from interp.bridge import build_bridge
from interp.dla import DLAResult, direct_logit_attribution, label_sites, shared_sites
from interp.lens import label_lens


pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


@pytest.fixture(scope="module")
def tok():
    return train_tokenizer(["the quick brown fox jumps over the lazy dog", "Question: which is red?"] * 4,
                           vocab_size=300)


def gqa_llama(tok, seed=0):
    """3-block Llama with grouped-query attention (6 query heads, 2 key/value heads) and an
    untied unembedding, as SmolLM2 has GQA."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    cfg = LlamaConfig(hidden_size=48, intermediate_size=96, num_hidden_layers=3, num_attention_heads=6,
                      num_key_value_heads=2, vocab_size=len(tok), tie_word_embeddings=False,
                      pad_token_id=tok.pad_token_id)
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(cfg).eval()


def make(tok, arch):
    if arch == "llama_gqa":
        return sharpen(gqa_llama(tok), 2)
    return sharpen(tiny_model(tok, arch=arch, layers=3, d_model=32, heads=4), 1)


def ragged(tok, seed=0):
    """Contexts of different lengths; 2-4 choices per example with 1-3 label tokens."""
    g = torch.Generator().manual_seed(seed)
    rnd = lambda n: torch.randint(5, len(tok), (n,), generator=g).tolist()  # noqa: E731
    ctxs = [rnd(n) for n in (5, 9, 3, 7, 4)]
    chs = [[rnd(k) for k in ks] for ks in ([1, 1, 1], [2, 1, 3], [1, 2], [3, 3, 1, 2], [1, 1])]
    return ctxs, chs, torch.tensor([0, 2, 1, 3, 1])


def naive_logit_diff(model, ctxs, chs, gold):
    """One HF forward per choice (context + label): gold's summed label logits minus the mean of
    the distractors'. Computed without interp's code."""
    out = []
    for ctx, ex, g in zip(ctxs, chs, gold.tolist()):
        sums = []
        for lab in ex:
            with torch.no_grad():
                logits = model(torch.tensor([ctx + lab])).logits[0]
            sums.append(sum(float(logits[len(ctx) - 1 + k, t]) for k, t in enumerate(lab)))
        others = [s for c, s in enumerate(sums) if c != g]
        out.append(sums[g] - sum(others) / len(others))
    return torch.tensor(out)


@pytest.mark.parametrize("method", ["tl", "hf"])
@pytest.mark.parametrize("arch", ["gpt2", "llama", "llama_gqa"])
def test_components_add_up_to_the_models_logit_difference(tok, arch, method):
    model = make(tok, arch)
    ctxs, chs, gold = ragged(tok)
    res = direct_logit_attribution(model, ctxs, chs, gold, batch=2, method=method)  # chunks of 2: padding
    B, L = 5, 3
    H = model.config.num_attention_heads
    assert isinstance(res, DLAResult) and res.meta["method"] == method
    assert res.attn.shape == res.mlp.shape == res.attn_bias.shape == (B, L)
    assert res.heads.shape == (B, L, H) and res.num_heads == H and res.num_layers == L
    for t in (res.logit_diff, res.embed, res.pos_embed, res.final_bias):
        assert t.shape == (B,)
    # The model's own logit difference, checked against plain HF forwards.
    want = naive_logit_diff(model, ctxs, chs, gold)
    assert (res.logit_diff - want).abs().max() < 1e-4
    assert res.logit_diff.abs().max() > 0.5  # far from zero: the check means something
    # Completeness: the components rebuild it; heads + b_O rebuild each attention layer.
    assert res.error() < 1e-4
    assert (res.attn - res.heads.sum(-1) - res.attn_bias).abs().max() < 1e-4
    assert res.meta["resid_error"] < 1e-4
    assert res.meta["n_sites"] == 5 + (1 + 2) + 1 + (2 + 2 + 1)  # first tokens + later label tokens
    if arch == "gpt2":
        assert res.pos_embed.abs().max() > 0 and res.final_bias.abs().max() > 0  # learned positions, LN bias
    else:
        assert res.pos_embed.abs().max() == 0 and res.attn_bias.abs().max() == 0  # rotary, no b_O
    comps = res.components()
    assert sum(comps.values()) == pytest.approx(res.total().tolist(), abs=1e-5)


def test_one_token_labels_match_the_label_lens_score_difference(tok):
    """For one-token labels all choices are read at one position, so the logit difference equals
    the difference of label_lens's log-prob scores (the softmax normaliser cancels)."""
    model = make(tok, "llama")
    g = torch.Generator().manual_seed(1)
    ctxs = [torch.randint(5, len(tok), (n,), generator=g).tolist() for n in (4, 6, 8)]
    chs = [[[int(t)] for t in torch.randint(5, len(tok), (3,), generator=g)] for _ in ctxs]
    gold = torch.tensor([2, 0, 1])
    res = direct_logit_attribution(model, ctxs, chs, gold)
    s = label_lens(model, ctxs, chs, gold).scores[:, -1]  # [B, C]
    rows = torch.arange(3)
    want = s[rows, gold] - (s.sum(1) - s[rows, gold]) / 2
    assert (res.logit_diff - want).abs().max() < 1e-4


@pytest.mark.parametrize("arch", ["gpt2", "llama_gqa"])
def test_the_two_methods_agree(tok, arch):
    """"hf" (plain hooks, contexts shared through the KV cache) and "tl" (bridge, full rows)."""
    model = make(tok, arch)
    ctxs, chs, gold = ragged(tok, seed=7)
    a = direct_logit_attribution(model, ctxs, chs, gold, method="tl")
    b = direct_logit_attribution(model, ctxs, chs, gold, method="hf")
    for k in ("logit_diff", "embed", "pos_embed", "attn", "mlp", "heads", "attn_bias", "final_bias"):
        assert (getattr(a, k) - getattr(b, k)).abs().max() < 1e-4, k
    assert a.meta["n_sites"] == b.meta["n_sites"]


def test_hf_method_refuses_what_it_does_not_understand(tok):
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    class Doubled(LlamaRMSNorm):  # a final norm the "hf" path's scale bookkeeping cannot know
        def forward(self, x):
            return 2 * super().forward(x)

    model = make(tok, "llama")
    old = model.model.norm
    model.model.norm = Doubled(old.weight.shape[0], eps=old.variance_epsilon)
    model.model.norm.weight.data.copy_(old.weight.data)
    with pytest.raises(ValueError, match="final norm; use method 'tl'"):
        direct_logit_attribution(model, [[5, 6, 7]], [[[8], [9]]], 0, method="hf")
    with pytest.raises(ValueError, match="unknown method"):
        direct_logit_attribution(model, [[5, 6, 7]], [[[8], [9]]], 0, method="captum")
    other = make(tok, "gpt2")
    del other.transformer.h  # no block list under a name the "hf" path knows
    with pytest.raises(ValueError, match="Llama-family and GPT-2"):
        direct_logit_attribution(other, [[5, 6, 7]], [[[8], [9]]], 0, method="hf")


def test_an_example_alone_equals_the_example_in_a_batch(tok):
    model = make(tok, "gpt2")
    ctxs, chs, gold = ragged(tok, seed=3)
    full = direct_logit_attribution(model, ctxs, chs, gold)
    br = build_bridge(model)
    for b in (1, 3):
        alone = direct_logit_attribution(model, ctxs[b:b + 1], chs[b:b + 1], gold[b:b + 1], tl_bridge=br)
        assert (alone.heads[0] - full.heads[b]).abs().max() < 1e-4
        assert (alone.mlp[0] - full.mlp[b]).abs().max() < 1e-4
        assert alone.logit_diff[0] == pytest.approx(float(full.logit_diff[b]), abs=1e-4)


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_equals_transformerlens_logit_attrs(tok, arch):
    """TL's own recipe: a bridge in compatibility mode (LN folded into W_U, writing weights and
    unembedding centred; value biases not folded, so a head's result keeps its b_V share as
    ours does), `decompose_resid` / `stack_head_results` at the label position and
    `cache.logit_attrs(stack, gold, distractor)` averaged over the distractors."""
    model = make(tok, arch)
    g = torch.Generator().manual_seed(2)
    B, T, C = 4, 6, 3
    ids = torch.randint(5, len(tok), (B, T), generator=g)
    toks = torch.randint(5, len(tok), (B, C), generator=g)
    gold = torch.tensor([0, 1, 2, 0])
    res = direct_logit_attribution(model, ids.tolist(), [[[int(t)] for t in row] for row in toks], gold)
    br = build_bridge(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        br.enable_compatibility_mode(disable_warnings=True, fold_value_biases=False)
    with torch.no_grad():
        _, cache = br.run_with_cache(ids)
        stack, labels = cache.decompose_resid(return_labels=True, pos_slice=-1)  # [n, B, D]
        heads = cache.stack_head_results(pos_slice=-1)  # [L*H, B, D]
        rows = torch.arange(B)
        gtok = toks[rows, gold]
        dis = torch.stack([torch.cat([toks[b, :gold[b]], toks[b, gold[b] + 1:]]) for b in range(B)])

        def attrs(st):
            return sum(cache.logit_attrs(st, tokens=gtok, incorrect_tokens=dis[:, j], pos_slice=-1)
                       for j in range(C - 1)) / (C - 1)

        a, ah = attrs(stack), attrs(heads)
        b_U = br.b_U  # folded: the final norm's bias lives here now
        bias = b_U[gtok] - b_U[dis].mean(1)
    by = dict(zip(labels, a))
    assert (by["embed"] - res.embed).abs().max() < 1e-5
    if "pos_embed" in by:
        assert (by["pos_embed"] - res.pos_embed).abs().max() < 1e-5
    for i in range(3):
        assert (by[f"{i}_attn_out"] - res.attn[:, i]).abs().max() < 1e-4
        assert (by[f"{i}_mlp_out"] - res.mlp[:, i]).abs().max() < 1e-4
    assert (ah.T.reshape(B, 3, -1) - res.heads).abs().max() < 1e-4
    assert (bias - res.final_bias).abs().max() < 1e-5
    assert (a.sum(0) + bias - res.logit_diff).abs().max() < 1e-4


@pytest.mark.parametrize("method", ["tl", "hf"])
@pytest.mark.parametrize("block", [0, 2])
def test_the_planted_mlp_carries_the_logit_difference(tok, planted, block, method):
    model = planted(tok, block)
    ctxs = [[30, 40, 10], [50, 10], [10]]
    chs = [[[12], [13]]] * 3
    res = direct_logit_attribution(model, ctxs, chs, 0, method=method)
    assert res.error() < 1e-4
    assert (res.logit_diff > 0.5).all()  # the final RMS norm divides by ~12.5 (the constant coordinate)
    others = [i for i in range(3) if i != block]
    assert res.mlp[:, others].abs().max() < 1e-6 and res.attn.abs().max() < 1e-6
    assert (res.mlp[:, block] - res.logit_diff).abs().max() < 1e-4  # nothing else writes 12 vs 13
    assert res.embed.abs().max() < 1e-6


def test_sites_and_bad_input(tok):
    s = label_sites([[1, 2, 3], [4]], [[[5], [6, 7]], [[8], [9]]], torch.tensor([1, 0]))
    assert s.ids.tolist() == [[1, 2, 3, 6], [4, 0, 0, 0]]
    assert s.site_row.tolist() == [0, 0, 1] and s.site_pos.tolist() == [2, 3, 0]
    assert s.coef_tok.tolist() == [5, 6, 7, 8, 9]
    assert s.coef_w.tolist() == [-1.0, 1.0, 1.0, 1.0, -1.0]
    # The KV-cache path's order: every example's label position first, then later label tokens.
    sh = shared_sites([[[5], [6, 7]], [[8], [9, 10, 11]]], torch.tensor([1, 0]))
    assert sh.site_ex.tolist() == [0, 1, 0, 1, 1]
    assert sh.coef_site.tolist() == [0, 0, 1, 1, 2, 3, 4] and sh.coef_tok.tolist() == [5, 6, 8, 9, 7, 10, 11]
    assert sh.coef_w.tolist() == [-1.0, 1.0, 1.0, -1.0, 1.0, -1.0, -1.0]
    model = make(tok, "gpt2")
    with pytest.raises(ValueError, match="distractor"):
        direct_logit_attribution(model, [[1, 2]], [[[5]]], 0)
    with pytest.raises(ValueError):
        direct_logit_attribution(model, [[1, 2]], [[[5], [6]]], 2)


@pytest.mark.slow
def test_smollm2_both_methods_add_up():
    """The real student (30 blocks, 9 query / 3 key-value heads, tied embeddings, RMSNorm)."""
    from cotdsl.models import load_smollm2
    from interp.lens import label_inputs

    model, tok = load_smollm2()
    q = "Question: What colour is the blicket?\nChoices:\nA: orange\nB: grey\nAnswer:"
    inp = label_inputs(tok, [q, q + " The blicket is made of copper."],
                       [["orange", "grey"], ["holding hot trays", "holding a boat still", "grey"]], gold=[0, 1])
    want = naive_logit_diff(model, inp["contexts"], inp["choices"], inp["gold"])
    runs = [direct_logit_attribution(model, **inp, method=m) for m in ("tl", "hf")]
    for res in runs:
        assert res.error() < 1e-3 and (res.logit_diff - want).abs().max() < 1e-3
        assert res.heads.shape == (2, 30, 9)
    assert (runs[0].heads - runs[1].heads).abs().max() < 1e-3
    assert (runs[0].mlp - runs[1].mlp).abs().max() < 1e-3
