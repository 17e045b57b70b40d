"""One function per job stage: read the inputs' outputs, compute, write into `out` (a temp dir
that becomes the job's cached result only when the function returns).

Each `run_<stage>(job, store, out, progress)` gets its typed job (`jobs/types.py`: everything
the stage needs), the store its inputs are read from, and a `progress(done, total)` callback; it
returns a small dict of figures shown in the run log. Nothing else: no plan, no experiment, so
the same function runs in this process, a local worker, a Ray task or a Slurm job. Heavy imports
stay inside the functions so `cotdsl check` never pays for torch.
"""
from __future__ import annotations

import json
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable

from ..cache import Store, atomic_write_json, code_version, stable_hash
from ..schema import Example, format_prompt

Progress = Callable[[int, int], None]


def _no_progress(done: int, total: int) -> None:
    pass


class _Memo:
    """Models this worker process already holds: base students (loaded once per process) and the
    model the last train job produced, so its eval/probe in the same process skip a reload.
    Process-local on purpose: a job never depends on it for correctness, only for speed."""

    students: dict = {}
    last_trained: tuple[str, Any, Any] | None = None


def base_student(student, corpus: list[str] | None = None):
    """(model, tokenizer) of a student before fine-tuning."""
    from ..models import load_student

    key = (student.name, student.kind, student.args)
    if student.kind == "tiny":  # its tokenizer is trained on the data's text
        key += (stable_hash(corpus),)
    if key not in _Memo.students:
        _Memo.students.clear()  # one base model at a time: a worker's memory stays bounded
        _Memo.students[key] = load_student(student, corpus=corpus)
    return _Memo.students[key]


def job_dir(store: Store, job_id: str) -> Path:
    stage, key = job_id.split("/", 1)
    return store.path(stage, key)


def code_versions() -> dict[str, str]:
    from .. import data, models, perturb, render
    from . import distributed, evaluate, teacher, train

    import interp.attribution as attribution
    import interp.lens as lens
    import interp.tuned as tuned

    here = code_version(code_versions)  # this file holds every stage's glue: part of each version
    return {stage: v + here for stage, v in {
        "data": code_version(data, *_submodules(data)),
        "sample": code_version(teacher, models),
        "teacher": code_version(teacher),
        "rank": code_version(attribution),
        "render": code_version(render, perturb),
        "train": code_version(train, distributed, models),
        "eval": code_version(evaluate, render),
        "probe": code_version(lens, tuned),
    }.items()}


def _submodules(pkg) -> list:
    import importlib
    import pkgutil

    return [importlib.import_module(f"{pkg.__name__}.{m.name}") for m in pkgutil.iter_modules(pkg.__path__)]


# ---- example files ---------------------------------------------------------------------------
def save_examples(path: Path, exs: list[Example]) -> None:
    # "label" (the gold choice text) is redundant with "answer" but makes these files valid
    # `--data` inputs for `cotdsl probe --checkpoint` with the default field mapping.
    with open(path, "w") as f:
        for e in exs:
            f.write(json.dumps({**asdict(e), "label": e.label}) + "\n")


def load_examples(path: Path) -> list[Example]:
    out = []
    with open(path) as f:
        for line in f:
            d = json.loads(line)
            d.pop("label", None)
            d["choices"] = tuple(d["choices"])
            if d.get("highlights") is not None:
                d["highlights"] = tuple(d["highlights"])
            out.append(Example(**d))
    return out


def corpus(store: Store, teacher_job: str) -> list[str]:
    """Text a tiny student's tokenizer is trained on (prompts + rationales of the training set)."""
    exs = load_examples(job_dir(store, teacher_job) / "train.jsonl")
    return [format_prompt(e) + " " + (e.rationale or "") for e in exs]


# ---- stages ----------------------------------------------------------------------------------
def run_data(job, store: Store, out: Path, progress: Progress = _no_progress) -> dict:
    from ..data import fingerprint, load_source

    train, test = load_source(job.source)
    if job.limit:
        train = train[: job.limit]
    if job.limit_test:
        test = test[: job.limit_test]
    save_examples(out / "train.jsonl", train)
    save_examples(out / "test.jsonl", test)
    atomic_write_json(out / "meta.json", {"train": len(train), "test": len(test),
                                          "fingerprint": fingerprint(train + test)})
    return {"train": len(train), "test": len(test)}


def run_sample(job, store: Store, out: Path, progress: Progress = _no_progress) -> dict:
    """Raw samples of an hf teacher for one shard of the training questions."""
    from ..models import cache_dir
    from .teacher import hf_settings, sample, sample_seed, shard_range

    train = load_examples(job_dir(store, job.data) / "train.jsonl")
    seed = sample_seed(job.teacher, 0)
    start, stop = shard_range(len(train), hf_settings(job.teacher, seed)["batch"], job.shard, job.shards)
    got = sample(job.teacher, train[start:stop], cache_dir() / "rationales", progress, seed, offset=start)
    atomic_write_json(out / "samples.json", {"start": start, "stop": stop,
                                             "samples": {e.id: got[e.id] for e in train[start:stop]}})
    return {"questions": stop - start, "shard": f"{job.shard + 1}/{job.shards}"}


def run_teacher(job, store: Store, out: Path, progress: Progress = _no_progress) -> dict:
    from ..models import cache_dir
    from .teacher import from_samples, rationalize

    d = job_dir(store, job.data)
    train = load_examples(d / "train.jsonl")
    test = load_examples(d / "test.jsonl")
    if job.samples:  # an hf teacher: merge the shards in order, then filter
        samples: dict[str, list[str]] = {}
        for sid in job.samples:
            samples.update(json.loads((job_dir(store, sid) / "samples.json").read_text())["samples"])
        train = from_samples(job.teacher, train, samples)
    else:
        train = rationalize(job.teacher, train, cache_dir=cache_dir() / "rationales", progress=progress)
    kept = [e for e in train if e.rationale]
    save_examples(out / "train.jsonl", kept)
    # Test rationales are only used to teacher-force probes of rationale-first students; the gold
    # teacher has them for free, a model teacher is not asked to pay for them.
    save_examples(out / "test.jsonl", test)
    return {"train with rationale": len(kept), "dropped": len(train) - len(kept)}


# IG settings for keytokens(..., by: ig). bench/ig_baselines.py on SmolLM2: the pad-token
# baseline gave the smallest convergence deltas; 20 steps keeps ~6 s per example on 2 cores.
IG_BASELINE, IG_STEPS = "pad", 20


def run_rank(job, store: Store, out: Path, progress: Progress = _no_progress) -> dict:
    """Integrated-Gradients word scores of every training rationale under the base student
    (the scorer), for `keytokens(rationale, k, by: ig)`; plus one example drawn as a figure."""
    from interp.attribution import IGItem, ig_word_scores, summarize
    from interp.view import attribution_png

    exs = load_examples(job_dir(store, job.teacher_job) / "train.jsonl")
    if job.scorer == "student":
        model, tok = base_student(job.student, corpus(store, job.teacher_job))
    elif job.scorer == "teacher":
        from ..models import load_pretrained

        model, tok = load_pretrained(job.teacher.arg("model"),
                                     trust_remote_code=bool(job.teacher.arg("trust_remote_code")))
        model.eval()
    else:  # a trained student of another condition (e.g. rationale-before-label)
        model, tok = trained(store, job.scorer_train)
    baseline = IG_BASELINE if tok.pad_token_id is not None else "zero"
    res = []
    for i in range(0, len(exs), 4):
        items = [IGItem(context=format_prompt(e), rationale=e.rationale, label=e.label) for e in exs[i:i + 4]]
        res += ig_word_scores(model, tok, items, baseline=baseline, steps=IG_STEPS)
        progress(len(res), len(exs))
    atomic_write_json(out / "rankings.json", {e.id: [float(x) for x in r.word_scores] for e, r in zip(exs, res)})
    atomic_write_json(out / "ig.json", [dict(r.to_dict(), ex_id=e.id) for e, r in zip(exs, res)])
    attribution_png(res[0], out / "ig_example.png", title=f"IG word attributions: {exs[0].id}",
                    highlights=exs[0].highlights or ())
    summ = summarize(res)
    atomic_write_json(out / "summary.json", summ)
    return {"examples": len(res), "baseline": baseline, "steps": IG_STEPS,
            "median |delta|/|f(x)-f(b)|": None if summ["median_rel_delta"] is None else round(summ["median_rel_delta"], 3)}


def run_render(job, store: Store, out: Path, progress: Progress = _no_progress) -> dict:
    import polars as pl

    from ..render import render

    ensure_plugins(job.plugins, job.plugin_paths)
    exs = load_examples(job_dir(store, job.teacher_job) / "train.jsonl")
    _, tok = base_student(job.student, corpus(store, job.teacher_job))
    rankings = None
    if job.rank_job:
        rankings = {"ig": json.loads((job_dir(store, job.rank_job) / "rankings.json").read_text())}
    rows = []
    for i, e in enumerate(exs):
        for r in render(e, job.condition, tok, seed=job.seed, rankings=rankings, max_len=job.max_len):
            rows.append({"ex_id": r.ex_id, "task": r.task, "text": r.text, "input_ids": r.input_ids,
                         "loss_mask": r.loss_mask, "weight": r.weight, "prompt_len": r.prompt_len,
                         "label_span": list(r.label_span) if r.label_span else None,
                         "spans": json.dumps(r.spans)})
        progress(i + 1, len(exs))
    pl.DataFrame(rows).write_parquet(out / "rendered.parquet")
    n_tok = sum(len(r["input_ids"]) for r in rows)
    n_sup = sum(sum(r["loss_mask"]) for r in rows)
    return {"sequences": len(rows), "tokens": n_tok, "supervised": n_sup}


def load_rendered(path: Path) -> list:
    """Rendered rows from a render job (attribute access like `render.Rendered`)."""
    import polars as pl

    from ..render import Rendered

    rows = pl.read_parquet(path / "rendered.parquet").to_dicts()
    return [Rendered(ex_id=r["ex_id"], task=r["task"], text=r["text"], input_ids=list(r["input_ids"]),
                     loss_mask=list(r["loss_mask"]), weight=r["weight"], prompt_len=r["prompt_len"],
                     label_span=tuple(r["label_span"]) if r["label_span"] is not None else None,
                     spans=[tuple(s) for s in json.loads(r["spans"])]) for r in rows]


def run_train(job, store: Store, out: Path, progress: Progress = _no_progress) -> dict:
    import copy

    from .train import train

    seqs = load_rendered(job_dir(store, job.render_job))
    base, tok = base_student(job.student, corpus(store, job.teacher_job))
    model = copy.deepcopy(base)
    work = store.work("train", job.key)  # survives kill -9: training resumes from here
    res = train(model, tok, seqs, job.train, seed=job.seed, out_dir=work,
                progress=lambda i, n, loss: progress(i, n))
    shutil.move(str(work / "model"), str(out / "model"))
    info = {"steps": res.steps, "tokens_per_s": res.tokens_per_s, "seconds": res.time_s,
            "resumed_from": res.resumed_from, "device": res.device,
            "final_loss": res.losses[-1] if res.losses else None, "losses": res.losses}
    atomic_write_json(out / "train.json", info)
    model.eval()
    _Memo.last_trained = (job.id, model, tok)
    return {k: (round(v, 3) if isinstance(v, float) else v) for k, v in info.items() if k != "losses"}


def trained(store: Store, train_id: str):
    """(model, tokenizer) a train job produced: from memory if it just ran here, else from disk."""
    if _Memo.last_trained is not None and _Memo.last_trained[0] == train_id:
        return _Memo.last_trained[1], _Memo.last_trained[2]
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .device import pick_device

    d = job_dir(store, train_id) / "model"
    model = AutoModelForCausalLM.from_pretrained(d).to(pick_device())
    model.eval()
    tok = AutoTokenizer.from_pretrained(d)
    _Memo.last_trained = (train_id, model, tok)
    return model, tok


def run_eval(job, store: Store, out: Path, progress: Progress = _no_progress) -> dict:
    import polars as pl

    from ..render import eval_context, generation_prompt_ids, parse_answer
    from .evaluate import generate, rank, score_generated

    cfg, cond, seed, prog = job.eval, job.condition, job.seed, progress
    model, tok = trained(store, job.train_job)
    test = load_examples(job_dir(store, job.data_job) / "test.jsonl")
    rows = []
    if cond.eval_by == "rank":
        items = [eval_context(e, cond, tok, seed=seed) for e in test]
        for e, r in zip(test, rank(model, items, batch=cfg.batch, progress=prog)):
            rows.append({"ex_id": e.id, "gold": e.answer, "pred": r["pred"], "correct": r["pred"] == e.answer,
                         "pred_norm": r["pred_norm"], "correct_norm": r["pred_norm"] == e.answer,
                         "scores": [float(x) for x in r["scores"]], "generated": None, "unparseable": False})
    else:
        prompts = [generation_prompt_ids(e, cond, tok) for e in test]
        texts = generate(model, tok, prompts, max_new_tokens=cfg.max_new_tokens, batch=cfg.batch,
                         eos_token_id=tok.eos_token_id, progress=prog)
        for e, t, r in zip(test, texts, score_generated(texts, test, lambda t, e: parse_answer(t, e, cond))):
            rows.append({"ex_id": e.id, "gold": e.answer, "pred": r["pred"], "correct": bool(r["correct"]),
                         "pred_norm": r["pred"], "correct_norm": bool(r["correct"]), "scores": None,
                         "generated": t, "unparseable": bool(r["unparseable"])})
    df = pl.DataFrame(rows, schema_overrides={"scores": pl.List(pl.Float64), "generated": pl.Utf8,
                                              "pred": pl.Int64, "pred_norm": pl.Int64})
    df.write_parquet(out / "predictions.parquet")
    return {"accuracy": round(df["correct"].mean(), 4), "unparseable": int(df["unparseable"].sum())}


def _probe_batch(test, cond, tok, seed):
    """Input ids up to the label, the position that emits the label's first token, and each
    choice's first label token there — tokenised exactly as in training."""
    from dataclasses import replace

    from ..render import eval_context, render

    seqs, positions, targets, kept = [], [], [], []
    for e in test:
        if cond.eval_by == "rank":  # label first: what precedes it needs no rationale
            c = eval_context(e, cond, tok, seed=seed)
            seqs.append(c.context_ids)
            targets.append([ids[0] for ids in c.choice_ids])
        else:  # rationale first: teacher-force the rationale, render once per choice
            if not e.rationale:
                continue
            per_choice = [render(replace(e, answer=i), cond, tok, seed=seed)[0] for i in range(len(e.choices))]
            gold = per_choice[e.answer]
            if gold.label_span is None:
                continue
            seqs.append(gold.input_ids[: gold.label_span[0]])
            targets.append([r.input_ids[r.label_span[0]] for r in per_choice])
        positions.append(len(seqs[-1]) - 1)
        kept.append(e)
    return seqs, positions, targets, kept


def run_probe(job, store: Store, out: Path, progress: Progress = _no_progress) -> dict:
    cfg = job.probe
    model, tok = trained(store, job.train_job)
    test = load_examples(job_dir(store, job.data_job) / "test.jsonl")[: cfg.examples]
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0

    def tuned():
        from interp.tuned import cached_tuned_lens

        rendered = [r.input_ids for r in load_rendered(job_dir(store, job.render_job))]
        batches = [_pad(rendered[i:i + 8], pad) for i in range(0, len(rendered), 8)]
        return cached_tuned_lens(model, job_dir(store, job.train_job), batches, steps=cfg.tuned_steps,
                                 seed=job.seed)

    df = lens_frame(model, tok, test, job.condition, job.seed, cfg.lenses, tuned=tuned, progress=progress)
    df.write_parquet(out / "lens.parquet")
    return {"examples": df["ex_id"].n_unique(), "of": len(test), "lenses": ",".join(cfg.lenses)}


def lens_frame(model, tok, examples, cond, seed, lenses, *, tuned=None, progress=None, batch: int = 16):
    """Layer-by-layer readout of the label for `examples` under `cond`'s rendering.

    Returns a polars frame, one row per (lens, example, layer): p_gold (full-vocab probability
    of the gold label's first token), choice_p_gold (renormalised over the choices' first
    tokens), rank_gold, commit_layer. `tuned()` builds the tuned lens when "tuned" is asked for.
    """
    import polars as pl
    import torch

    from interp.commit import commit_layers
    from interp.lens import logit_lens

    seqs, positions, targets, kept = _probe_batch(examples, cond, tok, seed)
    if not kept:  # e.g. a rationale-first target with no test rationales: reported, not failed
        return pl.DataFrame(schema={"lens": pl.Utf8, "ex_id": pl.Utf8, "layer": pl.Int64, "p_gold": pl.Float64,
                                    "choice_p_gold": pl.Float64, "rank_gold": pl.Int64, "commit_layer": pl.Int64})
    ids, mask = _pad(seqs, tok.pad_token_id if tok.pad_token_id is not None else 0)
    C = max(len(t) for t in targets)
    # Pad missing choices with the gold token; they never win the renormalised top-1 over gold.
    tgt = torch.tensor([t + [t[e.answer]] * (C - len(t)) for t, e in zip(targets, kept)])
    gold = torch.tensor([e.answer for e in kept])
    pos = torch.tensor(positions)
    fns = {"logit": lambda b: logit_lens(model, ids[b], mask[b], pos[b], tgt[b], gold[b])}
    if "tuned" in lenses:
        from interp.tuned import tuned_lens

        lens_obj = tuned()
        fns["tuned"] = lambda b: tuned_lens(model, ids[b], mask[b], pos[b], tgt[b], gold[b], lens=lens_obj)
    rows = []
    for name in [n for n in lenses if n in fns]:
        for start in range(0, len(kept), batch):
            b = slice(start, start + batch)
            with torch.no_grad():
                res = fns[name](b)
            pg, cpg, rk = res.gold_probs(), res.gold_probs(renormalised=True), res.gold_ranks()
            commit = commit_layers(res.choice_probs, res.gold)
            for j, e in enumerate(kept[b]):
                for layer in range(pg.shape[1]):
                    rows.append({"lens": name, "ex_id": e.id, "layer": layer, "p_gold": float(pg[j, layer]),
                                 "choice_p_gold": float(cpg[j, layer]), "rank_gold": int(rk[j, layer]),
                                 "commit_layer": int(commit[j])})
            if progress:
                progress(min(start + batch, len(kept)), len(kept))
    return pl.DataFrame(rows)


def _pad(seqs: list[list[int]], pad: int):
    """Right-padded ids and attention mask, both [B, T]."""
    from interp.lens import pad_right

    return pad_right(seqs, pad)


def ensure_plugins(modules: tuple[str, ...], paths: tuple[str, ...]) -> None:
    """Import the spec's plugin modules in this process (a worker starts with built-ins only)."""
    import sys

    from .. import perturb

    for d in paths:
        if d and d not in sys.path:
            sys.path.append(d)
    missing = [m for m in modules if m not in sys.modules]
    if missing:
        perturb.load_plugins(missing, entry_points=True)


RUNNERS = {"data": run_data, "sample": run_sample, "teacher": run_teacher, "rank": run_rank, "render": run_render,
           "train": run_train, "eval": run_eval, "probe": run_probe}
