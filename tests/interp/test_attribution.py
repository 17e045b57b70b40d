"""interp.attribution: captum completeness, baselines, word aggregation, errors, serialisation."""
from __future__ import annotations

import json

import pytest
import torch

from cotdsl.tiny import tiny_model, train_tokenizer
from interp.attribution import IGItem, IGResult, ig_word_scores, summarize, token_word_weights, word_spans

SEP = "\nAnswer:"
TEXTS = [
    "Question: what colour is the sky?\nAnswer: the sky scatters blue light so it looks blue",
    "Question: what is the zorv made of?\nAnswer: the zorv is made of copper and nothing else",
    "Question: how does the blicket feel?\nAnswer: the blicket is made of wool so it feels soft",
] * 4
ITEMS = [
    IGItem("Question: what colour is the sky?", "the sky scatters blue light so it looks", "blue"),
    IGItem("Question: how does the blicket feel?", "the blicket is made of wool", "soft"),
]


@pytest.fixture(scope="module")
def tok():
    return train_tokenizer(TEXTS, vocab_size=320)


@pytest.fixture(scope="module", params=["llama", "gpt2"])
def model(request, tok):
    return tiny_model(tok, arch=request.param, layers=2, d_model=32, heads=4, seed=0)


def _encode(tok, item, sep=SEP):
    prefix = item.context + " " + item.rationale + sep
    ids = tok(prefix)["input_ids"]
    label = tok(" " + item.label, add_special_tokens=False)["input_ids"]
    return prefix, ids, label


def _logprob(model, ids, label, embeds=None):
    """Reference f: sum log p(label | prefix), computed without interp's code."""
    full = torch.tensor([ids + label[:-1]])
    with torch.no_grad():
        out = model(inputs_embeds=embeds) if embeds is not None else model(input_ids=full)
    logp = out.logits.log_softmax(-1)[0]
    return sum(logp[len(ids) - 1 + j, t].item() for j, t in enumerate(label))


def test_completeness_on_tiny_model(model, tok):
    """A random tiny model is smooth along the path: with many steps IG is near-exact."""
    for r in ig_word_scores(model, tok, ITEMS, baseline="zero", steps=200, internal_batch_size=50):
        gap = r.f_x - r.f_baseline
        assert abs(gap) > 1e-4
        assert r.rel_delta is not None and r.rel_delta < 0.02
        # captum's delta is exactly sum(attributions) - gap, and all attribution sits on the
        # rationale: positions outside it have baseline == input.
        assert sum(r.token_scores) - gap == pytest.approx(r.delta, abs=1e-4)
        assert sum(r.word_scores) == pytest.approx(sum(r.token_scores), abs=1e-9)


def test_f_values_match_reference(model, tok):
    """f(x) is the label log-prob; the zero / pad baselines replace only rationale embeddings."""
    item = ITEMS[0]
    prefix, ids, label = _encode(tok, item)
    r0, r1 = len(item.context) + 1, len(item.context) + 1 + len(item.rationale)
    offs = tok(prefix, return_offsets_mapping=True)["offset_mapping"]
    in_rat = [min(b, r1) > max(a, r0) for a, b in offs] + [False] * (len(label) - 1)
    mask = torch.tensor(in_rat)
    full = torch.tensor([ids + label[:-1]])
    emb = model.get_input_embeddings()(full).detach()
    zero = emb.masked_fill(mask[None, :, None], 0.0)
    pad_ids = full.masked_fill(mask[None], tok.pad_token_id)
    rz = ig_word_scores(model, tok, [item], baseline="zero", steps=4)[0]
    rp = ig_word_scores(model, tok, [item], baseline="pad", steps=4)[0]
    assert rz.f_x == pytest.approx(_logprob(model, ids, label), abs=1e-5)
    assert rz.f_baseline == pytest.approx(_logprob(model, ids, label, embeds=zero), abs=1e-5)
    assert rp.f_baseline == pytest.approx(_logprob(model, pad_ids[0].tolist()[: len(ids)], label), abs=1e-5)
    assert len(rz.tokens) == int(mask.sum())
    assert "".join(rz.tokens).strip() == item.rationale


def test_word_aggregation_pieces_sum_to_words(model, tok):
    r = ig_word_scores(model, tok, ITEMS[:1], baseline="unk", steps=8)[0]
    assert r.words == ITEMS[0].rationale.split()
    assert len(r.word_scores) == len(r.words)
    assert len(r.tokens) > len(r.words)  # the tiny BPE splits words into several pieces
    for i, w in enumerate(r.words):
        pieces = [j for j, wi in enumerate(r.token_word) if wi == i]
        assert "".join(r.tokens[j] for j in pieces).strip() == w
        assert r.word_scores[i] == pytest.approx(sum(r.token_scores[j] for j in pieces), abs=1e-9)


def test_token_word_weights_split_and_whitespace():
    text = "ctx ab cd  ef"
    # rationale = text[4:] ; tokens: "ctx", " a", "b c" (spans two words), "d", "  " (space only), "ef"
    offsets = [(0, 3), (3, 5), (5, 8), (8, 9), (9, 11), (11, 13)]
    w = token_word_weights(offsets, text, 4, len(text))
    assert word_spans(text[4:]) == [(0, 2), (3, 5), (7, 9)]
    assert w[0].sum() == 0  # outside the rationale
    assert w[1].tolist() == [1.0, 0.0, 0.0]
    assert w[2].tolist() == [0.5, 0.5, 0.0]  # "b" and "c": one character each
    assert w[3].tolist() == [0.0, 1.0, 0.0]
    assert w[4].tolist() == [0.0, 0.0, 1.0]  # whitespace goes to the next word
    assert w[5].tolist() == [0.0, 0.0, 1.0]
    scores = torch.tensor([5.0, 1.0, 2.0, 3.0, 4.0, 6.0], dtype=torch.float64)
    words = (w * scores[:, None]).sum(0)
    assert words.tolist() == [2.0, 4.0, 10.0]
    assert float(words.sum()) == float(scores[1:].sum())


def test_internal_batch_size_and_determinism(model, tok):
    a = ig_word_scores(model, tok, ITEMS, steps=12, internal_batch_size=1)
    b = ig_word_scores(model, tok, ITEMS, steps=12, internal_batch_size=12)
    c = ig_word_scores(model, tok, ITEMS, steps=12, internal_batch_size=1)
    for x, y, z in zip(a, b, c):
        assert x.word_scores == z.word_scores
        assert x.word_scores == pytest.approx(y.word_scores, abs=1e-5)


# Items of different lengths: an empty context (no prefix to cache), a one-word rationale,
# multi-token labels, so rows of one forward need padding in both the prefix and the suffix.
MIXED = ITEMS + [
    IGItem("", "the zorv is made of copper", "copper and nothing"),
    IGItem("Q?", "sky", "blue light"),
    IGItem("Question: what is the zorv made of? It is heavy.", "the zorv is made of copper and nothing else", "copper"),
]


def _close(ref, got, rel=1e-4):
    """Scores within `rel` of the item's largest |score| (a per-token relative error blows up
    on scores near zero); f values and delta to 1e-5 / 1e-4 nats."""
    for r, g in zip(ref, got):
        assert (g.words, g.tokens, g.token_word) == (r.words, r.tokens, r.token_word)
        scale = max(map(abs, r.token_scores))
        assert scale > 0
        assert g.token_scores == pytest.approx(r.token_scores, abs=rel * scale)
        assert g.word_scores == pytest.approx(r.word_scores, abs=rel * scale)
        assert g.f_x == pytest.approx(r.f_x, abs=1e-5)
        assert g.f_baseline == pytest.approx(r.f_baseline, abs=1e-5)
        assert g.delta == pytest.approx(r.delta, abs=1e-4)
        assert g.top_words(3) == r.top_words(3)


@pytest.mark.parametrize("baseline", ["zero", "pad", "unk"])
def test_fast_equals_captum_per_example(model, tok, baseline):
    """The default fast path (cached prefix, several items per forward) gives captum's
    LayerIntegratedGradients scores, f values and delta, for any rows-per-forward."""
    ref = ig_word_scores(model, tok, MIXED, baseline=baseline, steps=12, method="captum", internal_batch_size=12)
    for rows in (1, 7, 12, 100):  # part of one item's steps, straddling items, one item, all items
        _close(ref, ig_word_scores(model, tok, MIXED, baseline=baseline, steps=12, internal_batch_size=rows))
    assert all(r.meta["method"] == "captum" for r in ref)
    assert ig_word_scores(model, tok, MIXED[:1], steps=2)[0].meta["method"] == "fast"


def test_fast_equals_captum_trapezoid_rule(model, tok):
    """rule="riemann_trapezoid": the fast path uses captum's trapezoid nodes and step sizes (ends
    of the path included, weights summing to 1 - 1/steps), so it matches captum called with
    method="riemann_trapezoid" and differs from the Gauss-Legendre scores."""
    ref = ig_word_scores(model, tok, MIXED, baseline="pad", steps=9, method="captum", rule="riemann_trapezoid")
    got = ig_word_scores(model, tok, MIXED, baseline="pad", steps=9, internal_batch_size=7, rule="riemann_trapezoid")
    _close(ref, got)
    assert got[0].meta["rule"] == "riemann_trapezoid"
    gl = ig_word_scores(model, tok, MIXED, baseline="pad", steps=9)
    assert max(abs(u - v) for u, v in zip(gl[0].token_scores, got[0].token_scores)) > 1e-4


def test_fast_equals_captum_grouped_query_attention(tok):
    """SmolLM2 shares keys/values across heads (GQA): the expanded prefix cache stays exact."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=48, intermediate_size=96, num_hidden_layers=2,
                      num_attention_heads=6, num_key_value_heads=2, pad_token_id=tok.pad_token_id,
                      tie_word_embeddings=True)
    m = LlamaForCausalLM(cfg).eval()
    ref = ig_word_scores(m, tok, MIXED, baseline="unk", steps=8, method="captum")
    _close(ref, ig_word_scores(m, tok, MIXED, baseline="unk", steps=8, internal_batch_size=10))


def test_fast_order_and_empty_input(model, tok):
    """Results come back in the items' order whatever the internal sorting; no items, no work."""
    one = [ig_word_scores(model, tok, [it], steps=6)[0] for it in MIXED]
    both = ig_word_scores(model, tok, MIXED, steps=6, internal_batch_size=9)
    _close(one, both, rel=1e-5)
    assert ig_word_scores(model, tok, [], steps=6) == []


def test_params_restored(model, tok):
    model.train()
    ig_word_scores(model, tok, ITEMS[:1], steps=2)
    assert model.training and all(p.requires_grad for p in model.parameters())
    model.eval()


def test_json_round_trip_and_summary(model, tok):
    res = ig_word_scores(model, tok, ITEMS, baseline="pad", steps=4)
    back = [IGResult.from_dict(json.loads(json.dumps(r.to_dict(), allow_nan=False))) for r in res]
    assert back == res
    assert back[0].top_words(2) == sorted(range(len(res[0].words)), key=lambda i: -res[0].word_scores[i])[:2]
    s = summarize(res)
    assert s["n"] == 2 and s["max_rel_delta"] >= s["median_rel_delta"] >= 0
    assert summarize([]) ["n"] == 0


@pytest.mark.parametrize("kwargs, msg", [
    (dict(baseline="mean"), "unknown baseline"),
    (dict(steps=0), "steps"),
    (dict(internal_batch_size=0), "internal_batch_size"),
    (dict(method="riemann"), "unknown method"),
    (dict(rule="riemann_left"), "unknown rule"),
    (dict(rule="riemann_trapezoid", steps=1), "steps must be >= 2"),
])
def test_bad_arguments(model, tok, kwargs, msg):
    with pytest.raises(ValueError, match=msg):
        ig_word_scores(model, tok, ITEMS, **kwargs)


def test_bad_items(model, tok):
    with pytest.raises(ValueError, match="empty"):
        ig_word_scores(model, tok, [IGItem("Q", "   ", "a")])
    with pytest.raises(ValueError, match="label is empty"):
        ig_word_scores(model, tok, [IGItem("Q", "r", "")])
    with pytest.raises(ValueError, match="IGItem"):
        ig_word_scores(model, tok, [("Q", "r", "a")])


def test_missing_special_token(tok):
    from transformers import PreTrainedTokenizerFast

    bare = PreTrainedTokenizerFast(tokenizer_object=tok.backend_tokenizer)  # no pad / unk declared
    m = tiny_model(tok, arch="gpt2", layers=1, d_model=16, heads=2)
    with pytest.raises(ValueError, match="pad token"):
        ig_word_scores(m, bare, ITEMS, baseline="pad")


@pytest.mark.slow
def test_smollm2_runs():
    """The real student: words line up with the rationale and the numbers are finite."""
    from cotdsl.models import load_smollm2

    model, tok = load_smollm2()
    item = IGItem("Question: What colour is the blicket?\nChoices:\nA: orange\nB: grey\nAnswer:",
                  "The blicket is made of copper and copper is orange so it is orange too.", "orange")
    r = ig_word_scores(model, tok, [item], baseline="zero", steps=4, internal_batch_size=4, sep="\nSo the answer is:")[0]
    assert r.words == item.rationale.split()
    assert all(map(lambda x: x == x and abs(x) < 1e4, r.word_scores))
    assert sum(r.token_scores) - (r.f_x - r.f_baseline) == pytest.approx(r.delta, abs=1e-3)
    assert r.f_x < 0 and r.f_x > -20
    ref = ig_word_scores(model, tok, [item], baseline="zero", steps=4, method="captum", sep="\nSo the answer is:")[0]
    scale = max(map(abs, ref.token_scores))
    assert r.token_scores == pytest.approx(ref.token_scores, abs=1e-3 * scale)
    assert r.f_x == pytest.approx(ref.f_x, abs=1e-4) and r.f_baseline == pytest.approx(ref.f_baseline, abs=1e-4)


# ---- interp.view: the terminal view and the PNG of one example ----

def _result():
    words = "The blicket is made of copper and copper is orange so it is orange too.".split()
    scores = [0.01, 0.2, -0.05, 0.0, 0.02, 0.9, -0.1, 0.5, 0.03, 1.3, -0.4, 0.0, 0.1, 0.8, 0.05]
    return IGResult(words, scores, words, scores, list(range(len(words))), -1.0, -5.0, 0.5, 0.125, "zero", 20)


def test_view_terminal_renders_shading_legend_and_delta():
    from rich.console import Console

    from interp.view import print_attribution, score_rgb

    con = Console(record=True, width=100, color_system="truecolor", force_terminal=True)
    print_attribution(_result(), console=con, highlights=("copper", "orange"), title="ex1")
    plain = con.export_text(clear=False)
    assert "The blicket is made of copper" in plain and "ex1" in plain
    assert "+1.3" in plain and "-1.3" in plain  # legend ends at ±max|score|
    assert "|delta|/|f(x)-f(b)| = 0.125" in plain
    rows = [ln.strip("│ ").split() for ln in plain.splitlines()]
    ranked = [r[1] for r in rows if r[:1] in (["1"], ["2"])]
    assert ranked == ["orange", "copper"]
    ansi = con.export_text(styles=True)
    r, g, b = score_rgb(1.3, 1.3)
    assert f"48;2;{r};{g};{b}" in ansi  # the top word carries the saturated red background
    assert score_rgb(0.0, 1.3) == (247, 247, 247) and score_rgb(-1.3, 1.3)[2] > score_rgb(-1.3, 1.3)[0]


def test_view_png_writes_an_image(tmp_path):
    import matplotlib.image as mpimg

    from interp.view import attribution_png

    short = attribution_png(_result(), tmp_path / "one.png", title="gold: orange", highlights=("orange",))
    res = _result()
    res.words, res.word_scores = res.words * 5, res.word_scores * 5  # long rationale wraps
    long = attribution_png(res, tmp_path / "sub" / "long.png")
    a, b = mpimg.imread(short), mpimg.imread(long)
    assert a.shape[1] == b.shape[1] and b.shape[0] > a.shape[0]  # same width, more lines
    red = ((a[..., 0] > 0.6) & (a[..., 1] < 0.2) & (a[..., 2] < 0.25)).sum()
    assert red > 100  # the strongly positive word is shaded red


def test_view_rejects_mismatched_scores():
    from interp.view import shaded_text

    with pytest.raises(ValueError, match="one score per word"):
        shaded_text(["a", "b"], [1.0])


# ---- degenerate items: f(x) == f(baseline) ----

def _deaf(tok, arch):
    """A tiny model whose attention writes nothing: each position sees only its own token, so the
    label's log-prob cannot depend on the rationale and f(x) == f(baseline) exactly."""
    m = tiny_model(tok, arch=arch, layers=2, d_model=32, heads=4, seed=0)
    with torch.no_grad():
        for name, p in m.named_parameters():
            if name.endswith(("o_proj.weight", "attn.c_proj.weight", "attn.c_proj.bias")):
                p.zero_()
    return m


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_degenerate_item_is_flagged_and_falls_back(tok, arch):
    m = _deaf(tok, arch)
    res = ig_word_scores(m, tok, ITEMS, baseline="zero", steps=8)
    for r in res:
        assert r.f_x == r.f_baseline and r.gap == 0.0 and r.rel_delta is None
        assert r.degenerate is True and r.meta["min_gap"] == 1e-3
        assert all(s == 0.0 for s in r.word_scores)  # no gradient reaches the rationale
        assert r.top_words(3, fallback="order") == [0, 1, 2]
        rnd = r.top_words(3, fallback="random", seed=5)
        assert len(set(rnd)) == 3 and rnd == r.top_words(3, fallback="random", seed=5)
        assert r.top_words(3) == [0, 1, 2]  # score ranking of all-zero scores: position order
    with pytest.raises(ValueError, match="fallback"):
        res[0].top_words(2, fallback="longest")


def test_non_degenerate_items_and_the_threshold(model, tok):
    from cotdsl.tiny import sharpen

    # The default-initialised tiny models are nearly uniform: some gaps fall under 1e-3 nats.
    for r in ig_word_scores(model, tok, ITEMS, baseline="zero", steps=4):
        assert r.gap == r.f_x - r.f_baseline and r.degenerate == (abs(r.gap) < 1e-3)
    sharp = sharpen(tiny_model(tok, arch="llama", layers=2, d_model=32, heads=4, seed=0), 1)
    res = ig_word_scores(sharp, tok, ITEMS, baseline="zero", steps=4)
    for r in res:
        assert abs(r.gap) > 1e-2 and r.degenerate is False
        assert r.top_words(2, fallback="order") == r.top_words(2)  # fallback only for degenerate items
    big = ig_word_scores(sharp, tok, ITEMS[:1], baseline="zero", steps=4, min_gap=1e6)[0]
    assert big.degenerate is True and big.meta["min_gap"] == 1e6
    with pytest.raises(ValueError, match="min_gap"):
        ig_word_scores(model, tok, ITEMS, min_gap=-1)
    # Results saved before the fields existed get them from f_x, f_baseline and the default.
    old = {k: v for k, v in res[0].to_dict().items() if k not in ("gap", "degenerate")}
    back = IGResult.from_dict(old)
    assert back.gap == res[0].gap and back.degenerate is False
    flat = IGResult.from_dict(dict(old, f_x=-2.0, f_baseline=-2.0005))
    assert flat.degenerate is True
