"""Semantic checks -> spec.Experiment: mapping, expansion, eval mode, canonical calls, imports,
plugins, notes."""
from __future__ import annotations

import sys
import textwrap

import pytest

from cotdsl import spec
from cotdsl.errors import CotError
from cotdsl.lang.check import check_source, load

HEAD = '''experiment e {
  data    toy  = builtin("facts", train: 10, test: 10)
  teacher gold = gold
  student s    = smollm2
'''


def exp(*lines: str, path: str = "<string>"):
    return check_source(HEAD + "".join(f"  {l}\n" for l in lines) + "}\n", path)


def cond(e, name):
    return next(c for c in e.conditions if c.name == name)


def test_quickstart_like_spec_maps_to_experiment():
    e = exp("seeds 0, 1", "target none = label", "target after = label -> rationale",
            "train { epochs: 2, lr: 5e-5, batch: 8 }", "probe { lens: logit, tuned; at: label }")
    assert e.name == "e" and e.seeds == (0, 1)
    assert e.data == (spec.Source("toy", "builtin", (("task", "facts"), ("train", 10), ("test", 10),
                                                      ("seed", 0), ("choices", 4))),)
    assert e.teacher == spec.Teacher("gold", "gold") and e.students == (spec.Student("s", "smollm2"),)
    assert e.train == spec.TrainCfg(epochs=2.0, lr=5e-5, batch=8)
    assert e.probe == spec.ProbeCfg(lenses=("logit", "tuned"), at="label")
    assert cond(e, "after").tasks == (spec.Task((spec.Ref("label"), spec.Ref("rationale"))),)


def test_sweep_expansion_cartesian_product_and_names():
    e = exp("target k[k in 1, 3; by in ig, placeholder] = label -> keytokens(rationale, k, by: by)")
    assert [c.name for c in e.conditions] == ["k[k=1,by=ig]", "k[k=1,by=placeholder]",
                                              "k[k=3,by=ig]", "k[k=3,by=placeholder]"]
    c = e.conditions[1]
    assert c.family == "k" and c.params == (("k", 1), ("by", "placeholder"))
    assert any("placeholder" in n for n in e.notes)


def test_masked_sweep_named_like_the_contract():
    e = exp("target masked[p in 0.2, 0.4] = label -> mask(rationale, p)")
    assert [c.name for c in e.conditions] == ["masked[p=0.2]", "masked[p=0.4]"]
    assert e.conditions[0].params == (("p", 0.2),)


def test_calls_are_canonical():
    a = exp("target a = label -> mask(rationale, 0.5)").conditions[0]
    b = exp("target a = label -> mask(rationale, p: 0.5, unit: word)").conditions[0]
    assert a == b
    call = a.tasks[0].segments[1]
    assert call.args == (spec.Ref("rationale"),) and call.kw("p") == 0.5 and call.kw("unit") == "word"


def test_field_ranking_maps_to_string_and_adds_note():
    e = exp("target h = label -> keytokens(rationale, 3, by: field(highlights))")
    assert e.conditions[0].tasks[0].segments[1].kw("by") == "field:highlights"
    assert any("highlights" in n for n in e.notes)


def test_eval_by_auto_rank_generate():
    e = exp("target none = label", "target before = rationale -> label", "target unk = unk(5) -> label",
            'target lit = "So: " label', "target sb = shuffle(rationale) -> label")
    modes = {c.name: c.eval_by for c in e.conditions}
    assert modes == {"none": "rank", "before": "generate", "unk": "rank", "lit": "rank", "sb": "generate"}
    e = exp("target none = label", "eval { by: generate }")
    assert e.conditions[0].eval_by == "generate"


def test_multitask_tasks_and_first_task_needs_label():
    e = exp('target s = multitask { "predict: ": label weight 0.5; "explain: ": rationale weight 2 }')
    t1, t2 = e.conditions[0].tasks
    assert (t1.prefix, t1.weight, t2.prefix, t2.weight) == ("predict: ", 0.5, "explain: ", 2.0)
    with pytest.raises(CotError, match="first task has no `label`"):
        exp('target s = multitask { "explain: ": rationale; "predict: ": label }')


def test_other_kinds_of_data_teacher_student(tmp_path):
    row = '{"q": "Is ice cold?", "choices": ["yes", "no"], "gold": "yes"}\n'
    (tmp_path / "tr.jsonl").write_text(row)
    (tmp_path / "te.jsonl").write_text(row)
    (tmp_path / "r.jsonl").write_text('{"id": "tr-1", "expl": "Ice is frozen water."}\n')
    src = textwrap.dedent('''
        experiment x {
          data    f = file(train: "tr.jsonl", test: "te.jsonl", fields: {question: "q", label: "gold"})
          data    c = hf("csqa", train: 100, test: 50)
          teacher t = file("r.jsonl", field: "expl")
          student a = hf("gpt2")
          student b = tiny(arch: gpt2, layers: 1)
          target none = label
        }''')
    (tmp_path / "x.cot").write_text(src)
    e = load(tmp_path / "x.cot")
    f = e.data[0]
    assert f.arg("train") == str(tmp_path / "tr.jsonl") and f.arg("fields") == {"question": "q", "label": "gold"}
    assert e.data[1].arg("dataset") == "csqa"
    assert e.teacher.kind == "file" and e.teacher.arg("path") == str(tmp_path / "r.jsonl")
    assert e.students[1].args == (("arch", "gpt2"), ("layers", 1), ("d_model", 64), ("heads", 4))
    assert e.path == str(tmp_path / "x.cot")


def test_hf_teacher_scotd_settings():
    e = check_source(HEAD.replace("teacher gold = gold", 'teacher t = hf("smollm2", samples: 4, temperature: 0.7, '
                                  'filter: false)') + "  target a = label -> rationale\n}")
    assert e.teacher.arg("samples") == 4 and e.teacher.arg("filter") is False and e.teacher.arg("batch") == 8


def test_imports_merge_and_importer_overrides_sections(tmp_path):
    (tmp_path / "lib.cot").write_text('data toy = builtin("facts", train: 5, test: 5)\nteacher g = gold\n'
                                      'student s = smollm2\ntarget none = label\ntrain { epochs: 3, lr: 1e-3 }\n')
    (tmp_path / "m.cot").write_text('import "lib.cot"\nexperiment m {\n  target after = label -> rationale\n'
                                    '  train { lr: 1e-4 }\n}\n')
    e = load(tmp_path / "m.cot")
    assert [c.name for c in e.conditions] == ["none", "after"]
    assert (e.train.epochs, e.train.lr) == (3.0, 1e-4)


def test_plugin_from_temporary_module(tmp_path, monkeypatch):
    (tmp_path / "myplug_front.py").write_text(textwrap.dedent('''
        from cotdsl.perturb import Param, perturbation

        @perturbation("front_dup", params=[Param("times", int, lo=1)])
        def front_dup(units, ctx, times):
            return units * times
    '''))
    monkeypatch.syspath_prepend(str(tmp_path))
    src = 'plugin "myplug_front"\n' + HEAD + "  target d = label -> front_dup(rationale, 2)\n}\n"
    e = check_source(src)
    assert e.plugins == ("myplug_front",) and e.conditions[0].tasks[0].segments[1].kw("times") == 2
    with pytest.raises(CotError, match="must be at least 1"):
        check_source(src.replace("rationale, 2", "rationale, 0"))
    sys.modules.pop("myplug_front", None)


def test_relative_paths_resolve_against_spec_folder(tmp_path, monkeypatch):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "r.jsonl").write_text('{"id": "a", "rationale": "r"}\n')
    (tmp_path / "sub" / "x.cot").write_text(HEAD.replace("teacher gold = gold", 'teacher t = file("r.jsonl")')
                                            + "  target a = label\n}\n")
    monkeypatch.chdir(tmp_path)
    e = load("sub/x.cot")
    assert e.teacher.arg("path") == str(tmp_path / "sub" / "r.jsonl")
    with pytest.raises(CotError, match="no such file"):
        check_source(HEAD.replace("teacher gold = gold", 'teacher t = file("missing.jsonl")') + "  target a = label\n}")


def test_every_spec_in_specs_checks():
    from pathlib import Path
    files = sorted(Path(__file__).resolve().parents[2].glob("specs/*.cot"))
    assert len(files) >= 8
    for f in files:
        assert load(f).conditions


def test_keytokens_scorer_must_name_student_teacher_or_a_plain_target():
    import pytest as _pytest

    from cotdsl.lang.check import check_source
    from cotdsl.errors import CotError

    base = """experiment x {{
  data d = builtin("facts", train: 10, test: 5)
  teacher gold = gold
  student s = smollm2
  target before = rationale -> label
  target keys = label -> keytokens(rationale, 2, by: ig, scorer: {scorer})
}}
"""
    exp = check_source(base.format(scorer='"before"'), "x.cot")
    assert dict(exp.conditions[1].tasks[0].segments[1].kwargs)["scorer"] == "before"
    assert check_source(base.format(scorer='"student"'), "x.cot")
    with _pytest.raises(CotError, match="unknown scorer `befor`") as e:
        check_source(base.format(scorer='"befor"'), "x.cot")
    assert "did you mean `before`" in str(e.value) and "x.cot:6:" in str(e.value)
    with _pytest.raises(CotError, match="needs a model teacher"):
        check_source(base.format(scorer='"teacher"'), "x.cot")
    with _pytest.raises(CotError, match="itself trains on IG key tokens"):
        check_source(base.format(scorer='"keys"'), "x.cot")


def test_train_resample_is_first_or_epoch():
    assert exp("target a = label -> rationale").train.resample == "first"
    assert exp("target a = label -> rationale", "train { epochs: 3, resample: epoch }").train.resample == "epoch"
    with pytest.raises(CotError, match="`resample` cannot be `always`"):
        exp("target a = label -> rationale", "train { resample: always }")
