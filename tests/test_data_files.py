"""Local jsonl/csv/parquet with a field mapping; row-level errors name file, row and field."""
import json

import polars as pl
import pytest

from cotdsl.data import load_source
from cotdsl.data.files import load_file, FIELDS
from cotdsl.errors import CotError
from cotdsl.spec import Source

IDENT = {f: f for f in FIELDS}


def write_jsonl(path, rows):
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def src(train, test, fields=None, fmt=None):
    args = [("train", str(train)), ("test", str(test))]
    if fields is not None:
        args.append(("fields", tuple(fields.items())))
    if fmt:
        args.append(("format", fmt))
    return Source("d", "file", tuple(args))


def test_jsonl_with_mapping_and_label_forms(tmp_path):
    rows = [
        {"qid": "a", "q": "Sky colour?", "opts": ["blue", "green"], "gold": "blue", "why": "Rayleigh."},
        {"qid": "b", "q": "Two plus two?", "opts": "three|four|five", "gold": "B", "why": "Arithmetic."},
        {"qid": "c", "q": "Grass colour?", "opts": ["red", "green"], "gold": 1},
        {"qid": "d", "q": "Ice is?", "opts": '["cold", "hot"]', "gold": "0", "keys": "cold|ice"},
    ]
    p = write_jsonl(tmp_path / "tr.jsonl", rows)
    fields = {"id": "qid", "question": "q", "choices": "opts", "label": "gold", "rationale": "why",
              "highlights": "keys"}
    train, test = load_source(src(p, p, fields))
    assert [e.answer for e in train] == [0, 1, 1, 0]
    assert train[1].choices == ("three", "four", "five") and train[1].label == "four"
    assert train[0].rationale == "Rayleigh." and train[2].rationale is None
    assert train[3].highlights == ("cold", "ice") and train[0].highlights is None
    assert [e.id for e in test] == ["a", "b", "c", "d"]


def test_csv_and_parquet_default_fields(tmp_path):
    df = pl.DataFrame({"question": ["Q1?", "Q2?"], "choices": ["x|y", "u|v|w"], "label": ["y", "2"],
                       "rationale": ["because", None]})
    df.write_csv(tmp_path / "a.csv")
    train = load_file(tmp_path / "a.csv", IDENT)
    assert [e.label for e in train] == ["y", "w"]
    assert [e.id for e in train] == ["a-1", "a-2"]
    assert train[1].rationale is None
    pq = pl.DataFrame({"question": ["Q1?"], "choices": [["x", "y"]], "label": [1]})
    pq.write_parquet(tmp_path / "b.parquet")
    (ex,) = load_file(tmp_path / "b.parquet", IDENT)
    assert ex.choices == ("x", "y") and ex.label == "y"


@pytest.mark.parametrize("row,field", [
    ({"question": "Q?", "choices": ["a", "b"]}, "label"),  # missing field
    ({"question": "Q?", "choices": ["a", "b"], "label": "c"}, "label"),  # not among the choices
    ({"question": "Q?", "choices": ["a", "b"], "label": 5}, "label"),
    ({"question": "  ", "choices": ["a", "b"], "label": "a"}, "question"),  # empty question
    ({"question": "Q?", "choices": ["a"], "label": "a"}, "choices"),
    ({"question": "Q?", "choices": "a|a", "label": "a"}, "choices"),
    ({"question": "Q?", "choices": 7, "label": "a"}, "choices"),
])
def test_bad_rows_name_file_row_and_field(tmp_path, row, field):
    good = {"question": "Fine?", "choices": ["a", "b"], "label": "a"}
    p = write_jsonl(tmp_path / "bad.jsonl", [good, good, row])
    with pytest.raises(CotError) as e:
        load_file(p, IDENT)
    msg = str(e.value)
    assert "bad.jsonl" in msg and "row 3" in msg and f"field '{field}'" in msg


def test_csv_empty_cell_is_missing(tmp_path):
    (tmp_path / "c.csv").write_text("question,choices,label\nQ?,a|b,a\n,a|b,b\n")
    with pytest.raises(CotError, match=r"c\.csv: row 2: field 'question'"):
        load_file(tmp_path / "c.csv", IDENT)


def test_file_level_errors(tmp_path):
    with pytest.raises(CotError, match="no such file"):
        load_file(tmp_path / "nope.jsonl", IDENT)
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(CotError, match="unknown format"):
        load_file(tmp_path / "x.txt", IDENT)
    (tmp_path / "j.jsonl").write_text('{"question": "Q?"}\n{oops\n')
    with pytest.raises(CotError, match=r"row 2, column 2: not valid JSON \(Expecting property name"):
        load_file(tmp_path / "j.jsonl", IDENT)
    (tmp_path / "u.jsonl").write_text('{"question": "Q?"}\n{"question": "unterminated\n')
    with pytest.raises(CotError, match=r"row 2, column 14: not valid JSON \(Unterminated string starting at\)"):
        load_file(tmp_path / "u.jsonl", IDENT)
    p = write_jsonl(tmp_path / "d.jsonl", [{"id": 1, "question": "Q", "choices": "a|b", "label": "a"}] * 2)
    with pytest.raises(CotError, match="row 2: field 'id': duplicate"):
        load_file(p, IDENT)


def test_mapping_errors(tmp_path):
    p = write_jsonl(tmp_path / "t.jsonl", [{"question": "Q?", "choices": "a|b", "label": "a"}])
    with pytest.raises(CotError, match="unknown field"):
        load_source(src(p, p, {"questoin": "q"}))
    with pytest.raises(CotError, match="field 'rationale': no column 'expl'"):
        load_source(src(p, p, {"rationale": "expl"}))
    # explicit format overrides the extension
    q = tmp_path / "t.data"
    q.write_text(p.read_text())
    train, _ = load_source(src(q, q, None, fmt="jsonl"))
    assert train[0].label == "a"


HUB = __import__("pathlib").Path(__file__).parent / "fixtures"


def test_hub_form_choices_and_dotted_paths_need_no_reshaping(tmp_path):
    from cotdsl.data.adapters import convert

    # CSQA as the hub ships it: choices {label, text}, answerKey a letter.
    hub = [json.loads(line) for line in (HUB / "csqa.jsonl").read_text().splitlines()]
    got = load_file(HUB / "csqa.jsonl", {**IDENT, "label": "answerKey"})
    want = convert("csqa", hub, "csqa")
    assert [(e.id, e.question, e.choices, e.answer) for e in got] == \
           [(e.id, e.question, e.choices, e.answer) for e in want]
    # The same with a dotted path to the texts, the label being the answer text.
    rows = [{**r, "gold": r["choices"]["text"][r["choices"]["label"].index(r["answerKey"])]} for r in hub]
    p = write_jsonl(tmp_path / "dotted.jsonl", rows)
    assert [e.answer for e in load_file(p, {**IDENT, "choices": "choices.text", "label": "gold"})] == \
           [e.answer for e in want]
    # The original CommonsenseQA release: question {stem, choices: [{label, text}]}.
    orig = [{"id": r["id"], "answerKey": r["answerKey"],
             "question": {"stem": r["question"], "choices": [{"label": l, "text": t} for l, t in
                                                             zip(r["choices"]["label"], r["choices"]["text"])]}}
            for r in hub]
    p = write_jsonl(tmp_path / "orig.jsonl", orig)
    got = load_file(p, {**IDENT, "question": "question.stem", "choices": "question.choices", "label": "answerKey"})
    assert [(e.question, e.choices, e.answer) for e in got] == [(e.question, e.choices, e.answer) for e in want]


def test_hub_labels_win_over_positions_and_other_containers(tmp_path):
    # OBQA/ARC-style numeric labels: answerKey "3" is the third choice, not index 3.
    row = {"q": "Which?", "choices": {"label": ["1", "2", "3", "4"], "text": ["a", "b", "c", "d"]}, "answerKey": "3"}
    p = write_jsonl(tmp_path / "n.jsonl", [row])
    (ex,) = load_file(p, {**IDENT, "question": "q", "label": "answerKey"})
    assert ex.answer == 2 and ex.label == "c"
    # csv: a cell holding the hub dict as JSON, and a dotted path into it
    (tmp_path / "h.csv").write_text('question,choices,label\nWhich?,"{""label"": [""A"", ""B""], '
                                    '""text"": [""x"", ""y""]}",B\n')
    (ex,) = load_file(tmp_path / "h.csv", IDENT)
    assert ex.choices == ("x", "y") and ex.answer == 1
    (ex,) = load_file(tmp_path / "h.csv", {**IDENT, "choices": "choices.text", "label": "label"})
    assert ex.choices == ("x", "y") and ex.answer == 1
    # parquet struct column (what the hub's own parquet exports hold)
    pl.DataFrame({"question": ["Q?"], "choices": [{"label": ["A", "B"], "text": ["u", "v"]}],
                  "answerKey": ["A"]}).write_parquet(tmp_path / "s.parquet")
    (ex,) = load_file(tmp_path / "s.parquet", {**IDENT, "label": "answerKey"})
    assert ex.choices == ("u", "v") and ex.answer == 0
    bad = write_jsonl(tmp_path / "b.jsonl", [{"question": "Q?", "choices": {"label": ["A"], "txt": ["x"]}, "label": "A"}])
    with pytest.raises(CotError, match=r"row 1: field 'choices': a dict of choices needs `text`"):
        load_file(bad, IDENT)
