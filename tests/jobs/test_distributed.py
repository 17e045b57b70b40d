"""One training job on several processes (DDP over gloo on CPU): same loss curve and weights as one
process for the same global batch, crash + resume, errors, the launcher itself, the checker keys.

The first launch in a test process starts multiprocessing's forkserver (~5 s: it imports torch,
transformers, accelerate); later launches start their workers in about a second."""
from __future__ import annotations

import multiprocessing as mp
import os
from dataclasses import replace

import pytest
import torch

from cotdsl import tiny
from cotdsl.errors import CotError
from cotdsl.jobs import distributed
from cotdsl.jobs import train as tr
from test_train import CFG, TEXTS, make_seqs, model_for


@pytest.fixture(scope="module")
def tok():
    return tiny.train_tokenizer(TEXTS, vocab_size=400)


def assert_same_model(a, b, rtol, atol):
    pa, pb = dict(a.named_parameters()), dict(b.named_parameters())
    assert pa.keys() == pb.keys()
    for n in pa:
        torch.testing.assert_close(pa[n], pb[n], rtol=rtol, atol=atol, msg=n)


def no_workers_left():
    return not [p for p in mp.active_children() if p.name.startswith("cotdsl-rank")]


# ---- DDP(2) == 1 process ----------------------------------------------------------------------
@pytest.mark.parametrize("case", ["plain", "weighted_accum_ragged"])
def test_ddp2_equals_one_process_for_the_same_global_batch(tok, tmp_path, case):
    if case == "plain":
        seqs, cfg = make_seqs(tok), CFG
    else:
        # per-sequence weights, grad_accum 2, batch 3 (shards of 2 and 1 sequences), 22 sequences:
        # each epoch ends in a 1-sequence batch, so rank 1 runs a zero-weight stand-in there
        seqs = make_seqs(tok, n=22, weights=(1.0, 0.25, 3.0))
        cfg = replace(CFG, batch=3, grad_accum=2, warmup=0.25)
    one_model, ddp_model = model_for(tok), model_for(tok)
    one = tr.train(one_model, tok, seqs, cfg, seed=3, out_dir=tmp_path / "one")
    seen = []
    ddp = tr.train(ddp_model, tok, seqs, replace(cfg, devices=2), seed=3, out_dir=tmp_path / "ddp",
                   progress=lambda s, t, l: seen.append((s, t, l)))
    assert ddp.steps == one.steps and len(ddp.losses) == len(one.losses)
    assert ddp.losses == pytest.approx(one.losses, rel=1e-4)
    assert [l for _, _, l in seen] == ddp.losses and [s for s, _, _ in seen] == list(range(1, ddp.steps + 1))
    assert ddp.tokens == one.tokens  # the two ranks together forward exactly the 1-process tokens
    # the trained weights are back in the caller's object, equal to 1-process training
    assert ddp.model is ddp_model
    assert_same_model(ddp_model, one_model, rtol=1e-4, atol=1e-5)
    # 2 processes over gloo; rank 0 wrote the final model, checkpoints are gone
    assert ddp.device.startswith("2 × cpu") and "ddp (gloo)" in ddp.device
    assert (tmp_path / "ddp" / "model" / "model.safetensors").exists()
    assert not (tmp_path / "ddp" / "ckpt").exists() and not (tmp_path / "ddp" / ".dist-init.pt").exists()
    assert no_workers_left()
    # a finished multi-process job is not redone
    fresh = model_for(tok, seed=5)
    again = tr.train(fresh, tok, seqs, replace(cfg, devices=2), seed=3, out_dir=tmp_path / "ddp")
    assert again.losses == ddp.losses
    assert_same_model(fresh, ddp_model, rtol=0, atol=0)


def test_ddp_lora_trains_and_merges_into_the_callers_model(tok, tmp_path):
    seqs = make_seqs(tok)
    cfg = replace(CFG, lora=4, lr=1e-2, epochs=1)
    one_model, ddp_model = model_for(tok), model_for(tok)
    one = tr.train(one_model, tok, seqs, cfg, seed=0, out_dir=tmp_path / "one")
    ddp = tr.train(ddp_model, tok, seqs, replace(cfg, devices=2), seed=0, out_dir=tmp_path / "ddp")
    assert ddp.losses == pytest.approx(one.losses, rel=1e-4)
    assert_same_model(ddp_model, one_model, rtol=1e-4, atol=1e-5)


# ---- crash + resume -------------------------------------------------------------------------
def test_ddp_killed_after_a_checkpoint_resumes_to_the_uninterrupted_result(tok, tmp_path):
    seqs = make_seqs(tok)
    cfg = replace(CFG, devices=2)  # checkpoint_every 2; gpt2 has dropout 0.1: per-rank RNG must resume too
    full = tr.train(model_for(tok, "gpt2"), tok, seqs, cfg, seed=7, out_dir=tmp_path / "full")

    class Crash(Exception):
        pass

    def crash_at_5(step, total, loss):
        if step == 5:
            raise Crash

    with pytest.raises(Crash):
        tr.train(model_for(tok, "gpt2"), tok, seqs, cfg, seed=7, out_dir=tmp_path / "x", progress=crash_at_5)
    assert no_workers_left()  # the workers were stopped with the caller's exception
    ck = sorted((tmp_path / "x" / "ckpt").iterdir())
    assert [p.name for p in ck] == ["step-000004"]
    state = torch.load(ck[0] / "state.pt", weights_only=True)
    assert len(state["rng_ranks"]) == 2 and state["step"] == 4
    # resume into a differently initialised model: everything must come from the checkpoint
    model = model_for(tok, "gpt2", seed=99)
    res = tr.train(model, tok, seqs, cfg, seed=7, out_dir=tmp_path / "x")
    assert res.resumed_from == 4
    assert res.losses == pytest.approx(full.losses, rel=1e-6)
    assert_same_model(model, full.model, rtol=1e-6, atol=1e-7)
    # (on this CPU it is in fact bit-identical, as for one process)
    assert res.losses == full.losses


# ---- fsdp -------------------------------------------------------------------------------------
def _fsdp_stand_in_prepare(dist, model, split, params, cfg, amp, device):
    """What accelerate's FSDP2 `prepare` does to the loss module, which it only does on CUDA:
    `fully_shard` every decoder layer, then the root (embeddings, tied head, final norm)."""
    from torch.distributed.fsdp import fully_shard

    net = tr._LossNet(model, split, amp, device)
    for m in model.modules():
        if type(m).__name__ in (model._no_split_modules or ()):
            fully_shard(m)
    fully_shard(net)
    ps = [p for p in net.parameters() if p.requires_grad]
    assert all(type(p).__name__ == "DTensor" for p in ps)  # really sharded
    return net, torch.optim.AdamW(ps, lr=cfg.lr, weight_decay=cfg.weight_decay), ps


def _fsdp_cpu_worker(*args):
    tr._prepare = _fsdp_stand_in_prepare
    return tr._dist_worker(*args)


def test_fsdp_loop_checkpoints_resume_and_save_on_cpu_with_torch_fully_shard(tok, tmp_path, monkeypatch):
    """The FSDP-only parts of the loop (full-state gathers for checkpoints and the final model,
    sharded resume, DTensor-aware clipping) with torch's FSDP2 on gloo standing in for accelerate's."""
    monkeypatch.setattr(tr, "_distributed_device", lambda cfg, device: "cpu")
    launch = distributed.launch
    monkeypatch.setattr(distributed, "launch", lambda fn, *a, **k: launch(_fsdp_cpu_worker, *a, **k))
    seqs, cfg = make_seqs(tok), replace(CFG, devices=2, strategy="fsdp")
    one_model, model = model_for(tok), model_for(tok)
    one = tr.train(one_model, tok, seqs, CFG, seed=7, out_dir=tmp_path / "one")
    full = tr.train(model, tok, seqs, cfg, seed=7, out_dir=tmp_path / "full")
    assert "fsdp" in full.device
    assert full.losses == pytest.approx(one.losses, rel=1e-4)
    assert_same_model(model, one_model, rtol=1e-4, atol=1e-5)

    def crash_at_3(step, total, loss):
        if step == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        tr.train(model_for(tok), tok, seqs, cfg, seed=7, out_dir=tmp_path / "x", progress=crash_at_3)
    ck = tmp_path / "x" / "ckpt" / "step-000002"
    from safetensors.torch import load_file

    shapes = {k: v.shape for k, v in load_file(str(ck / "weights.safetensors")).items()}
    assert shapes == {n: p.shape for n, p in model.named_parameters()}  # gathered, not shards
    resumed_model = model_for(tok, seed=99)
    res = tr.train(resumed_model, tok, seqs, cfg, seed=7, out_dir=tmp_path / "x")
    assert res.resumed_from == 2 and res.losses == pytest.approx(full.losses, rel=1e-6)
    assert_same_model(resumed_model, model, rtol=1e-6, atol=1e-7)


# ---- errors ---------------------------------------------------------------------------------
def test_fsdp_without_cuda_is_a_clear_user_error(tok, tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(tr.TrainConfigError, match="fsdp needs CUDA devices; use ddp") as ei:
        tr.train(model_for(tok), tok, make_seqs(tok), replace(CFG, devices=2, strategy="fsdp"), seed=0,
                 out_dir=tmp_path)
    assert isinstance(ei.value, CotError) and isinstance(ei.value, tr.TrainingError)
    assert ei.value.cause == "bad config"
    assert not (tmp_path / "ckpt").exists() and not (tmp_path / ".dist-init.pt").exists()


def test_more_devices_than_visible_gpus_is_a_clear_error(tok, tmp_path, monkeypatch):
    # decided before any process starts, so this runs without a GPU by pretending to have one
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")
    with pytest.raises(tr.TrainConfigError, match=r"devices: 2 \} needs 2 CUDA devices, but 1 is visible "
                                                  r"\(CUDA_VISIBLE_DEVICES=3\)"):
        tr.train(model_for(tok), tok, make_seqs(tok), replace(CFG, devices=2), seed=0, out_dir=tmp_path)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_more_devices_than_real_gpus_is_a_clear_error(tok, tmp_path):
    n = torch.cuda.device_count() + 1
    with pytest.raises(tr.TrainConfigError, match=f"needs {n} CUDA devices"):
        tr.train(model_for(tok), tok, make_seqs(tok), replace(CFG, devices=n, batch=n), seed=0, out_dir=tmp_path)


def test_bad_distributed_configs(tok, tmp_path):
    seqs = make_seqs(tok)
    with pytest.raises(tr.TrainConfigError, match="batch: 2 .* smaller than devices: 4"):
        tr.train(model_for(tok), tok, seqs, replace(CFG, devices=4, batch=2), seed=0, out_dir=tmp_path, device="cpu")
    with pytest.raises(tr.TrainConfigError, match="names a single device"):
        tr.train(model_for(tok), tok, seqs, replace(CFG, devices=2), seed=0, out_dir=tmp_path, device="cuda:1")
    with pytest.raises(tr.TrainingError, match="strategy"):
        tr.train(model_for(tok), tok, seqs, replace(CFG, devices=2, strategy="zero3"), seed=0, out_dir=tmp_path)


def test_nan_loss_in_workers_raises_training_error_with_step(tok, tmp_path):
    model = model_for(tok)
    with torch.no_grad():
        model.get_input_embeddings().weight.fill_(float("nan"))
    with pytest.raises(tr.TrainingError) as ei:
        tr.train(model, tok, make_seqs(tok), replace(CFG, devices=2), seed=0, out_dir=tmp_path)
    assert ei.value.step == 1 and ei.value.cause == "nan loss"
    assert isinstance(ei.value.__cause__, distributed.RemoteTraceback) and "rank" in str(ei.value.__cause__)
    assert no_workers_left()


# ---- the launcher ---------------------------------------------------------------------------
def _whoami(tag):
    import torch.distributed as tdist

    tdist.init_process_group("gloo")
    got = [None] * tdist.get_world_size()
    tdist.all_gather_object(got, (tdist.get_rank(), os.getpid(), os.environ["OMP_NUM_THREADS"]))
    distributed.report("hello", tdist.get_rank())
    return tag, got


def _fail(code):
    if os.environ["RANK"] == "1":
        if code is None:
            raise ValueError("rank 1 is unhappy")
        os._exit(code)
    import time

    time.sleep(60)  # rank 0 would wait forever: launch must stop it


def test_launch_runs_n_ranks_and_relays_reports_results_and_failures(monkeypatch):
    monkeypatch.setenv("COTDSL_TEST_ENV", "seen")  # a worker gets the caller's environment at launch
    reports = []
    tag, got = distributed.launch(_whoami, 2, ("x",), on_report=lambda *m: reports.append(m), threads=1)
    assert tag == "x" and [r for r, _, _ in got] == [0, 1] and len({pid for _, pid, _ in got}) == 2
    assert all(pid != os.getpid() for _, pid, _ in got) and {t for _, _, t in got} == {"1"}
    assert reports == [("hello", 0)]  # only rank 0 reports
    with pytest.raises(ValueError, match="unhappy") as ei:
        distributed.launch(_fail, 2, (None,))
    assert "rank 1" in str(ei.value.__cause__)
    with pytest.raises(distributed.WorkerDied, match="rank 1 of 2 exited with code 7"):
        distributed.launch(_fail, 2, (7,))
    assert no_workers_left()
    assert distributed.launch("os:getpid", 1) != os.getpid()  # "module:function" form


# ---- the language ---------------------------------------------------------------------------
def test_train_devices_and_strategy_in_the_spec():
    from cotdsl.lang.check import check_source

    head = ('experiment e {\n  data toy = builtin("facts", train: 10, test: 10)\n  teacher gold = gold\n'
            '  student s = smollm2\n  target none = label\n')
    e = check_source(head + "  train { devices: 2, strategy: fsdp }\n}\n")
    assert (e.train.devices, e.train.strategy) == (2, "fsdp")
    e = check_source(head + "  train { epochs: 1 }\n}\n")
    assert (e.train.devices, e.train.strategy) == (1, "ddp")
    with pytest.raises(CotError, match="`strategy` cannot be `zero`"):
        check_source(head + "  train { strategy: zero }\n}\n")
    with pytest.raises(CotError, match="`devices` must be at least 1"):
        check_source(head + "  train { devices: 0 }\n}\n")
