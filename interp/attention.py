"""Attention to the rationale: how much the label position attends to rationale vs prompt tokens.

Shapes: B examples, L blocks, H attention heads (query heads), K named spans (+1 for "other"),
T tokens.

For a rationale-first input (prompt, then the rationale, then whatever precedes the label, e.g.
"\\nSo the answer is:"), the label position is the last context token: the position whose
next-token distribution emits the label. Its attention pattern in block l, head h is a
distribution over the positions 0..t (causal), so the masses it puts on the named spans and on
every other token ("other": the separator, the answer prefix, the label position itself, a BOS
token) add up to 1.

The pattern comes from a TransformerLens bridge hook (`blocks.{l}.attn.hook_pattern`, the
post-softmax pattern [R, H, T, T]), keeping only the label position's row of each layer, so
memory stays [B, H, T] per layer instead of HF's `output_attentions` [B, H, T, T] for every
layer. Tests check the masses against HF's own eager-attention `output_attentions`.

Averages over examples come with percentile bootstrap confidence intervals (examples resampled
with replacement, `n_boot` draws, seeded).

Nothing here imports from `cotdsl/`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch

from interp import bridge as _bridge
from interp.lens import pad_right


@dataclass
class AttentionResult:
    """Attention mass of the label position on each span, per example, layer and head.

    mass     [B, L, H, K+1] share of the label position's attention on span k (last column:
             every other token); sums to 1 over the last axis.
    names    the K+1 span names, "other" last.
    lengths  [B, K+1] tokens per span (for `per_token`).
    """

    mass: torch.Tensor
    names: tuple[str, ...]
    lengths: torch.Tensor
    meta: dict = field(default_factory=dict)

    def span(self, name: str) -> torch.Tensor:
        """[B, L, H] mass on one span."""
        if name not in self.names:
            raise ValueError(f"no span {name!r}; spans are {', '.join(self.names)}")
        return self.mass[..., self.names.index(name)]

    def per_token(self) -> torch.Tensor:
        """[B, L, H, K+1] mass divided by the span's length (mean attention per token; NaN for
        an empty span)."""
        n = self.lengths.to(self.mass.dtype)[:, None, None, :]
        return self.mass / n.masked_fill(n == 0, float("nan"))

    def ci(self, by: str = "layer", level: float = 0.95, n_boot: int = 2000, seed: int = 0):
        """(mean, lo, hi) over examples with a percentile bootstrap CI.

        by="layer": [L, K+1] (each example's mass averaged over heads first); by="head":
        [L, H, K+1]."""
        if by not in ("layer", "head"):
            raise ValueError('by must be "layer" or "head"')
        x = self.mass.mean(2) if by == "layer" else self.mass
        return bootstrap_mean_ci(x, level=level, n_boot=n_boot, seed=seed)


def bootstrap_mean_ci(x: torch.Tensor, level: float = 0.95, n_boot: int = 2000, seed: int = 0):
    """Mean over the first axis of x [B, ...] and its percentile bootstrap CI -> (mean, lo, hi),
    each [...]. Resamples the B rows with replacement `n_boot` times (torch generator `seed`);
    one [n_boot, B] matrix of draw counts times x, so memory is n_boot x prod(...)."""
    if not 0 < level < 1:
        raise ValueError(f"level must lie in (0, 1), not {level!r}")
    B = x.shape[0]
    flat = x.reshape(B, -1).double()
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, B, (n_boot, B), generator=g)
    ones = torch.ones(n_boot, B, dtype=torch.float64)
    counts = torch.zeros(n_boot, B, dtype=torch.float64).scatter_add_(1, idx, ones)  # draws of each row
    means = counts @ flat / B  # [n_boot, prod]
    q = torch.tensor([(1 - level) / 2, (1 + level) / 2], dtype=torch.float64)
    lo, hi = torch.quantile(means, q, dim=0)
    shape = x.shape[1:]
    return flat.mean(0).reshape(shape).float(), lo.reshape(shape).float(), hi.reshape(shape).float()


def _check_spans(contexts, spans):
    ctxs = [[int(t) for t in c] for c in contexts]
    if not ctxs or len(spans) != len(ctxs):
        raise ValueError("need one dict of spans per context (and at least one context)")
    if any(not c for c in ctxs):
        raise ValueError("a context is empty")
    names = tuple(spans[0])
    if not names or "other" in names:
        raise ValueError('spans need at least one name, and "other" is reserved for the rest')
    for b, (c, sp) in enumerate(zip(ctxs, spans)):
        if tuple(sp) != names:
            raise ValueError(f"example {b} names spans {tuple(sp)}, example 0 {names}")
        seen = torch.zeros(len(c), dtype=torch.bool)
        for name, (a, e) in sp.items():
            if not 0 <= a <= e <= len(c):
                raise ValueError(f"example {b}: span {name!r} = ({a}, {e}) is not within its {len(c)} tokens")
            if seen[a:e].any():
                raise ValueError(f"example {b}: span {name!r} overlaps another span")
            seen[a:e] = True
    return ctxs, names


def rationale_attention(model, contexts, spans: Sequence[dict], *, tl_bridge=None, batch: int = 16) -> AttentionResult:
    """Attention mass of each context's last position (the label position) on named token spans.

    contexts: B token-id sequences (everything before the label); spans: per example
    {name: (start, end)} token ranges, the same names in the same order for every example (e.g.
    {"prompt": (0, 12), "rationale": (12, 40)}; `rationale_inputs` makes both from text). Tokens
    in no span count as "other". Builds a bridge around a copy of `model` unless `tl_bridge`.
    """
    ctxs, names = _check_spans(contexts, spans)
    tl_bridge = tl_bridge if tl_bridge is not None else _bridge.build_bridge(model)
    L = tl_bridge.cfg.n_layers
    dev = tl_bridge.unembed.original_component.weight.device
    out = []
    for s in range(0, len(ctxs), max(1, batch)):
        chunk = ctxs[s:s + batch]
        ids, mask = (t.to(dev) for t in pad_right(chunk, 0))
        rows = torch.arange(len(chunk), device=dev)
        pos = mask.sum(1) - 1
        store: dict = {}

        def keeper(i):
            def keep(act, hook):  # act [R, H, T, T]: keep the label position's row
                store[i] = act[rows, :, pos, :].detach().double()
                return act
            return keep

        with torch.no_grad():
            tl_bridge.run_with_hooks(ids, attention_mask=mask, logits_to_keep=1,
                                     fwd_hooks=[(f"blocks.{i}.attn.hook_pattern", keeper(i)) for i in range(L)])
        # Span membership [R, K+1, T]; "other" = every real token in no named span.
        T = ids.shape[1]
        member = torch.zeros(len(chunk), len(names) + 1, T, dtype=torch.float64, device=dev)
        for b, sp in enumerate(spans[s:s + batch]):
            for k, (a, e) in enumerate(sp.values()):
                member[b, k, a:e] = 1.0
        member[:, -1] = mask.double() - member[:, :-1].sum(1)
        pat = torch.stack([store[i] for i in range(L)], 1)  # [R, L, H, T]
        out.append(torch.einsum("blht,bkt->blhk", pat, member).float().cpu())
    lengths = torch.tensor([[e - a for a, e in sp.values()] for sp in spans])
    lengths = torch.cat([lengths, (torch.tensor([len(c) for c in ctxs]) - lengths.sum(1))[:, None]], 1)
    return AttentionResult(mass=torch.cat(out), names=names + ("other",), lengths=lengths,
                           meta={"arch": type(model).__name__})


def rationale_inputs(tok, prompts: Sequence[str], rationales: Sequence[str], suffix: str = "\nSo the answer is:",
                     sep: str = " ") -> dict:
    """Tokenise prompt + sep + rationale + suffix -> {"contexts": B id lists, "spans": B dicts
    {"prompt": (a, b), "rationale": (c, d)}}, ready for `rationale_attention(model, **inputs)`.

    A token belongs to the segment it shares most characters with (prompt, sep + rationale's
    words, suffix); special tokens (no characters, e.g. BOS) and the suffix count as "other".
    Needs a fast tokenizer (character offsets).
    """
    if not getattr(tok, "is_fast", False):
        raise ValueError("rationale_inputs needs a fast tokenizer (character offsets of tokens)")
    if len(prompts) != len(rationales) or not prompts:
        raise ValueError("need one rationale per prompt (and at least one prompt)")
    contexts, spans = [], []
    for prompt, rat in zip(prompts, rationales):
        text = prompt + sep + rat + suffix
        bounds = {"prompt": (0, len(prompt)), "rationale": (len(prompt), len(prompt) + len(sep) + len(rat))}
        enc = tok(text, return_offsets_mapping=True)
        owner = []
        for a, b in enc["offset_mapping"]:
            best, most = None, 0
            for name, (x, y) in bounds.items():
                ov = min(b, y) - max(a, x)
                if ov > most:
                    best, most = name, ov
            owner.append(best)
        sp = {}
        for name in bounds:
            idx = [i for i, o in enumerate(owner) if o == name]
            if idx and idx != list(range(idx[0], idx[-1] + 1)):
                raise ValueError(f"the {name} tokens of {text!r} are not contiguous")
            sp[name] = (idx[0], idx[-1] + 1) if idx else (0, 0)
        contexts.append(list(enc["input_ids"]))
        spans.append(sp)
    return {"contexts": contexts, "spans": spans}
