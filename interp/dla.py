"""Direct logit attribution (DLA) of the gold-vs-distractors logit difference at the label.

Shapes: B examples, C_b choices of example b, L blocks, H attention heads, D d_model, R forward
rows, S reading sites (row, position) where a label token's logit is read.

**What is decomposed.** Choices are scored on their whole label, teacher-forced, as
`interp.lens.label_lens` scores them: label token k of choice c is read at the position that
emits it (the last context position for k = 0, label token k-1 after that). Let z_{c,k} be the
model's final *logit* of that token there and S_c = sum_k z_{c,k} the choice's summed logits.
The logit difference of example b is

    diff_b = S_gold - mean_{c != gold} S_c            (needs at least two choices)

It is the logit (not log-prob) analogue of label_lens's whole-label score difference: for
one-token labels the two agree (all choices are read at one position, so the log-softmax
normaliser cancels); for longer labels the normalisers at the later label positions differ
between choices and are not part of DLA's linear readout.

**How.** The residual stream entering the final norm at a site is the sum of the embeddings,
every attention layer's output and every MLP's output. The final norm is linear once its scale
is frozen at the value of the actual forward pass (TransformerLens `apply_ln_to_stack` with the
cached `ln_final.hook_scale`: subtract the component's mean over d_model for LayerNorm, divide
by the cached scale, multiply by the norm weight), so each component contributes
`norm_w * (x_c - mean(x_c)) / scale . u_s` to the site's logit difference, where u_s is the
site's direction: +W_U[gold token] for the gold label's token and -W_U[token] / (C_b - 1) for
each distractor's. The norm's bias and the unembedding bias give the constant `final_bias`.
An attention layer's output splits further into its heads (`hook_z` of head h times W_O[h], as
TL's `stack_head_results` computes it) plus its output bias b_O (`attn_bias`). Contributions are
summed over an example's sites. The components add up to the model's own logit difference
exactly up to float rounding (tests: |error| < 1e-4 on tiny GPT-2 and Llama models; the same
numbers as TL's `cache.logit_attrs` on `decompose_resid` / `stack_head_results` of a bridge in
compatibility mode).

**Cost.** method "tl": one forward through a TransformerLens bridge per chunk of examples, with
forward hooks only on the points needed (embeddings, each block's `hook_z`, attention and MLP
outputs, the final norm's input, scale and output), each keeping only the S reading sites, and
the unembedding applied only at the sites (`logits_to_keep=1` spares the lm_head over every
position). Rows: one per example whose choices are all one-token, else one per multi-token
choice (context + label but its last token; the first site sits in the first such row) - the
bridge (TL 4.3) leaves the transformers 5.24 KV cache empty, so contexts cannot be shared.
method "hf": plain forward hooks on the same points of the HF modules during `label_lens`'s own
forwards (each context once, the later label tokens on its KV cache); it checks at every site
that its bookkeeping rebuilds the final norm's output and each attention output, and refuses a
model it does not reproduce.

Nothing here imports from `cotdsl/`.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from interp import bridge as _bridge
from interp.lens import check_label_inputs, label_rows


@dataclass
class DLAResult:
    """Per-example decomposition of the gold-minus-distractors logit difference.

    logit_diff [B]     the model's own logit difference (from its final logits at the sites).
    embed      [B]     token embeddings.
    pos_embed  [B]     learned position embeddings (zeros for rotary models).
    attn       [B, L]  each block's attention output (heads + output bias).
    mlp        [B, L]  each block's MLP output (incl. its biases).
    heads      [B, L, H] each attention head (hook_z[h] @ W_O[h]; no bias).
    attn_bias  [B, L]  each attention layer's output bias b_O (zeros where there is none).
    final_bias [B]     the final norm's bias and the unembedding bias.
    gold       [B]     gold column.
    n_choices  [B]     choices per example.
    meta               n_sites, resid_error (max |sum of components - final-norm input| over
                       sites, in residual units), arch.

    `total()` = embed + pos_embed + attn.sum(1) + mlp.sum(1) + final_bias equals `logit_diff`
    up to float rounding.
    """

    logit_diff: torch.Tensor
    embed: torch.Tensor
    pos_embed: torch.Tensor
    attn: torch.Tensor
    mlp: torch.Tensor
    heads: torch.Tensor
    attn_bias: torch.Tensor
    final_bias: torch.Tensor
    gold: torch.Tensor
    n_choices: torch.Tensor
    meta: dict = field(default_factory=dict)

    @property
    def num_layers(self) -> int:
        return self.attn.shape[1]

    @property
    def num_heads(self) -> int:
        return self.heads.shape[2]

    def total(self) -> torch.Tensor:
        """[B] sum of all components (equals `logit_diff` up to rounding)."""
        return self.embed + self.pos_embed + self.attn.sum(1) + self.mlp.sum(1) + self.final_bias

    def error(self) -> float:
        """max |total() - logit_diff| over examples."""
        return float((self.total() - self.logit_diff).abs().max())

    def layer_table(self) -> torch.Tensor:
        """[L, 2] mean contribution per block of (attention, MLP) over examples."""
        return torch.stack([self.attn.mean(0), self.mlp.mean(0)], 1)

    def top_heads(self, k: int = 10) -> list[tuple[int, int, float]]:
        """The k heads with the largest mean |contribution|: (layer, head, mean contribution)."""
        mean = self.heads.mean(0)  # [L, H]
        order = mean.abs().flatten().argsort(descending=True)[:k]
        H = mean.shape[1]
        return [(int(i) // H, int(i) % H, float(mean.flatten()[i])) for i in order]

    def components(self) -> dict[str, torch.Tensor]:
        """{name: [B]}: embed, pos_embed, final_bias, then L<i>.attn / L<i>.mlp — a partition:
        the values add up to `total()`."""
        out = {"embed": self.embed, "pos_embed": self.pos_embed, "final_bias": self.final_bias}
        for i in range(self.num_layers):
            out[f"L{i}.attn"] = self.attn[:, i]
            out[f"L{i}.mlp"] = self.mlp[:, i]
        return out


@dataclass
class SiteWeights:
    """Which label tokens' logits are read at each reading site, and with which weight.

    site_ex   [S] example of each reading site.
    coef_site [N] site of each (site, token, weight) entry; coef_tok [N] the token;
    coef_w    [N] its weight: +1 for the gold label's tokens, -1/(C_b - 1) for a distractor's.
    """

    site_ex: torch.Tensor
    coef_site: torch.Tensor
    coef_tok: torch.Tensor
    coef_w: torch.Tensor

    def directions(self, W_U: torch.Tensor, b_U: torch.Tensor | None):
        """([S, D] logit-difference direction of each site, [S] its unembedding-bias term).

        W_U is the lm_head weight [V, D] (HF layout)."""
        S = self.site_ex.shape[0]
        dev = W_U.device
        site, tok, w = self.coef_site.to(dev), self.coef_tok.to(dev), self.coef_w.to(dev, W_U.dtype)
        u = W_U.new_zeros(S, W_U.shape[1]).index_add_(0, site, w[:, None] * W_U[tok])
        bias = W_U.new_zeros(S)
        if b_U is not None:
            bias = bias.index_add_(0, site, w * b_U[tok])
        return u, bias


@dataclass
class LabelSites(SiteWeights):
    """Reading sites on rows that hold each label in full (one forward, no KV cache).

    ids, mask     [R, T] right-padded rows (a context, or a context + one choice's label but its
                  last token).
    site_row      [S] row of each reading site; site_pos [S] its position.
    n_ctx         [R] context length of each row (label position = n_ctx - 1).
    row_ex        [R] example of each row.
    """

    ids: torch.Tensor = None
    mask: torch.Tensor = None
    site_row: torch.Tensor = None
    site_pos: torch.Tensor = None
    n_ctx: torch.Tensor = None
    row_ex: torch.Tensor = None


def _choice_weights(b: int, ex: list, gold: torch.Tensor) -> list[float]:
    if len(ex) < 2:
        raise ValueError(f"example {b} has one choice: a logit difference needs a distractor")
    g = int(gold[b])
    return [1.0 if c == g else -1.0 / (len(ex) - 1) for c in range(len(ex))]


def _long(v) -> torch.Tensor:
    return torch.tensor(v, dtype=torch.long)


def label_sites(ctxs: list[list[int]], chs: list[list[list[int]]], gold: torch.Tensor,
                pad: int = 0) -> LabelSites:
    """Rows, reading sites and logit-difference weights for `check_label_inputs`'s output.

    Rows and sites as `interp.lens.label_rows`: one row per example whose choices are all one-token
    (its context), else one per multi-token choice (context + label but its last token). Sites per
    example: the first row's last context position (every choice's first token), then each
    multi-token choice's later label tokens."""
    r = label_rows(ctxs, chs, pad)
    weights = [_choice_weights(b, ex, gold) for b, ex in enumerate(chs)]
    w = [weights[b][c] for b, c in zip(r.tok_ex.tolist(), r.tok_choice.tolist())]
    return LabelSites(ids=r.ids, mask=r.mask, site_row=r.site_row, site_pos=r.site_pos, site_ex=r.site_ex,
                      n_ctx=r.n_ctx, coef_site=r.tok_site, coef_tok=r.tok_id,
                      coef_w=torch.tensor(w, dtype=torch.float64), row_ex=r.row_ex)


def shared_sites(chs: list[list[list[int]]], gold: torch.Tensor) -> SiteWeights:
    """Site weights in `interp.lens._label_hidden`'s order (the KV-cache-sharing forward): the B
    last context positions first, then one site per later label token, ordered by (example,
    choice, token) over the multi-token choices."""
    s_ex, c_site, c_tok, c_w, later = [], [], [], [], []
    for b, ex in enumerate(chs):
        weights = _choice_weights(b, ex, gold)
        s_ex.append(b)
        for c, x in enumerate(ex):
            c_site.append(b)
            c_tok.append(x[0])
            c_w.append(weights[c])
            later += [(b, t, weights[c]) for t in x[1:]]
    for b, t, w in later:
        s_ex.append(b)
        c_site.append(len(s_ex) - 1)
        c_tok.append(t)
        c_w.append(w)
    return SiteWeights(site_ex=_long(s_ex), coef_site=_long(c_site), coef_tok=_long(c_tok),
                       coef_w=torch.tensor(c_w, dtype=torch.float64))


METHODS = ("tl", "hf")


def direct_logit_attribution(model, contexts, choices, gold=0, *, method: str = "tl", tl_bridge=None,
                             batch: int = 16) -> DLAResult:
    """Direct logit attribution of each example's gold-minus-distractors logit difference.

    contexts, choices, gold: as `interp.lens.label_lens` (token ids before the label; per example
    C_b >= 2 choices' label ids; the gold column). `batch` examples per forward.
    method "tl" (default): through a TransformerLens bridge around a copy of `model` (or
    `tl_bridge`, one built by `interp.bridge.build_bridge(model)`), one row per multi-token choice.
    method "hf": plain PyTorch forward hooks on the HF modules of Llama-family and GPT-2 models,
    each context run once and its choices' later label tokens on its KV cache (as `label_lens`);
    it checks its own bookkeeping (norm scale, residual, heads) at every site and raises on a
    model it does not understand. Both give the same numbers (tests). Returns a DLAResult.
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    ctxs, chs, gold = check_label_inputs(model, contexts, choices, gold)
    if method == "tl":
        tl_bridge = tl_bridge if tl_bridge is not None else _bridge.build_bridge(model)
        run = lambda c, x, g: _decompose(*_tl_acts(tl_bridge, c, x, g), len(c))  # noqa: E731
    else:
        run = lambda c, x, g: _decompose(*_hf_acts(model, c, x, g), len(c))  # noqa: E731
    parts = [run(ctxs[s:s + batch], chs[s:s + batch], gold[s:s + batch]) for s in range(0, len(ctxs), max(1, batch))]
    cat = {k: torch.cat([p[k] for p in parts]) for k in parts[0] if k != "meta"}
    meta = {"n_sites": sum(p["meta"]["n_sites"] for p in parts),
            "resid_error": max(p["meta"]["resid_error"] for p in parts),
            "arch": type(model).__name__, "method": method}
    return DLAResult(gold=gold, n_choices=torch.tensor([len(ex) for ex in chs]), meta=meta, **cat)


@dataclass
class _Parts:
    """What the decomposition needs, at the S reading sites (float64)."""

    embed: torch.Tensor  # [S, D]
    pos: torch.Tensor | None  # [S, D] learned position embeddings, None for rotary models
    z: list  # L x [S, H, dh] attention heads' outputs before W_O
    attn: list  # L x [S, D] attention outputs (heads + b_O)
    mlp: list  # L x [S, D]
    norm_in: torch.Tensor  # [S, D] the final norm's input
    norm_out: torch.Tensor  # [S, D] its output (what the unembedding reads)
    scale: torch.Tensor  # [S, 1] its scale in this forward
    W_O: list  # L x [H, dh, D]
    b_O: list  # L x [D] or None
    norm_w: torch.Tensor | None  # [D]
    norm_b: torch.Tensor | None  # [D]
    center: bool  # LayerNorm (subtract the mean) or RMSNorm


def _decompose(parts: _Parts, sites: SiteWeights, W_U: torch.Tensor, b_U, B: int) -> dict:
    """Per-example contributions (see DLAResult) from the activations at the sites."""
    f64 = lambda t: t.detach().double()  # noqa: E731  (attribution arithmetic in float64: exact sums)
    with torch.no_grad():
        u, u_bias = sites.directions(f64(W_U), None if b_U is None else f64(b_U))
        S = u.shape[0]
        uw = u * f64(parts.norm_w) if parts.norm_w is not None else u  # the norm weight folded in
        scale = f64(parts.scale).reshape(S, 1)

        def proj(x: torch.Tensor) -> torch.Tensor:
            """[S, ..., D] component at the sites -> [S, ...] contribution (frozen-scale norm)."""
            x = f64(x)
            if parts.center:
                x = x - x.mean(-1, keepdim=True)
            mid = (1,) * (x.dim() - 2)
            return (x / scale.reshape((S,) + mid + (1,)) * uw.reshape((S,) + mid + (uw.shape[1],))).sum(-1)

        zero = u.new_zeros(S)
        comp = {"embed": proj(parts.embed), "pos_embed": proj(parts.pos) if parts.pos is not None else zero,
                "attn": torch.stack([proj(a) for a in parts.attn], 1),
                "mlp": torch.stack([proj(m) for m in parts.mlp], 1),
                "heads": torch.stack([proj(torch.einsum("shd,hdm->shm", f64(z), f64(w)))
                                      for z, w in zip(parts.z, parts.W_O)], 1),
                "attn_bias": torch.stack([proj(f64(b).expand(S, -1)) if b is not None else zero for b in parts.b_O], 1),
                "final_bias": u_bias + ((u * f64(parts.norm_b)).sum(-1) if parts.norm_b is not None else 0),
                # The model's own logit difference: its final logits at the sites, weighted.
                "logit_diff": (f64(parts.norm_out) * u).sum(-1) + u_bias}
        # Residual check: the components rebuild the final norm's input at every site.
        total = f64(parts.embed) + (f64(parts.pos) if parts.pos is not None else 0)
        for a, m in zip(parts.attn, parts.mlp):
            total = total + f64(a) + f64(m)
        resid_err = float((total - f64(parts.norm_in)).abs().max())
    out = {k: per_example(v, sites, B) for k, v in comp.items()}
    out["meta"] = {"n_sites": S, "resid_error": resid_err}
    return out


def _tl_acts(tl_bridge, ctxs, chs, gold):
    """(_Parts, LabelSites, W_U, b_U) from one bridge forward with site-only hooks."""
    cfg = tl_bridge.cfg
    L = cfg.n_layers
    sites = sites_on(tl_bridge, ctxs, chs, gold)
    names = ["embed.hook_out", "ln_final.hook_in", "ln_final.hook_scale", "ln_final.hook_out"]
    has_pos = hasattr(tl_bridge, "pos_embed")
    if has_pos:
        names.append("pos_embed.hook_out")
    for i in range(L):
        names += [f"blocks.{i}.attn.o.hook_in", f"blocks.{i}.attn.hook_out", f"blocks.{i}.mlp.hook_out"]
    st: dict = {}
    with torch.no_grad():
        tl_bridge.run_with_hooks(sites.ids, attention_mask=sites.mask, fwd_hooks=_site_hooks(sites, st, names),
                                 logits_to_keep=1)
    norm = tl_bridge.ln_final.original_component  # the HF final norm
    head = tl_bridge.unembed.original_component  # the HF lm_head (nn.Linear, weight [V, D])
    blocks = [tl_bridge.blocks[i].attn for i in range(L)]
    parts = _Parts(
        embed=st["embed.hook_out"], pos=st["pos_embed.hook_out"] if has_pos else None,
        z=[st[f"blocks.{i}.attn.o.hook_in"] for i in range(L)],
        attn=[st[f"blocks.{i}.attn.hook_out"] for i in range(L)], mlp=[st[f"blocks.{i}.mlp.hook_out"] for i in range(L)],
        norm_in=st["ln_final.hook_in"], norm_out=st["ln_final.hook_out"], scale=st["ln_final.hook_scale"],
        W_O=[blk.W_O for blk in blocks], b_O=[getattr(blk, "b_O", None) for blk in blocks],
        norm_w=getattr(norm, "weight", None), norm_b=getattr(norm, "bias", None),
        center=cfg.normalization_type in ("LN", "LNPre") and not getattr(cfg, "final_rms", False))
    return parts, sites, head.weight, head.bias


def _hf_modules(model) -> dict:
    """The modules the "hf" path hooks: Llama-family (`layers[i].self_attn.o_proj`) and GPT-2
    (`h[i].attn.c_proj`) layouts. Raises ValueError for other layouts (use method "tl")."""
    base = model.base_model
    blocks = getattr(base, "layers", None)
    blocks = blocks if blocks is not None else getattr(base, "h", None)
    if blocks is None:
        raise ValueError(f"method 'hf' knows Llama-family and GPT-2 layouts, not {type(model).__name__}; "
                         "use method 'tl'")
    attn = [getattr(b, "self_attn", None) or getattr(b, "attn") for b in blocks]
    out = [getattr(a, "o_proj", None) or getattr(a, "c_proj", None) for a in attn]
    if any(o is None for o in out) or any(getattr(b, "mlp", None) is None for b in blocks):
        raise ValueError(f"method 'hf' cannot find the attention output projection / MLP of "
                         f"{type(model).__name__}; use method 'tl'")
    H = model.config.num_attention_heads
    W_O = []
    for o in out:
        # nn.Linear keeps [out=D, in=H*dh]; GPT-2's Conv1D keeps [in=H*dh, out=D].
        w = o.weight.t() if isinstance(o, torch.nn.Linear) else o.weight
        W_O.append(w.reshape(H, w.shape[0] // H, w.shape[1]))
    return {"embed": model.get_input_embeddings(), "pos": getattr(base, "wpe", None), "attn": attn,
            "out": out, "mlp": [b.mlp for b in blocks], "norm": _bridge.final_norm(model), "W_O": W_O,
            "b_O": [o.bias for o in out], "H": H}


def _hf_acts(model, ctxs, chs, gold):
    """(_Parts, SiteWeights, W_U, b_U) from `interp.lens._label_hidden`'s forwards (the context
    once, the choices' later label tokens on its KV cache) with plain forward hooks."""
    from interp.lens import _label_hidden

    mods = _hf_modules(model)
    calls: dict = {}  # name -> one [R, T, ...] tensor per forward call

    def rec(name, pre=False):
        def hook(mod, args, out=None):
            x = args[0] if pre else (out[0] if isinstance(out, tuple) else out)
            calls.setdefault(name, []).append(x.detach())
        return hook

    hs = [mods["embed"].register_forward_hook(rec("embed")),
          mods["norm"].register_forward_pre_hook(rec("norm_in", True)),
          mods["norm"].register_forward_hook(rec("norm_out"))]
    if mods["pos"] is not None:
        hs.append(mods["pos"].register_forward_hook(rec("pos")))
    for i, (a, o, m) in enumerate(zip(mods["attn"], mods["out"], mods["mlp"])):
        hs += [a.register_forward_hook(rec(f"attn{i}")), o.register_forward_pre_hook(rec(f"z{i}", True)),
               m.register_forward_hook(rec(f"mlp{i}"))]
    info: dict = {}
    try:
        _label_hidden(model, ctxs, chs, share_context=True, info=info)
    finally:
        for h in hs:
            h.remove()
    rows = torch.arange(len(ctxs), device=info["n_ctx"].device)

    def at_sites(name):
        first, *rest = calls[name]
        if name == "pos" and first.shape[0] == 1:  # GPT-2's wpe sees [1, T] positions when none are given
            first = first.expand(len(ctxs), *first.shape[1:])
        got = [first[rows, info["n_ctx"] - 1]]
        if rest:
            got.append(rest[0][info["sel"]])
        return torch.cat(got)

    L, H = len(mods["attn"]), mods["H"]
    norm = mods["norm"]
    norm_in = at_sites("norm_in").double()
    center = isinstance(norm, torch.nn.LayerNorm)
    eps = getattr(norm, "variance_epsilon", getattr(norm, "eps", None))
    if eps is None:
        raise ValueError(f"method 'hf' cannot read the final norm's epsilon ({type(norm).__name__}); use 'tl'")
    x = norm_in - norm_in.mean(-1, keepdim=True) if center else norm_in
    scale = (x.pow(2).mean(-1, keepdim=True) + eps).sqrt()
    parts = _Parts(
        embed=at_sites("embed"), pos=at_sites("pos") if mods["pos"] is not None else None,
        z=[at_sites(f"z{i}").reshape(-1, H, mods["W_O"][i].shape[1]) for i in range(L)],
        attn=[at_sites(f"attn{i}") for i in range(L)], mlp=[at_sites(f"mlp{i}") for i in range(L)],
        norm_in=norm_in, norm_out=at_sites("norm_out"), scale=scale, W_O=mods["W_O"], b_O=mods["b_O"],
        norm_w=getattr(norm, "weight", None), norm_b=getattr(norm, "bias", None), center=center)
    _check_hf(parts)
    head = _bridge.unembedding(model)
    return parts, shared_sites(chs, gold), head.weight, head.bias


def _check_hf(p: _Parts, tol: float = 1e-3) -> None:
    """The "hf" path's bookkeeping must rebuild what the model computed, or it refuses."""
    with torch.no_grad():
        x = p.norm_in.double()
        x = x - x.mean(-1, keepdim=True) if p.center else x
        normed = x / p.scale * (p.norm_w.double() if p.norm_w is not None else 1)
        normed = normed + (p.norm_b.double() if p.norm_b is not None else 0)
        ref = p.norm_out.double()
        if (normed - ref).abs().max() > tol * max(1.0, float(ref.abs().max())):
            raise ValueError("method 'hf' does not reproduce this model's final norm; use method 'tl'")
        for z, w, b, a in zip(p.z, p.W_O, p.b_O, p.attn):
            heads = torch.einsum("shd,hdm->sm", z.double(), w.double()) + (b.double() if b is not None else 0)
            if (heads - a.double()).abs().max() > tol * max(1.0, float(a.abs().max())):
                raise ValueError("method 'hf': the heads do not add up to the attention output; use method 'tl'")


def _site_hooks(sites: LabelSites, store: dict, names: list[str]):
    """Forward hooks keeping only the reading sites of each named activation ([S, ...])."""
    def keep(act, hook):
        store[hook.name] = act[sites.site_row, sites.site_pos].detach()
        return act
    return [(n, keep) for n in names]


def sites_on(tl_bridge, ctxs, chs, gold) -> LabelSites:
    """`label_sites` with the tensors a forward needs moved to the bridge's device."""
    sites = label_sites(ctxs, chs, gold)
    dev = tl_bridge.unembed.original_component.weight.device
    for k in ("ids", "mask", "site_row", "site_pos", "coef_site", "coef_tok"):
        setattr(sites, k, getattr(sites, k).to(dev))
    return sites


def site_directions(tl_bridge, sites: LabelSites):
    """float64 ([S, D] logit-difference directions, [S] unembedding-bias terms) of the sites."""
    head = tl_bridge.unembed.original_component  # the HF lm_head (nn.Linear, weight [V, D])
    W, b = head.weight.detach().double(), None if head.bias is None else head.bias.detach().double()
    return sites.directions(W, b)


def per_example(values: torch.Tensor, sites: LabelSites, B: int) -> torch.Tensor:
    """Sum per-site values [S, ...] over each example's sites -> float32 [B, ...] on the CPU."""
    ex = sites.site_ex.to(values.device)
    return values.new_zeros((B,) + values.shape[1:]).index_add_(0, ex, values).float().cpu()


def site_logit_diff(tl_bridge, sites: LabelSites, normed: torch.Tensor, B: int) -> torch.Tensor:
    """[B] logit difference from the final norm's output at the sites ([S, D])."""
    u, u_bias = site_directions(tl_bridge, sites)
    return per_example((normed.detach().double() * u).sum(-1) + u_bias, sites, B)
