"""Error recovery: syntax errors, collected as far as lark's LALR parser can go on (its `on_error`
hook).

At each error we try a one-token insertion repair (a missing `,` `->` `)` ...), else skip the
token; an unknown statement is skipped whole; errors that directly follow a previous one are
cascades and are not reported. Common mistakes get names ("missing `->` between segments") from
parser states found by parsing small broken examples.

Only called once the fast path has failed, so its cost never touches valid input.
"""
from __future__ import annotations

import re
from functools import lru_cache

from lark import Token
from lark.exceptions import UnexpectedCharacters, UnexpectedInput, UnexpectedToken

from cotdsl.errors import Diagnostic, Pos, did_you_mean

from .grammar import SCAN, SECTIONS, STATEMENT_KEYWORDS, parser

MAX_SYNTAX_ERRORS = 20


_PRETTY = {"NAME": "a name", "STRING": "a string", "NUMBER": "a number", "KEY": "`key:`",
           "SWEEPVAR": "`name in`", "ARROW": "`->`", "$END": "end of file",
           "DECLKW": "`data`, `teacher` or `student`", "SECTIONKW": "`train`, `eval` or `probe`",
           "EXPECT_OP": "`>`, `<` or `~`"}

# Common mistakes, named through lark's match_examples (each example fails at the mistake).
_EXAMPLES = {
    "missing `=` in declaration": ["data d builtin()", "teacher t gold", "target a label"],
    "missing `->` between segments": ["target a = label rationale", "target a = label shuffle(x)",
                                      "target a = shuffle(x) label"],
    "missing `,` between arguments": ["target a = mask(rationale 0.5)", "data d = f(a: 1 b: 2)"],
    "missing closing `)`": ["target a = mask(rationale, 0.5 -> label", "data d = f(1 }"],
    "missing closing `}`": ["experiment e {", "train { epochs: 1", "experiment e { seeds 0"],
    "a sweep is written `[name in v1, v2, ...]`": ["target a[p] = label", "target a[p 0.2] = label",
                                                   "target a[p = 0.2] = label"],
    "missing target body after `=`": ["target a =", "target a = }", "target a = target"],
    "a declaration needs a name: `data NAME = ...`": ["data = builtin()", "student = smollm2"],
    "an expectation is written `expect a > b`, `a < b` or `a ~ b within D`": [
        "expect after", "expect after = none", "expect after none", "expect after >"],
}


def _open_bracket(text: str, end: int) -> str:
    """The innermost bracket still open at offset `end` ("" at top level): the same LALR state
    can be inside a call `(`, a sweep `[` or a block `{`, and the mistake is named differently."""
    stack = []
    for m in SCAN.finditer(text, 0, end):
        g = m.group()
        if g in "([{":
            stack.append(g)
        elif g in ")]}" and stack:
            stack.pop()
    return stack[-1] if stack else ""


@lru_cache(maxsize=1)
def _example_states() -> dict[tuple[int, str], str]:
    """LALR state -> name of the common mistake that fails there. Each example is tried at top
    level and inside an experiment block, first or after another statement. (Like lark's
    `UnexpectedInput.match_examples`, but keyed on the parse-table state alone, computed once.)"""
    wraps = ("{}", "seeds 0 {}", "experiment e {{ {} }}", "experiment e {{ seeds 0 {} }}")
    states: dict[tuple[int, str], str] = {}
    for label, examples in _EXAMPLES.items():
        for x in examples:
            for w in wraps:
                try:
                    parser().parse(w.format(x))
                except UnexpectedToken as ut:
                    src = w.format(x)
                    at = ut.token.start_pos if ut.token.type != "$END" else len(src)
                    states.setdefault((ut.state.position, _open_bracket(src, at)), label)
                except UnexpectedInput:
                    pass
    return states


def _unknown_statement(e: UnexpectedToken, text: str) -> str | None:
    """"section" for `NAME {` where a statement may start, "statement" for another NAME that
    starts a line there (or looks like a keyword); None otherwise."""
    tok = e.token
    if tok.type != "NAME" or not ({"DECLKW", "SECTIONKW"} & set(e.accepts or e.expected or ())):
        return None
    after = text[tok.end_pos:].lstrip(" \t")
    if after.startswith("{"):
        return "section"
    line_start = text.rfind("\n", 0, tok.start_pos) + 1
    if not text[line_start:tok.start_pos].strip() or did_you_mean(tok.value, STATEMENT_KEYWORDS):
        return "statement"
    return None


def _skip_statement(e: UnexpectedToken, text: str) -> int | None:
    """Where to resume after an unknown statement: past the section's matching `}`, or the start
    of the next line that begins with a statement keyword or `}`."""
    tok = e.token
    after = text[tok.end_pos:]
    if after.lstrip(" \t").startswith("{"):
        depth = 0
        for m in SCAN.finditer(text, tok.end_pos):
            g = m.group()
            if g in "([{":
                depth += 1
            elif g in ")]}":
                depth -= 1
                if depth == 0:
                    return m.end()
        return len(text)
    pat = re.compile(r"^[ \t]*(" + "|".join(STATEMENT_KEYWORDS) + r"\b|})", re.M)
    m = pat.search(text, text.find("\n", tok.end_pos) + 1 if "\n" in after else len(text))
    return m.start() if m else len(text)


def _pretty_expected(names) -> list[str]:
    p = parser()
    out = set()
    for n in names:
        if n in _PRETTY:
            out.add(_PRETTY[n])
            continue
        try:
            pat = p.get_terminal(n).pattern
            out.add(f"`{pat.value}`" if pat.type == "str" else n)
        except KeyError:
            out.add(n)
    return sorted(out)


def _end_pos(text: str) -> tuple[int, int]:
    stripped = text.rstrip()
    line = stripped.count("\n") + 1
    return line, len(stripped) - (stripped.rfind("\n") + 1) + 1


def _token_diag(e: UnexpectedToken, text: str, path: str) -> Diagnostic:
    tok = e.token
    expected = _pretty_expected(e.accepts or e.expected)
    if tok.type == "$END":
        line, col = _end_pos(text)
        found = "unexpected end of file"
    else:
        line, col = tok.line, tok.column
        found = f"unexpected `{tok.value}`"
    state = getattr(e, "state", None)
    at = tok.start_pos if tok.type != "$END" else len(text)
    label = _example_states().get((getattr(state, "position", None), _open_bracket(text, at)))
    pos = Pos(path, line, col)
    kind = _unknown_statement(e, text)
    if kind == "section":
        return Diagnostic(pos, f"unknown section `{tok.value}`", ["`train`", "`eval`", "`probe`"],
                          did_you_mean(tok.value, SECTIONS))
    if kind == "statement":
        return Diagnostic(pos, f"unknown statement `{tok.value}`", expected,
                          did_you_mean(tok.value, STATEMENT_KEYWORDS))
    message = f"{label} ({found})" if label else found
    return Diagnostic(pos, message, expected)


_DUMMY = {"NAME": "_", "STRING": '""', "NUMBER": "0", "KEY": "_", "SWEEPVAR": "_", "ARROW": "->",
          "DECLKW": "data", "SECTIONKW": "train"}
# Insertions tried first: the punctuation people forget.
# Only punctuation and operands: inserting keywords "repairs" too much (`trian {` -> `data trian = {`).
_PREFER = ("COMMA", "RPAR", "RBRACE", "RSQB", "ARROW", "EQUAL", "COLON", "NAME", "NUMBER", "STRING")


def _try_insert(ip, bad: Token) -> bool:
    """Repair by inserting one token before `bad`; True (and `ip` advanced past `bad`) if found."""
    accepts = sorted(ip.accepts() & set(_PREFER), key=_PREFER.index)
    p = parser()
    for term in accepts:
        value = _DUMMY[term] if term in _DUMMY else p.get_terminal(term).pattern.value
        trial = ip.copy()
        try:
            trial.feed_token(Token(term, value, bad.start_pos, bad.line, bad.column))
            if bad.type == "$END" or bad.type not in trial.accepts():
                continue
        except UnexpectedInput:
            continue
        ip.feed_token(Token(term, value, bad.start_pos, bad.line, bad.column))
        ip.feed_token(bad)
        return True
    return False


def syntax_errors(text: str, path: str) -> list[Diagnostic]:
    """Parse with recovery; return every (non-cascade) syntax error."""
    diags: list[Diagnostic] = []
    last_end = [-1]  # char offset just after the last error's token

    def cascade(start: int) -> bool:
        gap = text[last_end[0]:start] if last_end[0] >= 0 else None
        return gap is not None and SCAN.sub(lambda m: m.group() if m.group()[0] != "#" else "", gap).strip() == ""

    def on_error(e: UnexpectedInput) -> bool:
        if len(diags) >= MAX_SYNTAX_ERRORS:
            return False
        if isinstance(e, UnexpectedToken):
            tok = e.token
            start = tok.start_pos if tok.start_pos is not None else len(text)
            if not cascade(start):
                diags.append(_token_diag(e, text, path))
            last_end[0] = tok.end_pos if tok.end_pos is not None else len(text)
            if tok.type == "$END":
                return False
            ip = e.interactive_parser
            if _unknown_statement(e, text):
                state = ip.lexer_thread.state
                resume = _skip_statement(e, text)
                if resume is not None and state.line_ctr.char_pos == tok.end_pos:
                    state.line_ctr.feed(text[tok.end_pos:resume])
                    last_end[0] = resume
                return True
            _try_insert(ip, tok)  # else the token is skipped
            return True
        if isinstance(e, UnexpectedCharacters):
            state = e.interactive_parser.lexer_thread.state
            p = state.line_ctr.char_pos
            ch = text[p] if p < len(text) else ""
            if ch == '"':
                msg, hint = "unterminated string", "close the string with `\"` on the same line"
            else:
                msg, hint = f"unexpected character `{ch}`", None
                if ch == "-" and text[p:p + 2] != "->":
                    hint = "segments are separated by `->`"
            if not cascade(p):
                diags.append(Diagnostic(Pos(path, e.line, e.column), msg, None, hint))
            if ch == '"':  # skip the rest of the line, standing in an empty string
                eol = text.find("\n", p)
                eol = len(text) if eol < 0 else eol
                state.line_ctr.feed(text[p:eol])
                ip = e.interactive_parser
                if "STRING" in ip.accepts():
                    ip.feed_token(Token("STRING", '""', p, e.line, e.column))
                last_end[0] = eol
            else:
                last_end[0] = p + 1
            return True
        return False

    try:
        parser().parse(text, on_error=on_error)
    except UnexpectedInput as e:
        if not diags:  # an error the handler declined before recording anything
            line, col = (e.line, e.column) if getattr(e, "line", -1) and e.line > 0 else _end_pos(text)
            diags.append(Diagnostic(Pos(path, line, col), "syntax error"))
    return sorted(diags, key=lambda d: (d.pos.line, d.pos.col) if d.pos else (0, 0))
