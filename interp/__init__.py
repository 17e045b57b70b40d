"""interp: when does a causal LM commit to its label? Logit lens, tuned lens, commitment, reports.

Usable on any Hugging Face causal LM without the DSL (imports nothing from `cotdsl`).

    from interp import logit_lens, commit_layers, render_report
    res = logit_lens(model, input_ids, attention_mask, positions, target_ids, gold)
    commit_layers(res)            # [B] earliest layer the gold choice wins for good, -1 = never
    render_report({"no_cot": res})

Names are resolved lazily so `import interp` stays cheap (no polars / tuned-lens / TL import).
Integrated Gradients: `ig_word_scores` (interp.attribution), `print_attribution` /
`attribution_png` (interp.view); its summary is `interp.attribution.summarize`.
Mechanisms at the label position: `direct_logit_attribution` (interp.dla), `activation_patching`
(interp.patching), `rationale_attention` (interp.attention); their reports `render_*` / `plot_*`
(interp.mech_report).
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    "LensResult": "interp.lens", "logit_lens": "interp.lens", "logit_lens_tl": "interp.lens",
    "prepare_inputs": "interp.lens", "label_lens": "interp.lens", "label_inputs": "interp.lens",
    "tuned_label_lens": "interp.tuned",
    "tl_accumulated_logits": "interp.lens",
    "build_bridge": "interp.bridge", "hidden_states": "interp.bridge",
    "train_tuned_lens": "interp.tuned", "tuned_lens": "interp.tuned", "lens_kl": "interp.tuned",
    "save_tuned_lens": "interp.tuned", "load_tuned_lens": "interp.tuned",
    "cached_tuned_lens": "interp.tuned", "new_tuned_lens": "interp.tuned",
    "commit_layers": "interp.commit", "summarize": "interp.commit", "top1_mask": "interp.commit",
    "to_frame": "interp.report", "layer_means": "interp.report", "commit_table": "interp.report",
    "render_report": "interp.report", "plot_report": "interp.report",
    "IGItem": "interp.attribution", "IGResult": "interp.attribution",
    "ig_word_scores": "interp.attribution",
    "print_attribution": "interp.view", "attribution_png": "interp.view",
    "DLAResult": "interp.dla", "direct_logit_attribution": "interp.dla", "label_sites": "interp.dla",
    "PatchResult": "interp.patching", "activation_patching": "interp.patching",
    "AttentionResult": "interp.attention", "rationale_attention": "interp.attention",
    "rationale_inputs": "interp.attention", "bootstrap_mean_ci": "interp.attention",
    "render_dla": "interp.mech_report", "plot_dla": "interp.mech_report",
    "render_patching": "interp.mech_report", "plot_patching": "interp.mech_report",
    "render_attention": "interp.mech_report", "plot_attention": "interp.mech_report",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'interp' has no attribute {name!r}")
