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


RECIPES = ("fit", "sgd")
# Defaults per recipe: (steps, lr). "sgd" is the recipe before the closed-form fit (zero init,
# 100 AdamW steps at 1e-3); "fit" starts from the least-squares fit and needs far fewer steps
# (docs/interp.md "Tuned lens: training recipes" has the measured comparison).
RECIPE_DEFAULTS = {"fit": (20, 3e-4), "sgd": (100, 1e-3)}
FIT_TOKENS, RIDGE = 4096, 1e-4  # the fit's defaults (pool of real tokens, relative ridge)


def _states(model, ids: torch.Tensor, mask: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
    """One body forward -> (hs, r): hs[i] [B, T, D] the residual stream entering block i
    (i = 0..L-1, as `bridge.hidden_states`), r [B, T, D] the last block's output *before* the
    final norm (what a translator's output should point along: the norm then makes it the
    model's own final state). r is read by a hook on the final norm's input."""
    seen = []
    hook = _bridge.final_norm(model).register_forward_hook(lambda _m, args, _o: seen.append(args[0].detach()))
    try:
        hs = _bridge.hidden_states(model, ids, mask)
    finally:
        hook.remove()
    if len(seen) != 1:
        raise ValueError(f"the final norm of {type(model).__name__} ran {len(seen)} times in one forward")
    return list(hs[:-1]), seen[0]


def collect_states(model, token_batches: Iterable, max_tokens: int | None = None,
                   seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Hidden states of real tokens -> (H [L, N, D], R [N, D]): H[i] enters block i, R is the
    pre-norm final residual (see `_states`). Batches run in a seeded order until at least
    `max_tokens` real tokens are collected (None = every batch): the body forward is the cost,
    so a pool only runs the batches it needs. fp32, on the unembedding's device."""
    batches = _batches(token_batches)
    order = list(range(len(batches)))
    random.Random(seed).shuffle(order)
    dev = _bridge.unembedding(model).weight.device
    hs_all, r_all, n = [], [], 0
    for b in order:
        ids, mask = batches[b]
        keep = mask.to(dev).bool()
        hs, r = _states(model, ids.to(dev), mask.to(dev))
        hs_all.append(torch.stack([h[keep] for h in hs]).float())  # [L, n_b, D]
        r_all.append(r[keep].float())
        n += int(keep.sum())
        if max_tokens is not None and n >= max_tokens:
            break
    return torch.cat(hs_all, 1), torch.cat(r_all, 0)


def fit_translators(lens, H: torch.Tensor, R: torch.Tensor, ridge: float = RIDGE) -> None:
    """Closed-form translators: for each layer i, (A_i, b_i) minimising
    sum_t w_t ||h_t + A_i h_t + b_i - r_t||^2 + lam_i ||A_i||^2 over the tokens t of the pool,
    written into `lens.layer_translators[i]` (weight A_i [D, D], bias b_i [D]).

    H [L, N, D] block inputs, R [N, D] pre-norm final residual (`collect_states`).
    Why r (not the model's normed final state): the translator's output goes through the final
    norm, so pointing it along r reproduces the model's own output distribution exactly.
    w_t = 1 / mean(r_t^2): the norm forgets each token's scale, so every token counts by its
    relative error (a few huge-norm positions would otherwise decide the fit). Weighted least
    squares still recovers an exact affine relation r = (I + A) h + b for any weights.
    lam_i = ridge * trace of the weighted, centred Gram matrix / D: scale-free shrinkage towards
    A_i = 0 (the logit lens). Solved in float64 (D x D systems: cheap next to one unembedding).
    """
    L, N, D = H.shape
    if len(lens) != L or R.shape != (N, D):
        raise ValueError(f"states [{L}, {N}, {D}] / [{tuple(R.shape)}] do not fit a lens of {len(lens)} layers")
    r = R.double()
    w = 1.0 / r.pow(2).mean(-1).clamp_min(1e-12)  # [N]
    w = w / w.sum()
    r_mean = (w[:, None] * r).sum(0)
    for i in range(L):
        h = H[i].double()
        h_mean = (w[:, None] * h).sum(0)
        hc, yc = h - h_mean, (r - r_mean) - (h - h_mean)  # centred input and residual target
        hw = hc * w[:, None]
        gram = hw.T @ hc  # [D, D]
        lam = ridge * float(gram.diagonal().sum()) / D
        A = torch.linalg.solve(gram + lam * torch.eye(D, dtype=gram.dtype, device=gram.device), hw.T @ yc).T  # [D, D]
        b = (r_mean - h_mean) - A @ h_mean
        tr = lens.layer_translators[i]
        with torch.no_grad():
            tr.weight.copy_(A.to(tr.weight.dtype))
            if tr.bias is not None:
                tr.bias.copy_(b.to(tr.bias.dtype))


def _kl_steps(model, lens, H: torch.Tensor, R: torch.Tensor, steps: int, lr: float, weight_decay: float,
              max_tokens: int | None, gen: torch.Generator, progress=None) -> list[float]:
    """AdamW on sum over layers of KL(final || lens_i) on cached states: each step draws
    `max_tokens` tokens of the pool (None = all) -> per-step mean KL."""
    params = list(lens.layer_translators.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    norm = _bridge.final_norm(model)
    N, log = R.shape[0], []
    for _ in range(steps):
        pick = torch.randperm(N, generator=gen)[:max_tokens] if max_tokens is not None and N > max_tokens \
            else torch.arange(N)
        pick = pick.to(R.device)
        with torch.no_grad():
            logp = torch.log_softmax(_bridge.unembed(model, norm(R[pick]), normed=True).float(), -1)
            p = logp.exp()  # [n, V]
        opt.zero_grad(set_to_none=True)
        kls = []
        for i in range(len(lens)):
            logq = torch.log_softmax(lens(H[i, pick], i).float(), -1)
            kl = (p * (logp - logq)).sum(-1).mean()
            kl.backward()  # translators are independent: one [n, V] graph alive at a time
            kls.append(float(kl.detach()))
        opt.step()
        log.append(sum(kls) / len(kls))
        if progress is not None:
            progress(len(log), steps)
    return log


def train_tuned_lens(model, token_batches: Iterable, steps: int | None = None, lr: float | None = None,
                     seed: int = 0, weight_decay: float = 1e-3, max_tokens: int | None = 128,
                     recipe: str = "fit", fit_tokens: int | None = FIT_TOKENS, ridge: float = RIDGE,
                     progress=None):
    """Train tuned-lens translators for `model` on `token_batches` -> `TunedLens`.

    token_batches: [B, T] id tensors, (ids, mask) pairs or tokenizer-output dicts (the student's
    training text). The model is not changed. `lens.train_log` holds the per-step mean KL over
    layers (training tokens; `steps` entries, none for "fit" with steps=0).
    progress: called as progress(step, steps) after each step (e.g. a bench that cuts its quiet
    windows between steps).

    recipe "fit" (default): run the body once over enough batches for `fit_tokens` real tokens
    (None = all), fit every translator in closed form (`fit_translators`, `ridge`), then take
    `steps` AdamW steps (default 20, lr 3e-4) of the sum over layers of KL(final || translated
    layer) on `max_tokens` tokens drawn from those cached states per step. Why: the unembedding
    ([tokens, V] forward and backward per layer) is the cost of every step, and the fit alone
    already lands near where the SGD loop ends (docs/interp.md has the figures); a small lr
    keeps the steps from undoing the fit in the late layers, whose KL is smallest.
    recipe "sgd" (the recipe before): zero translators, `steps` (default 100) AdamW steps (lr 1e-3),
    each on one batch drawn in a seeded order (body forward every step), `max_tokens` random
    real tokens of it (None = all).
    """
    if recipe not in RECIPES:
        raise ValueError(f"unknown tuned-lens recipe {recipe!r}; choose one of {', '.join(RECIPES)}")
    d_steps, d_lr = RECIPE_DEFAULTS[recipe]
    steps = d_steps if steps is None else steps
    lr = d_lr if lr is None else lr
    if steps < (0 if recipe == "fit" else 1) or lr <= 0:
        raise ValueError("steps must be >= 1 (>= 0 for recipe 'fit') and lr > 0")
    batches = _batches(token_batches)
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    lens = new_tuned_lens(model)
    if recipe == "fit":
        H, R = collect_states(model, batches, fit_tokens, seed)
        fit_translators(lens, H, R, ridge)
        lens.train_log = _kl_steps(model, lens, H, R, steps, lr, weight_decay, max_tokens, gen, progress)
        lens.eval()
        return lens
    rng = random.Random(seed)
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
        if progress is not None:
            progress(len(log), steps)
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


def cached_tuned_lens(model, checkpoint_dir, token_batches: Iterable, steps: int | None = None,
                      lr: float | None = None, seed: int = 0, max_tokens: int | None = 128,
                      recipe: str = "fit", fit_tokens: int | None = FIT_TOKENS, ridge: float = RIDGE):
    """Load the lens saved next to a checkpoint (`<checkpoint_dir>/tuned_lens/`) if it was
    trained with the same data, recipe and its settings, seed and unembedding; otherwise train
    it (`train_tuned_lens`, same arguments) and save it.
    """
    batches = _batches(token_batches)
    if recipe not in RECIPES:
        raise ValueError(f"unknown tuned-lens recipe {recipe!r}; choose one of {', '.join(RECIPES)}")
    d_steps, d_lr = RECIPE_DEFAULTS[recipe]
    steps, lr = (d_steps if steps is None else steps), (d_lr if lr is None else lr)
    settings = {"steps": steps, "lr": lr, "seed": seed, "max_tokens": max_tokens}
    if recipe != "sgd":  # the "sgd" key is the key lenses had before recipes: they stay valid
        settings.update(recipe=recipe, fit_tokens=fit_tokens, ridge=ridge)
    key = hashlib.sha256(json.dumps({
        "data": data_fingerprint(batches), **settings,
        "unembed": make_unembed(model).unembedding_hash()}, sort_keys=True).encode()).hexdigest()
    target = Path(checkpoint_dir) / "tuned_lens"
    if (target / CONFIG).exists():
        meta = json.loads((target / CONFIG).read_text()).get("meta", {})
        if meta.get("key") == key:
            return load_tuned_lens(model, target)
    lens = train_tuned_lens(model, batches, steps=steps, lr=lr, seed=seed, max_tokens=max_tokens, recipe=recipe,
                            fit_tokens=fit_tokens, ridge=ridge)
    tmp = target.with_name(f"tuned_lens.tmp{os.getpid()}")
    save_tuned_lens(lens, tmp, meta={"key": key, **settings, "recipe": recipe,
                                     "final_train_kl": lens.train_log[-1] if lens.train_log else None})
    if target.exists():
        shutil.rmtree(target)
    os.replace(tmp, target)  # atomic: a reader never sees half a lens
    return lens
