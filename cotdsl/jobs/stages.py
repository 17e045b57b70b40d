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

from ..cache import Store, atomic_write_json, stable_hash
from ..schema import Example, format_prompt

Progress = Callable[[int, int], None]


def no_progress(done: int, total: int) -> None:
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


# The modules whose source each stage's output depends on (besides this file, the glue of every
# stage). Hashed from the files, never imported: a fully cached run must not pay for torch.
STAGE_MODULES = {
    "data": ("cotdsl.data.*", "cotdsl.schema"),  # pkg.*: the package and every module in it
    "sample": ("cotdsl.jobs.teacher", "cotdsl.models", "cotdsl.schema"),
    "teacher": ("cotdsl.jobs.teacher", "cotdsl.schema"),
    "rank": ("interp.attribution", "interp.view", "cotdsl.models", "cotdsl.tiny", "cotdsl.schema"),
    "render": ("cotdsl.render", "cotdsl.perturb", "cotdsl.models", "cotdsl.tiny", "cotdsl.schema"),
    "train": ("cotdsl.jobs.train", "cotdsl.jobs.distributed", "cotdsl.jobs.device", "cotdsl.models", "cotdsl.tiny"),
    "eval": ("cotdsl.jobs.evaluate", "cotdsl.jobs.device", "cotdsl.render", "cotdsl.schema"),
    "probe": ("interp.lens", "interp.tl_lens", "interp.tuned", "interp.commit", "interp.bridge", "cotdsl.render",
              "cotdsl.schema"),
    # probe { attribute: dla; attention: rationale; patch: a -> b } (cotdsl.jobs.mech)
    "dla": ("cotdsl.jobs.mech", "interp.dla", "interp.lens", "interp.bridge", "cotdsl.render", "cotdsl.schema"),
    "attention": ("cotdsl.jobs.mech", "interp.attention", "interp.lens", "interp.bridge", "cotdsl.render",
                  "cotdsl.schema"),
    "patch": ("cotdsl.jobs.mech", "interp.patching", "interp.dla", "interp.lens", "interp.bridge", "cotdsl.render",
              "cotdsl.schema"),
}


def code_versions() -> dict[str, str]:
    here = source_version(__name__)
    return {stage: source_version(*mods) + here for stage, mods in STAGE_MODULES.items()}


def source_version(*modules: str) -> str:
    """Hash of the source files of `modules` (dotted names), located without importing them."""
    import hashlib
    import importlib.util

    import pkgutil

    names = []
    for name in modules:
        if name.endswith(".*"):
            pkg = importlib.util.find_spec(name[:-2])
            names += [name[:-2]] + sorted(f"{name[:-2]}.{m.name}" for m in
                                          pkgutil.iter_modules(pkg.submodule_search_locations))
        else:
            names.append(name)
    h = hashlib.sha256()
    for name in names:
        spec = importlib.util.find_spec(name)
        if spec is None or not spec.origin:
            raise ModuleNotFoundError(f"stage code {name!r} not found")
        h.update(name.encode() + b"\0" + Path(spec.origin).read_bytes())
    return h.hexdigest()[:12]


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
def run_data(job, store: Store, out: Path, progress: Progress = no_progress) -> dict:
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


def run_sample(job, store: Store, out: Path, progress: Progress = no_progress) -> dict:
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


def run_teacher(job, store: Store, out: Path, progress: Progress = no_progress) -> dict:
    from ..models import cache_dir
    from .teacher import diagnostics, diagnostics_line, from_samples, rationalize

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
    diag = diagnostics(train, use_filter=bool(job.teacher.arg("filter", True)) if job.samples else None)
    atomic_write_json(out / "diagnostics.json", diag)  # leakage, lengths, SCoTD kept rates: the run report's
    return {"train with rationale": len(kept), "dropped": len(train) - len(kept), **diagnostics_line(diag)}


# IG settings for keytokens(..., by: ig). bench/ig_baselines.py on SmolLM2: the pad-token
# baseline gave the smallest convergence deltas; 20 steps keeps ~6 s per example on 2 cores.
IG_BASELINE, IG_STEPS = "pad", 20


def ig_ranking(result) -> list[float]:
    """The word scores `keytokens(..., by: ig)` ranks by. A degenerate item (|f(x) − f(baseline)|
    under interp's DEGENERATE_GAP: its attributions sum to ~0 and their order is noise) falls back
    to the stated rule "the rationale's first words": scores n, n−1, ..., 1 by position."""
    if getattr(result, "degenerate", False):
        n = len(result.word_scores)
        return [float(n - i) for i in range(n)]
    return [float(x) for x in result.word_scores]


def run_rank(job, store: Store, out: Path, progress: Progress = no_progress) -> dict:
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
    atomic_write_json(out / "rankings.json", {e.id: ig_ranking(r) for e, r in zip(exs, res)})
    atomic_write_json(out / "ig.json", [dict(r.to_dict(), ex_id=e.id) for e, r in zip(exs, res)])
    attribution_png(res[0], out / "ig_example.png", title=f"IG word attributions: {exs[0].id}",
                    highlights=exs[0].highlights or ())
    summ = summarize(res)
    atomic_write_json(out / "summary.json", summ)
    return {"examples": len(res), "baseline": baseline, "steps": IG_STEPS,
            "degenerate (first words kept)": sum(bool(getattr(r, "degenerate", False)) for r in res),
            "median |delta|/|f(x)-f(b)|": None if summ["median_rel_delta"] is None else round(summ["median_rel_delta"], 3)}


def run_render(job, store: Store, out: Path, progress: Progress = no_progress) -> dict:
    import polars as pl

    from dataclasses import replace

    from ..render import Split, render

    ensure_plugins(job.plugins, job.plugin_paths)
    exs = load_examples(job_dir(store, job.teacher_job) / "train.jsonl")
    _, tok = base_student(job.student, corpus(store, job.teacher_job))
    rankings = None
    if job.rank_job:
        rankings = {"ig": json.loads((job_dir(store, job.rank_job) / "rankings.json").read_text())}
    split = Split(exs)  # what swap(...) pairs examples within
    rows = []
    for i, e in enumerate(exs):
        # train { resample: epoch }: every kept teacher sample is rendered (variant j); train picks one per epoch
        variants = (e.meta.get("rationales") or [e.rationale]) if job.resample == "epoch" else [e.rationale]
        if rankings and len(variants) > 1:
            raise ValueError("keytokens(..., by: ig) ranks each example's first kept rationale, but train "
                             "{ resample: epoch } also trains on the others: use `resample: first` here")
        for j, rationale in enumerate(variants):
            for r in render(replace(e, rationale=rationale), job.condition, tok, seed=job.seed, rankings=rankings,
                            max_len=job.max_len, split=split):
                rows.append({"ex_id": r.ex_id, "task": r.task, "text": r.text, "input_ids": r.input_ids,
                             "loss_mask": r.loss_mask, "weight": r.weight, "prompt_len": r.prompt_len,
                             "label_span": list(r.label_span) if r.label_span else None,
                             "spans": json.dumps(r.spans), "variant": j})
        progress(i + 1, len(exs))
    pl.DataFrame(rows).write_parquet(out / "rendered.parquet")
    n_tok = sum(len(r["input_ids"]) for r in rows)
    n_sup = sum(sum(r["loss_mask"]) for r in rows)
    info = {"sequences": len(rows), "tokens": n_tok, "supervised": n_sup}
    if job.resample == "epoch":
        info["rationales per example"] = round(len(rows) / max(1, len(exs) * len(job.condition.tasks)), 2)
    return info


def load_rendered(path: Path) -> list:
    """Rendered rows from a render job (attribute access like `render.Rendered`)."""
    import polars as pl

    from ..render import Rendered

    rows = pl.read_parquet(path / "rendered.parquet").to_dicts()
    return [Rendered(ex_id=r["ex_id"], task=r["task"], text=r["text"], input_ids=list(r["input_ids"]),
                     loss_mask=list(r["loss_mask"]), weight=r["weight"], prompt_len=r["prompt_len"],
                     label_span=tuple(r["label_span"]) if r["label_span"] is not None else None,
                     spans=[tuple(s) for s in json.loads(r["spans"])], variant=r.get("variant") or 0) for r in rows]


def run_train(job, store: Store, out: Path, progress: Progress = no_progress) -> dict:
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


def run_eval(job, store: Store, out: Path, progress: Progress = no_progress) -> dict:
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
                         "scores": [float(x) for x in r["scores"]], "generated": None, "unparseable": False,
                         "n_choices": len(e.choices)})
    else:
        prompts = [generation_prompt_ids(e, cond, tok) for e in test]
        texts = generate(model, tok, prompts, max_new_tokens=cfg.max_new_tokens, batch=cfg.batch,
                         eos_token_id=tok.eos_token_id, progress=prog)
        for e, t, r in zip(test, texts, score_generated(texts, test, lambda t, e: parse_answer(t, e, cond))):
            rows.append({"ex_id": e.id, "gold": e.answer, "pred": r["pred"], "correct": bool(r["correct"]),
                         "pred_norm": r["pred"], "correct_norm": bool(r["correct"]), "scores": None,
                         "generated": t, "unparseable": bool(r["unparseable"]), "n_choices": len(e.choices)})
    df = pl.DataFrame(rows, schema_overrides={"scores": pl.List(pl.Float64), "generated": pl.Utf8,
                                              "pred": pl.Int64, "pred_norm": pl.Int64})
    df.write_parquet(out / "predictions.parquet")
    return {"accuracy": round(df["correct"].mean(), 4), "unparseable": int(df["unparseable"].sum())}


def _label_piece(cond, tok, choice: str, first: bool = False) -> str:
    """The text of the piece a choice's label is tokenised as in training: the choice plus the
    spaces a literal before it leaves ("...is:" + " white"); only the target's literals matter,
    not the rationale's text, so no rationale is needed. `first`: as if the label came right
    after the prompt (`probe { context: none }`)."""
    from ..render import join_segments
    from ..spec import Lit

    task = cond.tasks[0]
    segs = [] if first else [("literal", s.text if isinstance(s, Lit) else s, True) if isinstance(s, (Lit, str))
                             else ("rationale", "x", False) for s in task.segments[:task.label_index()]]
    pieces = join_segments(segs + [("label", choice, False)], frozenset(getattr(tok, "all_special_tokens", ()) or ()))
    return next(p[1] for p in pieces if p[2])


def _answer_cut(text: str, cond, lead: str) -> int | None:
    """Where the label piece starts in a continuation that `parse_answer` parsed: right after the
    last occurrence of the literal before the label (its trailing spaces are the label piece's
    `lead`), else at the start of the last non-empty line."""
    from ..spec import Lit

    task = cond.tasks[0]
    li = task.label_index()
    before = task.segments[li - 1] if li else None
    if isinstance(before, Lit) and before.text.strip():
        marker, body = before.text.strip(), before.text.rstrip(" ")
        j = text.rfind(marker)
        if j < 0:
            return None
        cut, tail = j + len(marker), body[body.rfind(marker) + len(marker):]  # e.g. a newline after it
        return cut + len(tail) if text.startswith(tail, cut) else cut
    start, line, off = None, "", 0
    for ln in text.split("\n"):
        if ln.strip():
            start, line = off, ln
        off += len(ln) + 1
    if start is None:
        return None
    ws = len(line) - len(line.lstrip())
    return start + ws - len(lead) if ws >= len(lead) and line[:ws].endswith(lead) else start + ws


def _names_choice(text: str, choices) -> bool:
    """Whether `text` contains one of the choices as whole words (case and punctuation ignored)."""
    from ..schema import mentions

    return any(mentions(text, c) for c in choices)


def probe_batch(test, cond, tok, seed, *, context: str = "generated", generated: dict | None = None):
    """What precedes the label at test time and each choice's whole label ids, tokenised as in
    training. -> (items, skipped): items are dicts (ex, context_ids, choice_ids, context, text,
    names_choice); skipped counts examples that cannot be probed by cause.

    Label-first targets: rank evaluation's context (`eval_context`: the prompt and whatever needs
    no rationale). Rationale-first targets, by `context`: "generated" — after the student's own
    generated rationale (`generated[ex_id]`, the eval job's text, cut where its parsed answer
    starts; an example whose text names no choice is skipped as "unparsed"); "gold" — the gold
    rationale teacher-forced (skipped as "no rationale" without one); "none" — right after the
    prompt, for every target. An item's "prompt" is the prompt's length in tokens and its
    "rationale" the (start, end) tokens of the rationale in its context, or None."""
    from dataclasses import replace

    from ..render import Split, eval_context, generation_prompt_ids, parse_answer, render, token_ids

    items, skipped = [], {"unparsed": 0, "no rationale": 0}
    split = Split([e for e in test if e.rationale])  # what swap(...) pairs a gold rationale within
    for e in test:
        prompt = generation_prompt_ids(e, cond, tok)
        c = eval_context(e, cond, tok, seed=seed)
        item = {"ex": e, "text": "", "names_choice": False, "prompt": len(prompt), "rationale": None}
        if c is not None and (context != "none" or c.context_ids == prompt):
            item.update(context_ids=c.context_ids, choice_ids=c.choice_ids,
                        context="label first" if context != "none" else "prompt")
        elif context == "none":
            item.update(context_ids=prompt, context="prompt",
                        choice_ids=[token_ids(tok, _label_piece(cond, tok, ch, first=True)) for ch in e.choices])
        elif context == "gold":  # teacher-force the gold rationale, render once per choice
            per_choice = [render(replace(e, answer=i), cond, tok, seed=seed, split=split)[0]
                          for i in range(len(e.choices))] \
                if e.rationale else []
            if not per_choice or per_choice[e.answer].label_span is None:
                skipped["no rationale"] += 1
                continue
            g = per_choice[e.answer]
            pieces = [tok.decode(g.input_ids[a:b]) for kind, a, b in g.spans  # each piece alone: "white" "So"
                      if kind not in ("prompt", "label", "eos") and b <= g.label_span[0]]
            rat = [(a, b) for kind, a, b in g.spans if kind == "rationale" and b <= g.label_span[0]]
            item.update(context_ids=g.input_ids[:g.label_span[0]], context="gold", text="".join(pieces),
                        choice_ids=[r.input_ids[r.label_span[0]:r.label_span[1]] for r in per_choice],
                        names_choice=any(_names_choice(p, e.choices) for p in pieces),
                        rationale=(min(a for a, _ in rat), max(b for _, b in rat)) if rat else None)
        else:  # the student's own generation, up to where its answer starts
            text = (generated or {}).get(e.id)
            pieces = [_label_piece(cond, tok, ch) for ch in e.choices]
            lead = pieces[0][:len(pieces[0]) - len(e.choices[0])]
            cut = _answer_cut(text, cond, lead) if text and parse_answer(text, e, cond) is not None else None
            if cut is None:
                skipped["unparsed"] += 1
                continue
            n = _leading_tokens(tok, text[:cut], _rationale_end(text, cut, cond))
            item.update(context_ids=prompt + token_ids(tok, text[:cut]), choice_ids=[token_ids(tok, p) for p in pieces],
                        context="generated", text=text[:cut], names_choice=_names_choice(text[:cut], e.choices),
                        rationale=(len(prompt), len(prompt) + n))
        items.append(item)
    return items, skipped


def _rationale_end(text: str, cut: int, cond) -> int:
    """Where the rationale ends in a generated continuation cut at `cut`: before the last
    occurrence of the literal that precedes the label ("So the answer is:"), else at the cut;
    trailing whitespace left out."""
    from ..spec import Lit

    task = cond.tasks[0]
    li = task.label_index()
    before = task.segments[li - 1] if li else None
    end = cut
    if isinstance(before, Lit) and before.text.strip():
        j = text.rfind(before.text.strip(), 0, cut)
        end = j if j >= 0 else cut
    return len(text[:end].rstrip())


def _leading_tokens(tok, text: str, end: int) -> int:
    """How many of `token_ids(tok, text)` belong to text[:end]: a token goes with the side it
    shares more characters with (character offsets of a fast tokenizer; else text[:end] alone)."""
    from ..render import token_ids

    if not text or end <= 0:
        return 0
    if getattr(tok, "is_fast", False):
        offsets = tok(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
        return sum(1 for a, b in offsets if min(b, end) - a > b - max(a, end))
    return len(token_ids(tok, text[:end]))


def run_probe(job, store: Store, out: Path, progress: Progress = no_progress) -> dict:
    cfg = job.probe
    model, tok = trained(store, job.train_job)
    test = load_examples(job_dir(store, job.data_job) / "test.jsonl")[: cfg.examples]
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0

    def tuned():
        from interp.lens import pad_right
        from interp.tuned import cached_tuned_lens

        rendered = [r.input_ids for r in load_rendered(job_dir(store, job.render_job))]
        batches = [pad_right(rendered[i:i + 8], pad) for i in range(0, len(rendered), 8)]
        return cached_tuned_lens(model, job_dir(store, job.train_job), batches, steps=cfg.tuned_steps,
                                 seed=job.seed)

    generated = {}
    if getattr(job, "eval_job", None):  # the eval job's own generations: probe after them
        import polars as pl

        pred = pl.read_parquet(job_dir(store, job.eval_job) / "predictions.parquet")
        generated = {r["ex_id"]: r["generated"] for r in pred.iter_rows(named=True) if r["generated"] is not None}
    info: dict = {}
    df = lens_frame(model, tok, test, job.condition, job.seed, cfg.lenses, tuned=tuned, progress=progress,
                    context=cfg.context, score=cfg.score, generated=generated, info=info, engine=cfg.engine)
    df.write_parquet(out / "lens.parquet")
    with open(out / "contexts.jsonl", "w") as f:  # what each example was probed after, or why not
        for row in info.pop("contexts"):
            f.write(json.dumps(row) + "\n")
    return {"examples": df["ex_id"].n_unique(), "of": len(test), "lenses": ",".join(cfg.lenses), **info}


def lens_frame(model, tok, examples, cond, seed, lenses, *, tuned=None, progress=None, batch: int = 16,
               context: str = "generated", score: str = "label", generated: dict | None = None,
               max_new_tokens: int = 96, info: dict | None = None, engine: str = "hf"):
    """Layer-by-layer readout of the label for `examples` under `cond`'s rendering.

    Returns a polars frame, one row per (lens, example, layer): p_gold (full-vocab probability
    of the gold label: the whole label teacher-forced, or its first token with score
    "first_token"), choice_p_gold (renormalised over the choices), rank_gold (the gold label's
    first token), commit_layer, context (what preceded the label: "label first", "generated",
    "gold", "prompt"), score, tied (two choices scored on identical ids). `context`/`generated`:
    see `probe_batch`; a rationale-first target with context "generated" and no `generated`
    texts is generated here (greedy, `max_new_tokens`, as evaluation does). `tuned()` builds the
    tuned lens when "tuned" is asked for. `info`, if given, receives the counts (context, score,
    unparsed, no_rationale, names_choice, tied) and one "contexts" row per example. `engine`: "hf"
    (`interp.lens.label_lens`) or "tl" (`interp.tl_lens.tl_label_lens`, TransformerLens hooks at
    the reading sites; the same numbers within 1e-5).
    """
    import functools

    import polars as pl

    from interp.commit import commit_layers
    from interp.lens import label_lens

    if context not in ("generated", "gold", "none") or score not in ("label", "first_token") or \
            engine not in ("hf", "tl"):
        raise ValueError(f"probe context {context!r} / score {score!r} / engine {engine!r}: context is generated, "
                         "gold or none; score is label or first_token; engine is hf or tl")
    if context == "generated" and generated is None:
        from ..render import eval_context, generation_prompt_ids
        from .evaluate import generate

        todo = [e for e in examples if eval_context(e, cond, tok, seed=seed) is None]
        texts = generate(model, tok, [generation_prompt_ids(e, cond, tok) for e in todo], max_new_tokens=max_new_tokens,
                         batch=batch, eos_token_id=tok.eos_token_id) if todo else []
        generated = {e.id: t for e, t in zip(todo, texts)}
    items, skipped = probe_batch(examples, cond, tok, seed, context=context, generated=generated)
    if score == "first_token":
        for it in items:
            it["choice_ids"] = [x[:1] for x in it["choice_ids"]]
    tied = [len(set(map(tuple, it["choice_ids"]))) < len(it["choice_ids"]) for it in items]
    if info is not None:
        probed = {it["ex"].id: it for it in items}
        info.update(context=context, score=score, unparsed=skipped["unparsed"], no_rationale=skipped["no rationale"],
                    names_choice=sum(it["names_choice"] for it in items), tied=sum(tied),
                    contexts=[{"ex_id": e.id, "probed": e.id in probed,
                               **({"context": probed[e.id]["context"], "text": probed[e.id]["text"],
                                   "names_choice": probed[e.id]["names_choice"]} if e.id in probed else
                                  {"reason": "unparsed" if context == "generated" else "no rationale"})}
                              for e in examples])
    if not items:  # e.g. no test rationales (gold), or no parseable generation: reported, not failed
        return pl.DataFrame(schema={"lens": pl.Utf8, "ex_id": pl.Utf8, "layer": pl.Int64, "p_gold": pl.Float64,
                                    "choice_p_gold": pl.Float64, "rank_gold": pl.Int64, "commit_layer": pl.Int64,
                                    "context": pl.Utf8, "score": pl.Utf8, "tied": pl.Boolean})
    fns = {"logit": None}
    if "tuned" in lenses:
        fns["tuned"] = tuned()
    read = functools.partial(label_lens, model)
    if engine == "tl":
        from interp.bridge import build_bridge
        from interp.tl_lens import tl_label_lens

        # one bridge (around a copy of the model) for every chunk and lens
        read = functools.partial(tl_label_lens, model, tl_bridge=build_bridge(model))
    rows = []
    for name in [n for n in lenses if n in fns]:
        for start in range(0, len(items), batch):
            chunk = items[start:start + batch]
            res = read([it["context_ids"] for it in chunk], [it["choice_ids"] for it in chunk],
                       [it["ex"].answer for it in chunk], lens=fns[name], batch=batch)
            pg, cpg, rk = res.gold_probs(), res.gold_probs(renormalised=True), res.gold_ranks()
            commit = commit_layers(res.choice_probs, res.gold)
            for j, it in enumerate(chunk):
                for layer in range(pg.shape[1]):
                    rows.append({"lens": name, "ex_id": it["ex"].id, "layer": layer, "p_gold": float(pg[j, layer]),
                                 "choice_p_gold": float(cpg[j, layer]), "rank_gold": int(rk[j, layer]),
                                 "commit_layer": int(commit[j]), "context": it["context"], "score": score,
                                 "tied": tied[start + j]})
            if progress:
                progress(min(start + batch, len(items)), len(items))
    return pl.DataFrame(rows)


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
