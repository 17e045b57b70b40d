"""Local jsonl / csv / parquet files -> `Example`, through a field mapping.

`file(train: "a.csv", test: "b.csv", fields: {question: "q", choices: "opts", label: "gold"})`.
Fields (defaults are the same names): question, choices, label (required); id, rationale,
highlights (optional). Choices may be a list or a string delimited by "|" (or a JSON list);
highlights the same. The label may be the choice text, a letter (A, B, ...) or a 0-based index.
Any problem in a row raises `CotError` naming the file, the 1-based row and the field.

Rows already in a hub's schema need no reshaping: a column may be a dotted path into dict
values (`question: "question.stem"`), and choices may be in hub form — `{label: [...], text:
[...]}` or a list of `{label, text}` — with the label then matched against the choice labels
first (so OBQA/ARC numeric labels "1".."4" work).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..schema import LETTERS, Example
from ..spec import Source
from . import RowError, user_error

FIELDS = ("question", "choices", "label", "id", "rationale", "highlights")
REQUIRED = ("question", "choices", "label")
FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl", ".csv": "csv", ".parquet": "parquet"}
SEP = "|"


def read_rows(path: Path, fmt: str | None = None) -> list[dict[str, Any]]:
    """All rows of a file as dicts (row i of the list = data row i+1 of the file)."""
    fmt = fmt or FORMATS.get(path.suffix.lower())
    if fmt not in ("jsonl", "csv", "parquet"):
        raise user_error(f"{path}: unknown format {fmt or path.suffix!r}",
                         hint="use format: \"jsonl\", \"csv\" or \"parquet\"")
    if not path.is_file():
        raise user_error(f"{path}: no such file")
    if fmt == "jsonl":
        # The json module, not polars: rows may have different keys, and a malformed line must
        # be reported by its own line number.
        rows = []
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise user_error(f"{path}: row {n}, column {e.colno}: not valid JSON ({e.msg})",
                                 hint="each line of a .jsonl file must be one JSON object") from None
            if not isinstance(row, dict):
                raise user_error(f"{path}: row {n}: expected a JSON object")
            rows.append(row)
        return rows
    import polars as pl

    try:
        # infer_schema=False keeps every csv cell a string, so "1" stays a label, not a float.
        df = pl.read_csv(path, infer_schema=False) if fmt == "csv" else pl.read_parquet(path)
    except Exception as e:  # corrupt / not that format
        raise user_error(f"{path}: could not read as {fmt}: {e}") from None
    return df.to_dicts()


def _listish(value: Any, field: str) -> list[str]:
    if isinstance(value, (list, tuple)):
        return [str(v).strip() for v in value]
    if hasattr(value, "to_list"):  # polars Series from parquet list columns
        return [str(v).strip() for v in value.to_list()]
    if isinstance(value, str):
        s = value.strip()
        if s.startswith("["):
            try:
                parsed = json.loads(s)
            except json.JSONDecodeError:
                raise RowError(field, "looks like a JSON list but does not parse") from None
            return [str(v).strip() for v in parsed]
        return [p.strip() for p in s.split(SEP)]
    raise RowError(field, f"expected a list or a '{SEP}'-delimited string, got {type(value).__name__}")


def _hub_choices(value: Any) -> tuple[list[str], list[str] | None]:
    """Choices and, in hub form, their labels: {label: [...], text: [...]} (also as a JSON
    string) or [{label, text}, ...]; any other value is a plain list of choices."""
    if isinstance(value, str) and value.strip().startswith("{"):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise RowError("choices", "looks like a JSON object but does not parse") from None
    if isinstance(value, dict):
        if "text" not in value:
            raise RowError("choices", f"a dict of choices needs `text` (hub form {{label: [...], text: [...]}}), "
                                        f"got keys {sorted(value)}")
        texts = _listish(value["text"], "choices")
        labels = _listish(value["label"], "choices") if value.get("label") is not None else None
        if labels is not None and len(labels) != len(texts):
            raise RowError("choices", f"{len(labels)} choice labels for {len(texts)} choice texts")
        return texts, labels
    if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        if not all("text" in v for v in value):
            raise RowError("choices", "a list of choice dicts needs `text` in each ({label, text})")
        labels = [str(v["label"]).strip() for v in value] if all("label" in v for v in value) else None
        return [str(v["text"]).strip() for v in value], labels
    return _listish(value, "choices"), None


def _answer(label: Any, choices: list[str], labels: list[str] | None = None) -> int:
    """Hub choice labels first (answerKey), then the choice text, a letter, a 0-based index."""
    if labels and isinstance(label, (str, int)) and not isinstance(label, bool) and str(label).strip() in labels:
        return labels.index(str(label).strip())
    if isinstance(label, bool):
        raise RowError("label", f"label {label!r} is not among the choices")
    if isinstance(label, str):
        s = label.strip()
        if s in choices:
            return choices.index(s)
        if len(s) == 1 and s.upper() in LETTERS[: len(choices)]:
            return LETTERS.index(s.upper())
        if s.isdigit() and int(s) < len(choices):
            return int(s)
    elif isinstance(label, (int, float)) and float(label).is_integer() and 0 <= int(label) < len(choices):
        return int(label)
    raise RowError("label", f"label {label!r} is not among the choices {choices} "
                              f"(as text, letter A-{LETTERS[len(choices) - 1]} or index 0-{len(choices) - 1})")


def lookup(row: dict, column: str) -> Any:
    """`row[column]`, or a dotted path through dict values (`"choices.text"`; a csv cell holding
    a JSON object counts as a dict); None if absent."""
    if column in row:
        return row[column]
    cur: Any = row
    for part in column.split("."):
        if isinstance(cur, str) and cur.lstrip().startswith("{"):
            try:
                cur = json.loads(cur)
            except json.JSONDecodeError:
                return None
        if not isinstance(cur, dict) or part not in cur:
            return None
        cur = cur[part]
    return cur


def has(row: dict, column: str) -> bool:
    return column in row or lookup(row, column) is not None


def to_example(row: dict, fields: dict[str, str], default_id: str) -> Example:
    def get(name: str, required: bool):
        col = fields[name]
        val = lookup(row, col)
        if val is None or (isinstance(val, str) and not val.strip() and name != "rationale"):
            if required:
                raise RowError(name, f"missing or empty (column {col!r})")
            return None
        return val

    question = str(get("question", True)).strip()
    choices, labels = _hub_choices(get("choices", True))
    if len(choices) < 2 or any(not c for c in choices):
        raise RowError("choices", f"need at least 2 non-empty choices, got {choices}")
    if len(set(choices)) != len(choices):
        raise RowError("choices", f"duplicate choices {choices}")
    if len(choices) > len(LETTERS):
        raise RowError("choices", f"at most {len(LETTERS)} choices, got {len(choices)}")
    answer = _answer(get("label", True), choices, labels)
    rid = get("id", False)
    rationale = get("rationale", False)
    hl = get("highlights", False)
    return Example(id=str(rid) if rid is not None else default_id, question=question,
                   choices=tuple(choices), answer=answer,
                   rationale=str(rationale).strip() or None if rationale is not None else None,
                   highlights=tuple(h for h in _listish(hl, "highlights") if h) if hl is not None else None)


def load_file(path: Path, fields: dict[str, str], fmt: str | None = None,
              explicit: tuple[str, ...] = ()) -> list[Example]:
    """One file -> Examples. Optional fields named in `explicit` (mapped by the user) must be a
    column of the file: a typo there should not silently mean "no rationales"."""
    rows = read_rows(path, fmt)
    if not rows:
        raise user_error(f"{path}: no rows")
    for name in explicit:
        if name not in REQUIRED and not any(has(r, fields[name]) for r in rows):
            raise user_error(f"{path}: row 1: field {name!r}: no column {fields[name]!r} in the file")
    out = []
    for i, row in enumerate(rows, start=1):
        try:
            out.append(to_example(row, fields, f"{path.stem}-{i}"))
        except RowError as e:
            raise user_error(f"{path}: row {i}: field {e.field!r}: {e}") from None
    ids = [e.id for e in out]
    if len(set(ids)) != len(ids):
        dup = next(x for x in ids if ids.count(x) > 1)
        raise user_error(f"{path}: row {ids.index(dup, ids.index(dup) + 1) + 1}: field 'id': "
                         f"duplicate id {dup!r}")
    return out


def _given(src: Source) -> dict[str, str]:
    given = src.arg("fields") or {}
    return dict(given) if not isinstance(given, dict) else given


def _fields(src: Source) -> dict[str, str]:
    given = _given(src)
    unknown = set(given) - set(FIELDS)
    if unknown:
        raise user_error(f"data {src.name}: unknown field(s) {sorted(unknown)} in fields",
                         src.pos, hint=f"fields are {', '.join(FIELDS)}")
    return {f: str(given.get(f, f)) for f in FIELDS}


def load_files(src: Source) -> tuple[list[Example], list[Example]]:
    """Source(kind="file") -> (train, test)."""
    fields = _fields(src)
    fmt = src.arg("format")
    out = []
    for role in ("train", "test"):
        p = src.arg(role)
        if not p:
            raise user_error(f"data {src.name}: file(...) needs a {role} path", src.pos)
        out.append(load_file(Path(p), fields, fmt, tuple(_given(src))))
    return out[0], out[1]
