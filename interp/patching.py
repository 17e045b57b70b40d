"""Activation patching: how much of the gold logit difference one layer's activation restores.

Shapes: B examples, L blocks, R forward rows, S reading sites (see `interp.dla.LabelSites`).

Two runs with the same choices: the *clean* run (model, contexts) and the *corrupted* run
(`corrupted_model` or the same model, `corrupted_contexts` or the same contexts): a clean vs a
corrupted prompt on one model, or one prompt on two models of the same architecture (two
students of one base). For each site kind and layer, the corrupted run is repeated with that one
activation replaced by the clean run's, and the gold logit difference (whole-label,
gold minus the mean of the distractors: `interp.dla`'s definition) is read off its final logits.

    restored = (patched - corrupted) / (clean - corrupted)

(per example, or on the means: `restored_mean`; `restored_projection` projects each example's
shift on its own gap, which stays defined when the runs differ per example but not on average).

Site kinds (TransformerLens bridge hook names; row i of `resid` is the lens convention):
  resid  L+1 rows: row 0 the embeddings (`blocks.0.hook_resid_pre`), row i block i-1's output
         (`blocks.{i-1}.hook_resid_post`).
  attn   L rows: block i's attention output (`blocks.{i}.hook_attn_out`).
  mlp    L rows: block i's MLP output (`blocks.{i}.hook_mlp_out`).

Positions: "label" patches only the reading sites (the last context position, and the label
tokens of a multi-token choice's row), matched between the runs by their offset from the end of
the context, so the two contexts may differ in length; "all" patches every position (the two
runs' rows must have equal lengths).

Why the bridge's `run_with_hooks` and not plain PyTorch hooks on HF modules: the hook points are
named the same across architectures (GPT-2's `attn.c_proj` and Llama's `self_attn.o_proj`,
tuple vs tensor block outputs are the bridge's problem), they are the points `interp.dla`
decomposes, and a hook's return value replaces the activation. The price is one deep copy of
each model (`interp.bridge.build_bridge`); pass `tl_bridge=` / `corrupted_bridge=` to reuse them.

Nothing here imports from `cotdsl/`.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from interp import bridge as _bridge
from interp.dla import LabelSites, _site_hooks, site_logit_diff, sites_on
from interp.lens import check_label_inputs

SITES = ("resid", "attn", "mlp")
POSITIONS = ("label", "all")


def hook_name(site: str, row: int) -> str:
    """The bridge hook patched for `site` at row `row` (see the module docstring)."""
    if site == "resid":
        return "blocks.0.hook_resid_pre" if row == 0 else f"blocks.{row - 1}.hook_resid_post"
    if site in ("attn", "mlp"):
        return f"blocks.{row}.hook_{site}_out"
    raise ValueError(f"unknown site {site!r}; choose from {', '.join(SITES)}")


@dataclass
class PatchResult:
    """Logit differences of the clean, corrupted and patched runs.

    clean     [B] gold logit difference of the clean run (the activations' source).
    corrupted [B] of the corrupted run, unpatched.
    patched   {site: [B, rows]} of the corrupted run with one activation patched in (resid: L+1
              rows, row 0 = embeddings; attn / mlp: L rows, one per block).
    positions "label" or "all".
    gold      [B] gold column.
    """

    clean: torch.Tensor
    corrupted: torch.Tensor
    patched: dict[str, torch.Tensor]
    positions: str
    gold: torch.Tensor
    meta: dict = field(default_factory=dict)

    def restored(self, site: str, eps: float = 1e-6) -> torch.Tensor:
        """[B, rows] per-example (patched - corrupted) / (clean - corrupted); NaN where the two
        runs' differences are within `eps` (nothing to restore)."""
        gap = (self.clean - self.corrupted)[:, None]
        frac = (self.patched[site] - self.corrupted[:, None]) / gap
        return frac.masked_fill(gap.abs() < eps, float("nan"))

    def restored_mean(self, site: str) -> torch.Tensor:
        """[rows] restored fraction of the mean difference: (mean patched - mean corrupted) /
        (mean clean - mean corrupted); steadier than averaging per-example ratios."""
        gap = self.clean.mean() - self.corrupted.mean()
        return (self.patched[site].mean(0) - self.corrupted.mean()) / gap

    def restored_projection(self, site: str, eps: float = 1e-12) -> torch.Tensor:
        """[rows] the per-example shifts projected on the per-example gaps (least squares):
        sum_b (patched_b - corrupted_b)(clean_b - corrupted_b) / sum_b (clean_b - corrupted_b)^2.
        1 when the patch moves every example all the way to the clean run, 0 when it moves none;
        a patch that moves each example a share a of its own gap gives a. Unlike
        `restored_mean` it stays defined when the runs differ example by example but not on
        average (two students that disagree per question, both at chance); NaN when every gap is
        ~0 (sum of squares < eps)."""
        gap = (self.clean - self.corrupted).double()
        shift = self.patched[site].double() - self.corrupted.double()[:, None]
        ss = (gap ** 2).sum()
        out = (shift * gap[:, None]).sum(0) / ss
        return out.masked_fill(ss < eps, float("nan"))

    def restored_ci(self, site: str, stat: str = "projection", level: float = 0.95, n_boot: int = 2000,
                    seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(point, lo, hi), each [rows]: `restored_projection` (stat "projection") or
        `restored_mean` ("mean") and its percentile bootstrap CI, examples resampled whole
        (`n_boot` draws, torch generator `seed`)."""
        if stat not in ("projection", "mean"):
            raise ValueError(f"stat must be 'projection' or 'mean', not {stat!r}")
        if not 0 < level < 1:
            raise ValueError(f"level must lie in (0, 1), not {level!r}")
        B = self.clean.shape[0]
        idx = torch.randint(0, B, (n_boot, B), generator=torch.Generator().manual_seed(seed))
        clean, bad, x = self.clean.double()[idx], self.corrupted.double()[idx], self.patched[site].double()[idx]
        gap, shift = clean - bad, x - bad[..., None]  # [n_boot, B], [n_boot, B, rows]
        if stat == "projection":
            draws = (shift * gap[..., None]).sum(1) / (gap ** 2).sum(1, keepdim=True)
            point = self.restored_projection(site)
        else:
            draws = shift.mean(1) / gap.mean(1, keepdim=True)
            point = self.restored_mean(site).double()
        q = torch.tensor([(1 - level) / 2, (1 + level) / 2], dtype=torch.float64)
        lo, hi = torch.nanquantile(draws, q, dim=0)
        return point, lo, hi


def activation_patching(model, contexts, choices, gold=0, *, corrupted_contexts=None, corrupted_model=None,
                        sites=SITES, positions: str = "label", tl_bridge=None, corrupted_bridge=None,
                        batch: int = 16) -> PatchResult:
    """Patch each layer's residual stream / attention output / MLP output from the clean run into
    the corrupted run; report the gold logit difference of every patched run.

    contexts, choices, gold: as `interp.lens.label_lens` (choices need >= 2 per example); the clean
    run reads `contexts` on `model`. The corrupted run reads `corrupted_contexts` (default the
    same) on `corrupted_model` (default the same model); one of them must differ. Both runs score
    the same choices. sites: a subset of SITES; positions: "label" or "all". `batch` examples per
    forward; each chunk costs 2 + (L+1 + 2L) forwards for all three site kinds.
    """
    if positions not in POSITIONS:
        raise ValueError(f"positions must be one of {', '.join(POSITIONS)}, not {positions!r}")
    sites = tuple(sites)
    if not sites or any(s not in SITES for s in sites):
        raise ValueError(f"sites must be a non-empty subset of {', '.join(SITES)}")
    if corrupted_contexts is None and corrupted_model is None:
        raise ValueError("give corrupted_contexts, corrupted_model or both: the runs are identical")
    ctxs, chs, gold = check_label_inputs(model, contexts, choices, gold)
    bad = ctxs if corrupted_contexts is None else check_label_inputs(model, corrupted_contexts, choices, gold)[0]
    if len(bad) != len(ctxs):
        raise ValueError(f"{len(ctxs)} clean contexts but {len(bad)} corrupted ones")
    if positions == "all" and any(len(a) != len(b) for a, b in zip(ctxs, bad)):
        raise ValueError('positions="all" needs clean and corrupted contexts of equal lengths; use "label"')
    clean_br = tl_bridge if tl_bridge is not None else _bridge.build_bridge(model)
    if corrupted_model is None:
        bad_br = corrupted_bridge if corrupted_bridge is not None else clean_br
    else:
        bad_br = corrupted_bridge if corrupted_bridge is not None else _bridge.build_bridge(corrupted_model)
    a, b = clean_br.cfg, bad_br.cfg
    if (a.n_layers, a.d_model) != (b.n_layers, b.d_model):
        raise ValueError(f"models differ in shape: {a.n_layers} vs {b.n_layers} layers, "
                         f"d_model {a.d_model} vs {b.d_model}")
    parts = [_patch_chunk(clean_br, bad_br, ctxs[s:s + batch], bad[s:s + batch], chs[s:s + batch],
                          gold[s:s + batch], sites, positions)
             for s in range(0, len(ctxs), max(1, batch))]
    patched = {k: torch.cat([p[2][k] for p in parts]) for k in sites}
    return PatchResult(clean=torch.cat([p[0] for p in parts]), corrupted=torch.cat([p[1] for p in parts]),
                       patched=patched, positions=positions, gold=gold,
                       meta={"n_layers": a.n_layers, "two_models": corrupted_model is not None,
                             "two_prompts": corrupted_contexts is not None})


def _final_diff(br, sites: LabelSites, B: int, hooks=()) -> torch.Tensor:
    """[B] logit difference of one forward (extra `hooks` applied), read at the sites."""
    store: dict = {}
    with torch.no_grad():
        br.run_with_hooks(sites.ids, attention_mask=sites.mask,
                          fwd_hooks=list(hooks) + _site_hooks(sites, store, ["ln_final.hook_out"]),
                          logits_to_keep=1)
    return site_logit_diff(br, sites, store["ln_final.hook_out"], B)


def _patch_chunk(clean_br, bad_br, ctxs, bad_ctxs, chs, gold, sites, positions):
    L = clean_br.cfg.n_layers
    B = len(ctxs)
    src, dst = sites_on(clean_br, ctxs, chs, gold), sites_on(bad_br, bad_ctxs, chs, gold)
    names = [hook_name(k, i) for k in sites for i in range(L + 1 if k == "resid" else L)]
    # Clean run: keep what will be patched (the sites only, or whole rows) and read its difference.
    saved: dict = {}

    def keeper(name):  # keyed by the name asked for: `hook.name` is the canonical alias target
        def keep(act, hook):
            saved[name] = (act[src.site_row, src.site_pos] if positions == "label" else act).detach().clone()
            return act
        return keep

    clean = _final_diff(clean_br, src, B, [(n, keeper(n)) for n in names])
    corrupted = _final_diff(bad_br, dst, B)
    patched = {}
    for k in sites:
        cols = []
        for i in range(L + 1 if k == "resid" else L):
            name = hook_name(k, i)
            val = saved[name]

            def put(act, hook, val=val):
                act = act.clone()
                if positions == "label":
                    act[dst.site_row, dst.site_pos] = val.to(act.dtype)
                else:
                    T = min(act.shape[1], val.shape[1])
                    act[:, :T] = val[:, :T].to(act.dtype)
                return act

            cols.append(_final_diff(bad_br, dst, B, [(name, put)]))
        patched[k] = torch.stack(cols, 1)
    return clean, corrupted, patched
