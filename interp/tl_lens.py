"""The whole-label logit / tuned lens through TransformerLens hooks, at the label's reading sites only.

Shapes: B examples, C choices, L blocks, R forward rows, S reading sites, N label tokens read,
V vocabulary, D d_model.

`tl_label_lens` gives `interp.lens.label_lens`'s numbers (the engine `hf`: HF hidden states and
the KV cache) the TransformerLens way, without its every-position cost: one bridge forward per
chunk (`run_with_hooks`, `logits_to_keep=1`) with a forward hook on each residual point
(`blocks.{i}.hook_resid_pre` for rows 0..L-1, `ln_final.hook_out` for row L, the model's own
normed state) that keeps only the S reading sites ([R, T, D] -> [S, D]); then the bridge's final
norm (`ln_final`) and unembedding (`unembed`) run on those S rows only, one row of the lens at a
time ([S, D] -> [S, V]). Rows: one per example whose choices are all one-token, else one per
multi-token choice (`interp.lens.label_rows`): TransformerLens 4.3's bridge leaves the KV cache
empty, so a context cannot be shared between its choices.

`interp.lens.logit_lens_tl` (every position unembedded, `accumulated_resid(apply_ln=True)`) stays
the reference for first-token readouts. Nothing here imports from `cotdsl/`.
"""
from __future__ import annotations

import torch

from interp import bridge as _bridge
from interp.lens import LensResult, check_label_inputs, label_rows


def resid_hook_names(n_layers: int) -> list[str]:
    """The bridge hook points of lens rows 0..L: the residual entering each block, then the final
    norm's output (row L, what the unembedding reads)."""
    return [f"blocks.{i}.hook_resid_pre" for i in range(n_layers)] + ["ln_final.hook_out"]


def tl_label_lens(model, contexts, choices, gold=0, *, lens=None, tl_bridge=None, batch: int = 16) -> LensResult:
    """Whole-label lens through TransformerLens hooks; same inputs and output as `label_lens`.

    contexts: B token-id sequences before the label; choices: per example each choice's label ids
    (C_b >= 1, any lengths; missing columns score -inf); gold: the gold column(s). `lens`: a
    trained tuned lens (rows 0..L-1 through its translators, applied to the hooked residuals) or
    None (logit lens: `tl_bridge.ln_final` then `tl_bridge.unembed`). `tl_bridge`: one built by
    `interp.bridge.build_bridge(model)` (default: built here around a copy of `model`).
    Returns a LensResult with score "label": scores/probs/choice_probs [B, L+1, C], ranks
    [B, L+1, C] of each choice's first token, meta {"engine": "tl", "rows": R, "sites": S}.
    """
    ctxs, chs, gold = check_label_inputs(model, contexts, choices, gold)
    L = _bridge.num_layers(model)
    if lens is not None and len(lens) != L:
        raise ValueError(f"tuned lens has {len(lens)} translators, model has {L} layers")
    tl_bridge = tl_bridge if tl_bridge is not None else _bridge.build_bridge(model)
    if tl_bridge.cfg.n_layers != L:
        raise ValueError(f"the bridge has {tl_bridge.cfg.n_layers} blocks, the model {L}: not a bridge of this model")
    C = max(len(ex) for ex in chs)
    parts = [_chunk(tl_bridge, ctxs[s:s + batch], chs[s:s + batch], C, lens)
             for s in range(0, len(ctxs), max(1, batch))]
    scores = torch.cat([p[0] for p in parts])  # [B, L+1, C]
    tied = torch.tensor([len(set(map(tuple, ex))) < len(ex) for ex in chs])
    meta = {"engine": "tl", "rows": sum(p[2] for p in parts), "sites": sum(p[3] for p in parts)}
    return LensResult(probs=scores.exp(), ranks=torch.cat([p[1] for p in parts]),
                      choice_probs=torch.softmax(scores, -1), gold=gold, lens="tuned" if lens is not None else "logit",
                      meta=meta, scores=scores, tied=tied, score="label")


def site_residuals(tl_bridge, rows) -> list[torch.Tensor]:
    """L+1 tensors [S, D]: each lens row's residual at the reading sites of `rows` (`LabelRows` on
    the bridge's device), from one forward whose hooks keep only those sites."""
    names = resid_hook_names(tl_bridge.cfg.n_layers)
    got: dict[str, torch.Tensor] = {}

    def keeper(name):  # keyed by the name asked for: `hook.name` is the canonical alias target
        def keep(act, hook):
            got[name] = act[rows.site_row, rows.site_pos].detach()  # [R, T, D] -> [S, D]
            return act
        return keep

    with torch.no_grad():
        tl_bridge.run_with_hooks(rows.ids, attention_mask=rows.mask, fwd_hooks=[(n, keeper(n)) for n in names],
                                 logits_to_keep=1)  # the lm_head at one position per row, not every one
    return [got[n] for n in names]


def _chunk(tl_bridge, ctxs, chs, C: int, lens):
    """([b, L+1, C] summed label log-probs, [b, L+1, C] first-token ranks, rows R, sites S)."""
    dev = tl_bridge.unembed.original_component.weight.device
    rows = label_rows(ctxs, chs).to(dev)
    hs = site_residuals(tl_bridge, rows)
    L, B, V = len(hs) - 1, len(ctxs), tl_bridge.unembed.original_component.weight.shape[0]
    valid = torch.tensor([[c < len(ex) for c in range(C)] for ex in chs], device=dev)
    first_tok = torch.tensor([[ex[c][0] if c < len(ex) else 0 for c in range(C)] for ex in chs], device=dev)
    col = rows.tok_ex * C + rows.tok_choice  # [N] the (example, choice) cell each label token adds to
    scores, ranks = [], []
    with torch.no_grad():
        for i, h in enumerate(hs):
            if i == L:  # ln_final.hook_out: already normed
                lg = tl_bridge.unembed(h)
            else:
                lg = lens(h, i) if lens is not None else tl_bridge.unembed(tl_bridge.ln_final(h))
            lp = torch.log_softmax(lg.float(), -1)  # [S, V]
            s = lp.new_zeros(B * C).index_add_(0, col, lp[rows.tok_site, rows.tok_id])
            scores.append(s.view(B, C).masked_fill(~valid, float("-inf")))
            lf = lg.float()[rows.first_site]  # [B, V] the last context position of each example
            tf = lf.gather(1, first_tok)
            rk = 1 + torch.stack([(lf > tf[:, c:c + 1]).sum(1) for c in range(C)], 1)
            ranks.append(rk.masked_fill(~valid, V + 1))
    return torch.stack(scores, 1).cpu(), torch.stack(ranks, 1).cpu(), int(rows.ids.shape[0]), int(rows.site_row.numel())
