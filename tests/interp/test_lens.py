"""interp/lens.py: the fast logit lens equals TransformerLens's numbers; input checks."""
import pytest
import torch

from cotdsl.tiny import sharpen, tiny_model, train_tokenizer
from interp import bridge
from interp.lens import LensResult, logit_lens, logit_lens_tl, readout, tl_accumulated_logits

TEXTS = ["the quick brown fox jumps over the lazy dog", "Question: which is red?\nAnswer: apple",
         "a cat sat on the mat and looked at the dog"] * 4


@pytest.fixture(scope="module")
def tok():
    return train_tokenizer(TEXTS, vocab_size=320)


def sharp_model(tok, arch, layers=3, seed=0):
    """Tiny random model with non-trivial norms/biases and peaked outputs (see `sharpen`)."""
    return sharpen(tiny_model(tok, arch=arch, layers=layers, seed=seed), seed + 1)


def batch(tok, g, B=5, T=11, C=4):
    ids = torch.randint(5, len(tok), (B, T), generator=g)
    lengths = torch.randint(3, T + 1, (B,), generator=g)
    lengths[0] = T
    mask = (torch.arange(T)[None] < lengths[:, None]).long()
    ids[mask == 0] = tok.pad_token_id
    positions = lengths - 1
    targets = torch.randint(5, len(tok), (B, C), generator=g)
    gold = torch.randint(0, C, (B,), generator=g)
    return ids, mask, positions, targets, gold


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_fast_path_equals_transformerlens(tok, arch):
    model = sharp_model(tok, arch)
    ids, mask, pos, tgt, gold = batch(tok, torch.Generator().manual_seed(3))
    fast = logit_lens(model, ids, mask, pos, tgt, gold)
    ref = logit_lens_tl(model, ids, mask, pos, tgt, gold)
    assert fast.probs.shape == (5, 4, 4) == ref.probs.shape
    # The comparison only means something if the distributions are far from uniform.
    assert fast.choice_probs.max() > 0.5
    assert (fast.probs - ref.probs).abs().max() < 1e-5
    # Tiny probabilities pass an absolute bound trivially; bound the relative error too.
    assert ((fast.probs - ref.probs).abs() <= 1e-4 * ref.probs + 1e-10).all()
    assert (fast.choice_probs - ref.choice_probs).abs().max() < 1e-5
    assert torch.equal(fast.ranks, ref.ranks)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_last_row_is_the_models_output_and_double_norm_is_caught(tok, arch):
    model = sharp_model(tok, arch)
    ids, mask, pos, tgt, gold = batch(tok, torch.Generator().manual_seed(4))
    res = logit_lens(model, ids, mask, pos, tgt, gold)
    with torch.no_grad():
        logits = model(ids, attention_mask=mask).logits[torch.arange(5), pos]
    want = torch.softmax(logits, -1).gather(1, tgt)
    assert (res.probs[:, -1] - want).abs().max() < 1e-6
    # Control: norming HF's already-normed last hidden state again gives different numbers.
    hs = bridge.hidden_states(model, ids, mask)
    wrong = bridge.unembed(model, hs[-1][torch.arange(5), pos])
    wrong_p = torch.softmax(wrong, -1).gather(1, tgt)
    assert (wrong_p - want).abs().max() > 1e-3


def test_padding_does_not_change_an_example(tok):
    model = sharp_model(tok, "llama")
    ids, mask, pos, tgt, gold = batch(tok, torch.Generator().manual_seed(5))
    full = logit_lens(model, ids, mask, pos, tgt, gold)
    b = 2
    n = int(mask[b].sum())
    alone = logit_lens(model, ids[b:b + 1, :n], None, pos[b:b + 1], tgt[b:b + 1], gold[b:b + 1])
    assert (full.probs[b] - alone.probs[0]).abs().max() < 1e-5


def test_result_helpers_and_ranks(tok):
    model = sharp_model(tok, "gpt2")
    ids, mask, pos, tgt, gold = batch(tok, torch.Generator().manual_seed(6))
    res = logit_lens(model, ids, mask, pos, tgt, gold)
    assert isinstance(res, LensResult) and res.num_layers == 3
    assert torch.allclose(res.choice_probs.sum(-1), torch.ones(5, 4))
    gp = res.gold_probs()
    assert torch.equal(gp[:, 1], res.probs[torch.arange(5), 1, gold])
    assert torch.equal(res.gold_ranks()[:, 2], res.ranks[torch.arange(5), 2, gold])
    # rank 1 <=> the token is the argmax of the full-vocab distribution at that layer.
    hs = bridge.hidden_states(model, ids, mask)
    top = bridge.unembed(model, hs[1][torch.arange(5), pos]).argmax(-1)
    for b in range(5):
        for c in range(4):
            assert (res.ranks[b, 1, c] == 1) == (tgt[b, c] == top[b])


def test_readout_ranks_against_sorting():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 50, generator=g)  # [L+1, B, V]
    tgt = torch.randint(0, 50, (3, 4), generator=g)
    res = readout(logits, tgt, torch.zeros(3, dtype=torch.long), "logit")
    for layer in range(2):
        for b in range(3):
            order = logits[layer, b].argsort(descending=True).tolist()
            for c in range(4):
                assert res.ranks[b, layer, c] == order.index(int(tgt[b, c])) + 1
                want = torch.softmax(logits[layer, b], -1)[tgt[b, c]]
                assert torch.isclose(res.probs[b, layer, c], want)


def test_tl_path_leaves_the_model_alone(tok):
    model = sharp_model(tok, "llama")
    ids, mask, pos, tgt, gold = batch(tok, torch.Generator().manual_seed(7))
    before = logit_lens(model, ids, mask, pos, tgt, gold)
    tlb = bridge.build_bridge(model)
    out = tl_accumulated_logits(tlb, ids, mask, layers=[0, 3])
    assert out.shape == (2, 5, 11, len(tok))
    after = logit_lens(model, ids, mask, pos, tgt, gold)
    assert torch.equal(before.probs, after.probs)
    assert type(model.model.layers[0]).__name__ == "LlamaDecoderLayer"


@pytest.mark.parametrize("change", ["pos_range", "pos_pad", "target", "gold", "mask", "ids"])
def test_bad_input_raises_value_error(tok, change):
    model = sharp_model(tok, "llama", layers=1)
    ids, mask, pos, tgt, gold = batch(tok, torch.Generator().manual_seed(8))
    if change == "pos_range":
        pos = pos.clone(); pos[0] = 99
    elif change == "pos_pad":
        mask = mask.clone(); mask[1] = 0; mask[1, 0] = 1; pos = pos.clone(); pos[1] = 2
    elif change == "target":
        tgt = tgt.clone(); tgt[0, 0] = len(tok) + 5
    elif change == "gold":
        gold = 7
    elif change == "mask":
        mask = mask[:, :-1]
    else:
        ids = ids[0]
    with pytest.raises(ValueError):
        logit_lens(model, ids, mask, pos, tgt, gold)


def test_unsupported_model_message():
    with pytest.raises(ValueError, match="final norm|base_model"):
        bridge.final_norm(torch.nn.Linear(2, 2))


@pytest.mark.slow
def test_smollm2_fast_path_equals_transformerlens():
    from cotdsl.models import load_smollm2

    model, tk = load_smollm2()
    prompts = ["Question: Which animal barks?\nChoices:\nA: dog\nB: cat\nAnswer:",
               "Question: What color is the sky?\nChoices:\nA: green\nB: blue\nAnswer:"]
    enc = tk(prompts, return_tensors="pt", padding=True)
    pos = enc["attention_mask"].sum(1) - 1 if tk.padding_side == "right" else \
        torch.full((2,), enc["input_ids"].shape[1] - 1)
    tgt = torch.tensor([[tk.encode(" A")[0], tk.encode(" B")[0]]] * 2)
    gold = torch.tensor([0, 1])
    fast = logit_lens(model, enc["input_ids"], enc["attention_mask"], pos, tgt, gold)
    ref = logit_lens_tl(model, enc["input_ids"], enc["attention_mask"], pos, tgt, gold)
    assert fast.probs.shape == (2, 31, 2)
    assert (fast.probs - ref.probs).abs().max() < 1e-5
    assert (fast.choice_probs - ref.choice_probs).abs().max() < 1e-5


def test_prepare_inputs_right_pads_and_reads_first_label_tokens(tok):
    from interp.lens import prepare_inputs

    ctx = ["Question: which is red?\nAnswer:", "the dog"]
    inp = prepare_inputs(tok, ctx, [["apple", "fox"], ["sat", "jumps"]], gold=[0, 1])
    n0, n1 = len(tok(ctx[0])["input_ids"]), len(tok(ctx[1])["input_ids"])
    assert inp["positions"].tolist() == [n0 - 1, n1 - 1]
    assert inp["attention_mask"].sum(1).tolist() == [n0, n1]
    assert inp["input_ids"][1, n1:].eq(tok.pad_token_id).all()
    for b, chs in enumerate([["apple", "fox"], ["sat", "jumps"]]):
        for c, ch in enumerate(chs):
            full = tok(ctx[b] + " " + ch)["input_ids"]
            assert inp["target_ids"][b, c] == full[len(tok(ctx[b])["input_ids"])]
    model = sharp_model(tok, "gpt2", layers=1)
    res = logit_lens(model, **inp)
    assert res.probs.shape == (2, 2, 2) and res.gold.tolist() == [0, 1]
    with pytest.raises(ValueError):
        prepare_inputs(tok, ctx, [["a", "b"], ["c"]])


# ---- whole-label lens ----------------------------------------------------------------------------
def label_batch(tok, g, lengths=((1, 3, 2), (2, 2), (4, 1, 1, 3), (3, 3, 2)), ctx=(4, 9, 6, 7)):
    """Random contexts and choices of the given label lengths (examples may differ in C)."""
    ctxs = [torch.randint(5, len(tok), (n,), generator=g).tolist() for n in ctx]
    chs = [[torch.randint(5, len(tok), (k,), generator=g).tolist() for k in ks] for ks in lengths]
    return ctxs, chs


def naive_label_scores(model, ctxs, chs):
    """[B, L+1, C] by the book: one full forward of context + label per choice, every lens row
    unembedded at every label position (final norm on rows 0..L-1; row L is HF's normed state)."""
    L = model.config.num_hidden_layers
    C = max(len(ex) for ex in chs)
    out = torch.full((len(ctxs), L + 1, C), float("-inf"))
    for b, (ctx, ex) in enumerate(zip(ctxs, chs)):
        for c, x in enumerate(ex):
            ids = torch.tensor([ctx + x])
            with torch.no_grad():
                hs = model(ids, output_hidden_states=True).hidden_states
            at = torch.arange(len(ctx) - 1, len(ctx) - 1 + len(x))
            for i, h in enumerate(hs):
                lg = bridge.unembed(model, h[0, at], normed=i == L).log_softmax(-1)
                out[b, i, c] = lg[torch.arange(len(x)), torch.tensor(x)].sum()
    return out


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_label_lens_equals_the_naive_readout_at_every_layer(tok, arch):
    from interp.lens import label_lens

    model = sharp_model(tok, arch)
    ctxs, chs = label_batch(tok, torch.Generator().manual_seed(11))
    want = naive_label_scores(model, ctxs, chs)
    for share in (True, False):  # KV cache shared by a context's choices, or one row each
        res = label_lens(model, ctxs, chs, [0, 1, 2, 0], share_context=share, batch=3)
        assert res.score == "label" and res.scores.shape == (4, 4, 4)
        fin = want.isfinite()
        assert torch.equal(res.scores.isfinite(), fin)  # the padded 4th choice of short examples
        assert (res.scores[fin] - want[fin]).abs().max() < 1e-4
        assert torch.allclose(res.probs, want.exp(), atol=1e-6)
        assert torch.allclose(res.choice_probs, torch.softmax(want, -1), atol=1e-5)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_label_lens_last_row_is_rank_evaluation(tok, arch):
    """The last row's scores are the evaluator's choice log-likelihoods; its argmax is `rank`'s
    prediction on every example (cotdsl's rank: one context pass + cached choice pass)."""
    from cotdsl.jobs.evaluate import rank
    from cotdsl.render import EvalContext
    from interp.lens import label_lens

    model = sharp_model(tok, arch, seed=4)
    g = torch.Generator().manual_seed(12)
    lengths = [tuple(int(k) for k in torch.randint(1, 5, (int(torch.randint(2, 6, (1,), generator=g)),), generator=g))
               for _ in range(12)]
    ctxs, chs = label_batch(tok, g, lengths, ctx=[int(n) for n in torch.randint(2, 12, (12,), generator=g)])
    items = [EvalContext(c, x, [f"c{i}" for i in range(len(x))]) for c, x in zip(ctxs, chs)]
    ranked = rank(model, items, batch=5)
    res = label_lens(model, ctxs, chs, 0)
    for b, r in enumerate(ranked):
        got = res.scores[b, -1, :len(chs[b])]
        assert (got - torch.tensor(r["scores"])).abs().max() < 1e-4
        assert int(got.argmax()) == r["pred"]
    assert len({r["pred"] for r in ranked}) > 1  # not one column winning everywhere


def test_choices_sharing_a_first_token_tie_in_the_first_token_lens_only(tok):
    from interp.commit import commit_layers
    from interp.lens import label_lens

    model = sharp_model(tok, "llama", seed=2)
    ctx = tok("Question: which is red?\nAnswer:")["input_ids"]
    a, b, c = (tok(" " + w, add_special_tokens=False)["input_ids"] for w in ("holding hot trays", "holding a boat",
                                                                            "the dog"))
    assert a[0] == b[0] and a != b
    first = logit_lens(model, torch.tensor([ctx]), None, [len(ctx) - 1], torch.tensor([[a[0], b[0], c[0]]]), 0)
    assert first.tied.tolist() == [True] and first.score == "first_token"
    assert torch.equal(first.probs[0, :, 0], first.probs[0, :, 1])  # tied at every layer ...
    assert commit_layers(first).tolist() == [-1]  # ... so the gold never wins
    whole = label_lens(model, [ctx], [[a, b, c]], 0)
    assert whole.tied.tolist() == [False]
    assert ((whole.scores[0, :, 0] - whole.scores[0, :, 1]).abs() > 1e-3).all()  # separated at every layer
    # the first-token readout is label_lens over one-token labels: same numbers
    one = label_lens(model, [ctx], [[a[:1], b[:1], c[:1]]], 0)
    assert one.tied.tolist() == [True]
    assert (one.probs - first.probs).abs().max() < 1e-6 and torch.equal(one.ranks, first.ranks)


def test_label_inputs_and_bad_label_inputs(tok):
    from interp.lens import label_inputs, label_lens

    inp = label_inputs(tok, ["Question: which is red?\nAnswer:"], [["apple", "the dog"]], gold=[1])
    ctx = tok("Question: which is red?\nAnswer:")["input_ids"]
    assert inp["contexts"] == [ctx]
    assert inp["choices"][0][1] == tok("Question: which is red?\nAnswer: the dog")["input_ids"][len(ctx):]
    model = sharp_model(tok, "gpt2", layers=1)
    assert label_lens(model, **inp).gold.tolist() == [1]
    for bad in (dict(contexts=[[]], choices=[[[5]]]), dict(contexts=[[5]], choices=[[[]]]),
                dict(contexts=[[5]], choices=[[]]), dict(contexts=[[5]], choices=[[[5], [6]]], gold=2),
                dict(contexts=[[len(tok) + 3]], choices=[[[5]]]), dict(contexts=[[5], [6]], choices=[[[5]]])):
        with pytest.raises(ValueError):
            label_lens(model, **bad)
