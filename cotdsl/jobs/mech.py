"""The mechanism stages of `probe { attribute: dla; attention: rationale; patch: a -> b }`: read at
the label of trained students, on the probe's examples and contexts (`stages.probe_batch`: the
same context, choices and score as the lens), each its own cached job.

    dla        dla.parquet        one row per example: the gold logit difference and its parts
                                  (embeddings, per-block attention / MLP / attention bias,
                                  per-head, final bias), `interp.dla`
    attention  attention.parquet  one row per example x layer x head: the label position's
                                  attention mass on the prompt, the rationale and the rest,
                                  `interp.attention` (rationale-first conditions)
    patch      patch.parquet      one row per example: the two runs' logit differences and each
                                  patched run's, per residual row / attention / MLP, `interp.patching`

The report side (`cotdsl/mech_report.py`) rebuilds interp's result objects from these files.
Heavy imports stay inside the functions (a cached run never imports torch).
"""
from __future__ import annotations

from pathlib import Path

from ..cache import Store
from .stages import Progress, no_progress, probe_batch, job_dir, load_examples, trained


def probe_items(job, store: Store, cond, tok, model_seed: int):
    """(items, skipped, n asked): the probe's examples under `cond` as the lens reads them."""
    cfg = job.probe
    test = load_examples(job_dir(store, job.data_job) / "test.jsonl")[: cfg.examples]
    generated = {}
    if job.eval_job:  # a rationale-first student read after its own generations
        import polars as pl

        pred = pl.read_parquet(job_dir(store, job.eval_job) / "predictions.parquet")
        generated = {r["ex_id"]: r["generated"] for r in pred.iter_rows(named=True) if r["generated"] is not None}
    items, skipped = probe_batch(test, cond, tok, model_seed, context=cfg.context, generated=generated)
    if cfg.score == "first_token":
        for it in items:
            it["choice_ids"] = [x[:1] for x in it["choice_ids"]]
    return items, skipped, len(test)


def _inputs(items):
    return ([it["context_ids"] for it in items], [it["choice_ids"] for it in items],
            [it["ex"].answer for it in items])


def _counts(items, skipped, n: int) -> dict:
    return {"examples": len(items), "of": n, "unparsed": skipped["unparsed"],
            "no_rationale": skipped["no rationale"]}


def _write(out: Path, name: str, rows: list[dict], schema: dict) -> None:
    import polars as pl

    (pl.DataFrame(rows, schema=schema) if rows else pl.DataFrame(schema=schema)).write_parquet(out / name)


def _floats(t) -> list:
    return t.detach().double().cpu().tolist()


def dla_schema() -> dict:
    import polars as pl

    f, lf = pl.Float64, pl.List(pl.Float64)
    return {"ex_id": pl.Utf8, "context": pl.Utf8, "gold": pl.Int64, "n_choices": pl.Int64, "logit_diff": f,
            "embed": f, "pos_embed": f, "final_bias": f, "attn": lf, "mlp": lf, "attn_bias": lf,
            "heads": pl.List(lf)}


def run_dla(job, store: Store, out: Path, progress: Progress = no_progress) -> dict:
    """Direct logit attribution of each example's gold-minus-distractors logit difference."""
    model, tok = trained(store, job.train_job)
    items, skipped, n = probe_items(job, store, job.condition, tok, job.seed)
    info = {**_counts(items, skipped, n), "context": job.probe.context, "score": job.probe.score}
    rows = []
    if items:
        from interp.dla import direct_logit_attribution

        try:  # plain hooks and the KV cache; it refuses a layout it cannot reproduce
            res = direct_logit_attribution(model, *_inputs(items), method="hf")
        except ValueError:
            res = direct_logit_attribution(model, *_inputs(items), method="tl")
        for j, it in enumerate(items):
            rows.append({"ex_id": it["ex"].id, "context": it["context"], "gold": int(res.gold[j]),
                         "n_choices": int(res.n_choices[j]), "logit_diff": float(res.logit_diff[j]),
                         "embed": float(res.embed[j]), "pos_embed": float(res.pos_embed[j]),
                         "final_bias": float(res.final_bias[j]), "attn": _floats(res.attn[j]),
                         "mlp": _floats(res.mlp[j]), "attn_bias": _floats(res.attn_bias[j]),
                         "heads": _floats(res.heads[j])})
        info.update(method=res.meta["method"], error=float(f"{res.error():.3g}"),
                    logit_diff=round(float(res.logit_diff.mean()), 4))
    _write(out, "dla.parquet", rows, dla_schema())
    progress(len(items), len(items))
    return info


def attention_schema() -> dict:
    import polars as pl

    return {"ex_id": pl.Utf8, "context": pl.Utf8, "layer": pl.Int64, "head": pl.Int64, "prompt": pl.Float64,
            "rationale": pl.Float64, "other": pl.Float64, "len_prompt": pl.Int64, "len_rationale": pl.Int64,
            "len_other": pl.Int64}


def run_attention(job, store: Store, out: Path, progress: Progress = no_progress) -> dict:
    """The label position's attention mass on the prompt, the rationale and every other token."""
    model, tok = trained(store, job.train_job)
    items, skipped, n = probe_items(job, store, job.condition, tok, job.seed)
    read = [it for it in items if it["rationale"] is not None]
    info = {**_counts(read, skipped, n), "context": job.probe.context, "no_rationale_span": len(items) - len(read)}
    rows = []
    if read:
        from interp.attention import rationale_attention

        spans = [{"prompt": (0, it["prompt"]), "rationale": tuple(it["rationale"])} for it in read]
        res = rationale_attention(model, [it["context_ids"] for it in read], spans)
        mass, lengths = res.mass.double().cpu(), res.lengths.tolist()
        B, L, H, _ = mass.shape
        for b, it in enumerate(read):
            for layer in range(L):
                for h in range(H):
                    m = mass[b, layer, h].tolist()
                    rows.append({"ex_id": it["ex"].id, "context": it["context"], "layer": layer, "head": h,
                                 "prompt": m[0], "rationale": m[1], "other": m[2], "len_prompt": lengths[b][0],
                                 "len_rationale": lengths[b][1], "len_other": lengths[b][2]})
        info["rationale_mass"] = round(float(mass[..., 1].mean()), 4)
    _write(out, "attention.parquet", rows, attention_schema())
    progress(len(read), len(read))
    return info


def patch_schema() -> dict:
    import polars as pl

    lf = pl.List(pl.Float64)
    return {"ex_id": pl.Utf8, "context": pl.Utf8, "positions": pl.Utf8, "gold": pl.Int64, "clean": pl.Float64,
            "corrupted": pl.Float64, "resid": lf, "attn": lf, "mlp": lf}


def run_patch(job, store: Store, out: Path, progress: Progress = no_progress) -> dict:
    """`from -> to`: the `to` student's run with the `from` student's activations patched in,
    both reading the `to` condition's probe contexts (one input, two models)."""
    src, src_tok = trained(store, job.from_train)
    dst, tok = trained(store, job.to_train)
    if src_tok.get_vocab() != tok.get_vocab():
        raise ValueError(f"patch {job.label}: the two students' tokenizers differ; activation patching reads "
                         "one input with both, so they need one base model and its tokenizer")
    items, skipped, n = probe_items(job, store, job.to_condition, tok, job.seed)
    info = {**_counts(items, skipped, n), "context": job.probe.context, "positions": job.probe.patch_at}
    rows = []
    if items:
        from interp.patching import activation_patching

        res = activation_patching(src, *_inputs(items), corrupted_model=dst, positions=job.probe.patch_at)
        for j, it in enumerate(items):
            rows.append({"ex_id": it["ex"].id, "context": it["context"], "positions": res.positions,
                         "gold": int(res.gold[j]), "clean": float(res.clean[j]), "corrupted": float(res.corrupted[j]),
                         **{k: _floats(res.patched[k][j]) for k in ("resid", "attn", "mlp")}})
        info.update(clean=round(float(res.clean.mean()), 4), corrupted=round(float(res.corrupted.mean()), 4))
    _write(out, "patch.parquet", rows, patch_schema())
    progress(len(items), len(items))
    return info


RUNNERS = {"dla": run_dla, "attention": run_attention, "patch": run_patch}
