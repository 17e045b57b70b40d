"""The grammar (`cot.lark`, shipped inside this package) and the parsers built from it, once per
process: lark's LALR parser (`parser()`, used on invalid input for recovery and messages) and the
fast driver over its tables (`fast_parser()`, `parse_fast.py`). Also the keyword tables and the
lexical scan that the parser and the error recovery share.
"""
from __future__ import annotations

import hashlib
import os
import re
from functools import lru_cache
from importlib import resources

import lark

from .parse_fast import FastParser

STATEMENT_KEYWORDS = ("import", "plugin", "experiment", "seeds", "data", "teacher", "student",
                      "target", "train", "eval", "probe", "expect")
SECTIONS = ("train", "eval", "probe")

# Strings (closed or not), comments and brackets: what a cheap pass over the text must tell apart.
SCAN = re.compile(r'"(?:[^"\\\n]|\\.)*"?|#[^\n]*|[()\[\]{}]')


def grammar_text() -> str:
    """The grammar file next to this module (in the repository and in the installed wheel)."""
    return resources.files(__package__).joinpath("cot.lark").read_text(encoding="utf-8")


def _cache_file(grammar: str) -> str | bool:
    """Where lark keeps the analysed grammar between processes (building it costs ~25 ms, loading
    ~4 ms): the user's cache folder. Never the shared temp dir, since lark unpickles the file.
    lark checks a hash of grammar, options and versions inside and rebuilds on any mismatch."""
    if os.environ.get("COTDSL_NO_GRAMMAR_CACHE"):
        return False
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    if not os.path.isabs(base):  # no home folder: do not litter the working directory
        return False
    folder = os.path.join(base, "cotdsl")
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError:
        return False
    digest = hashlib.sha256(grammar.encode("utf-8")).hexdigest()[:16]
    return os.path.join(folder, f"grammar-{digest}-lark{lark.__version__}.pickle")


@lru_cache(maxsize=1)
def parser() -> lark.Lark:
    # No propagate_positions: the transformer takes positions from tokens (see `parse._ToAst`),
    # which lets it run inline in `parse_fast` (lark refuses inline transformers with positions).
    g = grammar_text()
    return lark.Lark(g, parser="lalr", maybe_placeholders=True, cache=_cache_file(g))


@lru_cache(maxsize=1)
def fast_parser() -> FastParser | None:
    return FastParser.build(parser())
