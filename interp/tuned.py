"""Tuned lens: tuned-lens's `TunedLens` translators, trained here with a short loop of our own.

tuned-lens 0.2.0's `Unembed(model)` autodetects the final norm through a code path that crashes
beside TransformerLens 4, and its training CLI is broken, so this module builds the `Unembed`
from the model's final norm and lm_head explicitly and trains the translators itself by
minimising KL(final-layer distribution || lens distribution) per layer. Saved as safetensors
(+ a JSON config) next to a checkpoint; the library's own `save` would pickle with `torch.save`.

Shapes: B examples, T tokens, L blocks, D d_model, V vocabulary, C choices.
"""
from __future__ import annotations

import copy
import hashlib
import json
import os
import random
import shutil
from pathlib import Path
from typing import Iterable

import torch
from torch import nn

from interp import bridge as _bridge
from interp.lens import LensResult, check_inputs, gather_positions, label_lens, readout

WEIGHTS = "tuned_lens.safetensors"
CONFIG = "tuned_lens.json"


def make_unembed(model: nn.Module):
    """tuned-lens `Unembed` with the final norm and unembedding passed explicitly (frozen copies)."""
    from tuned_lens.nn.unembed import Unembed

    unembed = Unembed.__new__(Unembed)  # skip __init__: its norm autodetect breaks beside TL 4
    nn.Module.__init__(unembed)
    unembed.final_norm = copy.deepcopy(_bridge.final_norm(model))
    unembed.unembedding = copy.deepcopy(_bridge.unembedding(model))
    unembed.requires_grad_(False)
    return unembed


def new_tuned_lens(model: nn.Module, bias: bool = True):
    """An untrained `TunedLens` (zero translators: equals the logit lens) for `model`."""
    from tuned_lens.nn.lenses import TunedLens, TunedLensConfig

    cfg = TunedLensConfig(base_model_name_or_path=str(getattr(model.config, "name_or_path", "")),
                          d_model=model.config.hidden_size,
                          num_hidden_layers=_bridge.num_layers(model), bias=bias)
    lens = TunedLens(make_unembed(model), cfg)
    return lens.to(_bridge.unembedding(model).weight.device)


def _batches(token_batches) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Normalise [B, T] tensors / (ids, mask) pairs / {"input_ids", "attention_mask"} dicts."""
    out = []
    for b in token_batches:
        if isinstance(b, dict):
            ids, mask = b["input_ids"], b.get("attention_mask")
        elif isinstance(b, (tuple, list)):
            ids, mask = b[0], (b[1] if len(b) > 1 else None)
        else:
            ids, mask = b, None
        ids = torch.as_tensor(ids, dtype=torch.long)
        if ids.dim() == 1:
            ids = ids.unsqueeze(0)
        if ids.dim() != 2 or ids.numel() == 0:
            raise ValueError("each token batch must be a non-empty [batch, seq] tensor of ids")
        mask = torch.ones_like(ids) if mask is None else torch.as_tensor(mask).long()
        if mask.shape != ids.shape:
            raise ValueError("attention_mask must have the shape of its input_ids")
        out.append((ids, mask))
    if not out:
        raise ValueError("no token batches to train/evaluate the tuned lens on")
    return out


def _layer_kls(model, lens, ids, mask, layers, *, backward: bool,
               max_tokens: int | None = None, gen: torch.Generator | None = None) -> torch.Tensor:
    """Mean KL(final || lens_i) over real tokens for each i in `layers` -> [len(layers)].

    With backward=True each layer's loss is backpropagated right away: translators are
    independent and hidden states are detached, so only one [N, V] graph is alive at a time.
    `max_tokens` keeps a random subset of the real tokens (drawn from `gen`): the [N, V]
    unembedding per layer dominates the cost, and a few hundred positions per step suffice.
    """
    dev = _bridge.unembedding(model).weight.device
    ids, mask = ids.to(dev), mask.to(dev)
    hs = _bridge.hidden_states(model, ids, mask)
    keep = mask.bool()
    if max_tokens is not None and int(keep.sum()) > max_tokens:
        real = keep.flatten().nonzero().squeeze(1)
        pick = real[torch.randperm(real.numel(), generator=gen)[:max_tokens].sort().values.to(real.device)]
        keep = torch.zeros_like(keep.flatten())
        keep[pick] = True
        keep = keep.view_as(mask)
    with torch.no_grad():
        logp = torch.log_softmax(_bridge.unembed(model, hs[-1][keep], normed=True).float(), -1)
        p = logp.exp()  # [N, V]
    kls = []
    for i in layers:
        h = hs[i][keep]  # [N, D]
        logq = torch.log_softmax(lens(h, i).float(), -1) if lens is not None else \
            torch.log_softmax(_bridge.unembed(model, h).float(), -1)
        kl = (p * (logp - logq)).sum(-1).mean()
        if backward:
            kl.backward()
        kls.append(kl.detach())
    return torch.stack(kls)


def train_tuned_lens(model, token_batches: Iterable, steps: int = 100, lr: float = 1e-3,
                     seed: int = 0, weight_decay: float = 1e-3, max_tokens: int | None = 128):
    """Train tuned-lens translators for `model` on `token_batches` -> `TunedLens`.

    token_batches: [B, T] id tensors, (ids, mask) pairs or tokenizer-output dicts (the student's
    training text). Each step draws one batch (order from `seed`) and takes an AdamW step on the
    sum over layers of KL(final-layer distribution || translated-layer distribution), on at most
    `max_tokens` randomly drawn real tokens of the batch (None = all). The model is not changed.
    `lens.train_log` holds the per-step mean KL.
    """
    if steps < 1 or lr <= 0:
        raise ValueError("steps must be >= 1 and lr > 0")
    batches = _batches(token_batches)
    torch.manual_seed(seed)
    rng = random.Random(seed)
    gen = torch.Generator().manual_seed(seed)
    lens = new_tuned_lens(model)
    params = [p for p in lens.layer_translators.parameters()]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    layers = range(_bridge.num_layers(model))
    log = []
    for _ in range(steps):
        ids, mask = batches[rng.randrange(len(batches))]
        opt.zero_grad(set_to_none=True)
        kls = _layer_kls(model, lens, ids, mask, layers, backward=True, max_tokens=max_tokens, gen=gen)
        opt.step()
        log.append(float(kls.mean()))
    lens.train_log = log
    lens.eval()
    return lens


def lens_kl(model, token_batches: Iterable, lens=None) -> torch.Tensor:
    """Mean KL(final || lens) per layer [L] over real tokens of `token_batches` (held-out text).

    lens=None measures the plain logit lens (= an untrained tuned lens).
    """
    batches = _batches(token_batches)
    layers = range(_bridge.num_layers(model))
    total, n = None, 0
    with torch.no_grad():
        for ids, mask in batches:
            kls = _layer_kls(model, lens, ids, mask, layers, backward=False)
            w = int(mask.sum())
            total = kls * w if total is None else total + kls * w
            n += w
    return total / n


def tuned_lens(model, input_ids, attention_mask, positions, target_ids, gold=0, *,
               lens) -> LensResult:
    """Tuned-lens readout with `logit_lens`'s signature/output (plus the trained `lens`).

    Rows 0..L-1 decode block inputs through the translators; row L is the model's own output.
    """
    ids, mask, pos, tgt, gold = check_inputs(model, input_ids, attention_mask, positions,
                                             target_ids, gold)
    L = _bridge.num_layers(model)
    if len(lens) != L:
        raise ValueError(f"tuned lens has {len(lens)} translators, model has {L} layers")
    h = gather_positions(_bridge.hidden_states(model, ids, mask), pos)  # [L+1, B, D]
    with torch.no_grad():
        rows = [lens(h[i], i) for i in range(L)]
        rows.append(_bridge.unembed(model, h[L], normed=True))  # HF's last state is normed
    return readout(torch.stack(rows), tgt, gold, "tuned")


def tuned_label_lens(model, contexts, choices, gold=0, *, lens, batch: int = 16) -> LensResult:
    """Whole-label tuned lens: `label_lens`'s signature/output (see interp.lens) with the trained
    `lens`: each label position's rows 0..L-1 decoded through the translators, summed over the
    label's tokens; row L is the model's own output (= rank evaluation's choice scores)."""
    return label_lens(model, contexts, choices, gold, lens=lens, batch=batch)


def save_tuned_lens(lens, directory, meta: dict | None = None) -> Path:
    """Write translators (safetensors) + config/meta (JSON) into `directory`; returns it."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in lens.layer_translators.state_dict().items()}
    save_file(state, str(directory / WEIGHTS))
    (directory / CONFIG).write_text(json.dumps({"config": lens.config.to_dict(),
                                                "meta": meta or {}}, indent=2))
    return directory


def load_tuned_lens(model, directory, strict: bool = True):
    """Load a lens saved by `save_tuned_lens` for `model`.

    strict: raise ValueError if the lens was trained for a different unembedding.
    """
    from safetensors.torch import load_file
    from tuned_lens.nn.lenses import TunedLens, TunedLensConfig

    directory = Path(directory)
    if not (directory / WEIGHTS).exists() or not (directory / CONFIG).exists():
        raise ValueError(f"no tuned lens in {directory} (expected {WEIGHTS} and {CONFIG})")
    saved = json.loads((directory / CONFIG).read_text())
    cfg = TunedLensConfig.from_dict(saved["config"])
    if cfg.d_model != model.config.hidden_size or cfg.num_hidden_layers != _bridge.num_layers(model):
        raise ValueError(f"tuned lens in {directory} is for d_model={cfg.d_model}, "
                         f"{cfg.num_hidden_layers} layers; the model differs")
    want_hash = cfg.unembed_hash
    lens = TunedLens(make_unembed(model), cfg)  # __init__ overwrites cfg.unembed_hash
    if strict and want_hash and want_hash != cfg.unembed_hash:
        raise ValueError(f"tuned lens in {directory} was trained for a different unembedding")
    lens.layer_translators.load_state_dict(load_file(str(directory / WEIGHTS)))
    lens.meta = saved.get("meta", {})
    lens.eval()
    return lens.to(_bridge.unembedding(model).weight.device)


def data_fingerprint(token_batches: Iterable) -> str:
    """sha256 over the token ids and masks of the batches (for cache keys)."""
    h = hashlib.sha256()
    for ids, mask in _batches(token_batches):
        h.update(str(tuple(ids.shape)).encode())
        h.update(ids.cpu().numpy().tobytes())
        h.update(mask.cpu().numpy().tobytes())
    return h.hexdigest()


def cached_tuned_lens(model, checkpoint_dir, token_batches: Iterable, steps: int = 100,
                      lr: float = 1e-3, seed: int = 0, max_tokens: int | None = 128):
    """Load the lens saved next to a checkpoint (`<checkpoint_dir>/tuned_lens/`) if it was
    trained with the same data, steps, lr, seed and unembedding; otherwise train and save it.
    """
    batches = _batches(token_batches)
    key = hashlib.sha256(json.dumps({
        "data": data_fingerprint(batches), "steps": steps, "lr": lr, "seed": seed, "max_tokens": max_tokens,
        "unembed": make_unembed(model).unembedding_hash()}, sort_keys=True).encode()).hexdigest()
    target = Path(checkpoint_dir) / "tuned_lens"
    if (target / CONFIG).exists():
        meta = json.loads((target / CONFIG).read_text()).get("meta", {})
        if meta.get("key") == key:
            return load_tuned_lens(model, target)
    lens = train_tuned_lens(model, batches, steps=steps, lr=lr, seed=seed, max_tokens=max_tokens)
    tmp = target.with_name(f"tuned_lens.tmp{os.getpid()}")
    save_tuned_lens(lens, tmp, meta={"key": key, "steps": steps, "lr": lr, "seed": seed,
                                     "final_train_kl": lens.train_log[-1]})
    if target.exists():
        shutil.rmtree(target)
    os.replace(tmp, target)  # atomic: a reader never sees half a lens
    return lens
