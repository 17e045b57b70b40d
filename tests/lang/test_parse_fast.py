"""The fast parse path (`cotdsl.lang.parse_fast`) gives exactly what lark's own parser + the
transformer give: same AST, same positions and end lines, and it gives up (Fallback) wherever lark
reports a syntax error."""
from __future__ import annotations

import dataclasses
import re

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from lark.exceptions import UnexpectedInput

from cotdsl.lang import grammar, parse
from cotdsl.lang.grammar import fast_parser, parser
from cotdsl.lang.parse import _ToAst, parse_source
from cotdsl.lang.parse_fast import Fallback
from fuzz_specs import SPECS, generated, mutated


def dump(x):
    """Every field, including the ones left out of repr/eq (end_line of values)."""
    if dataclasses.is_dataclass(x):
        return (type(x).__name__,) + tuple((f.name, dump(getattr(x, f.name))) for f in dataclasses.fields(x))
    if isinstance(x, (tuple, list)):
        return tuple(dump(v) for v in x)
    return x


def both(text: str):
    try:
        slow = dump(_ToAst("t.cot").transform(parser().parse(text)))
    except UnexpectedInput:
        slow = "syntax error"
    try:
        fast = dump(fast_parser().parse(text, _ToAst("t.cot")))
    except Fallback:
        fast = "syntax error"
    return slow, fast


def test_fast_path_is_available_and_parses_every_spec():
    assert fast_parser() is not None
    for text in SPECS:
        slow, fast = both(text)
        assert slow != "syntax error" and fast == slow


def test_positions_and_end_lines_from_tokens():
    text = ('import "lib/x.cot"\nexperiment e {\n  seeds 0,\n    1\n  target m[p in 0.2] =\n'
            '    label -> mask(rationale,\n      p)\n  target s = multitask {\n    "a: ": label;\n'
            '    rationale weight 0.5 }\n  data d = file(train: "a", test: "b",\n    fields: {label: x,\n    })\n}\n')
    f = parse_source(text, "t.cot")
    imp, exp = f.items
    assert (imp.pos.line, imp.pos.col, imp.end_line) == (1, 1, 1)
    assert (exp.pos.line, exp.end_line) == (2, 14)
    seeds, m, s, d = exp.body
    assert (seeds.pos.line, seeds.pos.col, seeds.end_line) == (3, 3, 4)
    assert (m.pos.line, m.pos.col, m.end_line) == (5, 10, 7)
    assert (m.body.pos.line, m.body.pos.col, m.body.end_line) == (6, 5, 7)
    assert (s.body.pos.line, s.body.end_line, s.end_line) == (8, 10, 10)
    assert [(t.pos.line, t.pos.col) for t in s.body.tasks] == [(9, 5), (10, 5)]
    mp = d.value.kwargs[2].value
    assert (mp.pos.line, mp.pos.col, mp.end_line, d.end_line) == (12, 13, 13, 13)


_WS = st.sampled_from([" ", "  ", "\n", "\t", " # note\n", "\r\n", "\n\n  "])


@st.composite
def relaid(draw):
    """A real spec with its spaces replaced by other whitespace, newlines and comments."""
    text = draw(st.sampled_from(SPECS))
    parts = re.split(r"( )(?=(?:[^\"\n]*\"[^\"\n]*\")*[^\"\n]*$)", text, flags=re.M)  # spaces outside strings
    return "".join(draw(_WS) if p == " " else p for p in parts)


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(st.one_of(generated, mutated, relaid()))
def test_fast_and_lark_agree(text):
    if "\x00" in text:
        return  # refused before parsing
    slow, fast = both(text)
    assert fast == slow


def test_falls_back_to_lark_for_errors_and_without_fast_path(monkeypatch):
    bad = "experiment e {\n  target a = label rationale\n  trian { x: 1 }\n}\n"
    with pytest.raises(parse.CotError) as fast_err:
        parse_source(bad, "t.cot")
    monkeypatch.setattr(parse, "fast_parser", lambda: None)  # e.g. a lark whose internals moved
    with pytest.raises(parse.CotError) as slow_err:
        parse_source(bad, "t.cot")
    assert fast_err.value.render() == slow_err.value.render() and slow_err.value.diagnostics
    without = dump(parse_source(SPECS[0], "t.cot"))
    monkeypatch.undo()
    assert dump(parse_source(SPECS[0], "t.cot")) == without


def test_grammar_cache_location(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    path = grammar._cache_file("grammar text")
    assert path.startswith(str(tmp_path / "cotdsl")) and (tmp_path / "cotdsl").is_dir()
    monkeypatch.setenv("COTDSL_NO_GRAMMAR_CACHE", "1")
    assert grammar._cache_file("grammar text") is False


def test_a_transformer_bug_is_not_taken_for_a_syntax_error(monkeypatch):
    """Only `Fallback` (the fast path meets a syntax error) sends the text to lark: an exception
    raised while building the AST surfaces as it is, not as a second parse."""
    def broken(self, c):
        raise RuntimeError("bug in the transformer")

    monkeypatch.setattr(parse._ToAst, "seeds", broken)
    with pytest.raises(RuntimeError, match="bug in the transformer"):
        parse_source("experiment e {\n  seeds 0\n}\n", "t.cot")
