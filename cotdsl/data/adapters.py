"""Hub datasets -> `Example`: CommonsenseQA, OpenBookQA (main/additional), QuaRel.

Rows are read with `datasets.load_dataset` and mapped by one function per dataset, which sees a
plain dict in the hub's exact schema:

- ``tau/commonsense_qa``: id, question, question_concept, choices{label, text}, answerKey.
  The hub's test split has no answers (answerKey ""), so the default test split is validation.
- ``allenai/openbookqa`` config main: id, question_stem, choices{text, label}, answerKey; config
  additional adds fact1 (the open-book science fact), used as a gold rationale.
- ``allenai/quarel``: id, question with the options inline ("... (A) John (B) Rita"),
  answer_index, logical_forms, logical_form_pretty, world_literals{world1, world2}.

The same rows may come from local files in that schema (`files: {train: ..., test: ...}`: jsonl,
parquet, arrow, or `save_to_disk` folders; `disk:` a `DatasetDict.save_to_disk` folder), so a
researcher who already downloaded a dataset can use it offline through the same mapping.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

from ..schema import Example
from ..spec import Source
from . import RowError, user_error


def _lettered(row: dict, stem: str) -> Example:
    """Shared by CSQA and OBQA: choices{label, text} plus an answerKey letter."""
    ch = row.get("choices") or {}
    labels, texts = list(ch.get("label") or []), list(ch.get("text") or [])
    if not texts or len(labels) != len(texts):
        raise RowError("choices", "choices must have as many labels as texts")
    key = str(row.get("answerKey") or "").strip()
    if key not in labels:
        raise RowError("answerKey", f"answerKey {key!r} is not one of the choice labels {labels}")
    question = str(row.get(stem) or "").strip()
    if not question:
        raise RowError(stem, "empty question")
    fact = str(row.get("fact1") or "").strip() or None  # OBQA "additional" only
    return Example(id=str(row["id"]), question=question, choices=tuple(t.strip() for t in texts),
                   answer=labels.index(key), rationale=fact)


def csqa_row(row: dict) -> Example:
    ex = _lettered(row, "question")
    if row.get("question_concept"):
        ex.meta["concept"] = row["question_concept"]
    return ex


def obqa_row(row: dict) -> Example:
    return _lettered(row, "question_stem")


_QUAREL = re.compile(r"^(?P<stem>.*?)\s*\(A\)\s*(?P<a>.*?)\s*\(B\)\s*(?P<b>.*?)\s*$", re.S)


def quarel_row(row: dict) -> Example:
    m = _QUAREL.match(str(row.get("question") or ""))
    if not m or not m["stem"].strip() or not m["a"] or not m["b"]:
        raise RowError("question", "expected '<question> (A) <option> (B) <option>'")
    idx = row.get("answer_index")
    if idx not in (0, 1):
        raise RowError("answer_index", f"answer_index must be 0 or 1, got {idx!r}")
    # Collapse the double spaces QuaRel stories often contain.
    stem = " ".join(m["stem"].split())
    return Example(id=str(row["id"]), question=stem, choices=(m["a"], m["b"]), answer=int(idx))


@dataclass(frozen=True)
class Adapter:
    path: str
    config: str | None
    train_split: str
    test_split: str
    to_example: Callable[[dict], Example]
    columns: tuple[str, ...]  # what `to_example` reads (checked in local files at `cotdsl check`)


ADAPTERS: dict[str, Adapter] = {
    "csqa": Adapter("tau/commonsense_qa", None, "train", "validation", csqa_row,
                    ("id", "question", "choices", "answerKey")),
    "obqa": Adapter("allenai/openbookqa", "main", "train", "test", obqa_row,
                    ("id", "question_stem", "choices", "answerKey")),
    "quarel": Adapter("allenai/quarel", None, "train", "test", quarel_row, ("id", "question", "answer_index")),
}
_BY_PATH = {a.path.lower(): k for k, a in ADAPTERS.items()}
# Older hub names without the organisation prefix.
_BY_PATH.update({"commonsense_qa": "csqa", "openbookqa": "obqa"})


def resolve(dataset: str) -> str:
    """Alias ("csqa") or hub path ("tau/commonsense_qa") -> adapter key; ValueError otherwise."""
    key = str(dataset).strip().lower()
    if key in ADAPTERS:
        return key
    if key in _BY_PATH:
        return _BY_PATH[key]
    known = ", ".join(f"{k} ({a.path})" for k, a in ADAPTERS.items())
    raise ValueError(f"no adapter for dataset {dataset!r}; known: {known}")


def convert(key: str, rows: Iterable[dict[str, Any]], where: str) -> list[Example]:
    """Map hub rows with the adapter `key`; a bad row raises CotError naming `where`, row, field."""
    fn = ADAPTERS[key].to_example
    out = []
    for i, row in enumerate(rows, start=1):
        try:
            out.append(fn(dict(row)))
        except RowError as e:
            raise user_error(f"{where}: row {i}: field {e.field!r}: {e}") from None
        except KeyError as e:
            raise user_error(f"{where}: row {i}: field {e.args[0]!r} is missing") from None
    return out


def _count(src: Source, key: str) -> int | None:
    n = src.arg(key)
    if n is None:
        return None
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise user_error(f"data {src.name}: {key} must be a non-negative integer, got {n!r}", src.pos)
    return n


def local_splits(ad: Adapter, src: Source, available) -> dict[str, str]:
    """{role: split} for local files: `<role>_split` when given, else the adapter's default split
    when the files have it (CSQA's labelled `validation` for test), else the role's name."""
    out = {}
    for role, default in (("train", ad.train_split), ("test", ad.test_split)):
        out[role] = src.arg(f"{role}_split") or (default if default in available else role)
    return out


def _local_paths(src: Source) -> dict[str, str] | None:
    """split -> file or folder, from `files: {...}` or the splits of a `disk:` DatasetDict folder."""
    if src.arg("files") is not None:
        return dict(src.arg("files"))
    if src.arg("disk") is not None:
        disk = Path(src.arg("disk"))
        try:
            splits = json.loads((disk / "dataset_dict.json").read_text())["splits"]
        except (OSError, ValueError, KeyError):
            raise user_error(f"data {src.name}: {disk} is not a folder written by DatasetDict.save_to_disk",
                             src.pos) from None
        return {s: str(disk / s) for s in splits}
    return None


def _read_local(path: str, n: int | None):
    """Hub-schema rows of one local split: a `save_to_disk` folder or a jsonl/parquet/arrow file."""
    import datasets

    p = Path(path)
    if p.is_dir():
        ds = datasets.load_from_disk(str(p))
        return ds.select(range(min(n, len(ds)))) if n is not None else ds
    builder = {".parquet": "parquet", ".arrow": "arrow"}.get(p.suffix.lower(), "json")
    return datasets.load_dataset(builder, data_files=str(p), split="train" if n is None else f"train[:{n}]")


def load_hf(src: Source) -> tuple[list[Example], list[Example]]:
    """Source(kind="hf") -> (train, test): the first `train` / `test` rows of each split, from
    the hub or from local files in the hub's schema."""
    import datasets

    try:
        key = resolve(src.arg("dataset", ""))
    except ValueError as e:
        raise user_error(f"data {src.name}: {e}", src.pos) from None
    ad = ADAPTERS[key]
    local = _local_paths(src)
    if local is not None:
        out = []
        for role, split in local_splits(ad, src, local).items():
            n = _count(src, role)
            if split not in local:
                raise user_error(f"data {src.name}: no {split!r} split among {sorted(local)}", src.pos,
                                 hint=f'name the {role} split: {role}_split: "<split>"')
            try:
                rows = [] if n == 0 else _read_local(local[split], n)
            except Exception as e:  # corrupt file, wrong format: user-facing
                raise user_error(f"data {src.name}: could not read {local[split]}: {type(e).__name__}: {e}",
                                 src.pos) from None
            out.append(convert(key, rows, local[split]))
        return out[0], out[1]
    config = src.arg("config", ad.config)
    out = []
    for role, default in (("train", ad.train_split), ("test", ad.test_split)):
        split = src.arg(f"{role}_split", default)
        n = _count(src, role)
        if n == 0:
            out.append([])
            continue
        try:
            ds = datasets.load_dataset(ad.path, config, split=split if n is None else f"{split}[:{n}]")
        except Exception as e:  # offline, not cached, bad split/config: all user-facing
            raise user_error(
                f"data {src.name}: could not load {ad.path}"
                f"{f' ({config})' if config else ''} split {split!r}: {type(e).__name__}: {e}",
                src.pos,
                hint="the hub is offline here: fetch it once online (datasets cache) or use file(...)",
            ) from None
        out.append(convert(key, ds, f"{ad.path}:{split}"))
    return out[0], out[1]
