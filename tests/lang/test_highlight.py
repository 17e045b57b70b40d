"""Highlighting: the pygments lexer (`cotdsl.lang.highlight`) and the VS Code extension's TextMate
grammar (editors/vscode), both held to the language: their keyword sets are the grammar's, every
spec in specs/ lexes without an error token or unscoped text, and a sample gets the expected
token types and scopes. The TextMate grammar runs on a real TextMate engine over Oniguruma (the
regex engine VS Code uses), textmate-grammar-python."""
from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path

import pytest
from pygments.token import Comment, Error, Keyword, Name, Number, Operator, Punctuation, String

from cotdsl.lang.grammar import STATEMENT_KEYWORDS, parser
from cotdsl.lang.highlight import ALL_KEYWORDS, KEYWORDS, CotLexer
from cotdsl.perturb import BUILTINS

ROOT = Path(__file__).resolve().parents[2]
VSCODE = ROOT / "editors" / "vscode"
SPECS = sorted((ROOT / "specs").rglob("*.cot"))
SAMPLE = """import "lib/x.cot"  # shared
experiment e {
  seeds 0, 1
  data d = builtin("facts", train: 4, test: 2)
  target data = label
  target m[p in 0.2, .5] = "A \\"q\\" " label -> mask(rationale, p, unit: word)
  target t = multitask { "x: ": label weight 0.5; rationale }
  train { lr: 5e-5, lora: 8 }
  probe { patch: none -> m[p=0.2], seeds -> expect }
  expect alpha ~ t within 3 alpha 0.01
}
"""


def _grammar_keywords() -> set[str]:
    """The words lark reserves: keyword literals and the alternations of keyword terminals."""
    out = set()
    for t in parser().terminals:
        if t.pattern.type == "str" and t.pattern.value.isidentifier():
            out.add(t.pattern.value)
        elif re.fullmatch(r"\(\?:\w+(\|\w+)*\)", t.pattern.value):
            out |= set(t.pattern.value[3:-1].split("|"))
    return out


def test_keywords_are_the_grammars():
    assert ALL_KEYWORDS == _grammar_keywords()
    assert set(STATEMENT_KEYWORDS) <= ALL_KEYWORDS
    assert sum(len(v) for v in KEYWORDS.values()) == len(ALL_KEYWORDS)  # each word has one role
    assert KEYWORDS["section"] == ("train", "eval", "probe") and KEYWORDS["sweep"] == ("in",)


def _tokens(text: str) -> list[tuple[object, str]]:
    return [(t, v) for t, v in CotLexer().get_tokens(text) if v.strip()]


@pytest.mark.parametrize("path", SPECS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_spec_lexes_without_an_error_token(path):
    text = path.read_text(encoding="utf-8")
    toks = list(CotLexer().get_tokens_unprocessed(text))
    assert [v for _, t, v in toks if t in Error] == []
    assert "".join(v for _, _, v in toks) == text


def test_sample_token_types():
    toks = _tokens(SAMPLE)
    want = [(Keyword.Namespace, "import"), (String.Double, '"'), (String.Double, "lib/x.cot"),
            (String.Double, '"'), (Comment.Single, "# shared"),
            (Keyword.Declaration, "experiment"), (Name.Namespace, "e"), (Punctuation, "{"),
            (Keyword, "seeds"), (Number.Integer, "0"), (Punctuation, ","), (Number.Integer, "1"),
            (Keyword.Declaration, "data"), (Name.Variable, "d"), (Operator, "="), (Name.Function, "builtin")]
    assert toks[:len(want)] == want
    assert (Keyword.Declaration, "target") in toks and (Name.Class, "data") in toks  # `target data`: a name
    assert [t for t, v in toks if v == "data"] == [Keyword.Declaration, Name.Class]
    assert (Name.Variable, "p") in toks and (Keyword, "in") in toks and (Number.Float, ".5") in toks
    assert (String.Escape, '\\"') in toks
    assert (Name.Builtin.Pseudo, "label") in toks and (Name.Builtin, "mask") in toks
    assert (Name.Attribute, "unit") in toks and (Name.Attribute, "lr") in toks and (Number.Float, "5e-5") in toks
    assert (Keyword, "multitask") in toks and (Keyword, "weight") in toks
    assert (Keyword.Reserved, "train") in toks and (Keyword.Reserved, "probe") in toks
    assert (Operator, "->") in toks and (Operator, "~") in toks
    # contextual words: `seeds`/`expect` as values, `alpha` as a side, are names; `within`/`alpha` keywords
    assert [t for t, v in toks if v == "seeds"] == [Keyword, Name]
    assert [t for t, v in toks if v == "expect"] == [Name, Keyword]
    assert [t for t, v in toks if v in ("alpha", "within")] == [Name, Keyword, Keyword]


def test_an_unterminated_string_is_an_error():
    assert any(t in Error for t, _ in CotLexer().get_tokens('import "lib/x.cot\ntarget a = label\n'))


def test_registered_with_pygments():
    from pygments.lexers import get_lexer_by_name, get_lexer_for_filename
    assert isinstance(get_lexer_by_name("cot"), CotLexer)
    assert isinstance(get_lexer_for_filename("specs/quickstart.cot"), CotLexer)


# ---- the VS Code extension's TextMate grammar ----------------------------------------------
def _grammar() -> dict:
    return json.loads((VSCODE / "syntaxes" / "cot.tmLanguage.json").read_text(encoding="utf-8"))


def _patterns(node):
    """Every rule of a TextMate grammar (match, begin/end or include), depth first."""
    if isinstance(node, dict):
        if any(k in node for k in ("match", "begin", "include")):
            yield node
        for v in node.values():
            yield from _patterns(v)
    elif isinstance(node, list):
        for v in node:
            yield from _patterns(v)


def _groups(regex: str) -> list[str]:
    """The text of each capturing group of a regex, by number (index 0 is group 1)."""
    spans, stack, count, i = {}, [], 0, 0
    while i < len(regex):
        c = regex[i]
        if c == "\\":
            i += 2
            continue
        if c == "[":  # a class: skip to its closing bracket (a leading `]` or `^]` is literal)
            j = i + 1 + (regex[i + 1] == "^")
            j += regex[j] == "]"
            while regex[j] != "]":
                j += 2 if regex[j] == "\\" else 1
            i = j + 1
            continue
        if c == "(":
            count += regex[i + 1] != "?"
            stack.append((count if regex[i + 1] != "?" else None, i))
        elif c == ")":
            number, start = stack.pop()
            if number:
                spans[number] = regex[start + 1:i]
        i += 1
    return [spans[n] for n in range(1, count + 1)]


def _tm_words(scope_prefix: str, exclude: str = "\0") -> set[str]:
    """The words of every capture group scoped `scope_prefix...`; each such group must be an
    alternation of words, and no whole-match rule may carry such a scope."""
    out = set()
    for rule in _patterns(_grammar()):
        assert not (rule.get("name", "").startswith(scope_prefix) and "match" in rule
                    and not rule["name"].startswith(exclude)), f"put {rule['name']} on a capture group: {rule}"
        for number, cap in rule.get("captures", {}).items():
            if cap["name"].startswith(scope_prefix) and not cap["name"].startswith(exclude):
                group = _groups(rule["match"])[int(number) - 1]
                assert re.fullmatch(r"\w+(\|\w+)*", group), (cap["name"], group)
                out |= set(group.split("|"))
    return out


def test_groups_helper():
    assert _groups(r"\b(a|b)\s+([A-Za-z_(]\w*)(?=\s*=)((c)d)") == ["a|b", r"[A-Za-z_(]\w*", "(c)d", "c"]


def test_textmate_keywords_are_the_languages():
    assert _tm_words("keyword.", exclude="keyword.operator") == ALL_KEYWORDS


def test_textmate_perturbations_are_the_builtins():
    assert _tm_words("support.function.perturbation") == set(BUILTINS)


def test_extension_manifest():
    pkg = json.loads((VSCODE / "package.json").read_text())
    (lang,) = pkg["contributes"]["languages"]
    (grammar,) = pkg["contributes"]["grammars"]
    assert lang["extensions"] == [".cot"] and grammar["language"] == lang["id"]
    assert grammar["scopeName"] == _grammar()["scopeName"] == "source.cot"
    assert (VSCODE / grammar["path"]).is_file()
    conf = json.loads((VSCODE / lang["configuration"]).read_text())
    assert conf["comments"]["lineComment"] == "#"
    assert ["{", "}"] in conf["brackets"] and {"open": "(", "close": ")"} in conf["autoClosingPairs"]
    assert "code --install-extension" in (VSCODE / "README.md").read_text()


@pytest.fixture(scope="module")
def textmate(tmp_path_factory):
    """tokenize(text) -> [(line, col, text, scopes)] with the extension's grammar."""
    here = os.getcwd()
    os.chdir(tmp_path_factory.mktemp("tm"))  # the engine makes a cache folder in the cwd on import
    try:
        base = pytest.importorskip("textmate_grammar.parsers.base")
    finally:
        os.chdir(here)
    logging.getLogger("textmate_grammar").setLevel(logging.ERROR)
    language = base.LanguageParser(_grammar())

    def tokenize(text: str):
        return [(line, col, t, scopes) for (line, col), t, scopes in language.parse_string(text).flatten()]
    return tokenize


@pytest.mark.parametrize("path", SPECS, ids=lambda p: str(p.relative_to(ROOT)))
def test_textmate_scopes_every_spec_and_agrees_with_pygments(textmate, path):
    text = path.read_text(encoding="utf-8")
    toks = textmate(text)
    assert [t for *_, t, scopes in toks if t.strip() and len(scopes) < 2] == []  # no unscoped text
    assert [t for *_, t, scopes in toks if any("invalid" in s for s in scopes)] == []
    lines = text.split("\n")
    tm = {(line, col, t) for line, col, t, scopes in toks
          if scopes[-1].startswith("keyword.") and not scopes[-1].startswith("keyword.operator")}
    offsets = [0]
    for line in lines:
        offsets.append(offsets[-1] + len(line) + 1)
    py = set()
    for start, kind, value in CotLexer().get_tokens_unprocessed(text):
        if kind in Keyword and kind not in Keyword.Constant:
            line = max(i for i, o in enumerate(offsets) if o <= start)
            py.add((line, start - offsets[line], value))
    assert tm == py


def test_textmate_sample_scopes(textmate):
    scoped = {}
    for line, col, t, scopes in textmate(SAMPLE):
        scoped.setdefault(t, []).append(scopes[-1])
    assert scoped["import"] == ["keyword.control.import.cot"]
    assert scoped["# shared"] == ["comment.line.number-sign.cot"]
    assert scoped["data"] == ["keyword.other.declaration.cot", "entity.name.type.target.cot"]
    assert scoped["d"] == ["entity.name.variable.cot"]
    assert scoped["mask"] == ["support.function.perturbation.cot"]
    assert scoped["builtin"] == ["entity.name.function.cot"]
    assert scoped["lr"] == ["entity.other.attribute-name.key.cot"]
    assert scoped["5e-5"] == scoped[".5"] == ["constant.numeric.cot"]
    assert scoped['\\"'] == ["constant.character.escape.cot"] * 2
    assert scoped["->"] == ["keyword.operator.arrow.cot"] * 3 and scoped["~"] == ["keyword.operator.comparison.cot"]
    assert scoped["seeds"] == ["keyword.other.statement.cot", "variable.other.cot"]
    assert scoped["alpha"] == ["variable.other.cot", "keyword.other.cot"]
    assert scoped["in"] == ["keyword.other.in.cot"] and scoped["p"][0] == "variable.parameter.sweep.cot"
    assert scoped["label"][0] == "variable.language.field.cot"
