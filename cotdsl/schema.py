"""The one data schema every source maps into, and the prompt format shared by render and eval.

Every data adapter (builtin task, CSQA/OBQA/QuaRel, local files) yields `Example`s; teachers add
rationales; rendering and evaluation read only these fields.
"""
from __future__ import annotations

import unicodedata
from dataclasses import dataclass, field, replace

LETTERS = "ABCDEFGHIJ"


@dataclass(frozen=True)
class Example:
    """One multiple-choice question.

    `label` is the gold choice *text* (it is one of `choices`); `answer` is its index.
    `rationale` is free text explaining the answer (None until a teacher provides one).
    `highlights` are words of the rationale known to matter (human annotation or, for the
    builtin task, the planted key tokens), in rationale order.
    """

    id: str
    question: str
    choices: tuple[str, ...]
    answer: int
    rationale: str | None = None
    highlights: tuple[str, ...] | None = None
    meta: dict = field(default_factory=dict, compare=False, hash=False)

    @property
    def label(self) -> str:
        return self.choices[self.answer]

    @property
    def letter(self) -> str:
        return LETTERS[self.answer]

    def with_rationale(self, rationale: str | None) -> "Example":
        return replace(self, rationale=rationale)


def format_prompt(ex: Example) -> str:
    """The question as the student sees it (the authors' format); the target follows 'Answer:'."""
    lines = [f"Question: {ex.question}", "Choices:"]
    lines += [f"{LETTERS[i]}: {c}" for i, c in enumerate(ex.choices)]
    lines.append("Answer:")
    return "\n".join(lines)


# ---- comparing text with choices ----------------------------------------------------------------
def _normed(text: str) -> tuple[str, list[int]]:
    """`norm_text(text)` and, for each of its characters, the index in `text` it comes from."""
    chars: list[str] = []
    where: list[int] = []
    for i, ch in enumerate(text):
        for c in " " if unicodedata.category(ch).startswith("P") else ch.lower():
            if not c.isspace():
                chars.append(c)
                where.append(i)
            elif chars and chars[-1] != " ":
                chars.append(" ")
                where.append(i)
    if chars and chars[-1] == " ":
        chars.pop()
        where.pop()
    return "".join(chars), where


def norm_text(text: str) -> str:
    """Lower case, every punctuation character a space, whitespace runs one space, no edge spaces:
    how a generated answer or a rationale is compared with a choice ("On the mat." ~ "on the mat")."""
    return _normed(text)[0]


def mentions(text: str, phrase: str) -> list[tuple[int, int]]:
    """Character spans `[start, end)` of `text` where `phrase` occurs as whole words, up to case,
    punctuation and whitespace (`norm_text` equality), left to right, not overlapping; [] when
    `phrase` has no words. "the mat" is mentioned in "On the mat, warm." but not in "the matter"."""
    hay, where = _normed(text)
    needle = norm_text(phrase)
    out: list[tuple[int, int]] = []
    if not needle:
        return out
    padded, pos = f" {hay} ", 0
    while (j := padded.find(f" {needle} ", pos)) != -1:  # j: where the match starts in `hay`
        out.append((where[j], where[j + len(needle) - 1] + 1))
        pos = j + len(needle) + 1
    return out


def choice_mentions(text: str, choices: tuple[str, ...] | list[str]) -> list[tuple[int, int, int]]:
    """Every choice mentioned in `text` as `(start, end, choice index)`, in text order, spans not
    overlapping: where mentions overlap, the longer one wins (with choices "blue sky" and "sky",
    "the blue sky" mentions only the first), then the earlier choice."""
    found = sorted(((a, b, i) for i, c in enumerate(choices) for a, b in mentions(text, c)),
                   key=lambda m: (m[0] - m[1], m[2], m[0]))
    kept: list[tuple[int, int, int]] = []
    for a, b, i in found:
        if all(b <= x or a >= y for x, y, _ in kept):
            kept.append((a, b, i))
    return sorted(kept)
