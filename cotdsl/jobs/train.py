"""Fast, resumable causal-LM fine-tuning of a student on rendered sequences.

Inputs are `render.Rendered` objects (duck-typed: only `input_ids`, `loss_mask` and `weight` are
read). The loss is the weighted mean of per-token cross-entropies over supervised tokens
(`loss_mask == 1`), each token weighted by its sequence's `weight` — so multitask α weighting is
exact and independent of how a step is split into micro-batches.

What makes it fast (measured in bench/train_speed.py, documented in docs/training.md):
- dynamic padding + length-grouped batches (shuffled by seed) instead of padding to max_len;
- logits only where the loss needs them: the model body runs to hidden states `[B, T, D]`, the
  supervised positions are gathered to `[N, D]` and only those go through `lm_head` (`[N, V]`
  instead of `[B, T, V]`; with V = 49k and ~50% prompt tokens this halves the largest matmul and
  its softmax);
- bf16 autocast where the hardware has native bf16 (`precision="auto"`), fused AdamW.

Resume: every `cfg.checkpoint_every` optimizer steps a checkpoint is written to
`out_dir/ckpt/step-NNNNNN/` through a temp dir + `os.replace`, holding the trainable weights
(safetensors), optimizer/scheduler/RNG state, and the losses so far. The batch order is a pure
function of (seed, epoch), so nothing about the data stream needs saving. A resumed run gives
bit-identical losses to an uninterrupted one on CPU.

Several devices (`cfg.devices > 1`): the same loop runs in `cfg.devices` processes started by
`distributed.launch`, with an `accelerate.Accelerator` (DDP, or FSDP on CUDA). Every process forms
the same global batches as one process would and takes its share of each (`batch[rank::devices]`);
each process's loss is its shard's weighted token-loss sum divided by the *global* step
denominator, so the averaged gradients equal the one-process gradient. Rank 0 writes checkpoints
and the final model; `train` then loads the final weights into the caller's model.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import os
import random
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.distributed
import torch.nn.functional as F

from cotdsl.cache import atomic_write_json
from cotdsl.errors import CotError, Diagnostic
from cotdsl.jobs import device as dev

MAX_GRAD_NORM = 1.0  # same as transformers.Trainer's default
MEGABATCH = 16  # length grouping sorts within windows of MEGABATCH batches (as HF LengthGroupedSampler does)
# Architectures whose CausalLM forward is exactly `lm_head(base_model(...).last_hidden_state)`,
# so the gathered-logits path is exact. Others (logit scaling, softcaps, ...) use full logits.
PLAIN_HEAD = {"llama", "mistral", "qwen2", "qwen3", "gpt2", "gpt_neox", "phi", "phi3", "opt", "gemma",
              "olmo", "olmo2", "stablelm", "smollm3", "gptj", "gpt_neo", "starcoder2"}


class TrainingError(RuntimeError):
    """Training failed: NaN/inf loss, out of memory, bad inputs, or an incompatible checkpoint."""

    def __init__(self, message: str, *, step: int | None = None, cause: str = ""):
        self.step, self.cause = step, cause
        super().__init__(f"{message} (at step {step})" if step is not None else message)


class TrainConfigError(TrainingError, CotError):
    """A `train { ... }` setting this machine cannot honour (e.g. `devices: 4` with 2 GPUs visible,
    `strategy: fsdp` without CUDA). A user error: also a `CotError`, so the runner reports it as one."""

    def __init__(self, message: str, *, step: int | None = None, cause: str = "bad config",
                 hint: str | None = None):
        TrainingError.__init__(self, message, step=step, cause=cause)  # RuntimeError does not chain on
        self.diagnostics, self.sources = [Diagnostic(None, message, hint=hint)], {}


STRATEGIES = ("ddp", "fsdp")


@dataclass
class TrainResult:
    losses: list[float]  # one per optimizer step since step 0 (resumed steps included)
    steps: int
    tokens: int  # non-pad tokens forwarded+backwarded in this process (not counting resumed steps)
    tokens_per_s: float
    time_s: float  # wall time of this process's training loop
    resumed_from: int = 0  # optimizer step of the checkpoint this run resumed from (0 = fresh)
    device: str = ""
    model_dir: str = ""
    truncated: int = 0  # sequences longer than cfg.max_len, cut to it
    model: Any = field(default=None, repr=False, compare=False)  # the trained model (not serialised)

    def to_json(self) -> dict:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "model"}


# ---- batching -------------------------------------------------------------------------------
def batch_order(lengths: Sequence[int], batch: int, seed: int, epoch: int) -> list[list[int]]:
    """Length-grouped batches of indices for one epoch: shuffle, sort each window of
    MEGABATCH*batch by length (so batches pad little), then shuffle the batch order.
    A pure function of (lengths, batch, seed, epoch)."""
    rng = random.Random(f"cotdsl-batches:{seed}:{epoch}")
    perm = list(range(len(lengths)))
    rng.shuffle(perm)
    batches: list[list[int]] = []
    window = batch * MEGABATCH
    for s in range(0, len(perm), window):
        chunk = sorted(perm[s:s + window], key=lambda i: -lengths[i])
        batches += [chunk[j:j + batch] for j in range(0, len(chunk), batch)]
    rng.shuffle(batches)
    return batches


def resample_groups(seqs: Sequence[Any]) -> list[list[int]] | None:
    """With several variants of a sequence (render's `train { resample: epoch }`: one per kept
    teacher sample, `variant` 0, 1, ...), the indices of `seqs` grouped per (example, task) in
    order of first appearance, each group in variant order; None when every sequence is variant 0
    (each one is then trained every epoch)."""
    if not any(getattr(s, "variant", 0) for s in seqs):
        return None
    groups: dict[tuple[str, int], list[int]] = {}
    for i, s in enumerate(seqs):
        groups.setdefault((s.ex_id, s.task), []).append(i)
    return [sorted(g, key=lambda i: seqs[i].variant) for g in groups.values()]


def epoch_pick(seqs: Sequence[Any], groups: list[list[int]], seed: int, epoch: int) -> list[int]:
    """The sequences epoch `epoch` trains on: one variant per group. Each example walks through
    its variants in an order drawn from (seed, example id), one per epoch, starting again after
    the last, so consecutive epochs see different kept rationales while there are several; every
    task of an example takes the same variant."""
    out = []
    for g in groups:
        order = list(range(len(g)))
        random.Random(f"cotdsl-resample:{seed}:{seqs[g[0]].ex_id}").shuffle(order)
        out.append(g[order[epoch % len(g)]])
    return out


def collate(seqs: Sequence[Any], pad_id: int, max_len: int) -> dict[str, torch.Tensor]:
    """Right-pad a micro-batch to its own longest sequence.

    Returns input_ids / attention_mask / loss_mask `[B, T]` (long) and weight `[B]` (float)."""
    rows = [(list(s.input_ids)[:max_len], list(s.loss_mask)[:max_len]) for s in seqs]
    T = max(len(ids) for ids, _ in rows)
    ids = torch.full((len(rows), T), pad_id, dtype=torch.long)
    att = torch.zeros((len(rows), T), dtype=torch.long)
    lm = torch.zeros((len(rows), T), dtype=torch.long)
    for i, (x, m) in enumerate(rows):
        ids[i, :len(x)] = torch.tensor(x)
        att[i, :len(x)] = 1
        lm[i, :len(m)] = torch.tensor(m)
    lm[:, 0] = 0  # the first token has no context to be predicted from
    w = torch.tensor([float(s.weight) for s in seqs])
    return {"input_ids": ids, "attention_mask": att, "loss_mask": lm * att, "weight": w}


def split_head(model):
    """(body, lm_head, softcap) when logits = lm_head(body(...).last_hidden_state) exactly, else None."""
    m = model.get_base_model() if hasattr(model, "get_base_model") else model
    cfg = getattr(m, "config", None)
    if cfg is None or getattr(cfg, "model_type", None) not in PLAIN_HEAD:
        return None
    head, body = m.get_output_embeddings(), getattr(m, "base_model", None)
    if head is None or body is None or body is m:
        return None
    return body, head


def micro_loss(model, split, b: dict[str, torch.Tensor], amp: torch.dtype | None, device: torch.device):
    """Weighted sum of supervised token losses of one micro-batch (the caller divides by the
    step's total weight) and the number of supervised tokens.

    Shapes: hidden `[B, T, D]` -> gathered `[N, D]` -> logits `[N, V]` with N = supervised tokens."""
    ids = b["input_ids"].to(device)
    att = b["attention_mask"].to(device)
    sel = b["loss_mask"][:, 1:].to(device).bool()  # position t predicts token t+1: [B, T-1]
    targets = ids[:, 1:][sel]  # [N]
    with dev.autocast(device, amp):
        if split is not None:
            body, head = split
            h = body(input_ids=ids, attention_mask=att, use_cache=False).last_hidden_state  # [B, T, D]
            logits = head(h[:, :-1][sel])  # [N, V]
        else:
            logits = model(input_ids=ids, attention_mask=att, use_cache=False).logits[:, :-1][sel]
    tok_loss = F.cross_entropy(logits.float(), targets, reduction="none")  # [N]
    w = b["weight"].to(device)[:, None].expand_as(sel)[sel]  # [N]
    return (tok_loss * w).sum(), int(sel.sum())


# ---- checkpoints ----------------------------------------------------------------------------
def _fingerprint(seqs, cfg, seed: int) -> str:
    c = dataclasses.asdict(cfg)
    if c.get("devices", 1) == 1:  # one process: same fingerprint as before `devices` existed
        c.pop("devices", None)
        c.pop("strategy", None)
    if c.get("resample", "first") == "first":  # likewise before `resample`
        c.pop("resample", None)
    h = hashlib.sha256(json.dumps({"cfg": c, "seed": seed}, sort_keys=True).encode())
    for s in seqs:
        h.update(json.dumps([list(s.input_ids), list(s.loss_mask), float(s.weight)]
                            + ([s.ex_id, s.task, s.variant] if getattr(s, "variant", 0) else [])).encode())
    return h.hexdigest()[:16]


def _trainable(model) -> dict[str, torch.Tensor]:
    # named_parameters() lists a tied weight once, so safetensors sees no shared storage.
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def _save_ckpt(root: Path, step: int, weights: dict[str, torch.Tensor], state: dict, fp: str) -> None:
    """Write `weights` (safetensors) and `state` (optimizer, scheduler, rng, losses) as step `step`."""
    from safetensors.torch import save_file

    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:06d}"
    tmp = root / f".tmp-{step:06d}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_file({n: p.detach().cpu().contiguous() for n, p in weights.items()}, str(tmp / "weights.safetensors"))
    torch.save({**state, "step": step}, tmp / "state.pt")
    (tmp / "meta.json").write_text(json.dumps({"fingerprint": fp, "step": step}))
    os.replace(tmp, final)  # atomic: a step-N dir is complete or absent
    for old in root.glob("step-*"):
        if old != final:
            shutil.rmtree(old, ignore_errors=True)


def _latest_ckpt(root: Path) -> Path | None:
    for tmp in root.glob(".tmp-*"):  # leftovers of a crash mid-write
        shutil.rmtree(tmp, ignore_errors=True)
    done = sorted(root.glob("step-*"))
    return done[-1] if done else None


def _read_ckpt(path: Path, fp: str, device) -> tuple[dict[str, torch.Tensor], dict]:
    from safetensors.torch import load_file

    meta = json.loads((path / "meta.json").read_text())
    if meta["fingerprint"] != fp:
        raise TrainingError(f"checkpoint {path} was written for different data/config/seed; "
                            "remove it or use another output directory", cause="stale checkpoint")
    weights = load_file(str(path / "weights.safetensors"), device=str(device))
    return weights, torch.load(path / "state.pt", weights_only=True, map_location=device)


def _load_finished(model, out_dir: Path) -> TrainResult:
    """Load a finished job's final weights into `model` (in place) and its stored result."""
    from safetensors.torch import load_file

    res = TrainResult(**json.loads((out_dir / "train.json").read_text()))
    sd = load_file(str(out_dir / "model" / "model.safetensors"))
    missing, unexpected = model.load_state_dict(sd, strict=False)
    # save_pretrained drops tied weights (lm_head = embeddings); those may be missing, nothing else.
    allp = dict(model.named_parameters(remove_duplicate=False))
    loaded = {allp[k].data_ptr() for k in sd if k in allp}
    bad = [k for k in missing if k not in allp or allp[k].data_ptr() not in loaded]
    if unexpected or bad:
        raise TrainingError(f"{out_dir / 'model'} does not fit this model (missing {bad[:3]}, "
                            f"unexpected {unexpected[:3]})", cause="stale model")
    res.model = model
    return res


# ---- the loop -------------------------------------------------------------------------------
def _is_oom(e: BaseException) -> bool:
    return isinstance(e, (torch.OutOfMemoryError, MemoryError)) or (
        isinstance(e, RuntimeError) and ("out of memory" in str(e) or "can't allocate memory" in str(e)))


def _make_optimizer(params, cfg, device):
    kw = dict(lr=cfg.lr, weight_decay=cfg.weight_decay)
    try:  # fused AdamW: one kernel for all params (0.5 s -> 0.1 s per step for SmolLM2 on CPU)
        return torch.optim.AdamW(params, fused=True, **kw)
    except (RuntimeError, TypeError):
        return torch.optim.AdamW(params, **kw)


def _wrap_lora(model, rank: int):
    from peft import LoraConfig, get_peft_model

    if rank < 1:
        raise TrainingError(f"LoRA rank must be >= 1, got {rank}", cause="bad config")
    import warnings

    with warnings.catch_warnings():  # peft asks transformers a deprecated question; nothing for the user to do
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        return get_peft_model(model, LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=0.0,
                                                task_type="CAUSAL_LM"))


# ---- several processes ----------------------------------------------------------------------
@dataclass(frozen=True)
class _Seq:
    """What a worker process gets of each training sequence (pickles without the caller's types)."""

    input_ids: list
    loss_mask: list
    weight: float
    ex_id: str = ""  # these three: which variant of which sequence (train { resample: epoch })
    task: int = 0
    variant: int = 0


@dataclass
class _Dist:
    """This process's place in a multi-process run (None in the loop means one process)."""

    accel: Any  # accelerate.Accelerator
    rank: int
    world: int
    fsdp: bool

    def all_sum(self, t: torch.Tensor) -> torch.Tensor:
        torch.distributed.all_reduce(t)
        return t

    def broadcast(self, obj):
        box = [obj]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, obj) -> list:
        out = [None] * self.world
        torch.distributed.all_gather_object(out, obj)
        return out


class _LossNet(torch.nn.Module):
    """The student and its loss as one module, so DDP/FSDP wrap the whole computation: the
    gathered-head path calls body and head separately, which has to happen inside the wrapper's
    forward for its hooks (gradient sync, parameter unsharding) to run."""

    def __init__(self, model, split, amp, device):
        super().__init__()
        self.model, self.split, self.amp, self.where = model, split, amp, device
        self._no_split_modules = getattr(model, "_no_split_modules", None)

    def forward(self, **b):
        return micro_loss(self.model, self.split, b, self.amp, self.where)[0]


def _rank_seed(seed: int, rank: int) -> int:
    return int(hashlib.sha256(f"cotdsl-rank:{seed}:{rank}".encode()).hexdigest()[:15], 16)


def _prepare(dist: _Dist, model, split, params, cfg, amp, device):
    """Wrap for DDP/FSDP -> (module to call, optimizer, trainable params as the optimizer sees them)."""
    net = _LossNet(model, split, amp, device)
    if dist.fsdp:  # FSDP2 through accelerate shards the params and re-points the optimizer at the shards
        opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        net, opt = dist.accel.prepare(net, opt)
        opt = getattr(opt, "optimizer", opt)
        return net, opt, [p for p in net.parameters() if p.requires_grad]
    net = dist.accel.prepare(net)  # DDP: same parameter objects, broadcast from rank 0
    return net, _make_optimizer(params, cfg, device), params


def _fsdp_full(net, model, opt=None):
    """Full (unsharded) trainable weights, all model weights and optimizer state of an FSDP model;
    a collective (every rank calls it), the tensors land on rank 0's CPU."""
    from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                         get_optimizer_state_dict)

    o = StateDictOptions(full_state_dict=True, cpu_offload=True)
    full = {k[len("model."):]: v for k, v in get_model_state_dict(net, options=o).items() if k.startswith("model.")}
    names = set(_trainable(model))
    osd = get_optimizer_state_dict(net, opt, options=o) if opt is not None else None
    return {k: v for k, v in full.items() if k in names}, full, osd


def _checkpoint(root: Path, step: int, model, net, opt, sched, losses, fp: str, dist: _Dist | None) -> None:
    if dist is None:
        _save_ckpt(root, step, _trainable(model), {"optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                                                   "rng": dev.rng_state(), "losses": losses}, fp)
        return
    rngs = dist.gather(dev.rng_state())  # each rank's dropout stream, restored per rank on resume
    if dist.fsdp:
        weights, _, osd = _fsdp_full(net, model, opt)
    elif dist.rank == 0:
        weights, osd = _trainable(model), opt.state_dict()
    if dist.rank == 0:
        _save_ckpt(root, step, weights, {"optimizer": osd, "scheduler": sched.state_dict(), "rng": rngs[0],
                                         "rng_ranks": rngs, "losses": losses}, fp)


def _resume(path: Path, fp: str, model, net, opt, sched, device, dist: _Dist | None) -> tuple[int, list[float]]:
    if dist is not None and dist.fsdp:
        from torch.distributed.checkpoint.state_dict import (StateDictOptions, set_model_state_dict,
                                                             set_optimizer_state_dict)

        weights, state = _read_ckpt(path, fp, "cpu")
        o = StateDictOptions(full_state_dict=True, strict=False)
        set_model_state_dict(net, {"model." + k: v for k, v in weights.items()}, options=o)
        set_optimizer_state_dict(net, opt, state["optimizer"], options=o)
    else:
        weights, state = _read_ckpt(path, fp, device)
        params = _trainable(model)
        if set(weights) != set(params):
            raise TrainingError(f"checkpoint {path} does not match the model's parameters", cause="stale checkpoint")
        with torch.no_grad():
            for n, p in params.items():
                p.copy_(weights[n])
        opt.load_state_dict(state["optimizer"])
    sched.load_state_dict(state["scheduler"])
    rng = state["rng_ranks"][dist.rank] if dist is not None else state["rng"]
    dev.set_rng_state({**rng, "torch": rng["torch"].cpu()})
    return int(state["step"]), list(state["losses"])


def _shard(batch_ids: list[int], seqs, dist: _Dist, pad_id: int, max_len: int):
    """This rank's share of one global micro-batch -> (collated batch, 1.0), or, when the batch has
    fewer sequences than ranks, a stand-in (its first sequence) with factor 0.0: every rank must
    run forward and backward for the gradient all-reduce, but the stand-in contributes nothing."""
    mine = batch_ids[dist.rank::dist.world]  # strided: batches are sorted by length, so shares balance
    if mine:
        return collate([seqs[i] for i in mine], pad_id, max_len), 1.0
    return collate([seqs[batch_ids[0]]], pad_id, max_len), 0.0


def _dist_worker(init: str, seqs, cfg, seed: int, out_dir: str, kind: str, compile: bool) -> dict | None:
    """One rank of a multi-process run (started by `distributed.launch` from `_train_distributed`)."""
    from accelerate import Accelerator

    from cotdsl.jobs import distributed

    blob = torch.load(init, map_location="cpu", weights_only=False)  # our own file: model + tokenizer
    model, tok = blob["model"], blob["tok"]
    kw: dict[str, Any] = {}
    if cfg.strategy == "fsdp":
        from accelerate import FullyShardedDataParallelPlugin

        names = list(getattr(model, "_no_split_modules", None) or [])
        kw["fsdp_plugin"] = FullyShardedDataParallelPlugin(
            fsdp_version=2, reshard_after_forward=True,
            auto_wrap_policy="transformer_based_wrap" if names else "size_based_wrap",
            transformer_cls_names_to_wrap=names or None)
    accel = Accelerator(cpu=kind == "cpu", mixed_precision="no", **kw)  # precision: our own autocast
    dist = _Dist(accel, accel.process_index, accel.num_processes, cfg.strategy == "fsdp")
    report = (lambda s, t, v: distributed.report(s, t, v)) if dist.rank == 0 else None
    res = _fit(model, tok, seqs, cfg, seed=seed, out_dir=Path(out_dir), progress=report, device=None,
               compile=compile, dist=dist)
    return res.to_json() if dist.rank == 0 else None


def _distributed_device(cfg, device: str | None) -> str:
    """"cpu" or "cuda" for a run on cfg.devices processes; TrainConfigError when this machine can't."""
    n = cfg.devices
    want = torch.device(device) if device else None
    if want is not None and want.index is not None:
        raise TrainConfigError(f"device {device!r} names a single device, but train has devices: {n}",
                               hint="choose the GPUs with CUDA_VISIBLE_DEVICES and pass device='cuda'")
    kind = want.type if want is not None else ("cuda" if torch.cuda.is_available() else "cpu")
    if kind == "cuda":
        have = torch.cuda.device_count()
        if have < n:
            vis = os.environ.get("CUDA_VISIBLE_DEVICES")
            raise TrainConfigError(
                f"train {{ devices: {n} }} needs {n} CUDA devices, but {have} "
                f"{'is' if have == 1 else 'are'} visible" + (f" (CUDA_VISIBLE_DEVICES={vis})" if vis is not None else ""),
                hint="lower `devices`, or make more GPUs visible; `cotdsl run --workers K` (K > 1) gives each "
                     "worker one GPU, so run multi-device training with --workers 1")
    elif kind == "cpu":
        if cfg.strategy == "fsdp":
            raise TrainConfigError("fsdp needs CUDA devices; use ddp",
                                   hint="`train { strategy: ddp }` (accelerate has no FSDP over gloo on CPU)")
    else:
        raise TrainConfigError(f"devices > 1 runs on CPU (gloo) or CUDA (nccl), not on {kind}")
    return kind


def _train_distributed(model, tok, seqs, cfg, *, seed: int, out_dir: Path, progress, device, compile) -> TrainResult:
    from cotdsl.jobs import distributed

    kind = _distributed_device(cfg, device)
    try:
        dev.autocast_dtype(cfg.precision, torch.device(kind))
    except ValueError as e:
        raise TrainingError(str(e), cause="bad config") from e
    if cfg.batch < cfg.devices:
        raise TrainConfigError(f"train {{ batch: {cfg.batch} }} is smaller than devices: {cfg.devices}",
                               hint="each process takes batch/devices sequences of every batch")
    if cfg.strategy == "fsdp" and cfg.lora:
        raise TrainConfigError("lora with strategy fsdp is not supported; use ddp",
                               hint="LoRA trains few parameters: DDP does not need to shard them")
    # the workers rebuild the caller's model and tokenizer from one file (exact: pickled as is)
    init = out_dir / ".dist-init.pt"
    tmp = out_dir / f".dist-init.pt.tmp{os.getpid()}"
    torch.save({"model": model, "tok": tok}, tmp)
    os.replace(tmp, init)
    plain = [_Seq(list(s.input_ids), list(s.loss_mask), float(s.weight), getattr(s, "ex_id", ""),
                  getattr(s, "task", 0), getattr(s, "variant", 0)) for s in seqs]
    try:
        distributed.launch(_dist_worker, cfg.devices, (str(init), plain, cfg, seed, str(out_dir), kind, compile),
                           on_report=progress, preload=(type(model).__module__,) + (("peft",) if cfg.lora else ()))
    finally:
        init.unlink(missing_ok=True)
    res = _load_finished(model, out_dir)  # rank 0's final weights, into the caller's object
    model.to(dev.pick_device(kind))
    model.eval()
    return res


# ---- the loop -------------------------------------------------------------------------------
def train(model, tok, seqs: Sequence[Any], cfg, *, seed: int, out_dir: Path,
          progress: Callable[[int, int, float], None] | None = None, device: str | None = None,
          compile: bool = False) -> TrainResult:
    """Fine-tune `model` (in place) on `seqs` with `cfg` (spec.TrainCfg); resumable from `out_dir`.

    Writes `out_dir/model/` (safetensors + config + tokenizer; LoRA adapters are merged first) and
    `out_dir/train.json`. If those exist already, loads the final weights into `model` and
    returns the stored result without training. `progress(step, total_steps, loss)` is called
    after every optimizer step. Raises TrainingError on NaN/inf loss, OOM or unusable inputs.

    `cfg.devices > 1` runs the job data-parallel in that many processes (`cfg.strategy` ddp, or
    fsdp on CUDA) and loads the result into `model`; everything else is as with one process.
    Raises TrainConfigError (a TrainingError and a CotError) when this machine cannot do that."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for left in out_dir.glob(".dist-init.pt*"):  # a multi-process run's hand-off file, if one was killed
        left.unlink(missing_ok=True)
    if (out_dir / "train.json").exists() and (out_dir / "model" / "model.safetensors").exists():
        return _load_finished(model, out_dir)
    if not seqs:
        raise TrainingError("no training sequences", cause="bad data")
    if cfg.batch < 1 or cfg.grad_accum < 1 or cfg.epochs <= 0 and not cfg.max_steps:
        raise TrainingError(f"bad training config {cfg}", cause="bad config")
    devices, strategy = int(getattr(cfg, "devices", 1)), getattr(cfg, "strategy", "ddp")
    if devices < 1 or strategy not in STRATEGIES:
        raise TrainingError(f"bad training config {cfg}: devices must be >= 1, strategy one of "
                            f"{', '.join(STRATEGIES)}", cause="bad config")
    if not any(sum(list(s.loss_mask)[1:cfg.max_len]) for s in seqs):
        raise TrainingError("no sequence has a supervised token (loss_mask all 0)", cause="bad data")
    if devices > 1:
        return _train_distributed(model, tok, seqs, cfg, seed=seed, out_dir=out_dir, progress=progress,
                                  device=device, compile=compile)
    return _fit(model, tok, seqs, cfg, seed=seed, out_dir=out_dir, progress=progress, device=device,
                compile=compile)


def _fit(model, tok, seqs, cfg, *, seed: int, out_dir: Path, progress, device: str | None, compile: bool,
         dist: _Dist | None = None) -> TrainResult:
    """The training loop: in this process (`dist` None), or as one rank of several."""
    lengths = [min(len(s.input_ids), cfg.max_len) for s in seqs]
    truncated = sum(len(s.input_ids) > cfg.max_len for s in seqs)
    device_ = dev.pick_device(device) if dist is None else dist.accel.device
    if device_.type == "cpu":  # accelerate says cpu:0, which e.g. safetensors does not take
        device_ = torch.device("cpu")
    rank = 0 if dist is None else dist.rank
    try:
        amp = dev.autocast_dtype(cfg.precision, device_)
    except ValueError as e:
        raise TrainingError(str(e), cause="bad config") from e
    dev.seed_everything(seed)
    model.to(device_)
    if cfg.lora:
        model = _wrap_lora(model, int(cfg.lora))
    model.train()
    split = split_head(model)
    if compile and split is not None:  # compile the body only; the gathered head is dynamic in N
        split = (torch.compile(split[0], dynamic=True), split[1])

    groups = resample_groups(seqs)  # None: every sequence every epoch; else one variant each per epoch

    def epoch_seqs(e: int) -> list[int]:
        return list(range(len(seqs))) if groups is None else epoch_pick(seqs, groups, seed, e)

    per_epoch = len(batch_order([lengths[i] for i in epoch_seqs(0)], cfg.batch, seed, 0))
    total_micro = math.ceil(cfg.epochs * per_epoch)
    total = int(cfg.max_steps) if cfg.max_steps else max(1, math.ceil(total_micro / cfg.grad_accum))
    params = [p for p in model.parameters() if p.requires_grad]
    net = None
    if dist is None:
        opt = _make_optimizer(params, cfg, device_)
    else:
        net, opt, params = _prepare(dist, model, split, params, cfg, amp, device_)
        dev.seed_everything(_rank_seed(seed, rank))  # dropout: a different stream per rank
    from transformers import get_linear_schedule_with_warmup

    sched = get_linear_schedule_with_warmup(opt, int(round(cfg.warmup * total)), total)

    fp = _fingerprint(seqs, cfg, seed)
    ckpt_root = out_dir / "ckpt"
    step, losses = 0, []
    latest = _latest_ckpt(ckpt_root) if rank == 0 and ckpt_root.exists() else None
    if dist is not None:
        latest = dist.broadcast(latest)
    if latest is not None:
        step, losses = _resume(latest, fp, model, net, opt, sched, device_, dist)
    resumed_from = step
    orders: dict[int, list[list[int]]] = {}
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)

    def micro_ids(m: int) -> list[int]:
        e, k = divmod(m, per_epoch)
        if e not in orders:
            orders.clear()
            pick = epoch_seqs(e)
            orders[e] = [[pick[i] for i in b] for b in batch_order([lengths[i] for i in pick], cfg.batch, seed, e)]
        return orders[e][k]

    tokens, t0 = 0, time.perf_counter()
    while step < total:
        ids = [micro_ids(step * cfg.grad_accum + a) for a in range(cfg.grad_accum)]
        batches = [collate([seqs[i] for i in ix], pad_id, cfg.max_len) for ix in ids]
        # the step's weighted supervised-token count, over the *global* batch on every rank
        denom = sum(float((b["loss_mask"][:, 1:] * b["weight"][:, None]).sum()) for b in batches)
        if dist is None:
            keep = [1.0] * len(batches)
        else:
            batches, keep = map(list, zip(*[_shard(ix, seqs, dist, pad_id, cfg.max_len) for ix in ids]))
        try:
            opt.zero_grad(set_to_none=True)
            step_loss = torch.zeros((), device=device_)
            for a, b in enumerate(batches):
                if denom <= 0:  # a step with no supervised tokens (or all weights 0) changes nothing
                    break
                if dist is None:
                    loss_sum, _ = micro_loss(model, split, b, amp, device_)
                    loss = loss_sum / denom
                    loss.backward()
                else:
                    # DDP averages gradients over ranks; x world makes that the sum of the shards'
                    # contributions, i.e. exactly the one-process gradient of the global loss
                    last = a == len(batches) - 1
                    with net.no_sync() if not (last or dist.fsdp) else contextlib.nullcontext():
                        loss = net(**b) / denom
                        (loss * (dist.world * keep[a])).backward()
                if keep[a]:
                    step_loss += loss.detach()
                    tokens += int(b["attention_mask"].sum())
            if dist is not None:
                dist.all_sum(step_loss)  # the global loss, identical on every rank
            value = float(step_loss)
            if not math.isfinite(value):
                raise TrainingError(f"loss is {value}", step=step + 1, cause="nan loss")
            if dist is not None and dist.fsdp:
                gnorm = dist.accel.clip_grad_norm_(params, MAX_GRAD_NORM)
            else:
                gnorm = torch.nn.utils.clip_grad_norm_(params, MAX_GRAD_NORM)
            if not torch.isfinite(gnorm):
                raise TrainingError(f"gradient norm is {float(gnorm)}", step=step + 1, cause="nan gradient")
            opt.step()
            sched.step()
        except TrainingError:
            raise
        except Exception as e:  # noqa: BLE001 - OOM shows up as several exception types
            if _is_oom(e):
                raise TrainingError(f"out of memory (batch {cfg.batch}, max_len {cfg.max_len}): {e}",
                                    step=step + 1, cause="out of memory") from e
            raise
        step += 1
        losses.append(value)
        if cfg.checkpoint_every and step % cfg.checkpoint_every == 0 and step < total:
            _checkpoint(ckpt_root, step, model, net, opt, sched, losses, fp, dist)
        if progress is not None:
            progress(step, total, value)
    elapsed = time.perf_counter() - t0

    model.eval()
    where = dev.describe(device_, amp)
    full = None
    if dist is not None:
        tokens = int(dist.all_sum(torch.tensor(tokens, dtype=torch.long, device=device_)))
        where = f"{dist.world} × {where}, {cfg.strategy} ({torch.distributed.get_backend()})"
        if dist.fsdp:
            _, full, _ = _fsdp_full(net, model)
        if rank != 0:
            return TrainResult(losses=losses, steps=step, tokens=tokens, tokens_per_s=0.0, time_s=elapsed)
    if cfg.lora:
        model = model.merge_and_unload()  # a plain model downstream stages can load without peft
    model_dir = out_dir / "model"
    tmp = out_dir / f".model-tmp{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    if full is not None:
        model.save_pretrained(tmp, state_dict=full, safe_serialization=True)
    else:
        model.save_pretrained(tmp, safe_serialization=True)
    tok.save_pretrained(tmp)
    shutil.rmtree(model_dir, ignore_errors=True)
    os.replace(tmp, model_dir)
    res = TrainResult(losses=losses, steps=step, tokens=tokens, tokens_per_s=tokens / max(elapsed, 1e-9),
                      time_s=elapsed, resumed_from=resumed_from, device=where,
                      model_dir=str(model_dir), truncated=truncated)
    atomic_write_json(out_dir / "train.json", res.to_json())
    shutil.rmtree(ckpt_root, ignore_errors=True)  # finished: the final model supersedes checkpoints
    res.model = model
    return res
