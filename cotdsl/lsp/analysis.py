"""The language server's answers, as plain functions of a document's text and path; positions are
offsets into that text (the server converts them to the client's line/character units).

Diagnostics are the checker's (`check_source`, every error of the file, imports included). Hover,
completion and definition read the file's tokens from the highlighter (`cotdsl.lang.highlight`),
so they work on a file that does not parse yet, as it is while being typed.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass

from pygments.token import Keyword, Name, Punctuation, String, Whitespace

from cotdsl.errors import CotError, Diagnostic
from cotdsl.lang.highlight import KEYWORDS, CotLexer

from . import docs

_STRING = re.compile(r'"(?:[^"\\\n]|\\.)*"')


@dataclass(frozen=True)
class Tok:
    start: int
    end: int
    type: object  # a pygments token type
    text: str


@dataclass(frozen=True)
class Problem:
    start: int
    end: int
    message: str


@dataclass(frozen=True)
class Decl:
    """A declared name: `kind` is the keyword that declares it (target, data, student, ...)."""

    kind: str
    name: str
    path: str
    start: int
    end: int
    source: str  # the declaring line


@dataclass(frozen=True)
class Item:
    label: str
    kind: str  # function | class | variable | property | value | keyword
    detail: str = ""
    doc: str = ""


def lex(text: str) -> list[Tok]:
    """The significant tokens (no whitespace); a string's pieces joined into one token."""
    out: list[Tok] = []
    for start, kind, value in CotLexer().get_tokens_unprocessed(text):
        if kind in Whitespace:
            continue
        prev = out[-1] if out else None
        if kind in String and prev and prev.type in String and prev.end == start and not _STRING.fullmatch(prev.text):
            out[-1] = Tok(prev.start, start + len(value), prev.type, prev.text + value)
        else:
            out.append(Tok(start, start + len(value), kind, value))
    return out


def _at(toks: list[Tok], offset: int) -> int | None:
    """The index of the token under (or just before) `offset`."""
    for i, t in enumerate(toks):
        if t.start <= offset <= t.end:
            return i
    return None


def _offset(text: str, line: int, col: int) -> int:
    """1-based line and column (as the checker counts them) -> offset."""
    starts = [0] + [m.end() for m in re.finditer("\n", text)]
    return min(starts[min(line, len(starts)) - 1] + col - 1, len(text))


def _line_of(text: str, offset: int) -> str:
    return text[text.rfind("\n", 0, offset) + 1:].split("\n", 1)[0].strip()


def _base(path: str) -> str:
    real = not (path.startswith("<") and path.endswith(">"))
    return os.path.dirname(os.path.abspath(path)) if real else os.getcwd()


def imports(toks: list[Tok], path: str) -> list[tuple[Tok, str]]:
    """(the path's string token, the absolute path) of each complete `import "..."`."""
    from cotdsl.lang.parse import unescape
    return [(t, os.path.abspath(os.path.join(_base(path), unescape(t.text))))
            for i, t in enumerate(toks) if t.type in String and _STRING.fullmatch(t.text)
            and i and toks[i - 1].type is Keyword.Namespace and toks[i - 1].text == "import"]


def problems(text: str, path: str) -> list[Problem]:
    """Every diagnostic the checker reports for the file (checked as `cotdsl check` does: a file
    without an experiment block as a library). One in an imported file is shown on the import."""
    from cotdsl.lang.check import check_source
    try:
        check_source(text, path, library=True)
    except CotError as e:
        toks = lex(text)
        return [_place(d, text, path, toks) for d in e.diagnostics]
    return []


def _place(d: Diagnostic, text: str, path: str, toks: list[Tok]) -> Problem:
    message = d.message + ("\nexpected: " + ", ".join(d.expected) if d.expected else "") + \
        (f"\nhint: {d.hint}" if d.hint else "")
    if d.pos is None or os.path.abspath(d.pos.file) != os.path.abspath(path):
        where = imports(toks, path)
        tok = next((t for t, p in where if d.pos and p == os.path.abspath(d.pos.file)), where[0][0] if where else None)
        span = (tok.start, tok.end) if tok else (0, len(text.split("\n", 1)[0]))
        return Problem(*span, f"{d.pos}: {message}" if d.pos else message)
    start = _offset(text, d.pos.line, d.pos.col)
    i = _at(toks, start)
    end = toks[i].end if i is not None and toks[i].start == start else min(start + 1, len(text))
    return Problem(start, max(end, start), message)


def declarations(text: str, path: str, seen: set[str] | None = None) -> list[Decl]:
    """The names the file declares (experiment, targets, data, teacher, students), then those of
    the files it imports, recursively."""
    from cotdsl.lang.parse import read_source
    seen = seen if seen is not None else {os.path.abspath(path)}
    toks = lex(text)
    out = [Decl(toks[i - 1].text, t.text, path, t.start, t.end, _line_of(text, t.start))
           for i, t in enumerate(toks) if i and toks[i - 1].type is Keyword.Declaration
           and t.type in (Name.Class, Name.Namespace, Name.Variable)]
    for _, p in imports(toks, path):
        if p in seen or not os.path.isfile(p):
            continue
        seen.add(p)
        try:
            out += declarations(read_source(p), p, seen)
        except CotError:
            continue
    return out


def _context(toks: list[Tok], i: int) -> tuple[str | None, str | None]:
    """(the section whose braces hold token i, the key whose value it is in) or (None, None)."""
    depth, key = 0, None
    for j in range(i - 1, -1, -1):
        t = toks[j]
        if t.type is Name.Attribute and depth == 0 and key is None:
            key = t.text
        if t.type is Punctuation and t.text in ")]}":
            depth += 1
        elif t.type is Punctuation and t.text in "([{":
            if depth == 0:
                section = toks[j - 1].text if t.text == "{" and j and toks[j - 1].type is Keyword.Reserved else None
                return section, key if section else None
            depth -= 1
    return None, None


def hover(text: str, path: str, offset: int) -> tuple[str, int, int] | None:
    toks = lex(text)
    i = _at(toks, offset)
    if i is None:
        return None
    t = toks[i]
    doc = None
    if t.type in (Name.Builtin, Name.Function):
        doc = docs.perturbation_doc(t.text)
    elif t.type is Name.Attribute:
        section, _ = _context(toks, i)
        doc = docs.key_doc(section, t.text) if section else None
    elif t.type is Keyword.Reserved:
        doc = docs.section_doc(t.text)
    elif t.type in Name:
        found = [d for d in declarations(text, path) if d.name == t.text]
        doc = "\n\n".join(f"```cot\n{d.source}\n```\n{d.kind} declared in `{os.path.basename(d.path)}`"
                          for d in found) or None
    return (doc, t.start, t.end) if doc else None


def definition(text: str, path: str, offset: int) -> Decl | None:
    """Where the name under `offset` is declared, or the file an `import` string names."""
    toks = lex(text)
    i = _at(toks, offset)
    if i is None:
        return None
    t = toks[i]
    for tok, p in imports(toks, path):
        if tok is t:
            return Decl("import", os.path.basename(p), p, 0, 0, "") if os.path.isfile(p) else None
    if t.type not in Name:
        return None
    return next((d for d in declarations(text, path) if d.name == t.text), None)


def complete(text: str, path: str, offset: int) -> list[Item]:
    """Section keys (and a key's values) inside `train`/`eval`/`probe`; elsewhere perturbations,
    declared names, the example's fields and keywords."""
    toks = [t for t in lex(text) if t.end < offset or t.start >= offset]  # drop the word being typed
    i = next((j for j, t in enumerate(toks) if t.start >= offset), len(toks))
    prev = toks[i - 1].text if i else ""
    section, key = _context(toks, i)
    decls = {d.name: d for d in reversed(declarations(text, path)) if d.kind != "experiment"}  # the first wins
    names = [Item(d.name, "class" if d.kind == "target" else "variable", f"{d.kind} ({os.path.basename(d.path)})",
                  f"```cot\n{d.source}\n```") for d in reversed(decls.values())]
    if section:
        keys = [Item(k, "property", section, docs.key_doc(section, k) or "") for k in docs.section_params(section)]
        values = [Item(v, "value", f"{section}.{key}") for v in docs.key_values(section, key)] if key else []
        if prev in ("{", ";"):
            return keys
        return values + names if prev in (":", "->", "⟶") else keys + values
    out = [Item(n, "function", docs.signature(n), docs.perturbation_doc(n) or "") for n in sorted(docs.perturbations())]
    out += names + [Item(f, "field", "a field of the example") for f in ("label", "rationale")]
    return out + [Item(k, "keyword") for ws in KEYWORDS.values() for k in ws]
