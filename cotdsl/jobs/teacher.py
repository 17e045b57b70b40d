"""Teachers: where training rationales come from.

- ``gold``: the data's own rationales (every example must have one).
- ``file(path, field="rationale")``: a jsonl of {"id": ..., field: ...}.
- ``hf(model, prompt, samples, temperature, top_p, top_k, max_new_tokens, filter, batch, ...)``:
  gold-label rationalization with a causal LM (the authors' two-shot style by default), batched
  left-padded `generate`, greedy at temperature 0 and sampled otherwise, `samples` per question,
  and SCoTD's answer-consistency filter (keep samples whose stated answer is the gold one).
  Raw samples are cached on disk, keyed by everything that affects them, and written after
  every batch so an interrupted run resumes where it stopped.

`strip_answer: true` (file and hf teachers) removes a leading answer statement ("The answer is B
because ...") from each rationale after the filter has read it: such text states the label, so
a `rationale -> label` student would learn to copy rather than reason.
"""
from __future__ import annotations

import hashlib
import json
import logging
import re
from dataclasses import replace
from pathlib import Path
from typing import Callable

from ..cache import atomic_write_json
from ..errors import CotError
from ..schema import LETTERS, Example, choice_mentions, format_prompt

log = logging.getLogger("cotdsl.teacher")
CACHE_VERSION = 1  # bump when generation or post-processing changes

INSTRUCTION = ("Given the following two examples of question-answer-rationale triplets, provide a "
               "rationale for the third example for why the selected choice answers the question.")
# Two invented shots in the authors' format; the rationale states the answer first.
SHOTS = (
    "Question: Where would you most likely keep fresh milk so that it stays cold?\nChoices:\n"
    "A: a cupboard\nB: a refrigerator\nC: a mailbox\nD: a bookshelf\nAnswer: B\n"
    "Rationale: The answer is B because a refrigerator is built to keep food cold, and milk "
    "spoils quickly when it is warm.",
    "Question: A boy rolls a ball across a rough carpet and across a smooth floor. Where does "
    "it roll farther?\nChoices:\nA: the carpet\nB: the smooth floor\nAnswer: B\n"
    "Rationale: The answer is B because a smooth surface has less friction, so the ball loses "
    "speed more slowly and travels farther.",
)
DEFAULT_PROMPT = INSTRUCTION + "\n\n" + "\n\n".join(SHOTS) + "\n\n{example} {letter}\nRationale:"
PLACEHOLDERS = ("{example}", "{question}", "{choices}", "{letter}", "{label}")
STOPS = ("\n\n", "\nQuestion:")


def _names(ids: list[str], n: int = 5) -> str:
    return ", ".join(repr(i) for i in ids[:n]) + (f" and {len(ids) - n} more" if len(ids) > n else "")


# ---- gold and file ----------------------------------------------------------------------------
def _gold(teacher, examples: list[Example]) -> list[Example]:
    missing = [e.id for e in examples if not (e.rationale or "").strip()]
    if missing:
        raise CotError.one(f"teacher {teacher.name} = gold, but {len(missing)} example(s) have no rationale: "
                           f"{_names(missing)}", teacher.pos,
                           hint="use a data source with rationales, a rationale file, or hf(...)")
    return list(examples)


def _from_file(teacher, examples: list[Example]) -> list[Example]:
    path = Path(str(teacher.arg("path", "")))
    field = teacher.arg("field", "rationale")
    if not path.is_file():
        raise CotError.one(f"teacher {teacher.name}: rationale file {path} does not exist", teacher.pos)
    from ..data.files import read_rows

    table: dict[str, str] = {}
    for n, row in enumerate(read_rows(path), start=1):  # jsonl, csv or parquet, by suffix
        for f in ("id", field):
            if row.get(f) in (None, ""):
                raise CotError.one(f"{path}: row {n}: field {f!r} is missing", teacher.pos)
        table[str(row["id"])] = str(row[field])
    missing = [e.id for e in examples if e.id not in table]
    if missing:
        raise CotError.one(f"{path}: no rationale for {len(missing)} example(s): {_names(missing)}", teacher.pos)
    return [e.with_rationale(table[e.id]) for e in examples]


# ---- HF model ---------------------------------------------------------------------------------
def build_prompt(template: str, ex: Example) -> str:
    """Fill a teacher prompt. Placeholders: {example} (question + choices + "Answer:"),
    {question}, {choices}, {letter}, {label}. A prompt without placeholders is an instruction:
    the two default shots are dropped and the example follows it as in the default."""
    if not any(p in template for p in PLACEHOLDERS):
        template = template + "\n\n{example} {letter}\nRationale:"
    choices = "\n".join(f"{LETTERS[i]}: {c}" for i, c in enumerate(ex.choices))
    out = template
    # Plain replacement, not str.format: user prompts may contain other braces.
    for key, val in (("{example}", format_prompt(ex)), ("{question}", ex.question),
                     ("{choices}", choices), ("{letter}", ex.letter), ("{label}", ex.label)):
        out = out.replace(key, val)
    return out


_STATED = re.compile(r"answer is\s*:?\s*\(?([A-J])\)?(?![A-Za-z])")


def stated_answer(text: str, ex: Example) -> int | None:
    """The choice a rationale says is the answer ("The answer is B because ..."), else None."""
    m = _STATED.search(text)
    if m and LETTERS.index(m.group(1)) < len(ex.choices):
        return LETTERS.index(m.group(1))
    low = text.lower()
    m2 = re.search(r"answer is\s*:?\s*(.+)", low)
    if m2:
        tail = m2.group(1)
        hits = [i for i, c in enumerate(ex.choices) if tail.startswith(c.lower())]
        if hits:
            return max(hits, key=lambda i: len(ex.choices[i]))  # longest match wins
    return None


_CONNECT = r"\s*(?:[.:,;!)\]]+|-+|[\u2013\u2014])?\s*(?:(?i:because|since|as)\b\s*,?\s*)?"
_ANSWER_IS = r"(?i:(?:so\s+)?(?:the\s+)?(?:correct\s+|right\s+|best\s+)?answer(?:\s+is|\s*:)(?:\s+is)?\s*:?\s*)"
_IS_CORRECT = r"(?i:\s+is\s+(?:the\s+)?(?:correct|right|best)(?:\s+answer|\s+choice)?)"


def _answer_statement(choices: tuple[str, ...]) -> re.Pattern:
    """"The answer is B because", "Answer: (B).", "B is correct because", "The answer is <choice
    text> because" (longest choice first), at the very start of a rationale."""
    letter = r"\(?[A-J]\)?(?![A-Za-z0-9])"
    text = "|".join(re.escape(c) for c in sorted(choices, key=len, reverse=True) if c)
    what = rf"(?:{letter}|\"?(?i:{text})\"?(?![A-Za-z0-9]))" if text else letter
    return re.compile(rf"^\s*(?:{_ANSWER_IS}{what}|{what}{_IS_CORRECT}){_CONNECT}")


def strip_answer(text: str | None, ex: Example) -> str | None:
    """`text` without a leading answer statement, first letter capitalised; unchanged when it does
    not start with one; None when nothing is left."""
    if not text:
        return text
    m = _answer_statement(ex.choices).match(text)
    if not m:
        return text
    rest = text[m.end():].strip()
    return rest[:1].upper() + rest[1:] if rest else None


def clean(text: str) -> str:
    """A generated continuation up to the first stop marker, whitespace-trimmed."""
    cut = len(text)
    for s in STOPS:
        i = text.find(s)
        if i != -1:
            cut = min(cut, i)
    return text[:cut].strip()


def _model_files(name: str) -> list | None:
    """Hub names are identified by name (+revision); local paths also by their files' stats,
    so retraining a local teacher in place invalidates its cached rationales."""
    p = Path(name).expanduser()
    if not p.exists():
        return None
    files = [p] if p.is_file() else sorted(q for q in p.rglob("*") if q.is_file())
    return [[str(q.relative_to(p)) if p.is_dir() else q.name, q.stat().st_size, int(q.stat().st_mtime)]
            for q in files]


def hf_settings(teacher, seed: int) -> dict:
    """Every setting that affects generated samples (the filter is applied after the cache)."""
    samples = int(teacher.arg("samples", 1))
    temperature = float(teacher.arg("temperature", 0.0))
    if samples < 1 or temperature < 0:
        raise CotError.one(f"teacher {teacher.name}: need samples >= 1 and temperature >= 0", teacher.pos)
    if samples > 1 and temperature == 0:
        raise CotError.one(f"teacher {teacher.name}: samples: {samples} with temperature 0 would repeat the "
                           f"same greedy rationale", teacher.pos, hint="set temperature > 0 to sample")
    return {
        "v": CACHE_VERSION, "model": str(teacher.arg("model", "smollm2")),
        "model_files": _model_files(str(teacher.arg("model", "smollm2"))),
        "revision": teacher.arg("revision"), "prompt": teacher.arg("prompt") or DEFAULT_PROMPT,
        "samples": samples, "temperature": temperature,
        "top_p": teacher.arg("top_p") if temperature > 0 else None,
        "top_k": teacher.arg("top_k") if temperature > 0 else None,
        "max_new_tokens": int(teacher.arg("max_new_tokens", 128)),
        # Sampled outputs depend on how questions are batched (one RNG stream per batch).
        "batch": int(teacher.arg("batch", 8)), "seed": seed if temperature > 0 else None,
    }


def cache_key(settings: dict, examples: list[Example]) -> str:
    """Hash of the settings and of the questions (ids, text, choices, gold answers)."""
    qs = [[e.id, e.question, list(e.choices), e.answer] for e in examples]
    blob = json.dumps({"settings": settings, "questions": qs}, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def generate_samples(model, tok, prompts: list[str], settings: dict, seed: int) -> list[list[str]]:
    """`samples` cleaned continuations per prompt; left padding so all prompts end together.
    input_ids: [batch, seq] -> outputs [batch * samples, seq + new]."""
    import torch

    old_side = tok.padding_side
    tok.padding_side = "left"
    try:
        enc = tok(prompts, return_tensors="pt", padding=True)
    finally:
        tok.padding_side = old_side
    n = settings["samples"]
    kw = dict(max_new_tokens=settings["max_new_tokens"], num_return_sequences=n,
              pad_token_id=tok.pad_token_id, stop_strings=list(STOPS), tokenizer=tok)
    if settings["temperature"] > 0:
        kw.update(do_sample=True, temperature=settings["temperature"])
        kw["top_p"] = settings["top_p"] if settings["top_p"] is not None else 1.0
        kw["top_k"] = settings["top_k"] if settings["top_k"] is not None else 0
        torch.manual_seed(seed)
    else:
        kw.update(do_sample=False, temperature=None, top_p=None, top_k=None)
    device = next(model.parameters()).device
    with torch.no_grad():
        out = model.generate(input_ids=enc.input_ids.to(device),
                             attention_mask=enc.attention_mask.to(device), **kw)
    texts = tok.batch_decode(out[:, enc.input_ids.shape[1]:], skip_special_tokens=True)
    return [[clean(t) for t in texts[i * n:(i + 1) * n]] for i in range(len(prompts))]


def sample(teacher, examples: list[Example], cache_dir: Path, progress, seed: int, offset: int = 0) -> dict[str, list[str]]:
    """Raw samples (id -> cleaned continuations) for `examples`, which start at position `offset`
    of the teacher's whole question list. Batch i of the whole list always gets the same RNG
    seed, so sampling in shards (offsets that are multiples of `batch`) or resuming from the
    cache gives exactly the samples of one uninterrupted run."""
    settings = hf_settings(teacher, seed)
    cache_dir.mkdir(parents=True, exist_ok=True)
    path = cache_dir / f"{cache_key(settings, examples)}.json"
    done: dict[str, list[str]] = json.loads(path.read_text())["samples"] if path.exists() else {}
    total, bs = len(examples), settings["batch"]
    batches = [examples[b:b + bs] for b in range(0, total, bs)]
    todo = [(b, chunk) for b, chunk in enumerate(batches) if any(e.id not in done for e in chunk)]
    if progress:
        progress(total - sum(len(c) for _, c in todo), total)
    if not todo:
        return done
    engine = teacher.arg("engine") or "hf"
    if engine == "vllm":
        gen = vllm_generator(teacher, settings)
    else:
        from ..models import load_pretrained

        model, tok = load_pretrained(settings["model"], trust_remote_code=bool(teacher.arg("trust_remote_code", False)),
                                     revision=settings["revision"], pos=teacher.pos,
                                     what=f"teacher {teacher.name}")
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token
        gen = lambda prompts, s: generate_samples(model, tok, prompts, settings, s)  # noqa: E731
    finished = total - sum(len(c) for _, c in todo)
    for b, chunk in todo:
        prompts = [build_prompt(settings["prompt"], e) for e in chunk]
        outs = gen(prompts, seed * 100_003 + (offset // bs) + b)
        done.update({e.id: o for e, o in zip(chunk, outs)})
        atomic_write_json(path, {"settings": settings, "samples": done})
        finished += len(chunk)
        if progress:
            progress(finished, total)
    return done


def vllm_generator(teacher, settings: dict):
    """`engine: vllm`: vLLM's offline `LLM.generate` with the same prompts, sampling settings and
    stop strings (the filter runs afterwards, as for the HF engine). Needs `pip install
    cotdsl[vllm]` and a CUDA GPU; anything else is a clear error, never a silent fallback."""
    try:
        import vllm
    except ImportError:
        raise CotError.one(f"teacher {teacher.name}: engine: vllm needs the vllm package", teacher.pos,
                           hint="pip install 'cotdsl[vllm]' on a machine with a CUDA GPU, or drop `engine: vllm`") from None
    import torch

    if not torch.cuda.is_available():
        raise CotError.one(f"teacher {teacher.name}: engine: vllm needs a CUDA GPU and none is visible", teacher.pos,
                           hint="run on a GPU node, or drop `engine: vllm` to use the HF engine")
    llm = vllm.LLM(model=settings["model"], revision=settings["revision"],
                   trust_remote_code=bool(teacher.arg("trust_remote_code", False)))
    greedy = settings["temperature"] == 0

    def gen(prompts: list[str], seed: int) -> list[list[str]]:
        params = vllm.SamplingParams(
            n=settings["samples"], temperature=settings["temperature"],
            top_p=1.0 if greedy or settings["top_p"] is None else settings["top_p"],
            top_k=-1 if greedy or not settings["top_k"] else settings["top_k"],
            max_tokens=settings["max_new_tokens"], stop=list(STOPS), seed=None if greedy else seed)
        outs = llm.generate(prompts, params, use_tqdm=False)
        return [[clean(c.text) for c in o.outputs] for o in outs]

    return gen


def _hf(teacher, examples: list[Example], cache_dir: Path, progress, seed: int) -> list[Example]:
    return from_samples(teacher, examples, sample(teacher, examples, cache_dir, progress, seed))


def shard_range(n: int, batch: int, shard: int, shards: int) -> tuple[int, int]:
    """Questions [start, stop) of shard `shard` of `shards`: contiguous runs of whole batches,
    so each shard samples exactly what one uninterrupted run samples for those questions."""
    nb = -(-n // batch)
    lo, hi = shard * nb // shards, (shard + 1) * nb // shards
    return min(n, lo * batch), min(n, hi * batch)


def sample_seed(teacher, seed: int) -> int:
    own = teacher.arg("seed")
    return int(seed if own is None else own)


def from_samples(teacher, examples: list[Example], samples: dict[str, list[str]]) -> list[Example]:
    """The filter and `strip_answer` over raw samples: the last step of an hf teacher."""
    out = apply_filter(examples, samples, bool(teacher.arg("filter", True)), teacher.name)
    return _stripped(out, teacher.name) if teacher.arg("strip_answer") else out


def apply_filter(examples: list[Example], samples: dict[str, list[str]], use_filter: bool,
                 name: str = "teacher") -> list[Example]:
    """SCoTD answer consistency: keep samples that state the gold answer (all non-empty ones
    when the filter is off). The first kept sample becomes the rationale, all kept ones go to
    meta["rationales"]; questions with none kept get rationale None and are logged."""
    out, empty = [], []
    for e in examples:
        got = samples[e.id]
        kept = [s for s in got if s and (not use_filter or stated_answer(s, e) == e.answer)]
        meta = {**e.meta, "teacher_samples": len(got), "teacher_kept": len(kept), "rationales": kept}
        out.append(replace(e, rationale=kept[0] if kept else None, meta=meta))
        if not kept:
            empty.append(e.id)
    if empty:
        log.warning("teacher %s: no rationale kept for %d of %d questions (%s)", name, len(empty),
                    len(examples), _names(empty))
    return out


def rationalize(teacher, examples: list[Example], *, cache_dir: Path,
                progress: Callable[[int, int], None] | None = None, seed: int = 0) -> list[Example]:
    """Examples with rationales from `teacher` (a `spec.Teacher`); order and ids preserved."""
    if teacher.kind == "gold":
        return _gold(teacher, examples)
    if teacher.kind == "file":
        out = _from_file(teacher, examples)
    elif teacher.kind == "hf":
        return _hf(teacher, examples, Path(cache_dir), progress, sample_seed(teacher, seed))
    else:
        raise CotError.one(f"teacher {teacher.name}: unknown kind {teacher.kind!r}", teacher.pos,
                           hint="gold, file(...) or hf(...)")
    return _stripped(out, teacher.name) if teacher.arg("strip_answer") else out


def _stripped(examples: list[Example], name: str) -> list[Example]:
    """`strip_answer: true`: every rationale (and every kept sample in meta) without its leading
    answer statement; a rationale that was only that statement becomes None (logged)."""
    out, empty = [], []
    for e in examples:
        meta = dict(e.meta)
        if "rationales" in meta:
            meta["rationales"] = [r for r in (strip_answer(x, e) for x in meta["rationales"]) if r]
        r = strip_answer(e.rationale, e)
        if e.rationale and not r:
            empty.append(e.id)
        out.append(replace(e, rationale=r, meta=meta))
    if empty:
        log.warning("teacher %s: %d rationale(s) were only an answer statement and are dropped (%s)",
                    name, len(empty), _names(empty))
    return out


# ---- what the rationales look like ---------------------------------------------------------------
def _quantiles(xs: list[int]) -> dict:
    """mean, min, p10, median, p90, max of `xs` (nearest-rank quantiles); {} for no values."""
    if not xs:
        return {}
    v = sorted(xs)

    def q(f: float) -> int:
        return v[min(len(v) - 1, int(f * len(v)))]

    return {"mean": round(sum(v) / len(v), 2), "min": v[0], "p10": q(0.1), "median": q(0.5), "p90": q(0.9),
            "max": v[-1]}


def diagnostics(examples: list[Example], use_filter: bool | None = None, n_ids: int = 5) -> dict:
    """What a teacher's training rationales look like, for `diagnostics.json` and the run report.

    Over the examples that have a rationale (the ones trained on): the share whose rationale
    mentions the gold choice's text (`gold_label`) and another choice's text (`other_choice`: the
    rationale names a wrong answer too; `gold_only`: the gold one and no other), where a mention is
    whole words up to case and punctuation, the longer choice winning an overlap
    (`schema.choice_mentions`), and the share stating an answer
    ("The answer is B", `states_answer`); their length in words. `questions` counts every example
    given, `no_rationale` those without one. Examples from an hf teacher (meta
    `teacher_samples`/`teacher_kept`) add `scotd`: samples per question, whether the filter was on,
    the kept count per question (mean, histogram), the kept rate and the share of questions with
    none kept. `*_ids` name up to `n_ids` examples of each kind, to look at."""
    have = [e for e in examples if e.rationale]
    named = {e.id: {i for _, _, i in choice_mentions(e.rationale, e.choices)} for e in have}
    gold = [e for e in have if e.answer in named[e.id]]
    other = [e for e in have if named[e.id] - {e.answer}]
    stated = [e for e in have if stated_answer(e.rationale, e) is not None]
    share = (lambda xs: round(len(xs) / len(have), 4) if have else None)  # noqa: E731
    out = {"questions": len(examples), "rationales": len(have), "no_rationale": len(examples) - len(have),
           "gold_label": share(gold), "other_choice": share(other),
           "gold_only": share([e for e in gold if e not in other]), "states_answer": share(stated),
           "words": _quantiles([len(e.rationale.split()) for e in have]),
           "gold_label_ids": [e.id for e in gold[:n_ids]], "other_choice_ids": [e.id for e in other[:n_ids]]}
    asked = [e for e in examples if "teacher_samples" in e.meta]
    if asked:
        kept = [int(e.meta.get("teacher_kept", 0)) for e in asked]
        n = max(int(e.meta["teacher_samples"]) for e in asked)
        hist: dict[str, int] = {}
        for k in kept:
            hist[str(k)] = hist.get(str(k), 0) + 1
        out["scotd"] = {"samples": n, "filter": use_filter, "kept_mean": round(sum(kept) / len(kept), 3),
                        "kept_rate": round(sum(kept) / max(1, sum(int(e.meta["teacher_samples"]) for e in asked)), 4),
                        "none_kept": round(sum(k == 0 for k in kept) / len(kept), 4),
                        "kept_per_question": dict(sorted(hist.items(), key=lambda kv: int(kv[0])))}
    return out


def diagnostics_line(d: dict) -> dict:
    """The few figures of `diagnostics(...)` the run log's one-line message shows."""
    pct = (lambda x: "–" if x is None else f"{100 * x:.0f}%")  # noqa: E731
    out = {"gold label in rationale": pct(d["gold_label"]), "other choice": pct(d["other_choice"]),
           "words (median)": d["words"].get("median", "–")}
    if "scotd" in d:
        out["kept per question"] = f"{d['scotd']['kept_mean']:g}/{d['scotd']['samples']}"
    return out
