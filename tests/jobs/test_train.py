"""Training: exact gathered-logit loss, determinism, crash + resume, LoRA, failures."""
from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass, replace

import pytest
import torch
import torch.nn.functional as F

from cotdsl import tiny
from cotdsl.jobs import train as tr
from cotdsl.spec import TrainCfg


@dataclass(frozen=True)
class R:  # stand-in for render.Rendered (train reads only these fields)
    input_ids: list
    loss_mask: list
    weight: float = 1.0
    ex_id: str = ""


TEXTS = [f"Question: is the {c} {a} heavy? Answer: {'yes' if i % 2 else 'no'} because it is {a}."
         for i, (c, a) in enumerate(zip(["cat", "dog", "box", "rock", "bird", "tree"] * 4,
                                         ["big", "small", "red", "old", "tall", "light", "green", "cold"] * 3))]


@pytest.fixture(scope="module")
def tok():
    return tiny.train_tokenizer(TEXTS, vocab_size=400)


def make_seqs(tok, n=24, seed=0, weights=(1.0,)):
    rng = random.Random(seed)
    out = []
    for i in range(n):
        text = TEXTS[i % len(TEXTS)]
        cut = text.index("Answer:") + len("Answer:")
        p = tok(text[:cut])["input_ids"]
        t = tok(text[cut:] + rng.choice(["", " really", " truly so"]))["input_ids"]
        out.append(R(p + t, [0] * len(p) + [1] * len(t), weights[i % len(weights)], f"e{i}"))
    return out


def model_for(tok, arch="llama", seed=0):
    return tiny.tiny_model(tok, arch=arch, layers=2, d_model=32, heads=2, seed=seed)


CFG = TrainCfg(epochs=2, lr=3e-3, batch=4, checkpoint_every=2, precision="fp32")


def test_gathered_loss_equals_full_logits_weighted(tok):
    seqs = make_seqs(tok, n=5, weights=(1.0, 0.25, 3.0))
    for arch in ("llama", "gpt2"):
        model = model_for(tok, arch)
        model.eval()
        b = tr.collate(seqs, tok.pad_token_id, 256)
        got, n = tr.micro_loss(model, tr.split_head(model), b, None, torch.device("cpu"))
        assert tr.split_head(model) is not None
        # naive: full logits for every position of every sequence, padded positions excluded
        want, cnt = 0.0, 0
        for s in seqs:
            ids = torch.tensor([s.input_ids])
            logp = F.log_softmax(model(ids).logits[0, :-1].float(), -1)
            for t in range(1, len(s.input_ids)):
                if s.loss_mask[t]:
                    want += -s.weight * logp[t - 1, s.input_ids[t]].item()
                    cnt += 1
        assert n == cnt
        assert got.item() == pytest.approx(want, rel=1e-5)


def test_batch_order_is_seeded_length_grouped_and_complete():
    lengths = [random.Random(i).randint(5, 200) for i in range(300)]
    a = tr.batch_order(lengths, 8, seed=1, epoch=0)
    assert a == tr.batch_order(lengths, 8, seed=1, epoch=0)
    assert a != tr.batch_order(lengths, 8, seed=2, epoch=0)
    assert a != tr.batch_order(lengths, 8, seed=1, epoch=1)
    assert sorted(i for b in a for i in b) == list(range(300))
    # grouping: padding waste far below that of random batches
    waste = sum(max(lengths[i] for i in b) * len(b) - sum(lengths[i] for i in b) for b in a)
    rnd = list(range(300))
    random.Random(0).shuffle(rnd)
    rwaste = sum(max(lengths[i] for i in rnd[k:k + 8]) * 8 - sum(lengths[i] for i in rnd[k:k + 8])
                 for k in range(0, 296, 8))
    assert waste < rwaste / 4


def test_training_lowers_loss_and_writes_safetensors_model(tok, tmp_path):
    seqs = make_seqs(tok)
    seen = []
    res = tr.train(model_for(tok), tok, seqs, replace(CFG, epochs=6), seed=0, out_dir=tmp_path,
                   progress=lambda s, t, l: seen.append((s, t, l)))
    assert res.steps == 6 * 6 and len(res.losses) == res.steps
    assert [s for s, _, _ in seen] == list(range(1, res.steps + 1)) and seen[0][1] == res.steps
    assert sum(res.losses[-3:]) / 3 < 0.7 * sum(res.losses[:3]) / 3
    assert res.tokens > 0 and res.tokens_per_s > 0
    files = {p.name for p in (tmp_path / "model").iterdir()}
    assert "model.safetensors" in files and "config.json" in files and "tokenizer.json" in files
    assert not (tmp_path / "ckpt").exists()
    from transformers import AutoModelForCausalLM

    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "model")
    ids = torch.tensor([seqs[0].input_ids])
    torch.testing.assert_close(reloaded(ids).logits, res.model(ids).logits)
    # a finished job is not redone: the stored result and weights come back
    fresh = model_for(tok, seed=5)
    again = tr.train(fresh, tok, seqs, replace(CFG, epochs=6), seed=0, out_dir=tmp_path)
    assert again.losses == res.losses
    torch.testing.assert_close(fresh(ids).logits, res.model(ids).logits)


def test_same_seed_same_losses_other_seed_differs(tok, tmp_path):
    seqs = make_seqs(tok)
    runs = [tr.train(model_for(tok, "gpt2"), tok, seqs, CFG, seed=s, out_dir=tmp_path / f"r{i}").losses
            for i, s in enumerate([3, 3, 4])]
    assert runs[0] == runs[1]  # bit-identical, dropout included (gpt2 has dropout 0.1)
    assert runs[0] != runs[2]


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_crash_then_resume_gives_identical_losses_and_weights(tok, tmp_path, arch):
    seqs = make_seqs(tok)
    full = tr.train(model_for(tok, arch), tok, seqs, CFG, seed=7, out_dir=tmp_path / "full")

    class Crash(Exception):
        pass

    def crash_at_5(step, total, loss):
        if step == 5:
            raise Crash

    with pytest.raises(Crash):
        tr.train(model_for(tok, arch), tok, seqs, CFG, seed=7, out_dir=tmp_path / "x", progress=crash_at_5)
    ck = sorted((tmp_path / "x" / "ckpt").iterdir())
    assert [p.name for p in ck] == ["step-000004"]  # only the latest, completed checkpoint is kept
    assert (ck[0] / "weights.safetensors").exists()
    # resume into a differently initialised model: everything must come from the checkpoint
    res = tr.train(model_for(tok, arch, seed=99), tok, seqs, CFG, seed=7, out_dir=tmp_path / "x")
    assert res.resumed_from == 4
    assert res.losses == full.losses
    ids = torch.tensor([seqs[1].input_ids])
    torch.testing.assert_close(res.model(ids).logits, full.model(ids).logits, rtol=0, atol=0)


def test_stale_checkpoint_is_refused(tok, tmp_path):
    seqs = make_seqs(tok)

    def stop(step, total, loss):
        if step == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        tr.train(model_for(tok), tok, seqs, CFG, seed=0, out_dir=tmp_path, progress=stop)
    with pytest.raises(tr.TrainingError, match="different data"):
        tr.train(model_for(tok), tok, seqs, CFG, seed=1, out_dir=tmp_path)


def test_weights_max_steps_and_grad_accum(tok, tmp_path):
    seqs = make_seqs(tok, weights=(1.0, 0.0))
    res = tr.train(model_for(tok), tok, seqs, replace(CFG, max_steps=5, grad_accum=2), seed=0,
                   out_dir=tmp_path / "a")
    assert res.steps == 5 and all(math.isfinite(x) for x in res.losses)
    # fractional epochs: 24 seqs / batch 4 = 6 micro-batches per epoch; 0.5 epoch -> 3 steps
    res = tr.train(model_for(tok), tok, seqs, replace(CFG, epochs=0.5), seed=0, out_dir=tmp_path / "b")
    assert res.steps == 3
    assert json.loads((tmp_path / "b" / "train.json").read_text())["steps"] == 3


def test_lora_trains_adapters_and_saves_merged_model(tok, tmp_path):
    seqs = make_seqs(tok)
    base = model_for(tok)
    before = {n: p.detach().clone() for n, p in base.named_parameters()}
    res = tr.train(base, tok, seqs, replace(CFG, lora=4, lr=1e-2), seed=0, out_dir=tmp_path)
    assert res.losses[-1] < res.losses[0]
    after = dict(res.model.named_parameters())
    assert res.model is base  # the caller's object is trained in place, LoRA merged into it
    assert set(after) == set(before)  # merged back into a plain model
    changed = [n for n in before if not torch.equal(before[n], after[n])]
    assert changed and all("q_proj" in n or "v_proj" in n for n in changed)


def test_nan_loss_raises_training_error_with_step(tok, tmp_path):
    model = model_for(tok)
    with torch.no_grad():
        model.get_input_embeddings().weight.fill_(float("nan"))
    with pytest.raises(tr.TrainingError) as ei:
        tr.train(model, tok, make_seqs(tok), CFG, seed=0, out_dir=tmp_path)
    assert ei.value.step == 1 and ei.value.cause == "nan loss"


def test_bad_inputs(tok, tmp_path):
    with pytest.raises(tr.TrainingError, match="no training sequences"):
        tr.train(model_for(tok), tok, [], CFG, seed=0, out_dir=tmp_path)
    with pytest.raises(tr.TrainingError, match="precision"):
        tr.train(model_for(tok), tok, make_seqs(tok), replace(CFG, precision="fp8"), seed=0, out_dir=tmp_path)
    unsup = [R([1, 2, 3], [0, 0, 0])]
    with pytest.raises(tr.TrainingError, match="supervised"):
        tr.train(model_for(tok), tok, unsup, CFG, seed=0, out_dir=tmp_path)


def test_oom_is_reported_as_training_error(tok, tmp_path, monkeypatch):
    def boom(*a, **k):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr(tr, "micro_loss", boom)
    with pytest.raises(tr.TrainingError) as ei:
        tr.train(model_for(tok), tok, make_seqs(tok), CFG, seed=0, out_dir=tmp_path)
    assert ei.value.cause == "out of memory" and ei.value.step == 1


def test_device_precision_and_rng_helpers(monkeypatch):
    from cotdsl.jobs import device as dev

    cpu = torch.device("cpu")
    assert dev.autocast_dtype("fp32", cpu) is None and dev.autocast_dtype("bf16", cpu) is torch.bfloat16
    for flag, want in (("1", torch.bfloat16), ("0", None)):
        monkeypatch.setenv("COTDSL_CPU_BF16", flag)
        dev.cpu_has_fast_bf16.cache_clear()
        assert dev.autocast_dtype("auto", cpu) is want
    dev.cpu_has_fast_bf16.cache_clear()
    with pytest.raises(ValueError, match="precision"):
        dev.autocast_dtype("fp16", cpu)
    dev.seed_everything(5)
    state = dev.rng_state()
    a = (random.random(), torch.rand(3), __import__("numpy").random.rand())
    dev.set_rng_state(state)
    b = (random.random(), torch.rand(3), __import__("numpy").random.rand())
    assert a[0] == b[0] and torch.equal(a[1], b[1]) and a[2] == b[2]


# ---- train { resample: epoch }: a fresh kept rationale per epoch ----------------------------------
@dataclass(frozen=True)
class V:  # a rendered sequence with the kept teacher sample it was rendered from
    input_ids: list
    loss_mask: list
    weight: float = 1.0
    ex_id: str = ""
    task: int = 0
    variant: int = 0


def variant_seqs(tok, kept=(3, 2, 1, 1), tasks=1):
    out = []
    for i, n in enumerate(kept):
        for j in range(n):
            ids = tok(TEXTS[4 * i + j])["input_ids"]
            out += [V(ids, [0] * 3 + [1] * (len(ids) - 3), 1.0, f"e{i}", t, j) for t in range(tasks)]
    return out


def test_resample_groups_and_picks(tok):
    assert tr.resample_groups(make_seqs(tok, n=4)) is None  # no variants: every sequence every epoch
    seqs = variant_seqs(tok, tasks=2)
    groups = tr.resample_groups(seqs)
    assert [[(seqs[i].ex_id, seqs[i].task, seqs[i].variant) for i in g] for g in groups][:2] == \
        [[("e0", 0, 0), ("e0", 0, 1), ("e0", 0, 2)], [("e0", 1, 0), ("e0", 1, 1), ("e0", 1, 2)]]
    picks = [[(seqs[i].ex_id, seqs[i].task, seqs[i].variant) for i in tr.epoch_pick(seqs, groups, 0, e)]
             for e in range(4)]
    assert all(len(p) == len(groups) == 8 for p in picks)
    e0 = [{t: v for x, t, v in p if x == "e0"} for p in picks]
    assert all(d[0] == d[1] for d in e0)  # every task of an example takes the same kept rationale
    assert sorted(d[0] for d in e0[:3]) == [0, 1, 2] and e0[3] == e0[0]  # each in turn, then again
    assert picks == [[(seqs[i].ex_id, seqs[i].task, seqs[i].variant) for i in tr.epoch_pick(seqs, groups, 0, e)]
                     for e in range(4)]  # deterministic
    assert any(tr.epoch_pick(seqs, groups, s, 0) != tr.epoch_pick(seqs, groups, 0, 0) for s in range(1, 8))


def test_resample_trains_each_epoch_on_another_kept_rationale(tok, tmp_path, monkeypatch):
    seqs = variant_seqs(tok)
    real = tr.collate

    def run(seed, where):
        seen = []
        monkeypatch.setattr(tr, "collate", lambda ss, *a: seen.append({s.ex_id: s.variant for s in ss}) or real(ss, *a))
        cfg = TrainCfg(epochs=3, lr=1e-3, batch=4, precision="fp32", resample="epoch")
        res = tr.train(model_for(tok), tok, seqs, cfg, seed=seed, out_dir=tmp_path / where)
        assert res.steps == 3  # one sequence per example and epoch: one batch of 4 per epoch
        return seen

    seen = run(0, "a")
    assert sorted(b["e0"] for b in seen) == [0, 1, 2]  # three epochs, three different kept rationales
    assert seen[0]["e1"] != seen[1]["e1"] and seen[2]["e1"] == seen[0]["e1"]
    assert all(b["e2"] == 0 and b["e3"] == 0 for b in seen)  # one kept sample: every epoch
    assert run(0, "b") == seen  # the same seed, the same rationales in the same epochs
    assert any(run(s, f"s{s}") != seen for s in (1, 2, 3))
