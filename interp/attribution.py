"""Key tokens by Integrated Gradients: which rationale words drive the gold label's log-prob.

For each item the scored text is ``context + rationale + sep`` followed by ``" " + label``
(lm-evaluation-harness style: the continuation starts with a space). The target
f(x) = sum of log p(label token_i | everything before it) under the scorer model.

Attribution: layer Integrated Gradients on ``model.get_input_embeddings()``'s output, as captum
``LayerIntegratedGradients`` computes it (Gauss-Legendre rule). The default ``method="fast"`` is a
hand-written equivalent that runs the fixed prefix once (KV cache) and the steps of several
items per forward; ``method="captum"`` calls captum one item at a time (the reference; the tests
hold the two equal to 1e-4 of the largest score).

* The path moves **only the rationale tokens' embeddings**. The baseline equals the input
  embedding at every other position, so those positions get exactly zero attribution and the
  question, separator and label stay fixed along the path. (Attributing all tokens and slicing
  would also spend the completeness budget on the question, which is not what a key-token
  ranking of the rationale is about.)
* Baselines for the rationale positions: ``"zero"`` (the zero vector), ``"pad"`` / ``"unk"``
  (the embedding of the tokenizer's pad / unk token, repeated).
* Token scores are the attribution summed over the embedding dimension; word scores aggregate
  the sub-word tokens to the rationale's whitespace words through the tokenizer's character
  offsets (a token overlapping several words is split by character overlap, a whitespace-only
  token goes to the next word), so the word scores sum to the token scores exactly.
* captum's convergence delta = sum(attributions) - (f(x) - f(baseline)); we also report
  ``rel_delta = |delta| / |f(x) - f(baseline)|``. On real LMs this is often large (the label
  log-prob can jump several nats within a tiny step of alpha), so a ranking should be validated
  against ground truth rather than trusted because of completeness. See docs/attribution.md.

This module imports nothing from ``cotdsl``; it works on any HF causal LM with a fast tokenizer.
"""
from __future__ import annotations

import copy
import inspect
import math
import re
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Sequence

import torch

BASELINES = ("zero", "pad", "unk")
# Token id placed at rationale positions of the baseline ids when the baseline is the zero
# vector: captum's LayerIG takes baselines in *input* (id) space, so a hook on the embedding
# turns this sentinel into a zero embedding (see `_zero_sentinel_hooks`).
_ZERO_SENTINEL = -1


@dataclass(frozen=True)
class IGItem:
    """One item to attribute: the question/prompt text, the rationale, and the gold label text."""

    context: str
    rationale: str
    label: str


# An item is *degenerate* when |f(x) - f(baseline)| < DEGENERATE_GAP nats: moving the rationale
# from the baseline to its real embeddings barely changes the label's log-prob (a factor of at
# most e^0.001 ~ 1.001 on its probability), so by completeness the word scores sum to ~0 and
# their order is set by rounding and the discretisation error, not by the rationale.
DEGENERATE_GAP = 1e-3
FALLBACKS = ("order", "random")


@dataclass
class IGResult:
    """Attribution of one item. Lists of tokens are the rationale's tokens only.

    `word_scores[i]` is the attribution of `words[i]` (the rationale's whitespace words, in
    order) — the ranking format `keytokens(rationale, k, by: ig)` consumes.
    `token_word[j]` is the index of the word that received most of token j's score.
    `rel_delta` is None when f(x) == f(baseline) (the ratio is undefined).
    `gap` = f(x) - f(baseline); `degenerate` is True when |gap| < the threshold the scores were
    computed with (`ig_word_scores(min_gap=...)`, default DEGENERATE_GAP = 1e-3 nats): the
    ranking carries no signal and `top_words(k, fallback=...)` can replace it by a stated rule.
    Results saved before these fields existed get them from f_x, f_baseline and DEGENERATE_GAP.
    """

    words: list[str]
    word_scores: list[float]
    tokens: list[str]
    token_scores: list[float]
    token_word: list[int]
    f_x: float
    f_baseline: float
    delta: float
    rel_delta: float | None
    baseline: str
    steps: int
    meta: dict = field(default_factory=dict)
    gap: float | None = None
    degenerate: bool | None = None

    def __post_init__(self):
        if self.gap is None:
            self.gap = self.f_x - self.f_baseline
        if self.degenerate is None:
            self.degenerate = bool(abs(self.gap) < DEGENERATE_GAP)

    def top_words(self, k: int, fallback: str | None = None, seed: int = 0) -> list[int]:
        """Indices of the k highest-scoring words (ties broken by position), in rank order.

        fallback applies to degenerate items only: None ranks by the scores anyway; "order"
        takes the first k words of the rationale; "random" a random k (seeded by `seed`)."""
        if fallback is not None and fallback not in FALLBACKS:
            raise ValueError(f"unknown fallback {fallback!r}; choose one of {', '.join(FALLBACKS)} or None")
        n = len(self.words)
        if self.degenerate and fallback == "order":
            return list(range(min(k, n)))
        if self.degenerate and fallback == "random":
            import random

            return random.Random(seed).sample(range(n), min(k, n))
        order = sorted(range(n), key=lambda i: (-self.word_scores[i], i))
        return order[:k]

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "IGResult":
        return cls(**d)


def word_spans(text: str) -> list[tuple[int, int]]:
    """Character spans of the whitespace-separated words of `text` (same units as str.split)."""
    return [m.span() for m in re.finditer(r"\S+", text)]


def token_word_weights(offsets: Sequence[tuple[int, int]], text: str, start: int, end: int) -> torch.Tensor:
    """How each token's score is shared among the words of text[start:end].

    offsets: character (begin, end) of each token in `text`. Returns [n_tokens, n_words] with
    rows summing to 1 for tokens that overlap [start, end) and 0 elsewhere.
    """
    spans = [(a + start, b + start) for a, b in word_spans(text[start:end])]
    w = torch.zeros(len(offsets), len(spans), dtype=torch.float64)
    for j, (a, b) in enumerate(offsets):
        a, b = max(a, start), min(b, end)
        if b <= a:
            continue  # outside the rationale (or a zero-width special token)
        for i, (wa, wb) in enumerate(spans):
            ov = min(b, wb) - max(a, wa)
            if ov > 0:
                w[j, i] = ov
        if w[j].sum() == 0 and spans:
            # Whitespace-only token inside the rationale: byte-level BPE glues spaces to the
            # *next* word (" word"), so give it to the next word (or the last one at the end).
            nxt = next((i for i, (wa, _) in enumerate(spans) if wa >= b), len(spans) - 1)
            w[j, nxt] = 1.0
        elif spans:
            w[j] /= w[j].sum()
    return w


def _encode(tok, item: IGItem, sep: str):
    """-> (ids [seq] without the last label token, label ids [L], rationale token mask [seq],
    word weights [seq, n_words], rationale token strings)."""
    if not getattr(tok, "is_fast", False):
        raise ValueError("ig_word_scores needs a fast tokenizer (character offsets of tokens)")
    if not item.rationale.strip():
        raise ValueError("IGItem.rationale is empty: there is nothing to attribute")
    if not item.label.strip():
        raise ValueError("IGItem.label is empty: there is no target log-prob")
    joiner = "" if (not item.context or item.context[-1].isspace() or item.rationale[0].isspace()) else " "
    prefix = item.context + joiner + item.rationale + sep
    r0 = len(item.context) + len(joiner)
    r1 = r0 + len(item.rationale)
    enc = tok(prefix, return_offsets_mapping=True)
    ids = list(enc["input_ids"])
    offsets = [tuple(o) for o in enc["offset_mapping"]]
    # Encode the label separately so no token straddles the prompt/label boundary.
    label_ids = tok(" " + item.label.strip(), add_special_tokens=False)["input_ids"]
    weights = token_word_weights(offsets, prefix, r0, r1)
    rmask = weights.sum(dim=1) > 0
    if not bool(rmask.any()):
        raise ValueError("no token of the rationale survived tokenisation")
    full = torch.tensor(ids + label_ids[:-1], dtype=torch.long)
    pad = torch.zeros(len(label_ids) - 1, dtype=torch.bool)
    rmask = torch.cat([rmask, pad])
    weights = torch.cat([weights, torch.zeros(len(label_ids) - 1, weights.shape[1], dtype=weights.dtype)])
    rtoks = [prefix[a:b] for (a, b), m in zip(offsets, rmask.tolist()) if m]
    return full, torch.tensor(label_ids, dtype=torch.long), rmask, weights, rtoks


def _baseline_id(tok, baseline: str) -> int:
    if baseline == "zero":
        return _ZERO_SENTINEL
    tid = tok.pad_token_id if baseline == "pad" else tok.unk_token_id
    if tid is None:
        raise ValueError(f"baseline {baseline!r} needs a tokenizer with a {baseline} token; use 'zero'")
    return int(tid)


@contextmanager
def _zero_sentinel_hooks(emb: torch.nn.Module):
    """Make the embedding map `_ZERO_SENTINEL` ids to the zero vector.

    Registered before captum's own hook, so captum records the zeroed output as the baseline
    layer activation; real ids pass through unchanged.
    """
    state: dict = {}

    def pre(_mod, args):
        ids = args[0]
        state["mask"] = ids == _ZERO_SENTINEL
        return (ids.clamp(min=0),) + tuple(args[1:])

    def post(_mod, _args, out):
        m = state.pop("mask", None)
        if m is not None and bool(m.any()):
            return out.masked_fill(m.unsqueeze(-1), 0.0)
        return out

    h1 = emb.register_forward_pre_hook(pre)
    h2 = emb.register_forward_hook(post)
    try:
        yield
    finally:
        h1.remove()
        h2.remove()


@contextmanager
def _frozen(model: torch.nn.Module):
    """Parameters need no gradients for IG (only the interpolated embeddings do)."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    was_training = model.training
    for p, _ in flags:
        p.requires_grad_(False)
    model.eval()
    try:
        yield
    finally:
        for p, f in flags:
            p.requires_grad_(f)
        model.train(was_training)


def _label_logprob_fn(model, label_ids: torch.Tensor):
    """forward(ids [batch, seq]) -> [batch] sum of log p(label tokens). Only the last
    len(label) positions are unembedded (`logits_to_keep`): the vocab projection is the
    costly part for long prompts and we need no other position."""
    n = label_ids.numel()
    # Older / custom heads without `logits_to_keep`: compute all logits and slice.
    keep = "logits_to_keep" in inspect.signature(model.forward).parameters

    def forward(ids: torch.Tensor) -> torch.Tensor:
        if keep:
            logits = model(input_ids=ids, logits_to_keep=n, use_cache=False).logits  # [batch, n, vocab]
        else:
            logits = model(input_ids=ids, use_cache=False).logits[:, -n:]
        logp = torch.log_softmax(logits.float(), dim=-1)
        tgt = label_ids.to(logp.device).expand(ids.shape[0], n)
        return logp.gather(-1, tgt.unsqueeze(-1)).squeeze(-1).sum(-1)

    return forward


METHODS = ("fast", "captum")
# Quadrature rules along the path, named as captum names them (`attribute(method=...)`).
RULES = ("gausslegendre", "riemann_trapezoid")


def gauss_legendre(steps: int) -> tuple[list[float], list[float]]:
    """(alphas, weights) of captum's default `gausslegendre` rule on [0, 1]: the nodes and
    weights of numpy's Gauss-Legendre quadrature mapped from [-1, 1] (weights sum to 1)."""
    import numpy as np

    x, w = np.polynomial.legendre.leggauss(steps)
    return (0.5 * (1 + x)).tolist(), (0.5 * w).tolist()


def quadrature(rule: str, steps: int) -> tuple[list[float], list[float]]:
    """(alphas, weights) of `rule` with `steps` nodes on [0, 1], as captum builds them:
    "gausslegendre" (`gauss_legendre`) or "riemann_trapezoid" (alphas = linspace(0, 1, steps),
    weights 1/steps with the two end weights halved: captum's step sizes, which sum to
    1 - 1/steps, not 1; steps >= 2)."""
    if rule == "gausslegendre":
        return gauss_legendre(steps)
    if steps < 2:
        raise ValueError("riemann_trapezoid needs steps >= 2 (it evaluates both ends of the path)")
    w = [1 / steps] * steps
    w[0] /= 2
    w[-1] /= 2
    return torch.linspace(0, 1, steps).tolist(), w


@dataclass
class _Prepared:
    """One item ready for IG: ids without the last label token, where the rationale starts."""

    ids: torch.Tensor  # [T]
    label_ids: torch.Tensor  # [n]
    rmask: torch.Tensor  # [T] bool
    weights: torch.Tensor  # [T, n_words]
    rtoks: list[str]
    r0: int  # first rationale token: ids[:r0] (the prefix) never moves along the path


def _cache_io(model) -> tuple[str, bool]:
    """The forward's cache keyword (`cache` in transformers >= 5.2x, `past_key_values` before)
    and whether it accepts `logits_to_keep`."""
    params = inspect.signature(model.forward).parameters
    return ("cache" if "cache" in params else "past_key_values"), "logits_to_keep" in params


def _out_cache(out):
    return out.cache if hasattr(out, "cache") else out.past_key_values


def _label_logprobs(model, keep_ok: bool, kw: dict, ends: list[int], labels: list[torch.Tensor],
                    width: int) -> torch.Tensor:
    """Forward `kw` (rows right-padded to `width` tokens) -> [rows] sum of log p(label).

    Row r's label is predicted by its positions ends[r] - n_r .. ends[r] - 1. Only the union
    of those positions is unembedded (`logits_to_keep`; the vocab projection is the costly
    part and no other position is needed)."""
    dev = kw["inputs_embeds"].device
    need = sorted({e - len(lab) + j for e, lab in zip(ends, labels) for j in range(len(lab))})
    if keep_ok:
        # Always an index tensor, even for a plain tail: HF slices `hidden[:, keep]`, and an int
        # gives a strided view that `matmul` will not fold into one GEMM when it needs a
        # gradient (it runs a batched matmul against a [R, D, V] expanded head instead, ~15x
        # slower for the 49k-token SmolLM2 vocabulary); indexing copies it contiguous.
        logits = model(**kw, logits_to_keep=torch.tensor(need, device=dev)).logits  # [R, len(need), V]
        col = {p: i for i, p in enumerate(need)}
    else:
        logits = model(**kw).logits  # [R, width, V]
        col = {p: p for p in range(width)}
    n_max = max(len(lab) for lab in labels)
    cols = torch.zeros(len(labels), n_max, dtype=torch.long)
    tgt = torch.zeros(len(labels), n_max, dtype=torch.long)
    valid = torch.zeros(len(labels), n_max, dtype=torch.bool)
    for r, (e, lab) in enumerate(zip(ends, labels)):
        n = len(lab)
        cols[r, :n] = torch.tensor([col[e - n + j] for j in range(n)])
        tgt[r, :n] = lab
        valid[r, :n] = True
    cols, tgt, valid = cols.to(dev), tgt.to(dev), valid.to(dev)
    picked = logits.gather(1, cols[..., None].expand(-1, -1, logits.shape[-1]))  # [R, n_max, V]
    logp = torch.log_softmax(picked.float(), dim=-1).gather(-1, tgt[..., None])[..., 0]  # [R, n_max]
    return (logp * valid).sum(-1)


def _passes(prep: list[_Prepared], steps: int, rows: int) -> list[list[tuple[int, int]]]:
    """(item, step) rows in forwards of at most `rows`. Items are ordered by suffix length (less
    padding) and a forward never mixes items with and without a prefix (an all-padding prefix
    row would be attended by nothing and its cached values could be NaN)."""
    order = sorted(range(len(prep)), key=lambda i: (prep[i].r0 == 0, len(prep[i].ids) - prep[i].r0,
                                                     len(prep[i].label_ids), i))
    out, cur = [], []
    for i in order:
        if cur and (prep[cur[-1][0]].r0 == 0) != (prep[i].r0 == 0):
            out.append(cur)
            cur = []
        for k in range(steps):
            cur.append((i, k))
            if len(cur) == rows:
                out.append(cur)
                cur = []
    if cur:
        out.append(cur)
    return out


def _ig_fast(model, prep: list[_Prepared], base_id: int, steps: int, rows: int, rule: str = "gausslegendre"):
    """Hand-written layer IG on the input embeddings, equal to captum's `LayerIntegratedGradients`
    (attribution = (x - b) * sum_k w_k grad f(b + alpha_k (x - b)), alphas and weights of `rule`) up to
    float rounding, but much cheaper:

    * the prefix ids[:r0] (question, everything before the rationale) is identical at every
      alpha, and causal attention keeps its keys/values independent of what follows; it runs
      once per forward (no grad) and its KV cache is index-expanded to the rows, so the
      interpolation steps run (forward and backward) over the rationale + separator + label
      part only;
    * steps of several items share one forward (right-padded, attention mask and positions
      set explicitly);
    * f(x) and f(baseline) come from the same cached prefix (captum runs extra full forwards).

    Returns per item: (token attributions [T] float64, f(x), f(b), delta)."""
    emb = model.get_input_embeddings()
    device = emb.weight.device
    cache_kw, keep_ok = _cache_io(model)
    alphas, wts = quadrature(rule, steps)
    with torch.no_grad():
        x_s, b_s, d_s = [], [], []  # suffix input, baseline and input - baseline per item: [S, D]
        for p in prep:
            sfx = p.ids[p.r0:].to(device)
            x = emb(sfx)
            rm = p.rmask[p.r0:].to(device)[:, None]
            b = torch.zeros_like(x) if base_id == _ZERO_SENTINEL else emb(torch.full_like(sfx, base_id))
            b = torch.where(rm, b, x)  # the baseline equals the input outside the rationale
            x_s.append(x)
            b_s.append(b)
            d_s.append(x - b)
    total = [torch.zeros_like(x) for x in x_s]  # sum_k w_k grad_k, [S, D] per item
    fvals: dict[int, tuple[float, float]] = {}

    def forward(items: list[int], rep: list[int], embeds: list[torch.Tensor], cache_src):
        """Rows `embeds` (suffixes of items[rep[r]]) on the expanded prefix cache -> [R] f."""
        R, D = len(rep), x_s[0].shape[1]
        S = max(e.shape[0] for e in embeds)
        E = embeds[0].new_zeros(R, S, D)
        s_att = torch.zeros(R, S, dtype=torch.long, device=device)
        for r, e in enumerate(embeds):
            E[r, :e.shape[0]] = e
            s_att[r, :e.shape[0]] = 1
        plen = torch.tensor([prep[items[i]].r0 for i in rep], device=device)
        kw = {"position_ids": plen[:, None] + torch.arange(S, device=device)[None], "use_cache": True}
        if cache_src is not None:
            p_att, cache = cache_src
            idx = torch.tensor(rep, device=device)
            cache = copy.deepcopy(cache)
            cache.reorder_cache(idx)  # one copy of the item's prefix keys/values per row
            kw[cache_kw] = cache
            kw["attention_mask"] = torch.cat([p_att[idx], s_att], 1)
        else:
            kw["attention_mask"] = s_att
        return E, kw, [e.shape[0] for e in embeds], [prep[items[i]].label_ids for i in rep]

    for rows_ in _passes(prep, steps, rows):
        items = sorted({i for i, _ in rows_})
        local = {i: j for j, i in enumerate(items)}
        cache_src = None
        if prep[items[0]].r0 > 0:
            p_ids = torch.zeros(len(items), max(prep[i].r0 for i in items), dtype=torch.long)
            p_att = torch.zeros_like(p_ids)
            for j, i in enumerate(items):
                p_ids[j, :prep[i].r0] = prep[i].ids[:prep[i].r0]
                p_att[j, :prep[i].r0] = 1
            p_ids, p_att = p_ids.to(device), p_att.to(device)
            with torch.no_grad():
                # logits of one position only (unused; an index tensor: see `_label_logprobs`)
                extra = {"logits_to_keep": torch.tensor([p_ids.shape[1] - 1], device=device)} if keep_ok else {}
                out = model(input_ids=p_ids, attention_mask=p_att, use_cache=True, **extra)
            cache_src = (p_att, _out_cache(out))
        new = [i for i in items if i not in fvals]
        if new:  # f(x) and f(baseline) of items first seen here
            rep = [local[i] for i in new for _ in (0, 1)]
            emb_rows = [e for i in new for e in (x_s[i], b_s[i])]
            E, kw, ends, labels = forward(items, rep, emb_rows, cache_src)
            with torch.no_grad():
                f = _label_logprobs(model, keep_ok, dict(kw, inputs_embeds=E), ends, labels, E.shape[1]).tolist()
            for j, i in enumerate(new):
                fvals[i] = (f[2 * j], f[2 * j + 1])
        rep = [local[i] for i, _ in rows_]
        emb_rows = [b_s[i] + alphas[k] * d_s[i] for i, k in rows_]  # as captum: b + alpha (x - b)
        E, kw, ends, labels = forward(items, rep, emb_rows, cache_src)
        E.requires_grad_(True)
        with torch.enable_grad():
            f = _label_logprobs(model, keep_ok, dict(kw, inputs_embeds=E), ends, labels, E.shape[1])
            (grad,) = torch.autograd.grad(f.sum(), E)  # [R, S, D]
        for r, (i, k) in enumerate(rows_):
            total[i] += grad[r, :x_s[i].shape[0]] * wts[k]
    out = []
    for i, p in enumerate(prep):
        attr = (total[i] * d_s[i]).sum(-1).double().cpu()  # [S]; exactly 0 outside the rationale
        tok_all = torch.cat([torch.zeros(p.r0, dtype=torch.float64), attr])
        fx, fb = fvals[i]
        out.append((tok_all, fx, fb, float(attr.sum()) - (fx - fb)))
    return out


def _ig_captum(model, prep: list[_Prepared], base_id: int, steps: int, internal_batch_size: int,
               rule: str = "gausslegendre"):
    """The reference: captum `LayerIntegratedGradients` on the embedding, one item at a time."""
    from captum.attr import LayerIntegratedGradients

    emb = model.get_input_embeddings()
    device = emb.weight.device
    out = []
    with _zero_sentinel_hooks(emb):
        for p in prep:
            ids, rmask = p.ids.to(device)[None], p.rmask.to(device)[None]  # [1, seq]
            base = ids.masked_fill(rmask, base_id)
            fwd = _label_logprob_fn(model, p.label_ids)
            lig = LayerIntegratedGradients(fwd, emb)
            attr, delta = lig.attribute(ids, baselines=base, n_steps=steps, internal_batch_size=internal_batch_size,
                                        method=rule, return_convergence_delta=True)  # attr [1, seq, d_model]
            with torch.no_grad():
                fx, fb = fwd(ids).item(), fwd(base).item()
            out.append((attr[0].sum(-1).double().cpu(), fx, fb, float(delta.item())))
    return out


def ig_word_scores(model, tok, items: Sequence[IGItem], *, baseline: str = "zero", steps: int = 20,
                   internal_batch_size: int = 20, sep: str = "\nAnswer:", method: str = "fast",
                   min_gap: float = DEGENERATE_GAP, rule: str = "gausslegendre") -> list[IGResult]:
    """Integrated-Gradients scores of each item's rationale words for the gold label's log-prob.

    model: a HF causal LM (its forward must accept `inputs_embeds`, `position_ids`, a KV cache
    and ideally `logits_to_keep`); tok: its fast tokenizer.
    Text scored: context + rationale + sep + " " + label. Returns one IGResult per item.

    method: "fast" (default) runs the Gauss-Legendre steps of several items per forward over the
    rationale + label part only, on the KV cache of the fixed prefix (see `_ig_fast`);
    "captum" is the reference, captum `LayerIntegratedGradients` one item at a time. Both give
    the same scores up to float rounding (tests/interp/test_attribution.py).
    `internal_batch_size` bounds the rows per forward: (item, step) rows for "fast",
    interpolation steps of one item for "captum"; results do not depend on it beyond rounding.
    min_gap: an item with |f(x) - f(baseline)| < min_gap nats is flagged `degenerate` (its
    scores sum to ~0 and their order is noise; see DEGENERATE_GAP).
    rule: the quadrature along the path, "gausslegendre" (captum's default) or
    "riemann_trapezoid" (see `quadrature`; bench/ig_speed.py --rules compares them).
    """
    if baseline not in BASELINES:
        raise ValueError(f"unknown baseline {baseline!r}; choose one of {', '.join(BASELINES)}")
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive integer, not {steps!r}")
    if not isinstance(internal_batch_size, int) or internal_batch_size < 1:
        raise ValueError(f"internal_batch_size must be a positive integer, not {internal_batch_size!r}")
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    if rule not in RULES:
        raise ValueError(f"unknown rule {rule!r}; choose one of {', '.join(RULES)}")
    if rule == "riemann_trapezoid" and steps < 2:
        raise ValueError("steps must be >= 2 for rule 'riemann_trapezoid' (it evaluates both ends of the path)")
    if not min_gap >= 0:
        raise ValueError(f"min_gap must be a non-negative number of nats, not {min_gap!r}")
    for it in items:
        if not isinstance(it, IGItem):
            raise ValueError(f"items must be IGItem(context, rationale, label), got {type(it).__name__}")
    base_id = _baseline_id(tok, baseline)
    prep = []
    for it in items:
        ids, label_ids, rmask, weights, rtoks = _encode(tok, it, sep)
        prep.append(_Prepared(ids, label_ids, rmask, weights, rtoks, int(rmask.nonzero()[0])))
    if not prep:
        return []
    with _frozen(model):
        if method == "fast":
            raw = _ig_fast(model, prep, base_id, steps, internal_batch_size, rule)
        else:
            raw = _ig_captum(model, prep, base_id, steps, internal_batch_size, rule)
    results = []
    for it, p, (tok_all, fx, fb, d) in zip(items, prep, raw):
        word = (p.weights * tok_all[:, None]).sum(0)  # [n_words]
        gap = fx - fb
        rel = abs(d) / abs(gap) if gap != 0 else None
        results.append(IGResult(
            words=it.rationale.split(), word_scores=[float(x) for x in word],
            tokens=p.rtoks, token_scores=[float(x) for x in tok_all[p.rmask]],
            token_word=[int(x) for x in p.weights[p.rmask].argmax(1)],
            f_x=fx, f_baseline=fb, delta=d,
            rel_delta=None if rel is None or math.isnan(rel) else float(rel),
            baseline=baseline, steps=steps,
            meta={"n_tokens": int(p.ids.shape[0]), "n_label_tokens": int(p.label_ids.numel()), "method": method,
                  "min_gap": min_gap, "rule": rule},
            gap=gap, degenerate=bool(abs(gap) < min_gap)))
    return results


def summarize(results: Sequence[IGResult]) -> dict:
    """Median / mean / max relative delta over results (None entries skipped)."""
    rel = sorted(r.rel_delta for r in results if r.rel_delta is not None)
    if not rel:
        return {"n": 0, "median_rel_delta": None, "mean_rel_delta": None, "max_rel_delta": None}
    mid = len(rel) // 2
    med = rel[mid] if len(rel) % 2 else (rel[mid - 1] + rel[mid]) / 2
    return {"n": len(rel), "median_rel_delta": med, "mean_rel_delta": sum(rel) / len(rel), "max_rel_delta": rel[-1]}
