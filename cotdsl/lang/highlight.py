"""Syntax highlighting for .cot files: `CotLexer`, a pygments lexer (registered as `cot`, for
`*.cot`, through the `pygments.lexers` entry point, so `pygmentize -l cot` and rich's `Syntax`
find it), and `KEYWORDS`, the grammar's reserved words by role, read from `cot.lark` itself so
the lexer (and, through tests/lang/test_highlight.py, the TextMate grammar in editors/vscode)
cannot drift from the language.

Keywords are reserved only where the grammar expects them (`target data = label` is fine), so the
lexer matches them with the context that makes them keywords: `data NAME =`, `train {`,
`seeds 0`, `x in`, `within 3`. The language server (`cotdsl.lsp`) reads declarations, imports and
section keys from the same tokens.
"""
from __future__ import annotations

import re

from pygments.lexer import RegexLexer, bygroups, words
from pygments.token import (Comment, Error, Keyword, Name, Number, Operator, Punctuation, String,
                            Whitespace)

from cotdsl.perturb import BUILTINS

from .grammar import STATEMENT_KEYWORDS, grammar_text


def _keywords() -> dict[str, tuple[str, ...]]:
    """The grammar's words by role: `import` (followed by a string), `named` (followed by the name
    it declares), `declaration` and `section` (the DECLKW and SECTIONKW terminals), `block`
    (followed by `{`), `sweep` (`p in ...`), `statement` (the other statement keywords) and
    `inner` (the other words inside statements: `weight`, `within`, `alpha`)."""
    text = re.sub(r"//[^\n]*", "", grammar_text())

    def terminal(name: str) -> tuple[str, ...]:
        return tuple(re.findall(r'"(\w+)"', re.search(rf"^{name}:(.*)$", text, re.M).group(1)))

    out = {"import": re.findall(r'"(\w+)" STRING\b', text), "named": re.findall(r'"(\w+)" NAME\b', text),
           "declaration": terminal("DECLKW"), "section": terminal("SECTIONKW"),
           "block": re.findall(r'"(\w+)" "\{"', text), "sweep": re.findall(r'SWEEPVAR "(\w+)"', text)}
    out = {k: tuple(dict.fromkeys(v)) for k, v in out.items()}
    taken = {w for v in out.values() for w in v}
    out["statement"] = tuple(w for w in STATEMENT_KEYWORDS if w not in taken)
    every = dict.fromkeys(re.findall(r'"([A-Za-z_]\w*)"', text))
    out["inner"] = tuple(w for w in every if w not in taken and w not in STATEMENT_KEYWORDS)
    return out


KEYWORDS = _keywords()
ALL_KEYWORDS = frozenset(w for ws in KEYWORDS.values() for w in ws)
_NAME = r"[A-Za-z_][A-Za-z0-9_]*"
_NUMBER = r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?"
_NAMED = {"experiment": Name.Namespace}  # what a `named` keyword's name is; targets are Name.Class


def _alt(ws) -> str:
    return "|".join(map(re.escape, ws))


class CotLexer(RegexLexer):
    """The cotdsl spec language (`.cot`)."""

    name = "cotdsl"
    aliases = ["cot", "cotdsl"]
    filenames = ["*.cot"]
    mimetypes = ["text/x-cotdsl"]
    url = "https://github.com/cotdsl/cotdsl"

    tokens = {
        "root": [
            (r"[ \t\r\n\f]+", Whitespace),
            (r"#[^\n]*", Comment.Single),
            (r'"', String.Double, "string"),
            (words(KEYWORDS["import"], suffix=r'(?=\s*")'), Keyword.Namespace),
            *((rf"({w})(\s+)({_NAME})", bygroups(Keyword.Declaration, Whitespace, _NAMED.get(w, Name.Class)))
              for w in KEYWORDS["named"]),
            (rf"({_alt(KEYWORDS['declaration'])})(\s+)({_NAME})(?=\s*=)",
             bygroups(Keyword.Declaration, Whitespace, Name.Variable)),
            (words(KEYWORDS["section"], suffix=r"(?=\s*\{)"), Keyword.Reserved),
            (words(KEYWORDS["statement"], suffix=r"\b(?=\s*(?:[+-]?[\d.]|[A-Za-z_]))"), Keyword),
            (words(KEYWORDS["block"], suffix=r"(?=\s*\{)"), Keyword),
            (words(KEYWORDS["inner"], suffix=r'\b(?=\s+(?:[+-]?[\d.]|[A-Za-z_"]))'), Keyword),
            (rf"({_NAME})([ \t]+)({_alt(KEYWORDS['sweep'])})\b", bygroups(Name.Variable, Whitespace, Keyword)),
            (rf"{_NAME}(?=[ \t]*:)", Name.Attribute),
            (words(sorted(BUILTINS), suffix=r"(?=\s*\()"), Name.Builtin),
            (rf"{_NAME}(?=\s*\()", Name.Function),
            (words(("true", "false"), suffix=r"\b"), Keyword.Constant),
            (words(("label", "rationale"), suffix=r"\b"), Name.Builtin.Pseudo),
            (_NAME, Name),
            (rf"[+-]?\d+(?![\d.eE])", Number.Integer),
            (_NUMBER, Number.Float),
            (r"->|⟶", Operator),
            (r"[<>~=]", Operator),
            (r"[:,;()\[\]{}]", Punctuation),
        ],
        "string": [
            (r'[^"\\\n]+', String.Double),
            (r"\\(?:u[0-9a-fA-F]{4}|.)", String.Escape),
            (r'"', String.Double, "#pop"),
            (r"\n", Error, "#pop"),  # an unterminated string
        ],
    }
