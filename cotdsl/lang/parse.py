"""Text -> `ast.File`: guards (size, encoding, nesting), then the parse, with a Transformer into
the dataclasses of `ast.py`.

Valid input takes the fast path (`parse_fast`: lark's tables, the transformer run inline); when it
gives up (`Fallback`, a syntax error) the text is parsed again by lark itself, and `recover.py`
collects every syntax error with lark's `on_error` recovery.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

from lark import Token, Transformer
from lark.exceptions import UnexpectedInput, VisitError

from cotdsl.errors import CotError, Diagnostic, Pos

from . import ast
from .grammar import SCAN, fast_parser, parser
from .parse_fast import Fallback

MAX_BYTES = 5_000_000  # larger inputs are refused before parsing
MAX_DEPTH = 48  # bracket nesting; the Transformer and checker recurse, so bound it up front


# ---- guards ----------------------------------------------------------------------------------
def decode(data: bytes, path: str) -> str:
    """UTF-8 bytes -> text (a leading BOM is dropped); size and encoding errors are CotErrors."""
    if len(data) > MAX_BYTES:
        raise CotError([Diagnostic(Pos(path, 1, 1), f"file too large: {len(data):,} bytes "
                                   f"(the limit is {MAX_BYTES:,})",
                                   hint="a spec declares an experiment; data belongs in data files")])
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        col = e.start - (data.rfind(b"\n", 0, e.start) + 1) + 1
        raise CotError([Diagnostic(Pos(path, line, col),
                                   f"file is not valid UTF-8 (byte 0x{data[e.start]:02x})",
                                   hint="save the file as UTF-8")]) from None
    return text[1:] if text.startswith("\ufeff") else text


def read_source(path: str | Path) -> str:
    p = Path(path)
    try:
        with open(p, "rb") as f:
            data = f.read(MAX_BYTES + 1)
    except OSError as e:
        raise CotError([Diagnostic(None, f"cannot read {p}: {e.strerror or e}")]) from None
    return decode(data, str(p))


def _scan(text: str, path: str) -> tuple[ast.Comment, ...]:
    """One pass over the text: collect comments (for fmt) and refuse too-deep bracket nesting."""
    comments, depth = [], 0
    for m in SCAN.finditer(text):
        tok = m.group()
        if tok[0] == "#":
            line = text.count("\n", 0, m.start()) + 1
            comments.append(ast.Comment(tok.rstrip(), line, m.start() - text.rfind("\n", 0, m.start())))
        elif tok in "([{":
            depth += 1
            if depth > MAX_DEPTH:
                line = text.count("\n", 0, m.start()) + 1
                col = m.start() - text.rfind("\n", 0, m.start())
                raise CotError([Diagnostic(Pos(path, line, col),
                                           f"nesting too deep (more than {MAX_DEPTH} levels)",
                                           hint="flatten the expression")], {path: text})
        elif tok in ")]}":
            depth = max(0, depth - 1)
    return tuple(comments)


# ---- tree -> ast -----------------------------------------------------------------------------
def unescape(raw: str) -> str:
    """A STRING token's text -> its value (JSON escapes: \\" \\\\ \\n \\t \\uXXXX ...)."""
    return json.loads(raw, strict=False)


_INT = re.compile(r"[+-]?\d+")


def _end(x) -> int:
    """The line of the last token of a transformed child (a token or an AST node)."""
    if isinstance(x, Token):
        return x.line
    end = getattr(x, "end_line", 0)  # CallV, MapV, Chain, Multitask
    return end or x.pos.line  # Num, Str, Name: one token, never spanning lines


class _ToAst(Transformer):
    """Children -> AST nodes. Positions come from tokens (rules marked `!` in the grammar keep
    their keyword and bracket tokens for this), never from tree meta, so the same methods work
    inline during the LALR parse (`parse_fast`) and on a lark tree (the fallback path)."""

    def __init__(self, path: str):
        super().__init__()
        self.path = path
        self.errors: list[Diagnostic] = []

    def _tpos(self, tok: Token) -> Pos:
        return Pos(self.path, tok.line, tok.column)

    # values
    def number(self, c):
        t = c[0]
        if _INT.fullmatch(t):
            v = int(t)
        else:
            v = float(t)
            if v in (float("inf"), float("-inf")):
                self.errors.append(Diagnostic(self._tpos(t), f"number `{t}` is out of range"))
        return ast.Num(v, str(t), self._tpos(t))

    def string(self, c):
        return self._str(c[0])

    def _str(self, t: Token) -> ast.Str:
        try:
            return ast.Str(unescape(t), self._tpos(t))
        except ValueError as e:
            self.errors.append(Diagnostic(self._tpos(t), f"invalid escape in string: {e.args[0].split(':')[0]}",
                                          hint='write a backslash as \\\\ and a quote as \\"'))
            return ast.Str(t[1:-1], self._tpos(t))

    def name(self, c):
        return ast.Name(str(c[0]), self._tpos(c[0]))

    ref = name

    def call(self, c):  # NAME "(" [args] ")"
        fn, args = c[0], c[2]
        pos_args = tuple(a for a in (args or ()) if not isinstance(a, ast.KwArg))
        kwargs = tuple(a for a in (args or ()) if isinstance(a, ast.KwArg))
        return ast.CallV(str(fn), pos_args, kwargs, self._tpos(fn), c[-1].line)

    def args(self, c):
        return list(c)

    def kwarg(self, c):
        return ast.KwArg(str(c[0]), c[1], self._tpos(c[0]))

    map_entry = kwarg

    def map(self, c):  # "{" [entries with "," tokens] "}"
        return ast.MapV(tuple(x for x in c if isinstance(x, ast.KwArg)), self._tpos(c[0]), c[-1].line)

    # targets
    def lits(self, c):
        return [self._str(t) for t in c]

    def group(self, c):
        segs = []
        for x in c:
            if x is None:
                continue
            segs.extend(x if isinstance(x, list) else [x])
        return segs

    def chain(self, c):
        segs, arrows = [], []
        for x in c:
            if isinstance(x, Token):  # ARROW
                arrows.append(str(x))
                continue
            for i, s in enumerate(x):
                if segs and i > 0:
                    arrows.append("")
                segs.append(s)
        return ast.Chain(tuple(segs), tuple(arrows), segs[0].pos, _end(segs[-1]))

    def task(self, c):
        prefix, chain, weight = c
        return ast.TaskDef(self._str(prefix) if prefix is not None else None, chain, weight,
                           self._tpos(prefix) if prefix is not None else chain.pos)

    def multitask(self, c):  # "multitask" "{" task... "}"
        return ast.Multitask(tuple(x for x in c if isinstance(x, ast.TaskDef)), self._tpos(c[0]), c[-1].line)

    def sweep_var(self, c):
        return ("var", ast.Name(str(c[0]), self._tpos(c[0])), c[1])

    def more(self, c):
        return ("more", None, c[0])

    keyed = sweep_var  # `key: value` in a section, as `name in values` in a sweep

    def pair(self, c):  # e_cond ARROW e_cond, a section value (`patch: none -> after`)
        left, arrow, right = c
        return ast.Pair(left, str(arrow), right, left.pos, right.end_line)

    def _group(self, entries):
        out: list[tuple] = []
        for kind, key, value in entries or ():
            if kind == "var" or not out:
                k = key or ast.Name("", value.pos)
                out.append((k, [value] if value is not None else []))
            else:
                out[-1][1].append(value)
        return tuple(ast.Entry(k.id, tuple(vs), k.pos) for k, vs in out)

    def sweep_entries(self, c):
        return list(c)

    sec_entries = sweep_entries

    def sweep(self, c):
        return self._group(c[0])

    def target(self, c):
        name, sweep, body = c
        return ast.Target(str(name), sweep, body, self._tpos(name), _end(body))

    # expectations
    def e_pt(self, c):  # NAME "=" value
        return ast.KwArg(str(c[0]), c[1], self._tpos(c[0]))

    def e_point(self, c):  # "[" e_pt (sep e_pt)* "]"
        return tuple(x for x in c if isinstance(x, ast.KwArg)), c[-1].line

    def e_cond(self, c):  # NAME [e_point]
        name, point = c
        pos = self._tpos(name)
        if point is None:
            return ast.Side(None, str(name), None, pos, pos, name.line)
        return ast.Side(None, str(name), point[0], pos, pos, point[1])

    def e_metric(self, c):  # NAME "(" e_cond ")"
        fn, side = c[0], c[2]
        return ast.Side(str(fn), side.name, side.point, self._tpos(fn), side.name_pos, c[-1].line)

    def expect(self, c):  # "expect" side OP side ["within" value] ["alpha" value]
        kw, left, op, right = c[:4]
        opts, rest = {}, [x for x in c[4:] if x is not None]
        for i, x in enumerate(rest):
            if isinstance(x, Token) and x.type != "STRING" and str(x) in ("within", "alpha"):
                opts[str(x)] = rest[i + 1]
        last = rest[-1] if rest else right
        return ast.Expect(left, str(op), right, opts.get("within"), opts.get("alpha"), self._tpos(kw),
                          self._tpos(op), _end(last))

    # statements
    def seeds(self, c):  # "seeds" value ("," value)*
        values = tuple(x for x in c[1:] if not isinstance(x, Token))
        return ast.Seeds(values, self._tpos(c[0]), _end(c[-1]))

    def decl(self, c):
        kind, name, value = c
        return ast.Decl(str(kind), str(name), value, self._tpos(kind), self._tpos(name), _end(value))

    def section(self, c):  # SECTIONKW "{" [sec_entries] "}"
        kind, entries = c[0], c[2]
        return ast.Section(str(kind), self._group(entries), self._tpos(kind), c[-1].line)

    def import_(self, c):  # "import" STRING
        return ast.Import(self._str(c[1]).value, self._tpos(c[0]), c[1].line)

    def plugin(self, c):
        return ast.Plugin(self._str(c[1]).value, self._tpos(c[0]), c[1].line)

    def experiment(self, c):  # "experiment" NAME "{" stmt* "}"
        return ast.ExperimentBlock(str(c[1]), tuple(c[3:-1]), self._tpos(c[0]), c[-1].line)

    def start(self, c):
        return tuple(c)


def parse_source(text: str, path: str = "<string>") -> ast.File:
    """Parse one file's text. Raises CotError with every syntax error found."""
    if len(text) > MAX_BYTES:
        raise CotError([Diagnostic(Pos(path, 1, 1), f"file too large: {len(text):,} characters "
                                   f"(the limit is {MAX_BYTES:,})")])
    if "\x00" in text:
        i = text.index("\x00")
        line = text.count("\n", 0, i) + 1
        raise CotError([Diagnostic(Pos(path, line, i - text.rfind("\n", 0, i)),
                                   "file contains a NUL byte (is it a binary file?)")], {path: text})
    comments = _scan(text, path)
    conv = _ToAst(path)
    fast = fast_parser()
    try:
        if fast is None:
            raise Fallback
        items = fast.parse(text, conv)
    except Fallback:  # a syntax error (or no fast path): lark's own parse decides and reports
        conv = _ToAst(path)
        try:
            tree = parser().parse(text)
        except UnexpectedInput:
            from .recover import syntax_errors  # lazy: only bad input pays for it

            raise CotError(syntax_errors(text, path), {path: text}) from None
        try:
            items = conv.transform(tree)
        except VisitError as e:  # pragma: no cover - a bug in the transformer, reported not crashed
            raise CotError([Diagnostic(Pos(path, 1, 1), f"internal error while reading the file: {e.orig_exc}")],
                           {path: text}) from None
    if conv.errors:
        raise CotError(conv.errors, {path: text})
    return ast.File(path, items, comments)
