"""interp/tuned.py: tuned-lens training lowers held-out KL; readout shapes; save/load; cache."""
import pytest
import torch

import interp.tuned as tuned_mod
from cotdsl.tiny import sharpen, tiny_model, train_tokenizer
from interp.lens import logit_lens
from interp.tuned import (cached_tuned_lens, lens_kl, load_tuned_lens, new_tuned_lens,
                          save_tuned_lens, train_tuned_lens, tuned_lens)

TRAIN = ["the lazy dog jumps over the quick brown fox", "a brown cat sat on the lazy mat",
         "Question: which fox is quick?\nAnswer: the brown one", "the dog looked at the cat"]
HELD_OUT = ["the quick cat looked at the brown dog",
            "Question: which dog is lazy?\nAnswer: the quick one"]


@pytest.fixture(scope="module")
def tok():
    return train_tokenizer(TRAIN * 3, vocab_size=320)


def sharp_model(tok, arch, layers=3, seed=0):
    """Tiny random model with non-trivial norms/biases and peaked outputs (see `sharpen`)."""
    return sharpen(tiny_model(tok, arch=arch, layers=layers, seed=seed), seed + 1)


def enc(tok, texts):
    return dict(tok(texts, return_tensors="pt", padding=True))


def probe_inputs(tok):
    e = enc(tok, HELD_OUT)
    pos = e["attention_mask"].sum(1) - 1
    tgt = torch.tensor([[5, 6, 7], [8, 9, 10]])
    return e["input_ids"], e["attention_mask"], pos, tgt, torch.tensor([0, 2])


@pytest.fixture(scope="module")
def trained(tok):
    model = sharp_model(tok, "llama")
    lens = train_tuned_lens(model, [enc(tok, TRAIN[:2]), enc(tok, TRAIN[2:])], steps=20, lr=1e-2)
    return model, lens


def test_training_lowers_held_out_kl(tok, trained):
    model, lens = trained
    held = [enc(tok, HELD_OUT)]
    before, after = lens_kl(model, held), lens_kl(model, held, lens)
    assert before.shape == after.shape == (3,)
    assert before.mean() > 0.5  # the logit lens is clearly off on this model
    assert after.mean() < 0.7 * before.mean()
    assert lens.train_log[-1] < lens.train_log[0]


def test_gpt2_trains_too(tok):
    model = sharp_model(tok, "gpt2", layers=2)
    lens = train_tuned_lens(model, [enc(tok, TRAIN)], steps=10, lr=1e-2)
    held = [enc(tok, HELD_OUT)]
    assert lens_kl(model, held, lens).mean() < lens_kl(model, held).mean()


def test_untrained_lens_is_the_logit_lens_and_shapes(tok, trained):
    model, lens = trained
    args = probe_inputs(tok)
    zero = tuned_lens(model, *args, lens=new_tuned_lens(model))
    plain = logit_lens(model, *args)
    assert zero.lens == "tuned" and zero.probs.shape == (2, 4, 3)
    assert (zero.probs - plain.probs).abs().max() < 1e-6
    res = tuned_lens(model, *args, lens=lens)
    assert res.probs.shape == res.ranks.shape == res.choice_probs.shape == (2, 4, 3)
    assert torch.equal(res.probs[:, -1], plain.probs[:, -1])  # last row: the model itself
    assert (res.probs[:, 0] - plain.probs[:, 0]).abs().max() > 1e-4  # translators do act


def test_training_is_deterministic(tok):
    model = sharp_model(tok, "llama", layers=2)
    a = train_tuned_lens(model, [enc(tok, TRAIN[:2]), enc(tok, TRAIN[2:])], steps=4, lr=1e-2, seed=3)
    b = train_tuned_lens(model, [enc(tok, TRAIN[:2]), enc(tok, TRAIN[2:])], steps=4, lr=1e-2, seed=3)
    for pa, pb in zip(a.layer_translators.parameters(), b.layer_translators.parameters()):
        assert torch.equal(pa, pb)


def test_save_load_round_trip(tok, trained, tmp_path):
    model, lens = trained
    save_tuned_lens(lens, tmp_path / "lens", meta={"note": "x"})
    assert (tmp_path / "lens" / "tuned_lens.safetensors").exists()
    loaded = load_tuned_lens(model, tmp_path / "lens")
    assert loaded.meta == {"note": "x"}
    for pa, pb in zip(lens.layer_translators.parameters(), loaded.layer_translators.parameters()):
        assert torch.equal(pa, pb)
    args = probe_inputs(tok)
    assert torch.equal(tuned_lens(model, *args, lens=lens).probs,
                       tuned_lens(model, *args, lens=loaded).probs)
    with pytest.raises(ValueError, match="different unembedding"):
        load_tuned_lens(sharp_model(tok, "llama", seed=5), tmp_path / "lens")
    with pytest.raises(ValueError, match="layers"):
        load_tuned_lens(sharp_model(tok, "llama", layers=2), tmp_path / "lens")
    with pytest.raises(ValueError, match="no tuned lens"):
        load_tuned_lens(model, tmp_path / "missing")


def test_cache_next_to_checkpoint(tok, tmp_path, monkeypatch):
    model = sharp_model(tok, "llama", layers=2)
    data = [enc(tok, TRAIN)]
    calls = []
    real = tuned_mod.train_tuned_lens
    monkeypatch.setattr(tuned_mod, "train_tuned_lens", lambda *a, **k: calls.append(1) or real(*a, **k))
    first = cached_tuned_lens(model, tmp_path, data, steps=3, lr=1e-2, seed=0)
    again = cached_tuned_lens(model, tmp_path, data, steps=3, lr=1e-2, seed=0)
    assert len(calls) == 1 and (tmp_path / "tuned_lens" / "tuned_lens.json").exists()
    for pa, pb in zip(first.layer_translators.parameters(), again.layer_translators.parameters()):
        assert torch.equal(pa, pb)
    cached_tuned_lens(model, tmp_path, data, steps=4, lr=1e-2, seed=0)  # new settings: retrain
    assert len(calls) == 2


def test_bad_training_input(tok):
    model = sharp_model(tok, "llama", layers=1)
    with pytest.raises(ValueError):
        train_tuned_lens(model, [], steps=2)
    with pytest.raises(ValueError):
        train_tuned_lens(model, [torch.zeros(0, dtype=torch.long)], steps=2)
    with pytest.raises(ValueError):
        train_tuned_lens(model, [enc(tok, TRAIN)], steps=-1)


def test_token_subsampling_still_learns_and_is_seeded(tok):
    """max_tokens draws a seeded subset of positions per step (the per-layer full-vocab
    unembedding is the cost on real models); the lens still generalises to held-out text."""
    model = sharp_model(tok, "llama", layers=2)
    batch = [enc(tok, TRAIN)]
    assert int(batch[0]["attention_mask"].sum()) > 4
    a = train_tuned_lens(model, batch, steps=10, lr=1e-2, max_tokens=4, seed=1)
    b = train_tuned_lens(model, batch, steps=10, lr=1e-2, max_tokens=4, seed=1)
    c = train_tuned_lens(model, batch, steps=10, lr=1e-2, max_tokens=None, seed=1)
    assert a.train_log == b.train_log
    assert a.train_log != c.train_log
    held = [enc(tok, HELD_OUT)]
    assert lens_kl(model, held, a).mean() < lens_kl(model, held).mean()


def test_tuned_label_lens_whole_labels(tok, trained):
    """Untrained translators give the logit label lens; trained ones change rows 0..L-1 only;
    the last row is rank evaluation's scores; labels sharing a first token are told apart."""
    from cotdsl.jobs.evaluate import rank
    from cotdsl.render import EvalContext
    from interp.lens import label_lens
    from interp.tuned import tuned_label_lens

    model, lens = trained
    ctxs = [tok(t)["input_ids"] for t in HELD_OUT]
    words = [" the brown one", " the quick one", " a cat"]
    chs = [[tok(w, add_special_tokens=False)["input_ids"] for w in words]] * 2
    assert chs[0][0][0] == chs[0][1][0]  # " the" starts two choices
    plain = label_lens(model, ctxs, chs, [0, 1])
    zero = tuned_label_lens(model, ctxs, chs, [0, 1], lens=new_tuned_lens(model))
    assert zero.lens == "tuned" and zero.score == "label" and (zero.scores - plain.scores).abs().max() < 1e-4
    res = tuned_label_lens(model, ctxs, chs, [0, 1], lens=lens)
    assert res.scores.shape == (2, 4, 3) and not res.tied.any()
    assert torch.equal(res.scores[:, -1], plain.scores[:, -1])  # last row: the model itself
    assert (res.scores[:, 0] - plain.scores[:, 0]).abs().max() > 1e-3  # translators do act
    assert ((res.scores[:, :, 0] - res.scores[:, :, 1]).abs() > 1e-4).all()
    ranked = rank(model, [EvalContext(c, x, words) for c, x in zip(ctxs, chs)])
    for b, r in enumerate(ranked):
        assert (res.scores[b, -1] - torch.tensor(r["scores"])).abs().max() < 1e-4
        assert int(res.scores[b, -1].argmax()) == r["pred"]


# ---- recipes: the closed-form fit ("fit", default) vs the zero-init SGD loop ("sgd") -------------

def test_collect_states_reads_the_pre_norm_final_residual(tok):
    """R is what enters the final norm: normed, it is HF's last hidden state at every real token;
    H[i] is the residual entering block i (HF's hidden_states[i])."""
    from interp import bridge
    from interp.tuned import collect_states

    for arch in ("llama", "gpt2"):
        model = sharp_model(tok, arch, layers=2)
        e = enc(tok, TRAIN)
        H, R = collect_states(model, [e])
        hs = bridge.hidden_states(model, e["input_ids"], e["attention_mask"])
        keep = e["attention_mask"].bool()
        assert H.shape == (2, int(keep.sum()), model.config.hidden_size) and R.shape == H.shape[1:]
        assert torch.allclose(bridge.final_norm(model)(R), hs[-1][keep], atol=1e-5)
        assert torch.equal(H[1], hs[1][keep])
        assert not torch.allclose(R, hs[-1][keep], atol=1e-3)  # it is the *pre*-norm state


def test_fit_is_exact_when_layers_are_affine_maps_of_each_other(tok):
    """Ground truth: states where the final residual is an exact affine map of each layer's
    input, r = (I + A_i) h + b_i with known A_i, b_i. The fit recovers A_i and b_i (any token
    weights leave an exact relation exact) and the lens then reproduces the model's final
    distribution: KL ~ 0 at every layer, far below the logit lens."""
    from interp import bridge
    from interp.tuned import fit_translators

    model = sharp_model(tok, "llama", layers=3)
    L, D, N = 3, model.config.hidden_size, 400
    g = torch.Generator().manual_seed(0)
    R = 3 * torch.randn(N, D, generator=g) * torch.rand(N, 1, generator=g)  # tokens of different scales
    A = [0.3 * torch.randn(D, D, generator=g) for _ in range(L)]
    b = [torch.randn(D, generator=g) for _ in range(L)]
    # h = (I + A)^-1 (r - b): each layer an affine map of the final residual, and vice versa
    H = torch.stack([torch.linalg.solve(torch.eye(D) + A[i], (R - b[i]).T).T for i in range(L)])
    lens = new_tuned_lens(model)
    fit_translators(lens, H, R, ridge=0.0)
    for i in range(L):
        assert torch.allclose(lens.layer_translators[i].weight, A[i], atol=1e-4)
        assert torch.allclose(lens.layer_translators[i].bias, b[i], atol=1e-4)
    with torch.no_grad():
        logp = torch.log_softmax(bridge.unembed(model, R), -1)
        for i in range(L):
            kl = (logp.exp() * (logp - torch.log_softmax(lens(H[i], i), -1))).sum(-1).mean()
            kl0 = (logp.exp() * (logp - torch.log_softmax(bridge.unembed(model, H[i]), -1))).sum(-1).mean()
            assert kl < 1e-6 and kl0 > 0.1


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_fit_recipe_matches_the_sgd_recipe_on_held_out_text(tok, arch):
    """The default recipe (fit + 20 KL steps) generalises at least about as well as the SGD
    loop that was the default (here given 20 steps at lr 1e-2, which converges on this tiny
    model), and far better than the logit lens; the fit alone (steps=0) already helps."""
    model = sharp_model(tok, arch, layers=3)
    data, held = [enc(tok, TRAIN[:2]), enc(tok, TRAIN[2:])], [enc(tok, HELD_OUT)]
    sgd = lens_kl(model, held, train_tuned_lens(model, data, recipe="sgd", steps=20, lr=1e-2))
    fit = lens_kl(model, held, train_tuned_lens(model, data))
    fit0 = lens_kl(model, held, train_tuned_lens(model, data, steps=0))
    logit = lens_kl(model, held)
    assert fit.mean() <= 1.1 * sgd.mean()
    assert fit.mean() < 0.5 * logit.mean() and fit0.mean() < 0.7 * logit.mean()


def test_recipe_settings_are_checked_and_keyed(tok, tmp_path, monkeypatch):
    model = sharp_model(tok, "llama", layers=2)
    data = [enc(tok, TRAIN)]
    with pytest.raises(ValueError, match="unknown tuned-lens recipe"):
        train_tuned_lens(model, data, recipe="adam")
    with pytest.raises(ValueError, match="steps"):
        train_tuned_lens(model, data, recipe="sgd", steps=0)
    assert train_tuned_lens(model, data, steps=0).train_log == []  # the fit alone is a lens
    calls = []
    real = tuned_mod.train_tuned_lens
    monkeypatch.setattr(tuned_mod, "train_tuned_lens", lambda *a, **k: calls.append(k["recipe"]) or real(*a, **k))
    cached_tuned_lens(model, tmp_path, data, steps=2)
    cached_tuned_lens(model, tmp_path, data, steps=2)
    cached_tuned_lens(model, tmp_path, data, steps=2, recipe="sgd")  # another recipe: retrain
    cached_tuned_lens(model, tmp_path, data, steps=2, ridge=1e-2)  # another fit setting: retrain
    assert calls == ["fit", "sgd", "fit"]
