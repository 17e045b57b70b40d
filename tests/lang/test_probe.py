"""The probe section's mechanism entries (`cotdsl/lang/probe.py`): `attribute: dla`,
`patch: a -> b` pairs and `attention: rationale`, parsed, formatted and checked through the one
section-entry table; every mistake a file:line:col error with a caret."""
from __future__ import annotations

import pytest

from cotdsl import spec
from cotdsl.errors import CotError
from cotdsl.lang import format_source
from cotdsl.lang.check import check_source
from cotdsl.lang.grammar import fast_parser
from cotdsl.lang.parse import _ToAst
from cotdsl.lang.parse_fast import Fallback
from test_parse_fast import both  # fast path vs lark's own parse, every field compared

HEAD = '''experiment e {
  data    toy  = builtin("facts", train: 10, test: 10)
  teacher gold = gold
  student s    = tiny(layers: 2, d_model: 32)
  student s_b  = tiny(layers: 2, d_model: 32)
  student deep = tiny(layers: 3, d_model: 32)
  target none   = label
  target after  = label -> rationale
  target before = rationale -> "So the answer is: " label
  target masked[p in 0.2, 0.4] = label -> mask(rationale, p)
'''


def check(probe: str, head: str = HEAD):
    return check_source(head + f"  {probe}\n}}\n", "spec.cot")


def errors(probe: str, head: str = HEAD) -> str:
    with pytest.raises(CotError) as e:
        check(probe, head)
    return e.value.render()


def test_mechanism_entries_resolve_to_names():
    p = check("probe { lens: logit; attribute: dla; patch: none -> after, masked[p=.2] ⟶ after, s -> s_b; "
              "patch_at: all; attention: rationale }").probe
    assert p.attribute == ("dla",) and p.attention == ("rationale",) and p.patch_at == "all"
    assert p.patch == (("none", "after"), ("masked[p=0.2]", "after"), ("s", "s_b"))
    assert p.lens_view() == spec.ProbeCfg(lenses=("logit",))
    # no mechanism entries: the defaults
    q = check("probe { lens: logit }").probe
    assert (q.attribute, q.patch, q.patch_at, q.attention) == ((), (), "label", ())


def test_unknown_key_has_a_caret_and_did_you_mean():
    text = errors("probe { lens: logit; atribute: dla }")
    assert "spec.cot:11:24: error: unknown key `atribute` in `probe`" in text
    assert "    probe { lens: logit; atribute: dla }\n" + " " * 25 + "^" in text
    assert "did you mean `attribute`?" in text
    assert "`attribute`, `patch`, `patch_at`, `attention`" in text  # the table derived from ProbeCfg


def test_unknown_values_of_known_keys():
    text = errors("probe { attribute: dlla; patch_at: every; attention: rationales }")
    assert "`attribute` cannot be `dlla`" in text and "did you mean `dla`?" in text
    assert "`patch_at` cannot be `every`" in text and "expected: `label`, `all`" in text
    assert "`attention` cannot be `rationales`" in text


def test_patch_naming_a_condition_that_does_not_exist():
    text = errors("probe { patch: none -> aftr }")
    assert "spec.cot:11:26: error: unknown condition `aftr` in `patch`" in text
    assert "    probe { patch: none -> aftr }\n" + " " * 27 + "^" in text
    assert "did you mean `after`?" in text and "`deep` (student)" in text


def test_patch_sides_are_named_as_in_expectations():
    text = errors("probe { patch: masked -> after, masked[p=0.3] -> after, after[p=1] -> none }")
    assert "`masked` is a sweep: name one of its points" in text
    assert "`p=0.3` is not a point of `masked`'s sweep" in text
    assert "`after` is not a sweep" in text
    assert "`s_b` is a student: it has no sweep points" in errors("probe { patch: s -> s_b[p=1] }")


def test_patch_between_students_of_different_base_models():
    text = errors("probe { patch: s -> deep }")
    assert "spec.cot:11:18: error: `s -> deep`: students `s` (tiny: llama, 2 blocks × d_model 32, 4 heads) " \
           "and `deep` (tiny: llama, 3 blocks × d_model 32, 4 heads) have different base models" in text
    assert "    probe { patch: s -> deep }\n" + " " * 19 + "^" in text


def test_students_of_one_base_model():
    head = HEAD.replace('student deep = tiny(layers: 3, d_model: 32)',
                        'student sm = smollm2\n  student sm2 = hf("HuggingFaceTB/SmolLM2-135M", revision: "main")\n'
                        '  student g = hf("gpt2")\n  student g2 = hf("gpt2", revision: "x")\n  student d = hf("distilgpt2")')
    assert check("probe { patch: sm -> sm2, g -> g2 }", head).probe.patch == (("sm", "sm2"), ("g", "g2"))
    assert "students `g` (gpt2) and `d` (distilgpt2) have different base models" in errors("probe { patch: g -> d }",
                                                                                             head)
    assert "have different base models" in errors("probe { patch: sm -> s }", head)


def test_patch_pairs_misused():
    text = errors("probe { patch: none -> s, after -> after, none -> after, none -> after }")
    assert "`none -> s` pairs a condition with a student" in text
    assert "`after -> after` patches a run into itself" in text
    assert "duplicate pair `none -> after` (first at spec.cot:11:45)" in text
    text = errors("probe { patch: none; lens: none -> after }")
    assert "`patch` takes pairs `a -> b` of conditions or students, got `none`" in text
    assert "`lenses` expects a string, got a pair `none -> after`" in text
    assert "`epochs` expects a number, got a pair `a -> b`" in errors("train { epochs: a -> b }")


def test_a_name_that_is_both_a_target_and_a_student():
    head = HEAD.replace("student s    =", "student after =")
    assert "`after` names both a target and a student" in errors("probe { patch: none -> after }", head)


def test_attention_needs_a_rationale_before_the_label():
    text = errors("probe { context: none; attention: rationale }")
    assert "spec.cot:11:26: error: `attention: rationale` reads the label position's attention" in text
    head = HEAD.replace('  target before = rationale -> "So the answer is: " label\n', "")
    assert "`attention: rationale` needs a target whose rationale comes before the label" in \
        errors("probe { attention: rationale }", head)


def test_pairs_parse_the_same_on_both_paths_and_format_canonically():
    text = ("experiment e {\n  probe { patch: none⟶after,\n    masked[p=.2,\n q=1] -> after;"
            " attention: rationale }\n}\n")
    slow, fast = both(text)
    assert slow != "syntax error" and fast == slow
    out = format_source(text)
    assert out == "experiment e {\n  probe { patch: none -> after, masked[p=.2,q=1] -> after; attention: rationale }\n}\n"
    assert format_source(out) == out
    for bad in ("probe { patch: none -> }", "probe { patch: -> after }", "probe { patch: a -> b -> c }"):
        with pytest.raises(Fallback):
            fast_parser().parse(f"experiment e {{ {bad} }}", _ToAst("t.cot"))
        with pytest.raises(CotError):
            format_source(f"experiment e {{ {bad} }}")


def test_engine_key_checked_formatted_and_in_the_lens_key():
    """`engine: hf | tl` (how the lens reads the residual stream): default hf; a wrong value is a
    file:line:col error with "did you mean"; it is part of the lens jobs' key, not the mechanisms'."""
    from cotdsl.plan import make_plan

    assert check("probe { lens: logit }").probe.engine == "hf"
    tl = check("probe { lens: logit; engine: tl; attribute: dla }")
    assert tl.probe.engine == "tl" and tl.probe.lens_view().engine == "tl"
    text = errors("probe { lens: logit; engine: tll }")
    assert "spec.cot:11:32: error: `probe`: `engine` cannot be `tll`" in text
    assert "    probe { lens: logit; engine: tll }\n" + " " * 33 + "^" in text
    assert "expected: `hf`, `tl`" in text and "did you mean `tl`?" in text
    assert "did you mean `engine`?" in errors("probe { engin: tl }")
    src = HEAD + "  probe { lens: logit; engine: tl }\n}\n"
    assert "engine: tl" in format_source(src)
    hf = check("probe { lens: logit; engine: hf; attribute: dla }")

    def keys(exp, stage):
        return sorted(j.key for j in make_plan(exp).jobs if j.id.startswith(stage + "/"))
    assert keys(hf, "probe") and not set(keys(hf, "probe")) & set(keys(tl, "probe"))
    assert keys(hf, "dla") == keys(tl, "dla") and keys(hf, "train") == keys(tl, "train")
    assert keys(hf, "probe") == keys(check("probe { lens: logit; attribute: dla }"), "probe")
