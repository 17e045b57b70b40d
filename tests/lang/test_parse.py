"""Grammar + Transformer: the surface syntax maps onto the AST with positions."""
from __future__ import annotations

import pytest

from cotdsl.lang import ast
from cotdsl.errors import CotError
from cotdsl.lang.grammar import grammar_text, parser
from cotdsl.lang.parse import parse_source


def body(src: str):
    return parse_source("experiment e {\n" + src + "\n}\n", "t.cot").experiments[0].body


def test_grammar_is_lalr_and_cached():
    assert parser() is parser()
    assert "ARROW" in grammar_text()


def test_declarations_and_positions():
    d, = body('  data toy = builtin("facts", train: 4, test: 2)')
    assert (d.kind, d.name) == ("data", "toy") and (d.pos.line, d.pos.col) == (2, 3)
    assert d.value.fn == "builtin" and d.value.args[0].value == "facts"
    assert [(k.key, k.value.value) for k in d.value.kwargs] == [("train", 4), ("test", 2)]


def test_both_arrows_and_literal_adjacency():
    a, b, c = body('target a = label -> rationale\ntarget b = label ⟶ rationale\n'
                   'target c = "The answer is " label ". " rationale')
    assert a.body.arrows == ("->",) and b.body.arrows == ("⟶",)
    assert [type(s).__name__ for s in c.body.segments] == ["Str", "Name", "Str", "Name"]
    assert c.body.segments[0].value == "The answer is "


def test_nested_calls_and_kwargs():
    t, = body("target k = label -> shuffle(mask(rationale, 0.5, unit: token))")
    outer = t.body.segments[1]
    inner = outer.args[0]
    assert outer.fn == "shuffle" and inner.fn == "mask" and inner.kwargs[0].key == "unit"


def test_sweeps_single_and_multiple():
    a, b = body("target m[p in 0.2, 0.4] = label -> mask(rationale, p)\n"
                "target k[k in 1, 3; by in ig, placeholder] = label -> keytokens(rationale, k, by: by)")
    assert [(v.name, [x.value for x in v.values]) for v in a.sweep] == [("p", [0.2, 0.4])]
    assert [v.name for v in b.sweep] == ["k", "by"] and b.sweep[1].values[0].id == "ig"


def test_sweep_comma_separated_vars():
    t, = body("target k[k in 1, 3, by in ig] = label -> keytokens(rationale, k, by: by)")
    assert [v.name for v in t.sweep] == ["k", "by"]


def test_multitask():
    t, = body('target s = multitask { "predict: " : label weight 0.5 ; "explain: " : rationale }')
    assert isinstance(t.body, ast.Multitask)
    p, e = t.body.tasks
    assert p.prefix.value == "predict: " and p.weight.value == 0.5 and e.weight is None


def test_sections_lists_and_maps():
    s, d = body('probe { lens: logit, tuned; at: label }\n'
                'data f = file(train: "a", test: "b", fields: {question: "q", label: "gold"})')
    assert [(e.name, [v.id for v in e.values]) for e in s.entries] == [("lens", ["logit", "tuned"]), ("at", ["label"])]
    m = d.value.kwargs[2].value
    assert isinstance(m, ast.MapV) and [i.key for i in m.items] == ["question", "label"]


def test_numbers_strings_comments():
    seeds, t = body('seeds 0, 1  # two seeds\ntarget a = "tab\\there \\"q\\"" label')
    assert [v.value for v in seeds.values] == [0, 1]
    assert t.body.segments[0].value == 'tab\there "q"'
    f = parse_source("# top\nexperiment e { seeds 1 } # end\n", "c.cot")
    assert [c.text for c in f.comments] == ["# top", "# end"]


def test_keywords_are_contextual_names():
    # `data`, `train`, `target` are keywords only where a statement may start
    t, = body("target data = label")
    assert t.name == "data"


def test_imports_plugins_and_toplevel_statements():
    f = parse_source('import "a.cot"\nplugin "pkg.mod"\ntarget x = label\nexperiment e { }', "t.cot")
    assert [i.path for i in f.imports] == ["a.cot"] and [p.module for p in f.plugins] == ["pkg.mod"]
    assert len(f.toplevel) == 1 and f.experiments[0].name == "e"


def test_syntax_error_is_coterror():
    with pytest.raises(CotError):
        parse_source("experiment e { target = }", "t.cot")
