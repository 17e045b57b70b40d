"""Data sources: every `spec.Source` becomes (train, test) lists of `schema.Example`.

- ``builtin`` — the embedded offline task (`builtin.generate`).
- ``hf`` — CommonsenseQA / OpenBookQA / QuaRel through `datasets.load_dataset` (`adapters`).
- ``file`` — local jsonl / csv / parquet with a field mapping (`files`).
"""
from __future__ import annotations

import hashlib
import json
from typing import Iterable

from ..errors import CotError
from ..schema import Example
from ..spec import Source


user_error = CotError.one  # a bad source or file: one diagnostic, at the declaration's position


class RowError(ValueError):
    """A row (of a file or a hub dataset) that does not fit the expected schema; `field` names the
    field, so that the caller can report file, row and field."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


def _int_arg(src: Source, key: str, default):
    val = src.arg(key, default)
    if val is None:
        return None
    if isinstance(val, bool) or not isinstance(val, (int, float)) or int(val) != val:
        raise user_error(f"data {src.name}: {key} must be an integer, got {val!r}", src.pos)
    return int(val)


def load_source(src: Source) -> tuple[list[Example], list[Example]]:
    """Load one declared data source -> (train, test). User mistakes raise `CotError`."""
    if src.kind == "builtin":
        from .builtin import generate

        try:
            return generate(task=src.arg("task", "facts"), train=_int_arg(src, "train", 400),
                            test=_int_arg(src, "test", 200), seed=_int_arg(src, "seed", 0),
                            choices=_int_arg(src, "choices", 4),
                            entities=_int_arg(src, "entities", None))
        except ValueError as e:
            raise user_error(f"data {src.name}: {e}", src.pos) from None
    if src.kind == "hf":
        from .adapters import load_hf

        return load_hf(src)
    if src.kind == "file":
        from .files import load_files

        return load_files(src)
    raise user_error(f"data {src.name}: unknown source kind {src.kind!r}", src.pos,
                     hint="use builtin(...), hf(...) or file(...)")


def example_dict(ex: Example) -> dict:
    """The content of an example that matters for caching (meta is bookkeeping, left out)."""
    return {"id": ex.id, "question": ex.question, "choices": list(ex.choices), "answer": ex.answer,
            "rationale": ex.rationale,
            "highlights": list(ex.highlights) if ex.highlights is not None else None}


def fingerprint(examples: Iterable[Example]) -> str:
    """sha256 hex of a canonical JSON of the examples (order matters), for cache keys."""
    h = hashlib.sha256()
    for ex in examples:
        h.update(json.dumps(example_dict(ex), sort_keys=True, ensure_ascii=False,
                            separators=(",", ":")).encode())
        h.update(b"\n")
    return h.hexdigest()
