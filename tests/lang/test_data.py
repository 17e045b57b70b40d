"""`cotdsl check` reads the data files a spec names (headers, first rows, schemas) and reports
missing columns, splits and files at the spec position, with the file's real columns, before any
model is loaded — and without importing torch, polars or `datasets`."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

from cotdsl import load
from cotdsl.errors import CotError

DATA = Path(__file__).parents[1] / "fixtures"
ROW = {"qid": "a", "q": "Sky colour?", "opts": ["blue", "green"], "gold": "blue", "why": "Rayleigh."}


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def spec(tmp_path, data: str, teacher: str = "gold") -> Path:
    p = tmp_path / "x.cot"
    p.write_text(f"experiment x {{\n  data d = {data}\n  teacher t = {teacher}\n  student s = tiny()\n"
                 "  target none = label\n}\n")
    return p


def errors(path: Path) -> list:
    with pytest.raises(CotError) as e:
        load(path)
    return e.value.diagnostics


def test_wrong_column_in_fields_is_reported_at_check_with_real_columns(tmp_path):
    write_jsonl(tmp_path / "t.jsonl", [ROW])
    p = spec(tmp_path, 'file(train: "t.jsonl", test: "t.jsonl", '
                       'fields: {question: "qestion", choices: "opts", label: "gold", rationale: "whyy"})')
    ds = errors(p)
    assert len(ds) == 2  # train and test are the same file: one error per field, reported once
    q, r = sorted(ds, key=lambda d: d.pos.col)
    assert (q.pos.line, q.pos.col) == (2, p.read_text().splitlines()[1].index('"qestion"') + 1)
    assert f"data d: {tmp_path / 't.jsonl'} has no column `qestion` (for field `question`)" == q.message
    assert q.expected == ["`gold`", "`opts`", "`q`", "`qid`", "`why`"]
    assert q.hint == 'map it: fields: {question: "<column>"}' and r.hint == "did you mean `why`?"


def test_default_field_names_csv_header_and_parquet_schema(tmp_path):
    (tmp_path / "a.csv").write_text("question,options,label\nQ?,a|b,a\n")
    pl.DataFrame({"question": ["Q?"], "choices": [{"label": ["A", "B"], "text": ["x", "y"]}],
                  "answerKey": ["A"]}).write_parquet(tmp_path / "b.parquet")
    d1, d2, d3 = errors(spec(tmp_path, 'file(train: "a.csv", test: "b.parquet", fields: {choices: "choices.txt"})'))
    assert "a.csv has no column `choices.txt`" in d1.message  # csv: `choices` is not a column at all
    assert d1.expected == ["`label`", "`options`", "`question`"]
    assert d2.message.endswith("b.parquet has no column `choices.txt` (for field `choices`)")
    assert d2.hint == "did you mean `choices.text`?" and d2.expected == ["`choices.label`", "`choices.text`"]
    assert "b.parquet has no column `label`" in d3.message and d3.expected == ["`answerKey`", "`choices`", "`question`"]
    assert "label" in next(d.message for d in errors(spec(
        tmp_path, 'file(train: "b.parquet", test: "b.parquet", fields: {choices: "choices.text"})')))
    # all good: dotted path into the struct, label mapped
    load(spec(tmp_path, 'file(train: "b.parquet", test: "b.parquet", '
                        'fields: {choices: "choices.text", label: "answerKey"})'))


def test_hub_adapter_columns_are_checked_in_local_files(tmp_path):
    shutil.copy(DATA / "quarel.jsonl", tmp_path / "quarel.jsonl")
    shutil.copy(DATA / "csqa.jsonl", tmp_path / "csqa.jsonl")
    p = spec(tmp_path, 'hf("csqa", files: {train: "quarel.jsonl", test: "csqa.jsonl"})')
    (d,) = errors(p)
    assert "quarel.jsonl has no columns `choices`, `answerKey` (for the csqa adapter)" in d.message
    assert "`answer_index`" in d.expected and "`question`" in d.expected
    assert d.pos.col == p.read_text().splitlines()[1].index('"quarel.jsonl"') + 1
    load(spec(tmp_path, 'hf("quarel", files: {train: "quarel.jsonl", test: "quarel.jsonl"})'))


def test_splits_files_format_alias_and_config(tmp_path):
    shutil.copy(DATA / "obqa_main.jsonl", tmp_path / "o.jsonl")
    (d,) = errors(spec(tmp_path, 'hf("obqa", files: {train: "o.jsonl", dev: "o.jsonl"})'))
    assert d.message == "data d: no `test` split in `files` for test" and d.expected == ["`train`", "`dev`"]
    load(spec(tmp_path, 'hf("obqa", files: {train: "o.jsonl", dev: "o.jsonl"}, test_split: "dev")'))
    # CSQA's default test split is validation; files named that way need no test_split
    shutil.copy(DATA / "csqa.jsonl", tmp_path / "c.jsonl")
    load(spec(tmp_path, 'hf("csqa", data_files: {train: "c.jsonl", validation: "c.jsonl"})'))
    (d,) = errors(spec(tmp_path, 'hf("csqa", files: {train: "nope.jsonl", test: "c.jsonl"})'))
    assert d.message.endswith(f"`files.train`: no such file or folder: {tmp_path / 'nope.jsonl'}")
    (d,) = errors(spec(tmp_path, 'hf("csqa", files: {train: "c.jsonl", test: "c.jsonl"}, '
                                 'data_files: {train: "c.jsonl", test: "c.jsonl"})'))
    assert "given twice (`files` and `data_files` are the same argument)" in d.message
    (d,) = errors(spec(tmp_path, 'hf("obqa", files: {train: "o.jsonl", test: "o.jsonl"}, config: "additional")'))
    assert "`config` picks a hub configuration" in d.message
    (tmp_path / "o.csv").write_text("id\n1\n")
    (d,) = errors(spec(tmp_path, 'hf("obqa", files: {train: "o.csv", test: "o.jsonl"})'))
    assert "cannot read '.csv' files here" in d.message and "`.parquet`" in d.expected
    (tmp_path / "plain").mkdir()
    (d,) = errors(spec(tmp_path, 'hf("obqa", disk: "plain")'))
    assert "no dataset_dict.json" in d.message


def test_teacher_rationale_file_columns(tmp_path):
    write_jsonl(tmp_path / "t.jsonl", [ROW])
    write_jsonl(tmp_path / "r.jsonl", [{"id": "a", "explanation": "Rayleigh."}])
    data = 'file("t.jsonl", "t.jsonl", fields: {question: "q", choices: "opts", label: "gold"})'
    (d,) = errors(spec(tmp_path, data, 'file("r.jsonl", field: "explanaton")'))
    assert "r.jsonl has no column `explanaton` (for the rationale file)" in d.message
    assert d.hint == "did you mean `explanation`?"
    (d,) = errors(spec(tmp_path, data, 'file("r.jsonl")'))
    assert "no column `rationale`" in d.message
    load(spec(tmp_path, data, 'file("r.jsonl", field: "explanation", strip_answer: true)'))


def test_unreadable_files_and_folders(tmp_path):
    (tmp_path / "bad.jsonl").write_text(json.dumps(ROW) + "\n{oops\n")
    (tmp_path / "t.txt").write_text("hi")
    (tmp_path / "dir").mkdir()
    (tmp_path / "empty.jsonl").write_text("\n")
    ds = errors(spec(tmp_path, 'file("bad.jsonl", "t.txt", fields: {question: "q", choices: "opts", label: "gold"})',
                     'file("dir")'))
    assert [d.message.split(": ", 1)[1] for d in ds] == [
        f"cannot read {tmp_path / 'bad.jsonl'}: row 2, column 2: not valid JSON (Expecting property name enclosed in double quotes)",
        f"cannot read {tmp_path / 't.txt'}: unknown format '.txt'",
        f"{tmp_path / 'dir'} is a folder, not a file"]
    ds = errors(spec(tmp_path, 'file("empty.jsonl", "empty.jsonl")'))
    assert len(ds) == 2 and all(d.message.endswith("empty.jsonl: no rows") for d in ds)  # train and test


def test_check_reads_data_without_heavy_imports(tmp_path):
    write_jsonl(tmp_path / "t.jsonl", [ROW])
    (tmp_path / "t.csv").write_text("q,opts,gold\nQ?,a|b,a\n")
    shutil.copy(DATA / "csqa.jsonl", tmp_path / "c.jsonl")
    p = tmp_path / "x.cot"
    p.write_text('experiment x {\n  data a = file("t.jsonl", "t.csv", fields: {question: "q", choices: "opts", '
                 'label: "gold"})\n  data b = hf("csqa", files: {train: "c.jsonl", test: "c.jsonl"})\n'
                 '  teacher t = gold\n  student s = tiny()\n  target none = label\n}\n')
    code = ("import sys, cotdsl; e = cotdsl.load(sys.argv[1]); assert len(e.data) == 2; "
            "print(sorted(m for m in ('torch', 'polars', 'datasets', 'transformers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code, str(p)], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
