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

**Cost.** One forward through a TransformerLens bridge per chunk of examples, with forward hooks
only on the points needed (embeddings, each block's `hook_z`, attention and MLP outputs, the
final norm's input, scale and output), each keeping only the S reading sites, and the
unembedding applied only at the sites (`logits_to_keep=1` spares the lm_head over every
position). Rows: one per example whose choices are all one-token, else one per multi-token
choice (context + label but its last token; the first site sits in the first such row).

Nothing here imports from `cotdsl/`.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from interp import bridge as _bridge
from interp.lens import check_label_inputs, pad_right


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
class LabelSites:
    """Where the label tokens' logits are read, and with which weight.

    ids, mask     [R, T] right-padded rows (a context, or a context + one choice's label but its
                  last token).
    site_row      [S] row of each reading site; site_pos [S] its position; site_ex [S] its example.
    n_ctx         [R] context length of each row (label position = n_ctx - 1).
    coef_site     [N] site of each (site, token, weight) entry; coef_tok [N] the token;
    coef_w        [N] its weight: +1 for the gold label's tokens, -1/(C_b - 1) for a distractor's.
    row_ex        [R] example of each row.
    """

    ids: torch.Tensor
    mask: torch.Tensor
    site_row: torch.Tensor
    site_pos: torch.Tensor
    site_ex: torch.Tensor
    n_ctx: torch.Tensor
    coef_site: torch.Tensor
    coef_tok: torch.Tensor
    coef_w: torch.Tensor
    row_ex: torch.Tensor

    def directions(self, W_U: torch.Tensor, b_U: torch.Tensor | None):
        """([S, D] logit-difference direction of each site, [S] its unembedding-bias term).

        W_U is the lm_head weight [V, D] (HF layout)."""
        S = self.site_row.shape[0]
        w = self.coef_w.to(W_U.device, W_U.dtype)
        u = W_U.new_zeros(S, W_U.shape[1]).index_add_(0, self.coef_site, w[:, None] * W_U[self.coef_tok])
        bias = W_U.new_zeros(S)
        if b_U is not None:
            bias = bias.index_add_(0, self.coef_site, w * b_U[self.coef_tok])
        return u, bias


def label_sites(ctxs: list[list[int]], chs: list[list[list[int]]], gold: torch.Tensor,
                pad: int = 0) -> LabelSites:
    """Rows, reading sites and logit-difference weights for `check_label_inputs`'s output."""
    rows, row_ex, n_ctx = [], [], []
    s_row, s_pos, s_ex = [], [], []
    c_site, c_tok, c_w = [], [], []
    for b, (ctx, ex) in enumerate(zip(ctxs, chs)):
        if len(ex) < 2:
            raise ValueError(f"example {b} has one choice: a logit difference needs a distractor")
        g = int(gold[b])
        weights = [1.0 if c == g else -1.0 / (len(ex) - 1) for c in range(len(ex))]
        multi = [c for c, x in enumerate(ex) if len(x) > 1]
        first_row = len(rows)
        for c in multi or [None]:
            rows.append(ctx + (ex[c][:-1] if c is not None else []))
            row_ex.append(b)
            n_ctx.append(len(ctx))
        # Every choice's first token is read at the last context position of the first row.
        s_row.append(first_row)
        s_pos.append(len(ctx) - 1)
        s_ex.append(b)
        for c, x in enumerate(ex):
            c_site.append(len(s_row) - 1)
            c_tok.append(x[0])
            c_w.append(weights[c])
        for j, c in enumerate(multi):
            for k in range(1, len(ex[c])):
                s_row.append(first_row + j)
                s_pos.append(len(ctx) - 1 + k)
                s_ex.append(b)
                c_site.append(len(s_row) - 1)
                c_tok.append(ex[c][k])
                c_w.append(weights[c])
    ids, mask = pad_right(rows, pad)
    t = lambda v: torch.tensor(v, dtype=torch.long)  # noqa: E731
    return LabelSites(ids=ids, mask=mask, site_row=t(s_row), site_pos=t(s_pos), site_ex=t(s_ex),
                      n_ctx=t(n_ctx), coef_site=t(c_site), coef_tok=t(c_tok),
                      coef_w=torch.tensor(c_w, dtype=torch.float64), row_ex=t(row_ex))


def _norm_center(tl_bridge) -> bool:
    """Whether the final norm subtracts the mean (LayerNorm) or not (RMSNorm)."""
    cfg = tl_bridge.cfg
    return cfg.normalization_type in ("LN", "LNPre") and not getattr(cfg, "final_rms", False)


def direct_logit_attribution(model, contexts, choices, gold=0, *, tl_bridge=None, batch: int = 16) -> DLAResult:
    """Direct logit attribution of each example's gold-minus-distractors logit difference.

    contexts, choices, gold: as `interp.lens.label_lens` (token ids before the label; per example
    C_b >= 2 choices' label ids; the gold column). Builds a TransformerLens bridge around a copy
    of `model` unless `tl_bridge` (one built by `interp.bridge.build_bridge(model)`) is given.
    `batch` examples per forward. Returns a DLAResult (see its fields for shapes).
    """
    ctxs, chs, gold = check_label_inputs(model, contexts, choices, gold)
    tl_bridge = tl_bridge if tl_bridge is not None else _bridge.build_bridge(model)
    parts = [_dla_chunk(tl_bridge, ctxs[s:s + batch], chs[s:s + batch], gold[s:s + batch])
             for s in range(0, len(ctxs), max(1, batch))]
    cat = {k: torch.cat([p[k] for p in parts]) for k in parts[0] if k != "meta"}
    meta = {"n_sites": sum(p["meta"]["n_sites"] for p in parts),
            "resid_error": max(p["meta"]["resid_error"] for p in parts),
            "arch": type(model).__name__}
    return DLAResult(gold=gold, n_choices=torch.tensor([len(ex) for ex in chs]), meta=meta, **cat)


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


def _dla_chunk(tl_bridge, ctxs, chs, gold) -> dict:
    cfg = tl_bridge.cfg
    L = cfg.n_layers
    norm = tl_bridge.ln_final.original_component  # the HF final norm
    sites = sites_on(tl_bridge, ctxs, chs, gold)
    names = ["embed.hook_out", "ln_final.hook_in", "ln_final.hook_scale", "ln_final.hook_out"]
    has_pos = hasattr(tl_bridge, "pos_embed")
    if has_pos:
        names.append("pos_embed.hook_out")
    for i in range(L):
        names += [f"blocks.{i}.attn.o.hook_in", f"blocks.{i}.attn.hook_out", f"blocks.{i}.mlp.hook_out"]
    store: dict = {}
    B, S = len(ctxs), sites.site_row.shape[0]
    with torch.no_grad():
        tl_bridge.run_with_hooks(sites.ids, attention_mask=sites.mask, fwd_hooks=_site_hooks(sites, store, names),
                                 logits_to_keep=1)
        f64 = lambda t: t.double()  # noqa: E731  (attribution arithmetic in float64: exact sums)
        u, u_bias = site_directions(tl_bridge, sites)
        w = f64(norm.weight) if getattr(norm, "weight", None) is not None else torch.ones_like(u[0])
        nb = getattr(norm, "bias", None)
        scale = f64(store["ln_final.hook_scale"]).reshape(-1, 1)  # [S, 1]
        center = _norm_center(tl_bridge)
        uw = u * w  # the norm weight folded into the directions

        def proj(x: torch.Tensor) -> torch.Tensor:
            """[S, ..., D] component at the sites -> [S, ...] contribution (frozen-scale norm)."""
            x = f64(x)
            if center:
                x = x - x.mean(-1, keepdim=True)
            mid = (1,) * (x.dim() - 2)
            return (x / scale.reshape((S,) + mid + (1,)) * uw.reshape((S,) + mid + (uw.shape[1],))).sum(-1)

        comp = {"embed": proj(store["embed.hook_out"]),
                "pos_embed": proj(store["pos_embed.hook_out"]) if has_pos else u.new_zeros(S)}
        attn, mlp, heads, attn_bias = [], [], [], []
        for i in range(L):
            blk = tl_bridge.blocks[i].attn
            z = f64(store[f"blocks.{i}.attn.o.hook_in"])  # [S, H, dh]
            heads.append(proj(torch.einsum("shd,hdm->shm", z, f64(blk.W_O))))  # [S, H]
            b_O = getattr(blk, "b_O", None)
            attn_bias.append(proj(f64(b_O).expand(S, -1)) if b_O is not None else u.new_zeros(S))
            attn.append(proj(store[f"blocks.{i}.attn.hook_out"]))
            mlp.append(proj(store[f"blocks.{i}.mlp.hook_out"]))
        comp["attn"] = torch.stack(attn, 1)
        comp["mlp"] = torch.stack(mlp, 1)
        comp["heads"] = torch.stack(heads, 1)
        comp["attn_bias"] = torch.stack(attn_bias, 1)
        comp["final_bias"] = u_bias + ((u * f64(nb)).sum(-1) if nb is not None else 0)
        # Residual check: the components rebuild the final norm's input at every site.
        parts = store["embed.hook_out"] + (store["pos_embed.hook_out"] if has_pos else 0)
        for i in range(L):
            parts = parts + store[f"blocks.{i}.attn.hook_out"] + store[f"blocks.{i}.mlp.hook_out"]
        resid_err = float((f64(parts) - f64(store["ln_final.hook_in"])).abs().max())
    out = {k: per_example(v, sites, B) for k, v in comp.items()}
    # The model's own logit difference: its final logits at the sites, weighted.
    out["logit_diff"] = site_logit_diff(tl_bridge, sites, store["ln_final.hook_out"], B)
    out["meta"] = {"n_sites": S, "resid_error": resid_err}
    return out
