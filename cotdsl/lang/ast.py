"""The syntax tree of a .cot file: small frozen dataclasses, each with its source position.

`parse.py` builds these from the Lark parse; `check.py` turns them into a `spec.Experiment`;
`fmt.py` prints them back canonically. Nothing here is resolved yet: names are just names.

Multi-token values (calls, maps, chains, multitasks) also record the line of their last token
(`end_line`, not part of equality or repr) so that statements know where they end.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Union

from cotdsl.errors import Pos


# ---- values ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Num:
    value: int | float
    text: str  # as written (kept by fmt: 5e-5 stays 5e-5)
    pos: Pos


@dataclass(frozen=True)
class Str:
    value: str  # unescaped
    pos: Pos


@dataclass(frozen=True)
class Name:
    """A bare word: `label`/`rationale`, a sweep variable, or a word such as `ig`, `true`."""

    id: str
    pos: Pos


@dataclass(frozen=True)
class KwArg:
    key: str
    value: "Value"
    pos: Pos


@dataclass(frozen=True)
class CallV:
    fn: str
    args: tuple["Value", ...]
    kwargs: tuple[KwArg, ...]
    pos: Pos
    end_line: int = field(default=0, compare=False, repr=False)


@dataclass(frozen=True)
class MapV:
    items: tuple[KwArg, ...]
    pos: Pos
    end_line: int = field(default=0, compare=False, repr=False)


@dataclass(frozen=True)
class Pair:
    """`a -> b` in a section entry (`probe { patch: none -> after }`): two sides named as in an
    expectation (`masked[p=0.8]`), `Side`s without a metric. `pos` is the left side's."""

    left: "Side"
    arrow: str  # "->" or "⟶"
    right: "Side"
    pos: Pos
    end_line: int = field(default=0, compare=False, repr=False)


Value = Union[Num, Str, Name, CallV, MapV, Pair]


# ---- targets ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Chain:
    """Target segments in order: Str literals, Name refs and CallV perturbations. `arrows[i]`
    is the separator written before segment i+1 ("->", "⟶" or "" for adjacency)."""

    segments: tuple[Value, ...]
    arrows: tuple[str, ...]
    pos: Pos
    end_line: int = field(default=0, compare=False, repr=False)


@dataclass(frozen=True)
class TaskDef:
    prefix: Str | None
    chain: Chain
    weight: Value | None
    pos: Pos


@dataclass(frozen=True)
class Multitask:
    tasks: tuple[TaskDef, ...]
    pos: Pos
    end_line: int = field(default=0, compare=False, repr=False)


@dataclass(frozen=True)
class Entry:
    """A name and the values written after it: a sweep variable `p in 0.2, 0.4` or a section
    entry `lens: logit, tuned`."""

    name: str
    values: tuple[Value, ...]
    pos: Pos


@dataclass(frozen=True)
class Target:
    name: str
    sweep: tuple[Entry, ...] | None  # None: no brackets; () : empty brackets
    body: Union[Chain, Multitask]
    pos: Pos
    end_line: int = 0


# ---- statements ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Seeds:
    values: tuple[Value, ...]
    pos: Pos
    end_line: int = 0


@dataclass(frozen=True)
class Decl:
    kind: str  # data | teacher | student
    name: str
    value: Value
    pos: Pos
    name_pos: Pos | None = None
    end_line: int = 0


@dataclass(frozen=True)
class Section:
    kind: str  # train | eval | probe
    entries: tuple[Entry, ...]
    pos: Pos
    end_line: int = 0


@dataclass(frozen=True)
class Side:
    """One side of an expectation: `after`, `masked[p=0.8]`, `commit(after)`. `metric` is None for
    a bare condition (accuracy); `point` is None without brackets."""

    metric: str | None
    name: str
    point: tuple[KwArg, ...] | None
    pos: Pos  # the metric's name when there is one, else the condition's
    name_pos: Pos
    end_line: int = field(default=0, compare=False, repr=False)


@dataclass(frozen=True)
class Expect:
    """`expect LEFT OP RIGHT [within D] [alpha A]`, OP one of `>`, `<`, `~`."""

    left: Side
    op: str
    right: Side
    within: Value | None
    alpha: Value | None
    pos: Pos
    op_pos: Pos
    end_line: int = 0


Stmt = Union[Seeds, Decl, Target, Section, Expect]


@dataclass(frozen=True)
class Import:
    path: str
    pos: Pos
    end_line: int = 0


@dataclass(frozen=True)
class Plugin:
    module: str
    pos: Pos
    end_line: int = 0


@dataclass(frozen=True)
class ExperimentBlock:
    name: str
    body: tuple[Stmt, ...]
    pos: Pos
    end_line: int = 0


@dataclass(frozen=True)
class Comment:
    text: str  # including the leading '#'
    line: int
    col: int


@dataclass(frozen=True)
class File:
    path: str
    items: tuple  # Import | Plugin | ExperimentBlock | Stmt, in source order
    comments: tuple[Comment, ...] = ()

    @property
    def imports(self) -> list[Import]:
        return [i for i in self.items if isinstance(i, Import)]

    @property
    def plugins(self) -> list[Plugin]:
        return [i for i in self.items if isinstance(i, Plugin)]

    @property
    def experiments(self) -> list[ExperimentBlock]:
        return [i for i in self.items if isinstance(i, ExperimentBlock)]

    @property
    def toplevel(self) -> list:
        return [i for i in self.items if isinstance(i, (Seeds, Decl, Target, Section, Expect))]
