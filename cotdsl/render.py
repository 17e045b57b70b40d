"""Target rendering: one example + one condition -> the exact token ids and loss mask a student
trains on, the context a ranking evaluator scores, and the parser a generating evaluator uses.

The sequence is built piecewise: the prompt (`task.prefix + format_prompt(ex)`) and every rendered
segment are tokenised *separately* (no special tokens) and their ids concatenated, then the eos id
is appended. So spans and the loss mask are exact, and rank evaluation (context ids + each choice's
ids, as in lm-evaluation-harness) sees the very tokens training saw. Joining rules
(docs/targets.md):

* the first segment after "Answer:" is preceded by a space, tokenised with the segment
  (" Paris" -> one token, like lm-eval's " " + choice), unless it starts with a special token
  (unk(n) -> label), where the space would be a lone token of its own;
* inside a word-unit perturbation a special-token fill (the mask token) joins its neighbours
  without a space, so each masked word is exactly one id;
* consecutive non-literal segments are separated by "\\n", its own supervised piece (kind "sep");
* literals are verbatim; trailing spaces of a literal are tokenised with the next segment
  ("So the answer is: " label -> "...:" + " Paris"), which leaves the text unchanged;
* a segment that renders to "" (unk(0), truncate(x, 0)) is left out, separator included, so the
  n=0 point of a sweep renders exactly like the target without it;
* the sequence ends with the eos token (supervised; its span kind is "eos", not part of `text`).
"""
from __future__ import annotations

import random
import re
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from cotdsl import perturb
from cotdsl.perturb import Split, rank_words, spread_scores, stable_seed, token_units  # noqa: F401  (public here too)
from cotdsl.schema import Example, format_prompt, norm_text
from cotdsl.spec import Call, Condition, Lit, Ref, Task, reads

Rankings = Mapping[str, Mapping[str, Sequence[float]]]


@dataclass(frozen=True)
class Rendered:
    """One training sequence. All lists have length `len(input_ids)` = seq."""

    ex_id: str
    task: int
    text: str  # prompt + target text (the eos token is in input_ids, not here)
    input_ids: list[int]
    loss_mask: list[int]  # 1 = supervised (target segments + final eos), 0 = prompt
    weight: float
    prompt_len: int
    label_span: tuple[int, int] | None  # [start, end) token slice of the label inside input_ids
    spans: list[tuple[str, int, int]]  # (kind, start, end): prompt, label, rationale, literal, sep, unk, eos
    variant: int = 0  # which kept teacher sample the rationale is (train { resample: epoch }); 0 = the first


@dataclass(frozen=True)
class EvalContext:
    """What rank evaluation scores: log p(choice_ids[i] | context_ids) for each choice i."""

    context_ids: list[int]  # everything before the label at test time
    choice_ids: list[list[int]]  # each choice's label continuation, tokenised exactly as in training
    choice_texts: list[str]


# ---- helpers ---------------------------------------------------------------------------------
def _join_words(units: list[str], specials: frozenset[str]) -> str:
    """Rejoin word units with spaces, except that a special token (a mask/unk fill) is attached
    without one: byte-level tokenizers turn " <mask>" into two tokens ("Ġ", "<mask>"), so this
    keeps every masked word exactly one id ("sleeps<mask> the" -> sleeps, <mask>, Ġthe)."""
    out = ""
    for i, u in enumerate(units):
        out += u if i == 0 or u in specials else " " + u
    return out


# ---- evaluating target expressions ------------------------------------------------------------
class _Env:
    def __init__(self, ex: Example, cond: Condition, tok, seed: int, task_idx: int, rankings: Rankings | None,
                 split: Split | None = None):
        self.ex, self.cond, self.tok, self.seed, self.task_idx = ex, cond, tok, seed, task_idx
        self.rankings, self.split = rankings or {}, split
        self.mask_token = getattr(tok, "mask_token", None) or getattr(tok, "unk_token", None)
        self.specials = frozenset(getattr(tok, "all_special_tokens", ()) or ())

    def word_scores(self, by: str, inp: Any, words: list[str]) -> list[float]:
        """Scores for the whitespace words of a call's input."""
        table = self.rankings.get(by)
        if table is not None and self.ex.id in table:
            if inp != Ref("rationale"):
                raise ValueError(f"ranking {by!r} scores the words of the original rationale; "
                                 f"keytokens must be applied to `rationale` directly")
            scores = list(table[self.ex.id])
            if len(scores) != len(words):
                raise ValueError(f"ranking {by!r} for example {self.ex.id!r} has {len(scores)} scores "
                                 f"but the rationale has {len(words)} words")
            return scores
        if by == "ig":
            raise ValueError(f"no Integrated Gradients ranking for example {self.ex.id!r} "
                             f"(rankings['ig'] is {'missing' if table is None else 'missing this example'})")
        return rank_words(self.ex, by, words, seed=self.seed)

    def eval(self, expr: Any, path: str) -> tuple[str, str]:
        """Render an expression -> (text, span kind)."""
        if isinstance(expr, Ref):
            if expr.name == "label":
                return self.ex.label, "label"
            if expr.name == "rationale":
                if self.ex.rationale is None:
                    raise ValueError(f"example {self.ex.id!r} has no rationale (condition {self.cond.name!r})")
                return self.ex.rationale.strip(), "rationale"
            raise ValueError(f"unknown field {expr.name!r} in target {self.cond.name!r}")
        if isinstance(expr, Lit):
            return expr.text, "literal"
        if isinstance(expr, Call):
            return self.call(expr, path)
        if isinstance(expr, str):
            return expr, "literal"
        raise ValueError(f"cannot render {expr!r} in target {self.cond.name!r}")

    def call(self, call: Call, path: str) -> tuple[str, str]:
        pert = perturb.REGISTRY.get(call.fn)
        if pert is None:
            raise ValueError(f"unknown perturbation {call.fn!r} (known: {', '.join(sorted(perturb.REGISTRY))})")
        if reads(call, "label"):
            raise ValueError(f"{call.fn}(...) touches the label; perturbations never apply to the label")
        # A checked call is canonical (cotdsl.lang.targets): its input, if any, then every
        # parameter by name, defaults filled and validated, and `unit` last.
        params = dict(call.kwargs)
        unit = params.pop("unit", pert.unit)
        if pert.takes_input:
            inp = call.args[0]
            text, kind = self.eval(inp, path + ".0")
        else:
            inp, text, kind = None, "", call.fn

        def units_of(text: str) -> list[str]:
            return text.split() if unit == "word" else token_units(self.tok, text)[0]

        units = units_of(text)
        for name, v in params.items():  # a "field" parameter (`unk(like: rationale)`): that field's units
            if isinstance(v, (Ref, Call)):
                params[name] = units_of(self.eval(v, f"{path}.{name}")[0])

        def ranker(by: str) -> list[float]:
            words = text.split()
            scores = self.word_scores(by, inp, words)
            return scores if unit == "word" else spread_scores(self.tok, text, scores)

        def input_of(other: Example) -> list[str]:  # this call's input, rendered for another example
            env = _Env(other, self.cond, self.tok, self.seed, self.task_idx, self.rankings, self.split)
            return units_of(env.eval(inp, path + ".0")[0])

        rng = random.Random(stable_seed(self.seed, self.ex.id, self.cond.name, self.task_idx, path))
        ctx = perturb.Ctx(rng=rng, mask_token=self.mask_token, example=self.ex, ranker=ranker,
                          extra={"unit": unit, "tokenizer": self.tok}, seed=self.seed, split=self.split,
                          input_of=input_of if pert.takes_input else None)
        out = list(pert.fn(units, ctx, **params))
        if unit == "word":
            joined = _join_words(out, self.specials)
        else:  # edge whitespace (a leading "Ġ") is dropped: separating segments is join_segments' job
            joined = self.tok.convert_tokens_to_string(out).strip() if out else ""
        return joined, kind


# ---- assembling a sequence --------------------------------------------------------------------
def token_ids(tok, text: str) -> list[int]:
    """The ids of `text` tokenised on its own, no special tokens added ([] for ""): how every piece
    of a sequence is tokenised."""
    return list(tok(text, add_special_tokens=False)["input_ids"]) if text else []


def join_segments(segs: list[tuple[str, str, bool]],
                  specials: frozenset[str] = frozenset()) -> list[tuple[str, str, bool, int]]:
    """Rendered segments (kind, text, is_literal) -> the pieces that are tokenised one by one
    (kind, text, is_label, segment index; -1 for an inserted separator), following the joining
    rules of the module docstring: the leading space after "Answer:", "\\n" separators, literals'
    trailing spaces moved to the next segment, empty segments left out. `specials`: the
    tokenizer's special tokens (no leading space before one)."""
    out: list[tuple[str, str, bool, int]] = []
    carry, prev_lit = None, None  # carry: spaces moved from a literal's end to the next segment
    for i, (kind, text, is_lit) in enumerate(segs):
        if text == "":
            continue
        first = prev_lit is None
        if is_lit:
            lead = (carry or "") + (" " if first and not text[:1].isspace() else "")
            body = text.rstrip(" ")
            carry = text[len(body):]
            if lead + body:
                out.append(("literal", lead + body, False, i))
            prev_lit = True
            continue
        if first:  # no space before a special token: it would tokenise as a lone space token
            lead = "" if any(text.startswith(t) for t in specials) else " "
        elif prev_lit:
            lead = carry or ""
        else:
            out.append(("sep", "\n", False, -1))
            lead = ""
        out.append((kind, lead + text, kind == "label", i))
        carry, prev_lit = None, False
    if carry:  # a target ending in a literal keeps its trailing spaces
        out.append(("literal", carry, False, -1))
    return out


def _sequence(tok, prompt: str, pieces: list[tuple[str, str, bool, int]]):
    """-> (ids, loss_mask, spans, label_span, text); the eos id closes the sequence."""
    if tok.eos_token_id is None:
        raise ValueError("the tokenizer has no eos token; rendering needs one to end targets")
    ids = token_ids(tok, prompt)
    mask = [0] * len(ids)
    spans = [("prompt", 0, len(ids))]
    label_span = None
    for kind, text, is_label, _ in pieces:
        piece = token_ids(tok, text)
        start = len(ids)
        ids += piece
        mask += [1] * len(piece)
        spans.append((kind, start, len(ids)))
        if is_label and label_span is None:
            label_span = (start, len(ids))
    spans.append(("eos", len(ids), len(ids) + 1))
    ids.append(tok.eos_token_id)
    mask.append(1)
    return ids, mask, spans, label_span, prompt + "".join(p[1] for p in pieces)


def _render_task(ex: Example, cond: Condition, tok, seed: int, ti: int, task: Task,
                 rankings: Rankings | None, max_len: int | None, split: Split | None) -> Rendered:
    env = _Env(ex, cond, tok, seed, ti, rankings, split)
    segs = []
    for si, seg in enumerate(task.segments):
        text, kind = env.eval(seg, f"{si}")
        if isinstance(seg, Call) and kind == "label":
            raise ValueError("perturbations never apply to the label")
        segs.append((kind, text, isinstance(seg, (Lit, str))))
    prompt = task.prefix + format_prompt(ex)
    out = _sequence(tok, prompt, join_segments(segs, env.specials))
    if max_len is not None and len(out[0]) > max_len:
        out = _shorten(tok, prompt, task, segs, max_len, ex, env.specials)
    ids, mask, spans, label_span, text = out
    return Rendered(ex.id, ti, text, ids, mask, float(task.weight), spans[0][2], label_span, spans)


def _units(text: str, specials: frozenset[str]) -> list[str]:
    """What `_shorten` drops from the end: whitespace words, and each special token glued to its
    neighbours (a mask fill, `unk(like: rationale)`'s run of mask tokens) as a unit of its own;
    `_join_words` puts them back together."""
    if not specials:
        return text.split()
    glued = re.compile("(" + "|".join(map(re.escape, sorted(specials, key=len, reverse=True))) + ")")
    return [u for w in text.split() for u in glued.split(w) if u]


def _shorten(tok, prompt, task, segs, max_len, ex, specials):
    """Drop trailing units of rationale-bearing segments (last segment first, binary search on the
    unit count) until the sequence fits; the prompt and the label are never shortened."""
    segs = list(segs)
    words = {i: _units(s[1], specials) for i, s in enumerate(segs) if reads(task.segments[i], "rationale")}
    for i in sorted(words, reverse=True):
        kind, _, is_lit = segs[i]

        def fits(n: int) -> bool:
            trial = segs[:i] + [(kind, _join_words(words[i][:n], specials), is_lit)] + segs[i + 1:]
            return len(_sequence(tok, prompt, join_segments(trial, specials))[0]) <= max_len

        lo, hi = 0, len(words[i])  # invariant: fits(hi) is False
        if fits(0):
            while hi - lo > 1:
                mid = (lo + hi) // 2
                lo, hi = (mid, hi) if fits(mid) else (lo, mid)
            segs[i] = (kind, _join_words(words[i][:lo], specials), is_lit)
            return _sequence(tok, prompt, join_segments(segs, specials))
        segs[i] = (kind, "", is_lit)
    n = len(_sequence(tok, prompt, join_segments(segs, specials))[0])
    raise ValueError(f"example {ex.id!r} needs {n} tokens without its rationale, more than max_len={max_len}")


# ---- public API -------------------------------------------------------------------------------
def render(ex: Example, cond: Condition, tok, *, seed: int, rankings: Rankings | None = None,
           max_len: int | None = None, split: Split | Sequence[Example] | None = None) -> list[Rendered]:
    """One `Rendered` per task of `cond` (multitask targets give several, each with its prefix and
    weight). Deterministic in (seed, example id, condition name): every call's rng is seeded from
    a sha256 of those and the call's path in the target. `split`: the examples `ex` is rendered
    with (a `perturb.Split`, built once per split), for perturbations that read other examples
    (`swap`); such a target without it is an error."""
    if split is not None and not isinstance(split, Split):
        split = Split(split)
    return [_render_task(ex, cond, tok, seed, ti, task, rankings, max_len, split)
            for ti, task in enumerate(cond.tasks)]


def eval_context(ex: Example, cond: Condition, tok, *, seed: int) -> EvalContext | None:
    """The rank evaluator's view of the first task: the ids before the label and each choice's
    ids in the label's position, or None when the label is absent or follows rationale content."""
    task = cond.tasks[0]
    li = task.label_index()
    if li is None or task.rationale_before_label():
        return None
    env = _Env(ex, cond, tok, seed, 0, None)
    segs = []
    for si, seg in enumerate(task.segments[:li]):
        text, kind = env.eval(seg, f"{si}")
        segs.append((kind, text, isinstance(seg, (Lit, str))))
    prompt = task.prefix + format_prompt(ex)
    choice_ids = []
    context = None
    for choice in ex.choices:
        pieces = join_segments(segs + [("label", choice, False)], env.specials)
        ids, _, spans, label_span, _ = _sequence(tok, prompt, pieces)
        context = context if context is not None else ids[:label_span[0]]
        choice_ids.append(ids[label_span[0]:label_span[1]])
    return EvalContext(context, choice_ids, list(ex.choices))


def generation_prompt_ids(ex: Example, cond: Condition, tok) -> list[int]:
    """The ids a generating evaluator continues: the first task's prefix + prompt, no eos/bos."""
    return token_ids(tok, cond.tasks[0].prefix + format_prompt(ex))


def _match(candidate: str, ex: Example) -> int | None:
    c = norm_text(candidate)
    for i, choice in enumerate(ex.choices):
        if c and c == norm_text(choice):
            return i
    return None


def parse_answer(generated: str, ex: Example, cond: Condition) -> int | None:
    """The choice index a generated continuation names, or None (unparseable: counted wrong).

    Where the first task puts a literal right before the label (e.g. "So the answer is: "), the
    answer is the text after that literal's last occurrence, up to the next literal of the target
    or the end of the line; otherwise it is the line where the label would be (the first line
    when nothing rationale-dependent precedes the label, else the last non-empty line). The
    candidate must equal a choice text up to case, punctuation and whitespace.
    """
    task = cond.tasks[0]
    segs = task.segments
    li = task.label_index()
    if li is None:
        return None
    before = segs[li - 1] if li > 0 else None
    after = segs[li + 1] if li + 1 < len(segs) else None
    if isinstance(before, Lit) and before.text.strip():
        marker = before.text.strip()
        j = generated.rfind(marker)
        if j < 0:
            return None
        rest = generated[j + len(marker):]
        if isinstance(after, Lit) and after.text.strip() and after.text in rest:
            rest = rest[:rest.index(after.text)]
        return _match(rest.strip().split("\n")[0] if rest.strip() else "", ex)
    lines = generated.split("\n")
    if task.rationale_before_label():
        nonempty = [ln for ln in lines if ln.strip()]
        return _match(nonempty[-1], ex) if nonempty else None
    # Nothing rationale-dependent before the label: count the newlines the target puts before it
    # (separators between non-literal segments and newlines inside literals).
    k, prev_lit = 0, None
    for s in segs[:li]:
        if isinstance(s, Lit):
            k += s.text.count("\n")
            prev_lit = True if s.text else prev_lit
        else:
            k += 1 if prev_lit is False else 0
            prev_lit = False
    k += 1 if prev_lit is False else 0
    # A generator may render to nothing (unk(0)) and drop its separator, and a decoder may skip
    # special tokens, so the label may sit on an earlier line: try line k, then the ones before.
    for line in reversed(lines[:k + 1]):
        if isinstance(after, Lit) and after.text.strip() and after.text in line:
            line = line[:line.index(after.text)]
        found = _match(line, ex)
        if found is not None:
            return found
    return None
