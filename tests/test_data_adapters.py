"""Hub adapters, offline: rows written in the exact hub schemas, read through load_dataset("json")."""
from pathlib import Path

import datasets
import pytest

from cotdsl.data import load_source
from cotdsl.data.adapters import ADAPTERS, convert, resolve
from cotdsl.errors import CotError
from cotdsl.spec import Source

DATA = Path(__file__).parent / "fixtures"


def rows(name, split="train"):
    return datasets.load_dataset("json", data_files=str(DATA / name), split=split)


def test_csqa_mapping():
    exs = convert("csqa", rows("csqa.jsonl"), "csqa")
    assert [e.id for e in exs] == ["c0a1", "c0a2", "c0a3"]
    assert exs[1].choices[exs[1].answer] == "put on a sweater" == exs[1].label
    assert len(exs[0].choices) == 5 and exs[0].rationale is None
    assert exs[0].meta["concept"] == "key"


def test_csqa_unlabeled_test_split_is_an_error_naming_row_and_field():
    with pytest.raises(CotError) as e:
        convert("csqa", rows("csqa_test_unlabeled.jsonl"), "tau/commonsense_qa:test")
    msg = str(e.value)
    assert "tau/commonsense_qa:test" in msg and "row 1" in msg and "answerKey" in msg


def test_obqa_main_and_additional():
    exs = convert("obqa", rows("obqa_main.jsonl"), "obqa")
    assert exs[0].question.startswith("A plant placed") and exs[0].label == "turn pale and weak"
    assert exs[1].answer == 2 and exs[1].rationale is None
    add = convert("obqa", rows("obqa_additional.jsonl"), "obqa")
    assert add[0].rationale == "plants need light to make food"


def test_quarel_inline_options():
    exs = convert("quarel", rows("quarel.jsonl"), "quarel")
    assert exs[0].choices == ("packed ice", "fresh powder") and exs[0].label == "fresh powder"
    assert exs[0].question == ("A sled slides faster on packed ice than on fresh powder. "
                               "Which surface has more friction?")
    assert exs[1].label == "Ana"


def test_quarel_bad_question_names_field():
    bad = [{"id": "x", "answer_index": 0, "question": "No options here"}]
    with pytest.raises(CotError, match="row 1.*'question'"):
        convert("quarel", bad, "q")
    with pytest.raises(CotError, match="answer_index"):
        convert("quarel", [{"id": "x", "answer_index": 3, "question": "Q? (A) a (B) b"}], "q")
    with pytest.raises(CotError, match="'id' is missing"):
        convert("quarel", [{"answer_index": 0, "question": "Q? (A) a (B) b"}], "q")


def test_resolve_aliases_and_paths():
    assert resolve("CSQA") == "csqa" and resolve("tau/commonsense_qa") == "csqa"
    assert resolve("allenai/openbookqa") == "obqa" and resolve("allenai/quarel") == "quarel"
    with pytest.raises(ValueError, match="no adapter"):
        resolve("squad")


FIXTURE = {"tau/commonsense_qa": "csqa.jsonl", "allenai/openbookqa": "obqa_main.jsonl",
           "allenai/quarel": "quarel.jsonl"}


@pytest.fixture
def fake_hub(monkeypatch):
    """Route load_dataset(hub path, config, split=...) to the local fixture, keeping the slicing."""
    real = datasets.load_dataset
    calls = []

    def fake(path, config=None, split=None, **kw):
        calls.append((path, config, split))
        base, _, sl = split.partition("[")
        return real("json", data_files={base: str(DATA / FIXTURE[path])}, split=base + ("[" + sl if sl else ""))

    monkeypatch.setattr(datasets, "load_dataset", fake)
    return calls


@pytest.mark.parametrize("name", ["csqa", "obqa", "quarel"])
def test_load_source_hf_end_to_end(fake_hub, name):
    src = Source("d", "hf", (("dataset", name), ("train", 2), ("test", 1)))
    train, test = load_source(src)
    assert len(train) == 2 and len(test) == 1
    path, config, split = fake_hub[0]
    assert path == ADAPTERS[name].path and config == ADAPTERS[name].config and split == "train[:2]"
    assert fake_hub[1][2] == ADAPTERS[name].test_split + "[:1]"


def test_load_source_hf_split_override(fake_hub):
    load_source(Source("d", "hf", (("dataset", "csqa"), ("test_split", "train"), ("config", "x"))))
    assert fake_hub[1] == ("tau/commonsense_qa", "x", "train")


def test_unknown_dataset_and_offline_failure(monkeypatch):
    with pytest.raises(CotError, match="no adapter"):
        load_source(Source("d", "hf", (("dataset", "squad"),)))

    def offline(*a, **k):
        raise ConnectionError("Couldn't reach the Hugging Face Hub (offline mode is enabled)")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(CotError, match="could not load tau/commonsense_qa"):
        load_source(Source("d", "hf", (("dataset", "csqa"), ("train", 3))))
    with pytest.raises(CotError, match="non-negative integer"):
        load_source(Source("d", "hf", (("dataset", "csqa"), ("train", -3))))
