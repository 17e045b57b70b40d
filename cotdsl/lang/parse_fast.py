"""The fast path of `parse.parse_source`: lex and LALR-parse in one loop, building the AST inline.

lark's own `Lark.parse` costs about 1.5 times as much on bench/parse_speed.py's 1,000-line spec
with the transformer run inline (178 vs 117 ms, docs/design.md), which takes parse + check over
its 0.2 s budget, and nearly three times as much building a tree first: a Token object per
whitespace run and lark's per-token machinery. This driver reads the *same* tables lark built
for the grammar:

- per LALR state, the contextual lexer's terminal set (its compiled alternation, in lark's
  priority order, and its keyword callbacks), so tokens are exactly those of lark's
  `lexer="contextual"`;
- the LALR action table (`states[state][terminal] -> (Shift | Reduce, arg)`);
- lark's rule callbacks (`ParseTreeBuilder.create_callback`) bound to a fresh `_ToAst`
  transformer per parse, so `?rule` inlining, `[]` placeholders and `!rule` tokens are lark's.

It only handles the happy path: on the first unexpected character or token it raises
`Fallback`, and `parse_source` re-parses with lark itself (error recovery, messages); any other
exception (a bug in the transformer) propagates as it is. Nothing it produces differs from the
lark path; `tests/lang/test_parse_fast.py` checks that on every spec and on generated and mutated
ones. It touches lark internals (`_parse_tree_builder`, `ParsingFrontend.parser._parse_table`,
`ContextualLexer.lexers`); if a lark version moves them, `FastParser.build` returns None and
every parse takes the lark path.
"""
from __future__ import annotations

import re
from typing import Any

import lark
from lark import Token


class Fallback(Exception):
    """The fast path cannot go on (a syntax error, or input it does not handle): use lark."""


class _StateLexers(dict):
    """LALR state -> (match, keyword callbacks, ignored types, newline types) of lark's contextual
    lexer for that state, built on first use (compiling all ~60 costs ~5 ms per process)."""

    def __init__(self, lark_lexers: dict):
        super().__init__()
        self.lark_lexers = lark_lexers
        self.by_lexer: dict[int, tuple] = {}  # states with the same terminal set share a lexer

    def __missing__(self, state):
        lx = self.lark_lexers[state]
        if id(lx) not in self.by_lexer:
            scanner = lx.scanner  # builds lark's keyword (`unless`) callbacks too
            pattern = "|".join(f"(?P<{t.name}>{t.pattern.to_regexp()})" for t in scanner.terminals)
            self.by_lexer[id(lx)] = (re.compile(pattern, lx.g_regex_flags).match, dict(lx.callback),
                                     lx.ignore_types, lx.newline_types)
        self[state] = self.by_lexer[id(lx)]
        return self[state]


class FastParser:
    """lark's LALR tables and contextual lexer, driven without lark's per-token machinery."""

    def __init__(self, p: lark.Lark):
        from lark.parsers.lalr_analysis import Shift  # internal: the table's shift marker

        frontend = p.parser
        table = frontend.parser._parse_table
        self.start_state = table.start_states["start"]
        self.end_state = table.end_states["start"]
        self.builder = p._parse_tree_builder
        # lark's table holds Rule objects, whose __hash__/__eq__ are Python calls on every
        # reduce; ours holds (True, next state) for a shift/goto, (False, (size, lhs, rule
        # index)) for a reduce.
        self.rules = [rule for rule, _ in self.builder.rule_builders]
        index = {rule: i for i, rule in enumerate(self.rules)}
        self.states = {
            state: {sym: (True, arg) if action is Shift else
                    (False, (len(arg.expansion), arg.origin.name, index[arg]))
                    for sym, (action, arg) in actions.items()}
            for state, actions in table.states.items()}
        terminal_callbacks = p._callbacks.keys() - set(p.rules)  # lexer callbacks: not supported
        ctx = frontend.lexer
        if not isinstance(ctx, lark.lexer.ContextualLexer) or terminal_callbacks:
            raise TypeError("fast path needs lark's contextual lexer and no terminal callbacks")
        self.lexers = _StateLexers(ctx.lexers)

    @classmethod
    def build(cls, p: lark.Lark) -> "FastParser | None":
        try:
            return cls(p)
        except (AttributeError, KeyError, TypeError, ImportError, re.error):  # another lark layout
            return None

    def parse(self, text: str, transformer: lark.Transformer) -> Any:
        """Text -> the transformer's value for `start`. Raises Fallback on any syntax error."""
        by_rule = self.builder.create_callback(transformer)
        callbacks = [by_rule[rule] for rule in self.rules]
        states, lexers, end_state = self.states, self.lexers, self.end_state
        state_stack = [self.start_state]
        value_stack: list = []
        pos, line, line_start, n = 0, 1, 0, len(text)
        new_str = str.__new__
        while True:
            if pos < n:
                match, unless, ignore, newline = lexers[state_stack[-1]]
                m = match(text, pos)
                if m is None:
                    raise Fallback
                typ, end = m.lastgroup, m.end()
                if typ in ignore:
                    if typ in newline and (k := text.count("\n", pos, end)):
                        line += k
                        line_start = text.rindex("\n", pos, end) + 1
                    pos = end
                    continue
                # Token(...) goes through two Python-level constructors; this is the same object
                value = m.group()
                tok = new_str(Token, value)
                tok.type, tok.value, tok.start_pos, tok.end_pos = typ, value, pos, end
                tok.line = tok.end_line = line
                tok.column, tok.end_column = pos - line_start + 1, end - line_start + 1
                if typ in newline and (k := text.count("\n", pos, end)):  # no such terminal today
                    line += k
                    line_start = text.rindex("\n", pos, end) + 1
                    tok.end_line, tok.end_column = line, end - line_start + 1
                if typ in unless:
                    tok = unless[typ](tok)  # a NAME that is a keyword in this state
                    typ = tok.type
                pos = end
            else:  # end of input: reduce until the start rule is complete
                typ, tok = "$END", None
            while True:  # lark's ParserState.feed_token, inlined
                try:
                    is_shift, arg = states[state_stack[-1]][typ]
                except KeyError:
                    raise Fallback from None
                if is_shift:
                    if tok is None:  # pragma: no cover - lark never shifts $END
                        raise Fallback
                    state_stack.append(arg)
                    value_stack.append(tok)
                    break
                size, lhs, rule = arg
                if size:
                    children = value_stack[-size:]
                    del state_stack[-size:]
                    del value_stack[-size:]
                else:
                    children = []
                value_stack.append(callbacks[rule](children))
                state_stack.append(states[state_stack[-1]][lhs][1])
                if tok is None and state_stack[-1] == end_state:
                    return value_stack[-1]
