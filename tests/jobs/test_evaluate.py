"""Evaluation: shared-prompt rank == naive per-choice scoring, batched greedy generate ==
one-at-a-time generate, scoring rows, summaries, paired bootstrap."""
from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
import pytest
import torch

from cotdsl import tiny
from cotdsl.jobs import evaluate as ev
from cotdsl.schema import Example

TEXTS = ["Question: which is heavier, a feather or a stone? Answer: a stone, since stones are dense.",
         "Question: where do fish live? Answer: in water, they breathe with gills.",
         "Question: what colour is the sky on a clear day? Answer: blue because of scattering."] * 4


@dataclass(frozen=True)
class Ctx:  # stand-in for render.EvalContext
    context_ids: list
    choice_ids: list
    choice_texts: list


@pytest.fixture(scope="module")
def tok():
    return tiny.train_tokenizer(TEXTS, vocab_size=300)


def make_items(tok, n=7, seed=0):
    rng = random.Random(seed)
    words = ["stone", "feather", "water", "blue sky", "gills", "a", "dense rock", "clear day"]
    items = []
    for i in range(n):
        ctx = tok(TEXTS[i % 3][: rng.randint(10, 60)])["input_ids"]
        k = rng.randint(2, 5)
        texts = [" " + " ".join(rng.sample(words, rng.randint(1, 3))) for _ in range(k)]
        items.append(Ctx(ctx, [tok(t)["input_ids"] for t in texts], texts))
    return items


def naive(model, item) -> list[float]:
    """lm-eval-harness style: one full forward per (context + choice)."""
    out = []
    for c in item.choice_ids:
        ids = torch.tensor([item.context_ids + c])
        lp = torch.log_softmax(model(ids).logits[0].float(), -1)
        L = len(item.context_ids)
        out.append(sum(lp[L + k - 1, t].item() for k, t in enumerate(c)))
    return out


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
@pytest.mark.parametrize("batch", [1, 5, 64])
def test_rank_matches_naive_per_choice(tok, arch, batch):
    model = tiny.tiny_model(tok, arch=arch, layers=2, d_model=32, heads=2, seed=1)
    items = make_items(tok)
    seen = []
    rows = ev.rank(model, items, batch=batch, progress=lambda d, t: seen.append((d, t)))
    assert seen[-1] == (len(items), len(items))
    for it, row in zip(items, rows):
        want = naive(model, it)
        np.testing.assert_allclose(row["scores"], want, atol=1e-4, rtol=0)
        np.testing.assert_allclose(row["scores_norm"], [w / len(t) for w, t in zip(want, it.choice_texts)],
                                   atol=1e-4)
        assert row["pred"] == int(np.argmax(want))
        assert row["pred_norm"] == int(np.argmax([w / len(t) for w, t in zip(want, it.choice_texts)]))


def test_rank_uses_one_context_pass_per_group(tok, monkeypatch):
    """The context is not recomputed per choice: count tokens the body processes."""
    model = tiny.tiny_model(tok, layers=1, d_model=32, heads=2)
    items = make_items(tok, n=4)
    body = model.model
    counted = []
    orig = body.forward
    monkeypatch.setattr(body, "forward", lambda *a, **k: counted.append(k["attention_mask"].shape) or orig(*a, **k))
    ev.rank(model, items, batch=100)
    assert len(counted) == 2  # one context pass, one choice pass for all 4 questions
    n_ctx_rows = counted[0][0]
    assert n_ctx_rows == 4 and counted[1][0] == sum(len(i.choice_ids) for i in items)


def test_rank_one_token_choices_need_no_choice_pass(tok, monkeypatch):
    """A choice's last token is predicted, never fed: one-token choices are scored from the
    context pass alone (one body call), and a mix of one- and many-token choices stays exact."""
    model = tiny.tiny_model(tok, layers=2, d_model=32, heads=2, seed=4)
    vocab = [t for t in range(10, 200)]
    rng = random.Random(3)
    one = [Ctx(tok(TEXTS[i % 3][:20 + 7 * i])["input_ids"], [[t] for t in rng.sample(vocab, 4)], ["ab", "c", "def", "g"])
           for i in range(4)]
    mixed = [Ctx(it.context_ids, [it.choice_ids[0], it.choice_ids[1] + [42, 7], it.choice_ids[2], [5, 6]],
                 it.choice_texts) for it in one]
    body = model.model
    counted = []
    orig = body.forward
    monkeypatch.setattr(body, "forward", lambda *a, **k: counted.append(k["attention_mask"].shape) or orig(*a, **k))
    rows = ev.rank(model, one, batch=100)
    assert len(counted) == 1  # the context pass only
    monkeypatch.setattr(body, "forward", orig)
    for items, rows in ((one, rows), (mixed, ev.rank(model, mixed, batch=6))):
        for it, row in zip(items, rows):
            want = naive(model, it)
            np.testing.assert_allclose(row["scores"], want, atol=1e-4, rtol=0)
            assert row["pred"] == int(np.argmax(want))


def test_rank_bad_items(tok):
    model = tiny.tiny_model(tok, layers=1, d_model=32, heads=2)
    with pytest.raises(ValueError, match="empty context"):
        ev.rank(model, [Ctx([], [[1]], ["a"])], batch=4)
    with pytest.raises(ValueError, match="tokenises to nothing"):
        ev.rank(model, [Ctx([1, 2], [[1], []], ["a", ""])], batch=4)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_generate_batched_equals_unbatched_and_stops_at_eos(tok, arch):
    model = tiny.tiny_model(tok, arch=arch, layers=2, d_model=32, heads=2, seed=3)
    prompts = [tok(t[:n])["input_ids"] for t, n in zip(TEXTS, [12, 30, 50, 20, 44])]
    one = [ev.generate(model, tok, [p], max_new_tokens=8, batch=1, eos_token_id=None)[0] for p in prompts]
    many = ev.generate(model, tok, prompts, max_new_tokens=8, batch=3, eos_token_id=None)
    assert many == one
    assert all(len(tok(t)["input_ids"]) >= 1 for t in many)
    # stopping: declare the first generated token of prompt 0 to be eos -> empty continuation
    first = tok(one[0])["input_ids"][0]
    cut = ev.generate(model, tok, prompts[:1], max_new_tokens=8, batch=1, eos_token_id=first)
    assert cut == [""]


def _ex(i, answer):
    return Example(id=f"q{i}", question="?", choices=("yes", "no", "maybe"), answer=answer)


def test_score_rows_and_summary():
    exs = [_ex(0, 0), _ex(1, 1), _ex(2, 2), _ex(3, 0)]
    gen = ev.score_generated(["yes", "No.", "???", "maybe"], exs,
                             lambda t, ex: next((k for k, c in enumerate(ex.choices)
                                                 if t.strip(".").lower() == c), None))
    assert [r["pred"] for r in gen] == [0, 1, None, 2]
    assert [r["correct"] for r in gen] == [True, True, False, False]
    s = ev.summarize(gen)
    assert s == {"n": 4, "accuracy": 0.5, "unparseable": 1, "unparseable_rate": 0.25}
    ranked = ev.score_ranked([{"pred": 0, "pred_norm": 1}, {"pred": 1, "pred_norm": 1}], exs[:2])
    assert ev.summarize(ranked) == {"n": 2, "accuracy": 1.0, "acc_norm": 0.5}


def test_rank_grouped_query_attention(tok):
    """SmolLM2 shares keys/values across heads (GQA); the expanded cache must still be exact."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=48, intermediate_size=96, num_hidden_layers=2,
                      num_attention_heads=6, num_key_value_heads=2, pad_token_id=tok.pad_token_id)
    model = LlamaForCausalLM(cfg).eval()
    items = make_items(tok, n=5, seed=2)
    for it, row in zip(items, ev.rank(model, items, batch=8)):
        np.testing.assert_allclose(row["scores"], naive(model, it), atol=1e-4, rtol=0)


@pytest.mark.slow
def test_rank_smollm2_matches_naive_and_prefers_the_right_answer():
    from cotdsl.models import load_smollm2

    model, tk = load_smollm2()
    qs = [("The capital of France is", [" Paris", " a banana", " Berlin Wall"], 0),
          ("Water freezes at zero degrees", [" Fahrenheit in the oven", " Celsius"], 1)]
    items = [Ctx(tk(c)["input_ids"], [tk(x)["input_ids"] for x in ch], ch) for c, ch, _ in qs]
    rows = ev.rank(model, items, batch=16)
    for it, row, (_, _, gold) in zip(items, rows, qs):
        np.testing.assert_allclose(row["scores"], naive(model, it), atol=1e-3, rtol=0)
        assert row["pred"] == gold
