"""The run report's teacher section: diagnostics gathered into teacher.json and printed."""
import json
from types import SimpleNamespace

from rich.console import Console

from cotdsl.cache import Store
from cotdsl.report import print_teacher, save_teacher
from cotdsl.spec import Teacher


def test_teacher_diagnostics_are_saved_with_the_run_and_printed(tmp_path):
    store = Store(tmp_path / "cache")
    diag = {"questions": 10, "rationales": 8, "no_rationale": 2, "gold_label": 0.625, "other_choice": 0.125,
            "gold_only": 0.5, "states_answer": 0.0, "words": {"mean": 20.0, "min": 5, "p10": 9, "median": 21,
                                                             "p90": 30, "max": 33},
            "gold_label_ids": [], "other_choice_ids": [],
            "scotd": {"samples": 4, "filter": True, "kept_mean": 1.5, "kept_rate": 0.375, "none_kept": 0.2,
                      "kept_per_question": {"0": 2, "2": 8}}}
    (store.path("teacher", "k1")).mkdir(parents=True)
    (store.path("teacher", "k1") / "diagnostics.json").write_text(json.dumps(diag))
    jobs = [SimpleNamespace(key="k1", label="teacher t on toy", teacher=Teacher("t", "hf")),
            SimpleNamespace(key="k2", label="teacher t on other", teacher=Teacher("t", "hf"))]  # not finished
    plan = SimpleNamespace(by_stage=lambda stage: jobs if stage == "teacher" else [])
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    save_teacher(plan, store, run_dir)
    (row,) = json.loads((run_dir / "teacher.json").read_text())
    assert row["label"] == "teacher t on toy" and row["gold_label"] == 0.625
    con = Console(width=200, record=True)
    print_teacher(run_dir, con)
    text = con.export_text()
    assert "t on toy" in text and "8/10" in text and "62.5" in text and "12.5" in text
    assert "21 (9–30)" in text and "1.5 of 4" in text and "20.0" in text
    empty = tmp_path / "empty"
    empty.mkdir()
    con = Console(width=200, record=True)
    print_teacher(empty, con)  # an older run folder without teacher.json prints nothing
    assert con.export_text() == ""
