"""Check-time data preflight: the columns a spec names must exist in its files.

Without this a typo in `fields: {question: "qestion"}` or a CSQA file given to the QuaRel
adapter is found only by `cotdsl run`, after a model load. `preflight` reads each local data or
rationale file cheaply — a jsonl file's first rows, a csv header, a parquet/arrow schema, a
`save_to_disk` folder's `dataset_info.json` — and reports what is missing at the spec position
that named it, with the file's real columns and a "did you mean". It imports no torch, polars or
`datasets` (only pyarrow, for parquet/arrow files), so `cotdsl check` stays light.

A file's *shape* is a tree `{column: None | ... | shape}`: None is a plain value, a nested shape
a struct/dict column (hub-style `choices: {label, text}`), `...` a value not inspected (a csv
cell), which any dotted path below it is allowed to reach.
"""
from __future__ import annotations

import csv
import json
from pathlib import Path

from cotdsl import spec
from cotdsl.errors import Collector, Pos, did_you_mean

from . import ast

SAMPLE_ROWS = 1000  # jsonl rows whose keys make up the columns
LOCAL_FORMATS = {".jsonl": "json", ".json": "json", ".ndjson": "json", ".parquet": "parquet", ".arrow": "arrow"}


# ---- reading shapes ---------------------------------------------------------------------------
def _merge(into: dict, row: dict) -> None:
    for k, v in row.items():
        if isinstance(v, dict):
            sub = into.get(k)
            into[k] = sub if isinstance(sub, dict) else {}
            _merge(into[k], v)
        elif k not in into:
            into[k] = None


def _arrow_shape(schema) -> dict:
    import pyarrow as pa

    def one(t):
        if pa.types.is_struct(t):
            return {t.field(i).name: one(t.field(i).type) for i in range(t.num_fields)}
        return None

    return {f.name: one(f.type) for f in schema}


def _features_shape(features: dict) -> dict:
    """`dataset_info.json` features -> shape (a plain dict of features is a struct; a list of
    a struct is, as `datasets` stores it, a struct of lists)."""
    def one(f):
        if isinstance(f, dict) and "_type" not in f:
            return _features_shape(f)
        if isinstance(f, dict) and f.get("_type") in ("List", "Sequence", "LargeList"):
            inner = one(f.get("feature"))
            return inner if isinstance(inner, dict) else None
        return None

    return {k: one(v) for k, v in features.items()}


def shape(path: Path, fmt: str | None = None) -> dict:
    """The columns of a data file or `save_to_disk` folder. ValueError says why it cannot be read."""
    if path.is_dir():
        info = path / "dataset_info.json"
        if (path / "dataset_dict.json").is_file():
            raise ValueError("a DatasetDict folder (pick a split folder inside it, or use `disk:`)")
        if not info.is_file():
            raise ValueError("not a folder written by `save_to_disk` (no dataset_info.json)")
        return _features_shape(json.loads(info.read_text()).get("features") or {})
    fmt = fmt or {".csv": "csv", **LOCAL_FORMATS}.get(path.suffix.lower())
    if fmt in ("json", "jsonl"):
        out: dict = {}
        with path.open(encoding="utf-8") as f:
            n = 0
            for line in f:
                if not line.strip():
                    continue
                n += 1
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    raise ValueError(f"row {n}, column {e.colno}: not valid JSON ({e.msg})") from None
                if isinstance(row, dict):
                    _merge(out, row)
                if n >= SAMPLE_ROWS:
                    break
        if not n:
            raise ValueError("no rows")
        return out
    if fmt == "csv":
        with path.open(encoding="utf-8", newline="") as f:
            header = next(csv.reader(f), [])
        return {c: ... for c in header}
    if fmt == "parquet":
        import pyarrow.parquet as pq

        return _arrow_shape(pq.read_schema(path))
    if fmt == "arrow":
        import pyarrow as pa

        with pa.memory_map(str(path)) as f:
            try:
                return _arrow_shape(pa.ipc.open_stream(f).schema)  # what save_to_disk writes
            except pa.ArrowInvalid:
                f.seek(0)
                return _arrow_shape(pa.ipc.open_file(f).schema)
    raise ValueError(f"unknown format {path.suffix or fmt!r}")


def missing(tree: dict, column: str) -> tuple[str, list[str]] | None:
    """None when `column` (a name, or a dotted path into dict columns) is in `tree`; else the
    part that is missing and the names available at that level."""
    if column in tree:
        return None
    head, dot, rest = column.partition(".")
    if not dot or head not in tree:
        return column, sorted(tree)
    sub = tree[head]
    if sub is ...:
        return None
    if not isinstance(sub, dict):
        return column, [f"{head} (not a dict)"]
    got = missing(sub, rest)
    return None if got is None else (f"{head}.{got[0]}", [f"{head}.{k}" for k in got[1]])


# ---- the checks -------------------------------------------------------------------------------
class _Pre:
    def __init__(self, decl: spec.Decl, at: dict[str, ast.Value], col: Collector, what: str):
        self.decl, self.at, self.col, self.what = decl, at, col, what

    def pos(self, *keys: str) -> Pos:
        """Position of the first named argument (or map entry `arg.key`) written in the spec."""
        for k in keys:
            name, _, entry = k.partition(".")
            v = self.at.get(name)
            if entry:
                v = next((kv.value for kv in v.items if kv.key == entry), None) if isinstance(v, ast.MapV) else None
            if v is not None:
                return v.pos
        return self.decl.pos

    def read(self, path: str, where: tuple[str, ...], fmt: str | None = None, folders: bool = False) -> dict | None:
        """The file's shape, or None after reporting why it cannot be read. Only `hf(..., files)`
        reads `save_to_disk` folders (`folders`)."""
        if Path(path).is_dir() and not folders:
            self.col.error(self.pos(*where), f"{self.what}: {path} is a folder, not a file",
                           hint='hub rows saved with `save_to_disk`: hf("csqa", files: {train: "<folder>", ...})')
            return None
        try:
            tree = shape(Path(path), fmt)
        except (ValueError, OSError) as e:
            self.col.error(self.pos(*where), f"{self.what}: cannot read {path}: {e}",
                           hint="jsonl, csv or parquet, by extension" if "unknown format" in str(e) else None)
            return None
        except Exception as e:  # pyarrow's own errors for a corrupt file
            self.col.error(self.pos(*where), f"{self.what}: cannot read {path}: {type(e).__name__}: {e}")
            return None
        if not tree:
            self.col.error(self.pos(*where), f"{self.what}: {path} has no columns")
            return None
        return tree

    def need(self, tree: dict, path: str, columns: list[str], field: str, where: tuple[str, ...],
             hint: str) -> None:
        """One error for the `columns` missing from `tree` (a file's real columns as `expected`)."""
        gone = [got for got in (missing(tree, c) for c in columns) if got is not None]
        if not gone:
            return
        names = ", ".join(f"`{part}`" for part, _ in gone)
        have = gone[0][1]
        self.col.error(self.pos(*where), f"{self.what}: {path} has no column{'s' if len(gone) > 1 else ''} "
                       f"{names} (for {field})", expected=[f"`{h}`" for h in have][:30],
                       hint=(did_you_mean(gone[0][0], have) if len(gone) == 1 else None) or hint)


def _file_source(pre: _Pre, src: spec.Source) -> None:
    from cotdsl.data.files import FIELDS, REQUIRED

    given = dict(src.arg("fields") or {})
    fmt = src.arg("format")
    for role in ("train", "test"):
        path = src.arg(role)
        tree = pre.read(path, (role,), fmt)
        if tree is None:
            continue
        for f in FIELDS:
            if f in REQUIRED or f in given:
                pre.need(tree, path, [str(given.get(f, f))], f"field `{f}`", (f"fields.{f}", role),
                         f'map it: fields: {{{f}: "<column>"}}')


def _hf_source(pre: _Pre, src: spec.Source) -> None:
    from cotdsl.data.adapters import ADAPTERS, local_splits, resolve

    files, disk = src.arg("files"), src.arg("disk")
    if files is None and disk is None:
        return  # the hub: nothing local to look at
    ad = ADAPTERS[resolve(src.arg("dataset"))]
    if files is not None and disk is not None:
        pre.col.error(pre.pos("disk"), f"{pre.what}: give `files` or `disk`, not both")
        return
    if src.arg("config") is not None:
        pre.col.error(pre.pos("config"), f"{pre.what}: `config` picks a hub configuration; local files are "
                      "read as they are", hint="remove `config` (OBQA's `fact1` is used whenever a row has it)")
    if disk is not None:
        dd = Path(disk) / "dataset_dict.json"
        if not dd.is_file():
            pre.col.error(pre.pos("disk"), f"{pre.what}: `disk`: {disk} is not a folder written by "
                          "`DatasetDict.save_to_disk` (no dataset_dict.json)",
                          hint='one split per folder: files: {train: "<folder>", test: "<folder>"}')
            return
        paths = {s: str(Path(disk) / s) for s in json.loads(dd.read_text()).get("splits", [])}
        arg = "disk"
    else:
        paths, arg = dict(files), "files"
    for role, split in local_splits(ad, src, paths).items():
        if split not in paths:
            pre.col.error(pre.pos(f"{role}_split", arg), f"{pre.what}: no `{split}` split in `{arg}` for {role}",
                          expected=[f"`{k}`" for k in paths],
                          hint=f'name it: {role}_split: "<split>"' if paths else None)
            continue
        where = (f"files.{split}", "files", "disk")
        p = Path(paths[split])
        if arg == "files" and not p.is_dir() and p.suffix.lower() not in LOCAL_FORMATS:
            pre.col.error(pre.pos(*where), f"{pre.what}: cannot read {p.suffix or p.name!r} files here",
                          expected=[f"`{s}`" for s in LOCAL_FORMATS] + ["a `save_to_disk` folder"],
                          hint="hub-schema rows in jsonl, parquet or arrow; other layouts: file(..., fields: {...})")
            continue
        tree = pre.read(str(p), where, folders=True)
        if tree is not None:
            pre.need(tree, str(p), list(ad.columns), f"the {src.arg('dataset')} adapter", where,
                     f"{ad.path} rows have {', '.join(ad.columns)}; other layouts: file(..., fields: {{...}})")


def _file_teacher(pre: _Pre, t: spec.Teacher) -> None:
    path = t.arg("path")
    tree = pre.read(path, ("path",))
    if tree is not None:
        for column, where in (("id", ("path",)), (t.arg("field", "rationale"), ("field", "path"))):
            pre.need(tree, path, [column], "the rationale file", where,
                     'a rationale file has `id` and the rationale column (field: "<column>")')


def preflight(decl: spec.Decl, at: dict[str, ast.Value], col: Collector) -> None:
    """Check the local files a checked `data`/`teacher` declaration reads; problems go to `col`.
    `at` maps argument names to their values in the spec (for error positions)."""
    what = f"{'data' if isinstance(decl, spec.Source) else 'teacher'} {decl.name}"
    pre = _Pre(decl, at, col, what)
    if isinstance(decl, spec.Source) and decl.kind == "file":
        _file_source(pre, decl)
    elif isinstance(decl, spec.Source) and decl.kind == "hf":
        _hf_source(pre, decl)
    elif isinstance(decl, spec.Teacher) and decl.kind == "file":
        _file_teacher(pre, decl)
