"""Hub-schema files a researcher already has (CSQA, OBQA, QuaRel rows as the hub ships them),
used offline through `hf(..., files: {...})` / `disk:`: end to end on a tiny student, and the
parquet / arrow / `save_to_disk` forms of the same rows giving the same examples."""
import json
import os
import shutil
from pathlib import Path

import datasets
import polars as pl
import pytest
from rich.console import Console

from cotdsl import load
from cotdsl.data import load_source
from cotdsl.errors import CotError
from cotdsl.run import EXIT_OK, run

DATA = Path(__file__).parent / "fixtures"
FIXTURES = ("csqa.jsonl", "obqa_main.jsonl", "obqa_additional.jsonl", "quarel.jsonl")

SPEC = """
experiment hub {{
  data csqa   = hf("csqa", files: {{train: "data/csqa.jsonl", test: "data/csqa.jsonl"}})
  data obqa   = hf("obqa", data_files: {{train: "data/obqa_additional.jsonl", test: "data/obqa_main.jsonl"}})
  data quarel = hf("quarel", files: {{train: "data/quarel.jsonl", test: "data/quarel.jsonl"}})
  teacher t = file("rationales.jsonl", strip_answer: true)
  student s = tiny(arch: "llama", layers: 1, d_model: 32, heads: 2)
  target none  = label
  target after = label -> rationale
  train {{ epochs: 1, lr: 3e-3, batch: 4 }}
  eval  {{ by: auto }}
}}
"""


def jsonl(name: str) -> list[dict]:
    return [json.loads(line) for line in (DATA / name).read_text().splitlines() if line.strip()]


@pytest.fixture
def folder(tmp_path):
    """tmp_path/data/ holds the hub-schema fixtures; the spec sits in tmp_path."""
    (tmp_path / "data").mkdir()
    for name in FIXTURES:
        shutil.copy(DATA / name, tmp_path / "data" / name)
    return tmp_path


def test_hub_schema_files_run_end_to_end_on_a_tiny_student(folder, monkeypatch):
    monkeypatch.chdir(folder)
    # The authors' teacher style: every rationale opens with the answer, which strip_answer drops.
    rows = []
    for name, stem in (("csqa.jsonl", "question"), ("obqa_additional.jsonl", "question_stem"),
                       ("quarel.jsonl", "question")):
        for r in jsonl(name):
            rows.append({"id": r["id"], "rationale": f"The answer is B because {r[stem].split()[0].lower()} "
                                                     "says so in the question."})
    (folder / "rationales.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    spec = folder / "hub.cot"
    spec.write_text(SPEC.format())
    exp = load(spec)
    assert exp.data[0].arg("files") == {"train": str(folder / "data/csqa.jsonl"),
                                        "test": str(folder / "data/csqa.jsonl")}
    assert exp.data[1].arg("files")["train"] == str(folder / "data/obqa_additional.jsonl")  # data_files alias

    quiet = Console(file=open(os.devnull, "w"), width=120)
    assert run(spec, console=quiet, cache=folder / "cache", out=folder / "runs") == EXIT_OK
    res = pl.read_parquet(folder / "runs/hub/results.parquet")
    want = {"csqa": {"c0a1", "c0a2", "c0a3"}, "obqa": {"7-102", "7-101"}, "quarel": {"QuaRel_T_1", "QuaRel_T_2"}}
    for data, ids in want.items():
        got = res.filter((pl.col("data") == data) & (pl.col("condition") == "after"))
        assert set(got["ex_id"]) == ids
    # The teacher stage's training rationales lost their leading answer statement.
    kept = [json.loads(line) for p in (folder / "cache").glob("teacher/*/train.jsonl")
            for line in p.read_text().splitlines()]
    assert len(kept) == 3 + 1 + 2
    assert all(not k["rationale"].startswith("The answer") and k["rationale"].endswith("says so in the question.")
               for k in kept)


def hub_rows(name: str) -> "datasets.Dataset":
    return datasets.load_dataset("json", data_files=str(DATA / name), split="train")


def spec_for(folder: Path, dataset: str, files: str) -> Path:
    p = folder / f"{dataset}.cot"
    p.write_text(f'experiment x {{\n  data d = hf("{dataset}", {files})\n  teacher g = gold\n'
                 f'  student s = tiny()\n  target none = label\n}}\n')
    return p


CASES = [("csqa", "csqa.jsonl", "csqa.jsonl"), ("obqa", "obqa_additional.jsonl", "obqa_main.jsonl"),
         ("quarel", "quarel.jsonl", "quarel.jsonl")]


@pytest.mark.parametrize("dataset,train,test", CASES)
@pytest.mark.parametrize("form", ["parquet", "arrow", "save_to_disk", "dataset_dict"])
def test_parquet_arrow_and_save_to_disk_give_the_jsonl_examples(folder, dataset, train, test, form):
    want = load_source(load(spec_for(folder, dataset, f'files: {{train: "data/{train}", test: "data/{test}"}}')).data[0])
    assert [len(want[0]), len(want[1])] == [len(jsonl(train)), len(jsonl(test))]
    out = folder / form
    if form == "dataset_dict":  # the hub's own layout: DatasetDict.save_to_disk
        datasets.DatasetDict({"train": hub_rows(train), "test": hub_rows(test)}).save_to_disk(str(out))
        args = 'disk: "dataset_dict"'
    else:
        paths = {}
        for role, name in (("train", train), ("test", test)):
            ds = hub_rows(name)
            if form == "parquet":
                paths[role] = f"{form}/{role}.parquet"
                out.mkdir(exist_ok=True)
                ds.to_parquet(str(folder / paths[role]))
            elif form == "save_to_disk":
                paths[role] = f"{form}/{role}"
                ds.save_to_disk(str(folder / paths[role]))
            else:  # the arrow file save_to_disk writes
                ds.save_to_disk(str(out / role))
                paths[role] = f"{form}/{role}/data-00000-of-00001.arrow"
        args = f'files: {{train: "{paths["train"]}", test: "{paths["test"]}"}}'
    got = load_source(load(spec_for(folder, dataset, args)).data[0])
    assert got == want


def test_disk_test_split_defaults_to_the_adapters_and_counts_slice(folder):
    # CSQA as saved from the hub: the test split has no answers, validation is the labelled one.
    datasets.DatasetDict({"train": hub_rows("csqa.jsonl"), "validation": hub_rows("csqa.jsonl"),
                          "test": hub_rows("csqa_test_unlabeled.jsonl")}).save_to_disk(str(folder / "csqa_hub"))
    train, test = load_source(load(spec_for(folder, "csqa", 'disk: "csqa_hub", train: 2')).data[0])
    assert [e.id for e in train] == ["c0a1", "c0a2"] and [e.id for e in test] == ["c0a1", "c0a2", "c0a3"]
    with pytest.raises(CotError, match=r"csqa_hub/test: row 1: field 'answerKey'"):
        load_source(load(spec_for(folder, "csqa", 'disk: "csqa_hub", test_split: "test"')).data[0])
