"""Commitment: the earliest layer from which the gold label wins among the choices for good.

Shapes: B examples, L blocks (L+1 lens rows: embeddings + each block), C choices.
"""
from __future__ import annotations

import statistics

import torch

from interp.lens import LensResult


def _unpack(choice_probs, gold):
    if isinstance(choice_probs, LensResult):
        gold = choice_probs.gold if gold is None else gold
        choice_probs = choice_probs.choice_probs
    if gold is None:
        raise ValueError("gold is required when passing a choice_probs tensor")
    choice_probs = torch.as_tensor(choice_probs)
    if choice_probs.dim() != 3:
        raise ValueError(f"choice_probs must be [batch, layers+1, choices], got "
                         f"{tuple(choice_probs.shape)}")
    B, _, C = choice_probs.shape
    gold = torch.as_tensor(gold, dtype=torch.long).reshape(-1)
    if gold.shape[0] != B or (B and (gold.min() < 0 or gold.max() >= C)):
        raise ValueError(f"gold must hold one column index in [0, {C}) per example ({B})")
    return choice_probs, gold


def top1_mask(choice_probs, gold=None) -> torch.Tensor:
    """[B, L+1] bool: the gold choice strictly beats every other choice at that layer.

    Strict, so a tie (e.g. two choices whose labels share a first token) is not a win.
    """
    choice_probs, gold = _unpack(choice_probs, gold)
    B, rows, C = choice_probs.shape
    idx = gold.view(-1, 1, 1).expand(-1, rows, 1)
    gold_p = choice_probs.gather(2, idx).squeeze(2)
    if C == 1:
        return torch.ones(B, rows, dtype=torch.bool)
    others = choice_probs.scatter(2, idx, float("-inf")).amax(2)
    return gold_p > others


def commit_layers(choice_probs, gold=None) -> torch.Tensor:
    """[B] earliest lens row from which gold is top-1 among choices through the last row; -1 if
    it is not top-1 at the last row. Row 0 = embeddings, row i = output of block i-1.

    Accepts a LensResult (gold taken from it) or choice_probs [B, L+1, C] with gold [B].
    """
    top = top1_mask(choice_probs, gold).long()  # [B, L+1]
    rows = top.shape[1]
    # Count how many trailing rows are all wins: suffix product of the flipped mask.
    trailing = top.flip(1).cumprod(1).sum(1)
    return torch.where(trailing > 0, rows - trailing, torch.full_like(trailing, -1))


def summarize(result, gold=None) -> dict:
    """Per-layer mean P(gold) and the commit-layer distribution of one condition.

    Returns {"n", "mean_p_gold" (full vocab, [L+1] list; None for a bare tensor),
    "mean_choice_p_gold" ([L+1] list), "mean_rank_gold" (or None), "commit_layers" (list, -1 =
    never), "commit_mean", "commit_median" (over committed examples; None if none),
    "share_committed", "tied" (examples two of whose choices are scored on identical ids, e.g.
    labels sharing a first token under a first-token readout; None when unknown)}.
    """
    choice_probs, gold = _unpack(result, gold)
    idx = gold.view(-1, 1, 1).expand(-1, choice_probs.shape[1], 1)
    out = {"n": int(choice_probs.shape[0]),
           "mean_choice_p_gold": choice_probs.gather(2, idx).squeeze(2).float().mean(0).tolist(),
           "mean_p_gold": None, "mean_rank_gold": None, "tied": None}
    if isinstance(result, LensResult):
        out["mean_p_gold"] = result.probs.gather(2, idx).squeeze(2).float().mean(0).tolist()
        out["mean_rank_gold"] = result.ranks.gather(2, idx).squeeze(2).float().mean(0).tolist()
        out["tied"] = int(result.tied.sum()) if result.tied is not None else None
    layers = commit_layers(choice_probs, gold).tolist()
    done = [x for x in layers if x >= 0]
    out.update(commit_layers=layers,
               commit_mean=statistics.fmean(done) if done else None,
               commit_median=float(statistics.median(done)) if done else None,
               share_committed=len(done) / len(layers) if layers else 0.0)
    return out
