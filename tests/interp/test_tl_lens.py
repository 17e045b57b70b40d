"""interp/tl_lens.py: the whole-label lens through TransformerLens hooks at the reading sites only
(`probe { engine: tl }`) gives the fast path's numbers (`label_lens`, engine hf) at every row, and
the by-the-book references' (one full forward per choice; TL's every-position unembedding)."""
import pytest
import torch

from cotdsl.tiny import sharpen, tiny_model, train_tokenizer
from interp import bridge
from interp.lens import label_lens, label_rows, logit_lens_tl
from interp.tl_lens import resid_hook_names, tl_label_lens
from test_lens import label_batch, naive_label_scores

TEXTS = ["the quick brown fox jumps over the lazy dog", "Question: which is red?\nAnswer: apple",
         "a cat sat on the mat and looked at the dog"] * 4


@pytest.fixture(scope="module")
def tok():
    return train_tokenizer(TEXTS, vocab_size=320)


def gqa_llama(tok, seed=0):
    """3-block Llama with grouped-query attention and an untied unembedding (as SmolLM2 has GQA)."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    cfg = LlamaConfig(hidden_size=48, intermediate_size=96, num_hidden_layers=3, num_attention_heads=6,
                      num_key_value_heads=2, vocab_size=len(tok), tie_word_embeddings=False,
                      pad_token_id=tok.pad_token_id)
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(cfg).eval()


def make(tok, arch, seed=0):
    """Sharpened tiny model: peaked outputs and non-trivial norms (a wrong norm shows)."""
    model = gqa_llama(tok, seed) if arch == "llama_gqa" else tiny_model(tok, arch=arch, layers=3, seed=seed)
    return sharpen(model, seed + 1)


def assert_same_rows(got, want):
    """Every lens row of two LensResults equal: probabilities within 1e-5 (and 1e-4 relative),
    log-scores within 1e-4, first-token ranks exactly; padded columns in the same places."""
    assert got.scores.shape == want.scores.shape
    fin = want.scores.isfinite()
    assert torch.equal(got.scores.isfinite(), fin)
    assert (got.scores[fin] - want.scores[fin]).abs().max() < 1e-4
    assert (got.probs - want.probs).abs().max() < 1e-5
    assert ((got.probs - want.probs).abs() <= 1e-4 * want.probs + 1e-10).all()
    assert (got.choice_probs - want.choice_probs).abs().max() < 1e-5
    assert torch.equal(got.ranks, want.ranks)
    assert torch.equal(got.tied, want.tied) and torch.equal(got.gold, want.gold)


@pytest.mark.parametrize("arch", ["llama", "gpt2", "llama_gqa"])
def test_tl_engine_equals_the_fast_path_at_every_row(tok, arch):
    model = make(tok, arch)
    ctxs, chs = label_batch(tok, torch.Generator().manual_seed(11))  # 1-4-token labels, 2-4 choices
    gold = [0, 1, 2, 0]
    fast = label_lens(model, ctxs, chs, gold, batch=3)
    br = bridge.build_bridge(model)
    res = tl_label_lens(model, ctxs, chs, gold, tl_bridge=br, batch=3)  # two chunks, ragged rows
    assert res.meta["engine"] == "tl" and res.score == "label" and res.lens == "logit"
    assert fast.choice_probs.max() > 0.9  # peaked: a wrong readout could not pass by accident
    assert_same_rows(res, fast)
    # and the independent reference: one full HF forward per choice, every row unembedded
    want = naive_label_scores(model, ctxs, chs)
    fin = want.isfinite()
    assert (res.scores[fin] - want[fin]).abs().max() < 1e-4
    # one chunk gives the same numbers as two
    assert_same_rows(tl_label_lens(model, ctxs, chs, gold, tl_bridge=br, batch=16), fast)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_one_token_labels_equal_transformerlens_every_position_lens(tok, arch):
    """One-token labels: the sites-only readout equals TL's own recipe (`run_with_cache`,
    `accumulated_resid(apply_ln=True)`, `unembed` at every position), read at the label position."""
    model = make(tok, arch, seed=3)
    g = torch.Generator().manual_seed(5)
    ctxs, chs = label_batch(tok, g, lengths=((1, 1, 1),) * 5, ctx=(3, 8, 5, 11, 6))
    gold = [0, 2, 1, 1, 0]
    res = tl_label_lens(model, ctxs, chs, gold)
    T = max(map(len, ctxs))
    ids = torch.tensor([c + [0] * (T - len(c)) for c in ctxs])
    mask = torch.tensor([[1] * len(c) + [0] * (T - len(c)) for c in ctxs])
    ref = logit_lens_tl(model, ids, mask, [len(c) - 1 for c in ctxs], torch.tensor([[x[0] for x in ex] for ex in chs]),
                        torch.tensor(gold))
    assert (res.probs - ref.probs).abs().max() < 1e-5
    assert (res.choice_probs - ref.choice_probs).abs().max() < 1e-5
    assert torch.equal(res.ranks, ref.ranks)


def test_tuned_lens_through_tl_equals_the_fast_tuned_lens(tok):
    from interp.tuned import new_tuned_lens

    model = make(tok, "llama")
    lens = new_tuned_lens(model)
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():  # random translators: the tuned rows differ from the logit lens's
        for p in lens.layer_translators.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    ctxs, chs = label_batch(tok, torch.Generator().manual_seed(12))
    fast = label_lens(model, ctxs, chs, [0, 1, 2, 0], lens=lens)
    res = tl_label_lens(model, ctxs, chs, [0, 1, 2, 0], lens=lens)
    assert res.lens == "tuned"
    assert_same_rows(res, fast)
    plain = label_lens(model, ctxs, chs, [0, 1, 2, 0])
    fin = plain.scores[:, 0].isfinite()
    assert (fast.scores[:, 0][fin] - plain.scores[:, 0][fin]).abs().min() > 1e-2  # the translators act
    assert torch.equal(fast.scores[:, -1], plain.scores[:, -1])


def test_only_the_reading_sites_are_unembedded(tok):
    """The lm_head sees one position per forward row (`logits_to_keep=1`) plus the S reading
    sites of each of the L+1 lens rows, never every position."""
    model = make(tok, "llama")
    ctxs, chs = label_batch(tok, torch.Generator().manual_seed(13))
    br = bridge.build_bridge(model)
    seen = []
    head = br.unembed.original_component
    hook = head.register_forward_hook(lambda m, a, out: seen.append(a[0].reshape(-1, a[0].shape[-1]).shape[0]))
    try:
        res = tl_label_lens(model, ctxs, chs, [0, 1, 2, 0], tl_bridge=br)
    finally:
        hook.remove()
    rows = label_rows(ctxs, chs)
    R, S, L = rows.ids.shape[0], rows.site_row.numel(), model.config.num_hidden_layers
    assert (res.meta["rows"], res.meta["sites"]) == (R, S)
    assert S == len(ctxs) + sum(len(x) - 1 for ex in chs for x in ex)
    assert sum(seen) == R + (L + 1) * S < R * rows.ids.shape[1]


def test_label_rows_layout():
    r = label_rows([[1, 2, 3], [4]], [[[5], [6, 7, 8]], [[9]]])
    assert r.ids.tolist() == [[1, 2, 3, 6, 7], [4, 0, 0, 0, 0]] and r.n_ctx.tolist() == [3, 1]
    assert r.site_row.tolist() == [0, 0, 0, 1] and r.site_pos.tolist() == [2, 3, 4, 0]
    assert r.first_site.tolist() == [0, 3] and r.site_ex.tolist() == [0, 0, 0, 1]
    # (site, token, example, choice) per label token read
    assert list(zip(r.tok_site.tolist(), r.tok_id.tolist(), r.tok_ex.tolist(), r.tok_choice.tolist())) == \
        [(0, 5, 0, 0), (0, 6, 0, 1), (1, 7, 0, 1), (2, 8, 0, 1), (3, 9, 1, 0)]


def test_bad_inputs_and_the_model_left_alone(tok):
    from interp.tuned import new_tuned_lens

    model = make(tok, "llama")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ctxs, chs = label_batch(tok, torch.Generator().manual_seed(14))
    tl_label_lens(model, ctxs, chs, 0)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert resid_hook_names(2) == ["blocks.0.hook_resid_pre", "blocks.1.hook_resid_pre", "ln_final.hook_out"]
    with pytest.raises(ValueError, match="tuned lens has"):
        tl_label_lens(model, ctxs, chs, 0, lens=new_tuned_lens(tiny_model(tok, layers=2)))
    with pytest.raises(ValueError, match="gold"):
        tl_label_lens(model, ctxs, chs, 5)
    shallow = tiny_model(tok, arch="gpt2", layers=2)
    with pytest.raises(ValueError, match="not a bridge of this model"):
        tl_label_lens(model, ctxs, chs, 0, tl_bridge=bridge.build_bridge(shallow))


def test_probe_lens_frame_engine_tl_gives_the_hf_frame(tok):
    """`probe { engine: tl }` reaches the lens job's `lens_frame`: the same frame as the default
    engine (logit and tuned lens, whole labels and first tokens, gold-rationale contexts)."""
    from cotdsl import check_source
    from cotdsl.jobs.stages import lens_frame
    from cotdsl.schema import Example
    from interp.tuned import new_tuned_lens

    exp = check_source('experiment p {\n  data toy = builtin("facts", train: 8, test: 4)\n  teacher gold = gold\n'
                       '  student t = tiny(layers: 2, d_model: 32)\n  target none = label\n'
                       '  target before = rationale -> "So the answer is: " label\n'
                       '  probe { lens: logit, tuned; context: gold; engine: tl }\n}\n', "<tl>")
    assert exp.probe.engine == "tl"
    words = ("the lazy dog", "a cat", "the quick brown fox", "red apple")
    exs = [Example(id=f"x{i}", question=f"Which one is {w}?", choices=words, answer=i % 4, rationale=f"it is {w}")
           for i, w in enumerate(words + ("mat", "sat"))]
    model = make(tok, "llama")
    assert all(len(tok(" " + w, add_special_tokens=False)["input_ids"]) > 1 for w in words[:3])  # multi-token labels
    lens = new_tuned_lens(model)
    with torch.no_grad():
        for p in lens.layer_translators.parameters():
            p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(3)) * 0.2)
    for cond in exp.conditions:
        for score in ("label", "first_token"):
            kw = dict(tuned=lambda: lens, context="gold", score=score, batch=4)
            hf = lens_frame(model, tok, exs, cond, 0, ("logit", "tuned"), **kw)
            tl = lens_frame(model, tok, exs, cond, 0, ("logit", "tuned"), engine="tl", **kw)
            assert len(hf) == len(tl) == 2 * len(exs) * 4  # 2 lenses x examples x (L+1) rows
            assert (hf["p_gold"] - tl["p_gold"]).abs().max() < 1e-5
            assert (hf["choice_p_gold"] - tl["choice_p_gold"]).abs().max() < 1e-5
            for col in ("lens", "ex_id", "layer", "rank_gold", "commit_layer", "context", "tied"):
                assert hf[col].to_list() == tl[col].to_list()
    with pytest.raises(ValueError, match="engine is hf or tl"):
        lens_frame(model, tok, exs, exp.conditions[0], 0, ("logit",), engine="vllm")


@pytest.mark.slow
def test_smollm2_tl_engine_equals_the_fast_path():
    from cotdsl.models import load_smollm2

    model, tk = load_smollm2()
    ctx = ["Question: Which animal barks?\nChoices:\nA: dog\nB: cat\nC: a small grey mouse\nAnswer:",
           "Question: What color is the sky on a clear day?\nChoices:\nA: green\nB: light blue\nAnswer:"]
    chs = [[tk(w, add_special_tokens=False)["input_ids"] for w in ws]
           for ws in ([" dog", " cat", " a small grey mouse"], [" green", " light blue"])]
    ctxs = [tk(c)["input_ids"] for c in ctx]
    fast = label_lens(model, ctxs, chs, [0, 1])
    res = tl_label_lens(model, ctxs, chs, [0, 1])
    assert res.scores.shape == (2, 31, 3)
    fin = fast.scores.isfinite()
    assert torch.equal(res.scores.isfinite(), fin)
    assert (res.probs - fast.probs).abs().max() < 1e-5
    assert ((res.probs - fast.probs).abs() <= 1e-3 * fast.probs + 1e-12).all()
    assert (res.choice_probs - fast.choice_probs).abs().max() < 1e-5
    assert fast.choice_probs[:, -1].max() > 0.5  # the model's own row is not flat
