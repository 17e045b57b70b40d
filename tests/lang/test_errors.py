"""The error catalogue: every kind of bad input gives a CotError with a position, a clear
message, the source line with a caret, and a hint where one exists. One test per case."""
from __future__ import annotations

import pytest

from cotdsl.errors import CotError
from cotdsl.lang.check import check_source, load
from cotdsl.lang.parse import MAX_BYTES, MAX_DEPTH

HEAD = '''experiment e {
  data    toy  = builtin("facts", train: 10, test: 10)
  teacher gold = gold
  student s    = smollm2
'''


def spec(*lines: str) -> str:
    return HEAD + "".join(f"  {l}\n" for l in lines) + "}\n"


def errors(text: str, path: str = "<string>"):
    with pytest.raises(CotError) as ei:
        check_source(text, path)
    return ei.value.diagnostics


def one(text: str):
    ds = errors(text)
    assert len(ds) == 1, [d.message for d in ds]
    return ds[0]


def test_valid_base_spec_checks():
    assert len(check_source(spec("target a = label")).conditions) == 1


def test_render_has_location_source_line_caret_and_hint():
    with pytest.raises(CotError) as ei:
        check_source(spec("target s = label -> shufle(rationale)"), "x.cot")
    out = ei.value.render()
    lines = out.splitlines()
    assert lines[0] == "x.cot:5:23: error: unknown perturbation `shufle`"
    assert lines[1] == "    target s = label -> shufle(rationale)"
    assert lines[2] == "  " + " " * 22 + "^"
    assert "hint: did you mean `shuffle`?" in out


def test_unexpected_token():
    d = one(spec("target a = label -> -> rationale"))
    assert "unexpected `->`" in d.message and d.pos.line == 5 and d.pos.col == 23
    assert d.expected and "a name" in d.expected


def test_missing_arrow_is_named():
    d = one(spec("target a = label rationale"))
    assert d.message.startswith("missing `->` between segments")


def test_unterminated_string():
    d = one(spec('target a = "The answer is label'))
    assert d.message == "unterminated string" and d.pos.col == 14 and "close the string" in d.hint


def test_unexpected_character():
    d = one(spec("target a = label @ rationale"))
    assert d.message == "unexpected character `@`"


def test_syntax_errors_are_collected_across_statements():
    ds = errors(spec("target a = label rationale", "target b = mask(rationale 0.5)", "trian { epochs: 1 }"))
    assert [d.pos.line for d in ds] == [5, 6, 7]
    assert ds[2].message == "unknown section `trian`" and ds[2].hint == "did you mean `train`?"


def test_unknown_statement():
    d = one(spec("tagret a = label"))
    assert d.message == "unknown statement `tagret`" and d.hint == "did you mean `target`?"


def test_unknown_perturbation_did_you_mean():
    d = one(spec("target a = label -> shufle(rationale)"))
    assert d.message == "unknown perturbation `shufle`" and d.hint == "did you mean `shuffle`?"


def test_wrong_arity():
    d = one(spec("target a = label -> mask(rationale, 0.5, \"x\", 3)"))
    assert "`mask` takes 2 arguments after its input" in d.message and "got 3" in d.message


def test_missing_argument():
    d = one(spec("target a = label -> mask(rationale)"))
    assert d.message == "`mask`: missing argument `p`"


def test_wrong_type():
    d = one(spec('target a = label -> mask(rationale, "half")'))
    assert "`p` expects a number" in d.message
    d = one(spec("target a = label -> keytokens(rationale, 2.5)"))
    assert "`k` expects an integer, got `2.5`" in d.message


def test_ratio_outside_unit_interval():
    d = one(spec("target a = label -> mask(rationale, 1.5)"))
    assert d.message == "`mask`: `p` is a ratio and must be between 0 and 1, got 1.5"


def test_ratio_outside_interval_in_sweep_points_at_the_sweep_value():
    d = one(spec("target m[p in 0.5, -0.1] = label -> mask(rationale, p)"))
    assert "between 0 and 1, got -0.1" in d.message and d.pos.col == 22


def test_negative_count():
    d = one(spec("target u = unk(-3) -> label"))
    assert d.message == "`unk`: `n` must not be negative, got -3"
    d = one('experiment e { data t = builtin("facts", train: -1, test: 5) teacher g = gold '
            'student s = smollm2 target a = label }')
    assert "`train` must be at least 1, got -1" in d.message


def test_unknown_keyword_argument():
    d = one(spec("target a = label -> keytokens(rationale, 3, bye: ig)"))
    assert d.message == "`keytokens` has no argument `bye`" and d.hint == "did you mean `by`?"


def test_label_is_never_perturbed():
    d = one(spec("target a = shuffle(label) -> rationale"))
    assert "perturbations never touch the label" in d.message


def test_undefined_name():
    d = one(spec("target a = label -> rationle"))
    assert d.message == "undefined name `rationle`" and d.hint == "did you mean `rationale`?"
    ds = errors(spec("target m[p in 0.2] = label -> mask(rationale, q)"))
    assert sorted(d.message for d in ds) == ["sweep variable `p` is not used in target `m`", "undefined name `q`"]


def test_duplicate_names():
    d = one(spec("target a = label", "target a = label -> rationale"))
    assert d.message.startswith("duplicate target `a`") and "5:10" in d.message
    d = one(spec("target a = label", "student s = smollm2"))
    assert d.message.startswith("duplicate student `s`")


def test_empty_sweep():
    d = one(spec("target m[p in] = label -> mask(rationale, p)"))
    assert d.message == "empty sweep: `p` has no values"
    d = one(spec("target m[] = label"))
    assert d.message == "empty sweep in target `m`"


def test_duplicate_sweep_value_and_unused_variable():
    assert "duplicate value 0.2" in one(spec("target m[p in 0.2, 0.2] = label -> mask(rationale, p)")).message
    assert "not used" in one(spec("target m[p in 0.2] = label -> rationale")).message


def test_unknown_section_key_did_you_mean():
    d = one(spec("target a = label", "train { epochz: 2 }"))
    assert d.message == "unknown key `epochz` in `train`" and d.hint == "did you mean `epochs`?"


def test_unknown_declaration_kind():
    d = one(spec("target a = label", "student t = smolm2"))
    assert d.message == "unknown student kind `smolm2`" and d.hint == "did you mean `smollm2`?"


def test_missing_required_sections():
    ds = errors("experiment e { seeds 0 }")
    msgs = " | ".join(d.message for d in ds)
    for what in ("`data`", "`teacher`", "`student`", "`target`"):
        assert what in msgs
    assert len(ds) == 4


def test_eval_by_rank_refuses_rationale_first():
    d = one(spec("target b = rationale -> label", "eval { by: rank }"))
    assert "cannot be evaluated by rank" in d.message and "by: auto" in d.hint


def test_semantic_errors_are_all_reported_together():
    ds = errors(spec("target a = shufle(rationale) -> label", "target b = label -> mask(rationale, 2)",
                     "train { lr: -1 }", "target a = label"))
    assert len(ds) == 4


def test_import_cycle(tmp_path):
    (tmp_path / "a.cot").write_text('import "b.cot"\ntarget x = label\n')
    (tmp_path / "b.cot").write_text('import "a.cot"\n')
    (tmp_path / "main.cot").write_text('import "a.cot"\n' + spec("target y = label"))
    with pytest.raises(CotError) as ei:
        load(tmp_path / "main.cot")
    msgs = [d.message for d in ei.value.diagnostics]
    assert msgs == ["import cycle: a.cot -> b.cot -> a.cot"]
    assert ei.value.diagnostics[0].pos.file == str(tmp_path / "b.cot")


def test_self_import_and_missing_import(tmp_path):
    (tmp_path / "m.cot").write_text('import "m.cot"\nimport "nope.cot"\n' + spec("target y = label"))
    with pytest.raises(CotError) as ei:
        load(tmp_path / "m.cot")
    msgs = [d.message for d in ei.value.diagnostics]
    assert msgs[0] == "import cycle: m.cot -> m.cot" and msgs[1].startswith("cannot import `nope.cot`")


def test_non_utf8_file(tmp_path):
    p = tmp_path / "bad.cot"
    p.write_bytes(b'experiment e {\n  target a = "caf\xe9"\n}\n')
    with pytest.raises(CotError) as ei:
        load(p)
    d = ei.value.diagnostics[0]
    assert d.message == "file is not valid UTF-8 (byte 0xe9)" and (d.pos.line, d.pos.col) == (2, 18)


def test_empty_file():
    for text in ("", "   \n\n", "# only a comment\n"):
        assert one(text).message == "empty file: nothing is declared"


def test_no_experiment_block():
    assert "no `experiment NAME { ... }` block" in errors('target a = label')[0].message


def test_huge_file():
    text = spec("target a = label") + "#" * (MAX_BYTES + 10)
    assert one(text).message.startswith("file too large")


def test_huge_file_on_disk(tmp_path):
    p = tmp_path / "huge.cot"
    p.write_bytes(b"# x\n" * (MAX_BYTES // 4 + 10))
    with pytest.raises(CotError, match="file too large"):
        load(p)


def test_deeply_nested_input():
    deep = "shuffle(" * 5000 + "rationale" + ")" * 5000
    d = one(spec(f"target a = label -> {deep}"))
    assert d.message == f"nesting too deep (more than {MAX_DEPTH} levels)"
    # just under the limit is fine (and does not blow the recursion stack)
    ok = "shuffle(" * (MAX_DEPTH - 2) + "rationale" + ")" * (MAX_DEPTH - 2)
    check_source(spec(f"target a = label -> {ok}"))


def test_nul_byte():
    assert "NUL byte" in one(spec("target a = label") + "\x00").message


def test_invalid_escape():
    assert one(spec('target a = "bad \\q" label')).message.startswith("invalid escape")


def test_bad_plugin_is_reported_at_the_plugin_line():
    d = one('plugin "no_such_module_xyz"\n' + spec("target a = label"))
    assert d.pos.line == 1 and "no_such_module_xyz" in d.message
