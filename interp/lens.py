"""Logit lens at the label position: P(each choice's label) after every layer.

Shapes: B examples, T tokens, L blocks, C choices, V vocabulary, D d_model.

`label_lens` scores each choice by its whole label, teacher-forced (the layer-l readout at every
label position, log-probs summed), so its last row equals rank evaluation's choice scores and
choices that share a first word are told apart. `logit_lens` reads only each label's first token
at one position (choices sharing a first token tie: `LensResult.tied` flags them).

`logit_lens` is the fast path: one forward of the base model with hidden states, then the final
norm + unembedding applied only at the one position per example whose next-token distribution
emits the label ([L+1, B, D] -> [L+1, B, V]) instead of every position ([L+1, B, T, V]).
`logit_lens_tl` computes the same numbers the TransformerLens way (`run_with_cache`,
`accumulated_resid(apply_ln=True)`, `unembed` at every position) and serves as the reference.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from typing import Sequence

import torch

from interp import bridge as _bridge


@dataclass
class LensResult:
    """Per-example, per-layer readout of the choices' labels.

    probs        [B, L+1, C] full-vocab probability of each choice's label after the embeddings
                 (row 0) and after each block (row i = block i-1's output): of its first token
                 (`logit_lens`, score "first_token") or of the whole label, teacher-forced
                 (`label_lens`, score "label": the product over the label's tokens of the
                 layer-i readout at each label position).
    ranks        [B, L+1, C] rank of the label's first token in the full vocabulary at the label
                 position (1 = top-1; ties share the best rank: 1 + number of tokens with a
                 strictly larger logit).
    choice_probs [B, L+1, C] probabilities renormalised over the C choices.
    gold         [B] column of the gold choice.
    lens         "logit" or "tuned".
    scores       [B, L+1, C] log of `probs` (-inf for a padded, missing choice).
    tied         [B] bool: two of the example's choices are scored on identical ids (first-token
                 readout: labels sharing a first token), so they tie at every layer.
    """

    probs: torch.Tensor
    ranks: torch.Tensor
    choice_probs: torch.Tensor
    gold: torch.Tensor
    lens: str = "logit"
    meta: dict = field(default_factory=dict)
    scores: torch.Tensor | None = None  # [B, L+1, C] log-prob of each choice's scored tokens
    tied: torch.Tensor | None = None  # [B] bool: two choices have identical scored ids (they tie)
    score: str = "first_token"  # "label": whole label (`label_lens`); "first_token": its first token

    @property
    def num_layers(self) -> int:
        """L (the result has L+1 rows)."""
        return self.probs.shape[1] - 1

    def gold_probs(self, renormalised: bool = False) -> torch.Tensor:
        """[B, L+1] P(gold label token), full-vocab or renormalised over choices."""
        src = self.choice_probs if renormalised else self.probs
        idx = self.gold.view(-1, 1, 1).expand(-1, src.shape[1], 1)
        return src.gather(2, idx).squeeze(2)

    def gold_ranks(self) -> torch.Tensor:
        """[B, L+1] full-vocab rank of the gold label token."""
        idx = self.gold.view(-1, 1, 1).expand(-1, self.ranks.shape[1], 1)
        return self.ranks.gather(2, idx).squeeze(2)


def check_inputs(model, input_ids, attention_mask, positions, target_ids, gold):
    """Validate and normalise lens inputs -> (ids, mask, positions, targets, gold) as long tensors.

    Raises ValueError with a readable message on any shape/range problem.
    """
    if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2:
        raise ValueError("input_ids must be a [batch, seq] tensor of token ids")
    B, T = input_ids.shape
    if B == 0 or T == 0:
        raise ValueError("input_ids is empty")
    vocab = _bridge.unembedding(model).weight.shape[0]
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    attention_mask = torch.as_tensor(attention_mask)
    if attention_mask.shape != input_ids.shape:
        raise ValueError(f"attention_mask shape {tuple(attention_mask.shape)} != input_ids "
                         f"shape {tuple(input_ids.shape)}")
    positions = torch.as_tensor(positions, dtype=torch.long).reshape(-1)
    if positions.shape[0] != B:
        raise ValueError(f"positions needs one entry per example ({B}), got {positions.shape[0]}")
    if positions.min() < 0 or positions.max() >= T:
        raise ValueError(f"positions must lie in [0, {T}); got {positions.tolist()}")
    rows = torch.arange(B)
    if not bool((attention_mask[rows, positions] != 0).all()):
        raise ValueError("a position points at a padding token (attention_mask == 0)")
    target_ids = torch.as_tensor(target_ids, dtype=torch.long)
    if target_ids.dim() == 1:
        target_ids = target_ids.unsqueeze(1)
    if target_ids.dim() != 2 or target_ids.shape[0] != B or target_ids.shape[1] == 0:
        raise ValueError(f"target_ids must be [batch={B}, choices], got {tuple(target_ids.shape)}")
    if target_ids.min() < 0 or target_ids.max() >= vocab:
        raise ValueError(f"target_ids must be token ids in [0, {vocab})")
    C = target_ids.shape[1]
    gold = torch.as_tensor(gold, dtype=torch.long)
    gold = gold.expand(B).clone() if gold.dim() == 0 else gold.reshape(-1)
    if gold.shape[0] != B or gold.min() < 0 or gold.max() >= C:
        raise ValueError(f"gold must be a column index in [0, {C}) (one int or one per example)")
    dev = _bridge.unembedding(model).weight.device
    return (input_ids.to(dev), attention_mask.to(dev), positions.to(dev), target_ids.to(dev),
            gold.cpu())


def readout(logits: torch.Tensor, target_ids: torch.Tensor, gold: torch.Tensor,
            lens: str) -> LensResult:
    """LensResult from per-layer logits [L+1, B, V] at the label position.

    Loops over layers so only one [B, V] softmax is alive at a time (memory stays ~B*V).
    """
    probs, ranks, choice = [], [], []
    for lg in logits:
        lg = lg.float()  # bf16/fp16 models: softmax and rank comparisons in fp32
        tl = lg.gather(1, target_ids)  # [B, C]
        probs.append((tl - torch.logsumexp(lg, dim=1, keepdim=True)).exp())
        # rank = 1 + count of strictly larger logits. One contiguous [B, V] comparison per
        # choice is ~7x faster on CPU than one broadcast [B, V, C] comparison.
        ranks.append(1 + torch.stack([(lg > tl[:, c:c + 1]).sum(1) for c in range(tl.shape[1])], 1))
        choice.append(torch.softmax(tl, dim=1))
    probs = torch.stack(probs, 1).cpu()
    tied = (target_ids[:, :, None] == target_ids[:, None, :]).sum((1, 2)) > target_ids.shape[1]
    return LensResult(probs=probs, ranks=torch.stack(ranks, 1).cpu(),
                      choice_probs=torch.stack(choice, 1).cpu(), gold=gold, lens=lens,
                      scores=probs.log(), tied=tied.cpu(), score="first_token")


def gather_positions(hs, positions: torch.Tensor) -> torch.Tensor:
    """Stack hidden states (L+1 of [B, T, D]) at one position per example -> [L+1, B, D]."""
    rows = torch.arange(positions.shape[0], device=positions.device)
    return torch.stack([h[rows, positions] for h in hs])


def logit_lens(model, input_ids, attention_mask, positions, target_ids, gold=0) -> LensResult:
    """Fast logit lens. input_ids/attention_mask [B, T]; positions [B]; target_ids [B, C].

    positions[b] is the position whose next-token distribution emits example b's label (usually
    the last prompt token); target_ids[b, c] the first token of choice c's label; gold the gold
    column (int for all, or [B]). Returns a LensResult with L+1 rows.
    """
    ids, mask, pos, tgt, gold = check_inputs(model, input_ids, attention_mask, positions,
                                             target_ids, gold)
    hs = _bridge.hidden_states(model, ids, mask)
    h = gather_positions(hs, pos)  # [L+1, B, D]
    with torch.no_grad():
        # Rows 0..L-1 are pre-norm residuals; row L is already normed by HF — norming it again
        # would distort the final layer (|dp| up to ~1 on SmolLM2).
        logits = torch.cat([_bridge.unembed(model, h[:-1]),
                            _bridge.unembed(model, h[-1:], normed=True)])
    return readout(logits, tgt, gold, "logit")


def tl_accumulated_logits(tl_bridge, input_ids, attention_mask=None, layers=None) -> torch.Tensor:
    """TransformerLens logit lens over every position: [n_layers, B, T, V].

    `run_with_cache` + `accumulated_resid(apply_ln=True)` (TL re-applies the final norm to each
    layer's residual) + `unembed`. `layers` selects rows of the accumulated residual (default all
    L+1). Memory is n_layers*B*T*V floats: ~17 GiB for SmolLM2 at 32x96 over all 31 rows.
    """
    with torch.no_grad():
        _, cache = tl_bridge.run_with_cache(input_ids, attention_mask=attention_mask)
        resid = cache.accumulated_resid(apply_ln=True)  # [L+1, B, T, D]
        del cache
        if layers is not None:
            resid = resid[list(layers)]
        return tl_bridge.unembed(resid)


def logit_lens_tl(model, input_ids, attention_mask, positions, target_ids, gold=0,
                  tl_bridge=None) -> LensResult:
    """Reference logit lens through TransformerLens; same signature/output as `logit_lens`.

    Builds a bridge around a copy of `model` unless `tl_bridge` is given. Unembeds every position
    (the ordinary TL recipe), then reads the label positions — use it on small inputs.
    """
    ids, mask, pos, tgt, gold = check_inputs(model, input_ids, attention_mask, positions,
                                             target_ids, gold)
    tl_bridge = tl_bridge if tl_bridge is not None else _bridge.build_bridge(model)
    logits = tl_accumulated_logits(tl_bridge, ids, mask)  # [L+1, B, T, V]
    rows = torch.arange(ids.shape[0], device=ids.device)
    return readout(logits[:, rows, pos], tgt, gold, "logit")


# ---- whole-label lens --------------------------------------------------------------------------
def check_label_inputs(model, contexts, choices, gold):
    """Validate whole-label lens inputs -> (contexts, choices, gold): lists of int lists, [B] gold.

    contexts: B id sequences (lists or 1-D tensors); choices: B lists of C_b >= 1 id sequences
    (C_b may differ between examples); gold: one int or one per example, in [0, C_b).
    """
    vocab = _bridge.unembedding(model).weight.shape[0]
    ctxs = [[int(t) for t in c] for c in contexts]
    chs = [[[int(t) for t in x] for x in ex] for ex in choices]
    if not ctxs or len(chs) != len(ctxs):
        raise ValueError("need one list of choices per context (and at least one context)")
    if any(not c for c in ctxs):
        raise ValueError("a context is empty: the label needs at least one token before it")
    if any(not ex for ex in chs) or any(not x for ex in chs for x in ex):
        raise ValueError("every example needs at least one choice, and every choice at least one token")
    ids = [t for c in ctxs for t in c] + [t for ex in chs for x in ex for t in x]
    if min(ids) < 0 or max(ids) >= vocab:
        raise ValueError(f"token ids must lie in [0, {vocab})")
    B = len(ctxs)
    gold = torch.as_tensor(gold, dtype=torch.long)
    gold = gold.expand(B).clone() if gold.dim() == 0 else gold.reshape(-1)
    if gold.shape[0] != B or any(not 0 <= int(g) < len(ex) for g, ex in zip(gold, chs)):
        raise ValueError("gold must be a choice index of its example (one int or one per example)")
    return ctxs, chs, gold.cpu()


@dataclass
class LabelRows:
    """Forward rows that hold each choice's label in full, and the sites where its tokens are read
    (no KV cache: what a TransformerLens bridge needs, `interp.tl_lens`, `interp.dla` method "tl").

    Rows: one per example whose choices are all one-token (its context), else one per multi-token
    choice (context + label but its last token). Sites of an example: its first row's last context
    position (it emits every choice's first token), then each multi-token choice's later label
    tokens, in (choice, token) order.

    ids, mask   [R, T] right-padded rows (pad id `pad`); n_ctx [R] context length of each row;
                row_ex [R] its example.
    site_row, site_pos, site_ex  [S] row, position and example of each reading site.
    tok_site, tok_id, tok_ex, tok_choice  [N] one entry per label token read: its site, its id,
                its example and its choice column (N = sum over examples of their label lengths).
    first_site  [B] each example's first site.
    """

    ids: torch.Tensor
    mask: torch.Tensor
    n_ctx: torch.Tensor
    row_ex: torch.Tensor
    site_row: torch.Tensor
    site_pos: torch.Tensor
    site_ex: torch.Tensor
    tok_site: torch.Tensor
    tok_id: torch.Tensor
    tok_ex: torch.Tensor
    tok_choice: torch.Tensor
    first_site: torch.Tensor  # [B] each example's first site (where every choice's first token is read)

    def to(self, device) -> "LabelRows":
        return LabelRows(**{k: getattr(self, k).to(device) for k in self.__dataclass_fields__})


def label_rows(ctxs: list[list[int]], chs: list[list[list[int]]], pad: int = 0) -> LabelRows:
    """`LabelRows` for `check_label_inputs`'s contexts and choices (examples in order)."""
    rows, row_ex, n_ctx = [], [], []
    site = ([], [], [])  # row, pos, example
    tok = ([], [], [], [])  # site, id, example, choice
    first_site = []
    for b, (ctx, ex) in enumerate(zip(ctxs, chs)):
        multi = [c for c, x in enumerate(ex) if len(x) > 1]
        first_row = len(rows)
        first_site.append(len(site[0]))
        for c in multi or [None]:
            rows.append(ctx + (ex[c][:-1] if c is not None else []))
            row_ex.append(b)
            n_ctx.append(len(ctx))
        reads = [(first_row, len(ctx) - 1, [(x[0], c) for c, x in enumerate(ex)])]
        reads += [(first_row + j, len(ctx) - 1 + k, [(ex[c][k], c)]) for j, c in enumerate(multi)
                  for k in range(1, len(ex[c]))]
        for r, pos, toks in reads:
            for lst, v in zip(site, (r, pos, b)):
                lst.append(v)
            for t, c in toks:
                for lst, v in zip(tok, (len(site[0]) - 1, t, b, c)):
                    lst.append(v)
    ids, mask = pad_right(rows, pad)
    long = lambda v: torch.tensor(v, dtype=torch.long)  # noqa: E731
    return LabelRows(ids, mask, long(n_ctx), long(row_ex), *map(long, site), *map(long, tok), long(first_site))


def _cache_kwarg(base) -> str:
    import inspect

    params = inspect.signature(base.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def _label_hidden(model, ctxs, chs, share_context: bool = True, info: dict | None = None):
    """Hidden states (L+1 rows, `hidden_states` convention) at the positions that emit label tokens.

    -> first [L+1, B, D]: the last context position, which emits every choice's first token;
       rest [L+1, M, D]: one row per later label token, ordered by (example, choice, token).
    share_context: run each context once and its choices' tokens on its KV cache (expanded to one
    row per choice), as rank evaluation does; False runs context + label for every choice.
    info: if a dict, receives "n_ctx" [B] and (when a second forward runs) "sel", the [M', T'] mask
    of its positions that `rest` reads, so hooks on the modules can pick the same positions.
    """
    dev = _bridge.unembedding(model).weight.device
    base = getattr(model, "base_model", model)
    L = _bridge.num_layers(model)
    ids, mask = (t.to(dev) for t in pad_right(ctxs, 0))
    n_ctx = mask.sum(1)
    if info is not None:
        info["n_ctx"] = n_ctx
    multi = [(b, c) for b, ex in enumerate(chs) for c, x in enumerate(ex) if len(x) > 1]
    with torch.no_grad():
        out = base(input_ids=ids, attention_mask=mask, output_hidden_states=True,
                   use_cache=bool(multi) and share_context)
        if out.hidden_states is None or len(out.hidden_states) != L + 1:
            raise ValueError(f"{type(model).__name__} did not return L+1 hidden states")
        rows = torch.arange(len(ctxs), device=dev)
        first = torch.stack([h[rows, n_ctx - 1] for h in out.hidden_states])
        if not multi:
            return first, first.new_zeros((L + 1, 0, first.shape[-1]))
        rep = torch.tensor([b for b, _ in multi], device=dev)
        cache = out.cache if hasattr(out, "cache") else getattr(out, "past_key_values", None)
        if share_context and cache is not None and hasattr(cache, "reorder_cache"):
            x_ids, x_att = (t.to(dev) for t in pad_right([chs[b][c][:-1] for b, c in multi], 0))
            cache.reorder_cache(rep)  # index-expand the contexts' keys/values to one row per choice
            pos = n_ctx[rep][:, None] + torch.arange(x_ids.shape[1], device=dev)[None]
            hs = base(input_ids=x_ids, attention_mask=torch.cat([mask[rep], x_att], 1), position_ids=pos,
                      use_cache=True, output_hidden_states=True, **{_cache_kwarg(base): cache}).hidden_states
            sel = x_att.bool()
        else:  # the plain way: context + label (but its last token) per choice
            full, x_att = (t.to(dev) for t in pad_right([ctxs[b] + chs[b][c][:-1] for b, c in multi], 0))
            hs = base(input_ids=full, attention_mask=x_att, output_hidden_states=True, use_cache=False).hidden_states
            k = torch.arange(full.shape[1], device=dev)[None]
            sel = (k >= n_ctx[rep][:, None]) & x_att.bool()
        if info is not None:
            info["sel"] = sel
        return first, torch.stack([h[sel] for h in hs])  # row-major: (choice row, token)


def label_lens(model, contexts, choices, gold=0, *, lens=None, batch: int = 16,
               share_context: bool = True) -> LensResult:
    """Whole-label lens: per layer, log P(each choice's whole label | context), teacher-forced.

    contexts: B token-id sequences (everything before the label); choices: per example, each
    choice's label ids (C_b choices, any lengths; examples with fewer than C = max C_b choices get
    padded columns with score -inf); gold: the gold column(s). For label token k of a choice the
    layer-i readout at the position that emits it (the last context position for k = 0, label
    token k-1 otherwise) gives log p_i(token k); the choice's score at row i is the sum over k.
    Row L is the model's own output, so `scores[:, -1]` are exactly rank evaluation's choice
    log-likelihoods. `lens`: a trained tuned lens (rows 0..L-1 through its translators) or None
    (logit lens). Returns a LensResult with score "label"; `ranks` are the first label token's.
    """
    ctxs, chs, gold = check_label_inputs(model, contexts, choices, gold)
    L = _bridge.num_layers(model)
    if lens is not None and len(lens) != L:
        raise ValueError(f"tuned lens has {len(lens)} translators, model has {L} layers")
    C = max(len(ex) for ex in chs)
    parts = [_label_scores(model, ctxs[s:s + batch], chs[s:s + batch], C, lens, share_context)
             for s in range(0, len(ctxs), max(1, batch))]
    scores = torch.cat([p[0] for p in parts])  # [B, L+1, C]
    ranks = torch.cat([p[1] for p in parts])
    tied = torch.tensor([len(set(map(tuple, ex))) < len(ex) for ex in chs])
    return LensResult(probs=scores.exp(), ranks=ranks, choice_probs=torch.softmax(scores, -1), gold=gold,
                      lens="tuned" if lens is not None else "logit", scores=scores, tied=tied, score="label")


def _label_scores(model, ctxs, chs, C, lens, share_context):
    """([b, L+1, C] summed label log-probs, [b, L+1, C] first-token ranks) for one chunk."""
    first, rest = _label_hidden(model, ctxs, chs, share_context)
    L, B = first.shape[0] - 1, len(ctxs)
    dev, vocab = first.device, _bridge.unembedding(model).weight.shape[0]
    valid = torch.tensor([[c < len(ex) for c in range(C)] for ex in chs], device=dev)
    first_tok = torch.tensor([[ex[c][0] if c < len(ex) else 0 for c in range(C)] for ex in chs], device=dev)
    rest_tok = torch.tensor([t for ex in chs for x in ex for t in x[1:]], dtype=torch.long, device=dev)
    rest_col = torch.tensor([b * C + c for b, ex in enumerate(chs) for c, x in enumerate(ex) for _ in x[1:]],
                            dtype=torch.long, device=dev)

    def logits(i, h):
        with torch.no_grad():
            if i == L:  # HF's last hidden state is already normed
                return _bridge.unembed(model, h, normed=True).float()
            return (lens(h, i) if lens is not None else _bridge.unembed(model, h)).float()

    scores, ranks = [], []
    for i in range(L + 1):
        lg = logits(i, first[i])  # [B, V]
        tl = lg.gather(1, first_tok)  # [B, C]
        s = (tl - torch.logsumexp(lg, 1, keepdim=True)).reshape(-1)
        if rest_tok.numel():
            lr = torch.log_softmax(logits(i, rest[i]), -1)  # [M, V]
            s = s.index_add(0, rest_col, lr.gather(1, rest_tok[:, None])[:, 0])
        scores.append(s.view(B, C).masked_fill(~valid, float("-inf")))
        rk = 1 + torch.stack([(lg > tl[:, c:c + 1]).sum(1) for c in range(C)], 1)
        ranks.append(rk.masked_fill(~valid, vocab + 1))
    return torch.stack(scores, 1).cpu(), torch.stack(ranks, 1).cpu()


def label_inputs(tok, contexts, choices, gold=None, sep: str = " ") -> dict:
    """Tokenise context strings and choice label strings into `label_lens` inputs.

    A label's ids are read from the tokenisation of context + sep + label (BPE merges at the
    boundary respected); if the context's own tokens change there, from sep + label alone.
    Returns {"contexts": B id lists, "choices": B lists of C id lists, "gold": [B]}.
    """
    contexts, choices = list(contexts), [list(c) for c in choices]
    if not contexts or len(choices) != len(contexts):
        raise ValueError("need one list of choices per context (and at least one context)")
    ctx_ids, ch_ids = [], []
    for ctx, chs in zip(contexts, choices):
        ids = list(tok(ctx)["input_ids"])
        row = []
        for ch in chs:
            full = list(tok(ctx + sep + ch)["input_ids"])
            row.append(full[len(ids):] if full[:len(ids)] == ids and len(full) > len(ids)
                       else list(tok(sep + ch, add_special_tokens=False)["input_ids"]))
        ctx_ids.append(ids)
        ch_ids.append(row)
    gold = torch.zeros(len(ctx_ids), dtype=torch.long) if gold is None else torch.as_tensor(gold, dtype=torch.long)
    return {"contexts": ctx_ids, "choices": ch_ids, "gold": gold}


def prepare_inputs(tok, contexts, choices, gold=None, sep: str = " ") -> dict:
    """Tokenise prompts and choice labels into lens inputs (right-padded).

    contexts: B strings that precede the label (e.g. "...\\nAnswer:"); choices: B lists of C
    label strings; gold: B column indices (default 0). A label's first token is read from the
    tokenisation of context + sep + label, so BPE merges at the boundary are respected; if the
    context's own tokens change there, it falls back to tokenising sep + label alone.
    Returns {"input_ids" [B, T], "attention_mask" [B, T], "positions" [B], "target_ids" [B, C],
    "gold" [B]} - pass as `logit_lens(model, **inputs)`.
    """
    contexts = list(contexts)
    choices = [list(c) for c in choices]
    if not contexts or len(choices) != len(contexts):
        raise ValueError("need one list of choices per context (and at least one context)")
    C = len(choices[0])
    if C == 0 or any(len(c) != C for c in choices):
        raise ValueError("every example needs the same, non-zero number of choices")
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    if pad is None:
        raise ValueError("the tokenizer has neither a pad nor an eos token to pad with")
    rows, targets = [], []
    for ctx, chs in zip(contexts, choices):
        ids = tok(ctx)["input_ids"]
        if not ids:
            raise ValueError(f"context {ctx!r} tokenises to nothing")
        row_t = []
        for ch in chs:
            full = tok(ctx + sep + ch)["input_ids"]
            if full[:len(ids)] == ids and len(full) > len(ids):
                row_t.append(full[len(ids)])
            else:
                alone = tok(sep + ch, add_special_tokens=False)["input_ids"]
                if not alone:
                    raise ValueError(f"choice {ch!r} tokenises to nothing")
                row_t.append(alone[0])
        rows.append(ids)
        targets.append(row_t)
    input_ids, mask = pad_right(rows, pad)
    gold = torch.zeros(len(rows), dtype=torch.long) if gold is None else \
        torch.as_tensor(gold, dtype=torch.long)
    return {"input_ids": input_ids, "attention_mask": mask,
            "positions": torch.tensor([len(r) - 1 for r in rows]),
            "target_ids": torch.tensor(targets), "gold": gold}


def pad_right(rows: Sequence[Sequence[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token id lists -> right-padded `input_ids` [B, T] and `attention_mask` [B, T]."""
    T = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), T), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), T), dtype=torch.long)
    for b, r in enumerate(rows):
        input_ids[b, :len(r)] = torch.tensor(list(r), dtype=torch.long)
        mask[b, :len(r)] = 1
    return input_ids, mask
