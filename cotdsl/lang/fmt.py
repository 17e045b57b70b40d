"""Canonical formatting of a .cot file, printed from the AST (`cotdsl fmt`).

Idempotent (`fmt(fmt(x)) == fmt(x)`) and meaning-preserving (the result checks to the same
Experiment). Layout: two-space indent, one statement per line, `->` between segments (`⟶`
becomes `->`), `data`/`teacher`/`student` keywords padded to one width, `;` between sweep
variables, single blank lines kept. Comments are kept: a comment on its own line(s) stays above
the statement that follows it; comments on a statement's lines move to the end of its last line.
"""
from __future__ import annotations

import json

from . import ast
from .parse import parse_source

INDENT = "  "
WIDTH = 100  # multitask targets longer than this are broken over lines


def quote(s: str) -> str:
    return json.dumps(s, ensure_ascii=False)


def value(v) -> str:
    if isinstance(v, ast.Num):
        return v.text
    if isinstance(v, ast.Str):
        return quote(v.value)
    if isinstance(v, ast.Name):
        return v.id
    if isinstance(v, ast.CallV):
        parts = [value(a) for a in v.args] + [f"{k.key}: {value(k.value)}" for k in v.kwargs]
        return f"{v.fn}({', '.join(parts)})"
    if isinstance(v, ast.MapV):
        return "{" + ", ".join(f"{k.key}: {value(k.value)}" for k in v.items) + "}"
    if isinstance(v, ast.Pair):
        return f"{side(v.left)} -> {side(v.right)}"
    raise TypeError(f"not a value: {v!r}")  # pragma: no cover


def chain(c: ast.Chain) -> str:
    out = value(c.segments[0])
    for arrow, s in zip(c.arrows, c.segments[1:]):
        out += (" " if arrow == "" else " -> ") + value(s)
    return out


def _task(t: ast.TaskDef) -> str:
    s = (quote(t.prefix.value) + ": " if t.prefix else "") + chain(t.chain)
    return s + (f" weight {value(t.weight)}" if t.weight is not None else "")


def side(s: ast.Side) -> str:
    """`after`, `masked[p=0.8]`, `commit(after)`: the point's entries joined by `,` as in the
    condition's name."""
    out = s.name
    if s.point is not None:
        out += "[" + ",".join(f"{k.key}={value(k.value)}" for k in s.point) + "]"
    return f"{s.metric}({out})" if s.metric else out


def expect(s: ast.Expect) -> str:
    """An expectation without the keyword: `shuffled ~ after within 3 alpha 0.01`."""
    out = f"{side(s.left)} {s.op} {side(s.right)}"
    if s.within is not None:
        out += f" within {value(s.within)}"
    return out + (f" alpha {value(s.alpha)}" if s.alpha is not None else "")


def head(s) -> str | None:
    """The part before ` = ` of a declaration or target (aligned within a run of them)."""
    if isinstance(s, ast.Decl):
        return f"{s.kind:<7} {s.name}"
    if isinstance(s, ast.Target):
        h = f"target {s.name}"
        if s.sweep is not None:
            h += "[" + "; ".join(f"{v.name} in {', '.join(value(x) for x in v.values)}".rstrip()
                                 for v in s.sweep) + "]"
        return h
    return None


def statement(s, indent: str = "", pad: int = 0) -> str:
    if isinstance(s, ast.Seeds):
        return indent + "seeds " + ", ".join(value(v) for v in s.values)
    if isinstance(s, ast.Decl):
        return f"{indent}{head(s):<{pad}} = {value(s.value)}"
    if isinstance(s, ast.Section):
        multi = any(len(e.values) > 1 for e in s.entries)
        body = ("; " if multi else ", ").join(f"{e.name}: {', '.join(value(v) for v in e.values)}"
                                                for e in s.entries)
        return f"{indent}{s.kind} {{ {body} }}" if body else f"{indent}{s.kind} {{}}"
    if isinstance(s, ast.Target):
        h = f"{indent}{head(s):<{pad}}"
        if isinstance(s.body, ast.Chain):
            return f"{h} = {chain(s.body)}"
        one = f"{h} = multitask {{ " + "; ".join(_task(t) for t in s.body.tasks) + " }"
        if len(one) <= WIDTH:
            return one
        inner = ";\n".join(indent + INDENT + _task(t) for t in s.body.tasks)
        return f"{h.rstrip()} = multitask {{\n{inner}\n{indent}}}"
    if isinstance(s, ast.Expect):
        return f"{indent}expect {expect(s)}"
    if isinstance(s, ast.Import):
        return f"{indent}import {quote(s.path)}"
    if isinstance(s, ast.Plugin):
        return f"{indent}plugin {quote(s.module)}"
    raise TypeError(f"not a statement: {s!r}")  # pragma: no cover


class _Printer:
    def __init__(self, f: ast.File, text: str):
        self.comments = sorted(f.comments, key=lambda c: c.line)
        self.used: set[int] = set()
        self.lines = text.splitlines()
        self.out: list[str] = []

    def _take(self, lo: int, hi: int) -> list[ast.Comment]:
        """Unprinted comments on lines lo..hi (inclusive)."""
        got = [c for c in self.comments if lo <= c.line <= hi and c.line not in self.used]
        self.used.update(c.line for c in got)
        return got

    def _blank_between(self, a: int, b: int) -> bool:
        return any(not self.lines[i - 1].strip() for i in range(a + 1, b) if 0 < i <= len(self.lines))

    def _pads(self, items: list) -> list[int]:
        """Runs of consecutive decls (or targets) with no blank or comment line between them
        share one width for their heads, so their `=` line up."""
        pads, run = [0] * len(items), []

        def flush():
            w = max((len(head(items[j])) for j in run), default=0)
            for j in run:
                pads[j] = w
            run.clear()

        for k, it in enumerate(items):
            h = head(it)
            if h is None or len(h) > 24 or getattr(it, "sweep", None) is not None:
                flush()
                continue
            if run:
                prev = items[run[-1]]
                gap = range(prev.end_line + 1, it.pos.line)
                if type(prev) is not type(it) or any(
                        not self.lines[i - 1].strip() or self.lines[i - 1].lstrip().startswith("#") for i in gap):
                    flush()
            run.append(k)
        flush()
        return pads

    def block(self, items: list, indent: str, prev_end: int, close_line: int | None) -> None:
        pads = self._pads(items)
        for k, it in enumerate(items):
            start, end = it.pos.line, max(it.end_line, it.pos.line)
            start = min(start, getattr(it, "name_pos", None).line if getattr(it, "name_pos", None) else start)
            lead = self._take(prev_end + 1, start - 1)
            cursor = prev_end
            for c in lead:
                if k > 0 and self._blank_between(cursor, c.line):
                    self.out.append("")
                self.out.append(indent + c.text)
                cursor = c.line
            if k > 0 and self._blank_between(cursor, start):
                self.out.append("")
            if isinstance(it, ast.ExperimentBlock):
                trail = self._take(start, start)
                self.out.append(f"{indent}experiment {it.name} {{" + "".join("  " + c.text for c in trail))
                self.block(list(it.body), indent + INDENT, start, end)
                self.out.append(indent + "}" + "".join("  " + c.text for c in self._take(end, end)))
            else:
                trail = self._take(start, end)
                self.out.append(statement(it, indent, pads[k]) + "".join("  " + c.text for c in trail))
            prev_end = end
        if close_line is not None:  # comments before a closing `}`
            for c in self._take(prev_end + 1, close_line - 1):
                self.out.append(indent + c.text)


def format_source(text: str, path: str = "<string>") -> str:
    """Canonical text of a spec (raises CotError on syntax errors)."""
    f = parse_source(text, path)
    p = _Printer(f, text)
    p.block(list(f.items), "", 0, None)
    for c in p._take(0, 10 ** 9):  # anything left (trailing comments at the end of the file)
        p.out.append(c.text)
    return "\n".join(p.out).rstrip("\n") + "\n"
