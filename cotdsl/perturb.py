"""The perturbation registry: what `shuffle(...)`, `mask(...)`, `unk(...)`, `keytokens(...)`, `swap(...)` mean.

A perturbation is one Python function over *units* (words by default, tokenizer tokens where
asked) registered with `@perturbation`. The checker validates every call in a spec against the
registered `params` (`Param` is the language's own parameter type, `cotdsl.lang.params`); rendering
calls `fn(units, ctx, **params)`. Third-party perturbations register
the same way, from a module a spec names with `plugin "pkg.module"` or through the
`cotdsl.perturbations` entry-point group. No grammar edit is ever needed.
"""
from __future__ import annotations

import contextlib
import hashlib
import importlib
import importlib.metadata
import math
import random
import string
import sys
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from cotdsl.errors import CotError
from cotdsl.lang.params import REQUIRED, Param  # noqa: F401  (plugins import Param from here)


class Split:
    """The examples of one split in order (what a render job renders), for perturbations that read
    *other* examples, such as `swap`. Build it once per split and pass it to every `render` call:
    the seeded derangements it draws are cached per (seed, salt)."""

    def __init__(self, examples: Sequence[Any]):
        self.examples = list(examples)
        self.index = {e.id: i for i, e in enumerate(self.examples)}
        self._perms: dict[tuple[int, str], list[int]] = {}

    def derangement(self, seed: int, salt: str = "") -> list[int]:
        """A uniformly random permutation of the split's positions with no fixed point, drawn from
        (seed, salt, the split's ids in order): position i's partner is `out[i]`."""
        key = (seed, salt)
        if key not in self._perms:
            n = len(self.examples)
            if len(self.index) != n:  # checked here, not when built: only pairing needs unique ids
                raise ValueError("pairing the examples of a split needs unique example ids")
            if n < 2:
                raise ValueError(f"a derangement needs at least 2 examples, the split has {n}")
            rng = random.Random(stable_seed(seed, "derangement", salt, *self.index))
            perm = list(range(n))
            while any(i == j for i, j in enumerate(perm)):  # ~e tries on average
                rng.shuffle(perm)
            self._perms[key] = perm
        return self._perms[key]

    def partner(self, ex_id: str, seed: int, salt: str = "") -> Any:
        """The example `ex_id` is paired with by `derangement(seed, salt)` (never itself)."""
        if ex_id not in self.index:
            raise ValueError(f"example {ex_id!r} is not in the split it is rendered with")
        return self.examples[self.derangement(seed, salt)[self.index[ex_id]]]


@dataclass
class Ctx:
    """What a perturbation may use besides its units. `rng` is seeded from
    (seed, example id, condition, call position), so renders are reproducible."""

    rng: random.Random
    mask_token: str
    example: Any = None  # schema.Example
    ranking: Sequence[float] | None = None  # one score per unit of the input (keytokens)
    extra: dict = field(default_factory=dict)
    # ranker(by) -> one score per unit of this call's input, by "ig" | "field:NAME" | "placeholder"
    # | "random"; render builds it lazily so only calls that rank pay for it.
    ranker: Callable[[str], Sequence[float]] | None = None
    seed: int | None = None  # the run's seed: for choices shared by all examples (swap's pairing)
    split: Split | None = None  # the examples rendered together with this one (render(split=...))
    # input_of(other_example) -> this call's input rendered for another example, as units (swap)
    input_of: Callable[[Any], list[str]] | None = None


@dataclass(frozen=True)
class Perturbation:
    name: str
    fn: Callable[..., list[str]]
    params: tuple[Param, ...]
    unit: str = "word"  # word | token: the default unit; a call may override with `unit: token`
    takes_input: bool = True  # False for generators such as unk(n)
    doc: str = ""
    one_of: tuple[tuple[str, ...], ...] = ()  # groups of params of which a call gives exactly one


REGISTRY: dict[str, Perturbation] = {}


def perturbation(name: str | None = None, *, params: Sequence[Param] = (), unit: str = "word",
                 takes_input: bool = True, one_of: Sequence[Sequence[str]] = ()):
    """Register `fn(units: list[str], ctx: Ctx, **params) -> list[str]` under `name`.

    `params` are the parameters after the input, in positional order (a call may also pass them by
    keyword); `unit` is the default unit ("word" | "token"); generators (`takes_input=False`, like
    `unk(n)`) receive an empty `units` list. A `Param` of type "field" takes a field of the example
    (`unk(like: rationale)`); the function receives that field's units. `one_of` lists groups of
    parameters of which every call must give exactly one (`unk`: `n` or `like`)."""
    if unit not in ("word", "token"):
        raise ValueError(f"unit must be 'word' or 'token', not {unit!r}")

    def deco(fn):
        key = name or fn.__name__
        REGISTRY[key] = Perturbation(key, fn, tuple(params), unit, takes_input, (fn.__doc__ or "").strip(),
                                     tuple(tuple(g) for g in one_of))
        return fn

    return deco


# ---- built-ins -------------------------------------------------------------------------------
# Every built-in works on a list of units (whitespace words, or tokenizer tokens with `unit: token`)
# and returns a list of units; rendering rejoins them (words with " ", tokens with the tokenizer's
# `convert_tokens_to_string`). None of them may see the label: the checker forbids it and
# `render` refuses it again.


def stable_seed(*parts: Any) -> int:
    """A seed from a SHA-256 of `parts` (Python's `hash()` is salted per process): the same in any
    process and order, so renders are reproducible."""
    h = hashlib.sha256("\x1f".join(map(str, parts)).encode()).digest()
    return int.from_bytes(h[:8], "big")


def count_of(p: float, n: int) -> int:
    """round(p * n) with halves rounded up (Python's `round` rounds 2.5 to 2, which would make
    mask(x, 0.5) over 5 units hide 2 of them); the inner round() absorbs float noise (0.7*10)."""
    return int(math.floor(round(p * n, 9) + 0.5))


def _fill(ctx: Ctx, token: str | None) -> str:
    fill = token if token is not None else ctx.mask_token
    if not fill:
        raise ValueError("the tokenizer has neither a mask nor an unk token; pass token: \"...\"")
    return fill


_TOKEN = Param("token", str, default=None,
               doc="replacement unit; default the tokenizer's mask token, else its unk token")


@perturbation("shuffle")
def shuffle(units: list[str], ctx: Ctx) -> list[str]:
    """Randomly permute the units (words by default). Unit: word."""
    out = list(units)
    ctx.rng.shuffle(out)
    return out


@perturbation("mask", params=[Param("p", float, lo=0.0, hi=1.0, doc="fraction of units replaced"), _TOKEN])
def mask(units: list[str], ctx: Ctx, p: float, token: str | None = None) -> list[str]:
    """Replace round(p*n) units, chosen at random, by the mask token (the tokenizer's mask token,
    else its unk token; an explicit `token: "..."` overrides both). Unit: word."""
    fill = _fill(ctx, token)
    idx = set(ctx.rng.sample(range(len(units)), count_of(p, len(units))))
    return [fill if i in idx else u for i, u in enumerate(units)]


@perturbation("unk", params=[Param("n", int, lo=0, default=None, doc="number of mask/unk units"), _TOKEN,
                             Param("like", "field", default=None, choices=("rationale",),
                                   doc="as many units as this field has (instead of n)")],
              unit="token", takes_input=False, one_of=[("n", "like")])
def unk(units: list[str], ctx: Ctx, n: int | None = None, token: str | None = None,
        like: list[str] | None = None) -> list[str]:
    """Generate n mask units (the tokenizer's mask token, else its unk token, else `token`), e.g.
    `unk(20) -> label`; `unk(like: rationale)` generates as many as the example's rationale has
    units (a length-matched, content-free control for `label -> rationale`). Takes no input
    (`units` is empty). Unit: token, so n special tokens are exactly n ids; with `unit: word` they
    are joined by spaces (which tokenise separately) and `like` counts words."""
    return [_fill(ctx, token)] * (n if like is None else len(like))


@perturbation("keytokens", params=[Param("k", int, lo=0, doc="units kept"),
                                   Param("by", str, default="ig",
                                         doc='ranking source: "ig" | "random" | "placeholder" | "field:NAME"'),
                                   Param("scorer", str, default="student",
                                         doc='IG scorer: "student" (base student), "teacher" (an hf '
                                             'teacher) or a target name (its trained student)')])
def keytokens(units: list[str], ctx: Ctx, k: int, by: str = "ig", scorer: str = "student") -> list[str]:
    """Keep the k highest-ranked units in their original order (ties: earlier unit first).
    The ranking comes from `by`: "ig" (Integrated Gradients scores computed by interp/ and passed
    to render as `rankings`), "random" (seeded random scores per (seed, example): the control for
    IG, needing no model), "field:NAME" (words in the example's highlights / meta[NAME]) or
    "placeholder" (a deterministic stand-in, not an attribution). `scorer` names the model IG
    attributes with; the planner computes that ranking and render passes it in. Unit: word."""
    if ctx.ranker is None and ctx.ranking is None:
        raise ValueError("keytokens needs a ranking; render supplies it")
    scores = list(ctx.ranker(by) if ctx.ranker is not None else ctx.ranking)
    if len(scores) != len(units):
        raise ValueError(f"ranking {by!r} has {len(scores)} scores for {len(units)} units")
    order = sorted(range(len(units)), key=lambda i: (-scores[i], i))
    keep = set(order[:k])
    return [u for i, u in enumerate(units) if i in keep]


@perturbation("drop", params=[Param("p", float, lo=0.0, hi=1.0, doc="fraction of units deleted")])
def drop(units: list[str], ctx: Ctx, p: float) -> list[str]:
    """Delete round(p*n) units chosen at random; the rest keep their order. Unit: word."""
    idx = set(ctx.rng.sample(range(len(units)), count_of(p, len(units))))
    return [u for i, u in enumerate(units) if i not in idx]


@perturbation("reverse")
def reverse(units: list[str], ctx: Ctx) -> list[str]:
    """Reverse the order of the units. Unit: word."""
    return units[::-1]


@perturbation("truncate", params=[Param("n", int, lo=0, doc="units kept")])
def truncate(units: list[str], ctx: Ctx, n: int) -> list[str]:
    """Keep the first n units. Unit: word."""
    return units[:n]


@perturbation("swap")
def swap(units: list[str], ctx: Ctx) -> list[str]:
    """Replace the input by the same input of another example of the split: the examples are paired
    by a seeded derangement (never an example with itself; the same pairing for every condition at
    a seed), so `label -> swap(rationale)` keeps the amount and style of rationale text but not its
    content. The label stays the example's own. Unit: word."""
    if ctx.split is None or ctx.input_of is None or ctx.seed is None:
        raise ValueError("swap needs the other examples of the split: render(..., split=Split(examples))")
    return ctx.input_of(ctx.split.partner(ctx.example.id, ctx.seed, "swap"))


BUILTINS = frozenset(REGISTRY)


# ---- rankings for keytokens ----------------------------------------------------------------
def _norm_word(w: str) -> str:
    return w.strip(string.punctuation + "“”‘’").lower()


def rank_words(ex: Any, by: str, words: Sequence[str] | None = None, seed: int | None = None) -> list[float]:
    """One score per whitespace word of `words` (default: the example's rationale).

    by="random": uniform random scores drawn from (seed, example id) alone, so every condition at
    a seed ranks an example's words alike and `keytokens(rationale, k, by: random)` keeps nested
    word sets as k grows, like an IG ranking does; needs `seed`.
    by="field:NAME": 1.0 for words among the example's highlights (NAME "highlights" reads
    `ex.highlights`, any other NAME `ex.meta[NAME]`), else 0.0 (case/punctuation-insensitive).
    by="placeholder": a deterministic stand-in, NOT an attribution: longer words score higher,
    divided by how often the word occurs in the text (so rarer words win); punctuation scores 0.
    "ig" is not computed here: it comes from interp/ through `render(rankings=...)`.
    """
    if words is None:
        if ex.rationale is None:
            raise ValueError(f"example {ex.id!r} has no rationale to rank")
        words = ex.rationale.split()
    if by.startswith("field:"):
        name = by[len("field:"):]
        marks = ex.highlights if name == "highlights" and name not in ex.meta else ex.meta.get(name)
        if marks is None:
            raise ValueError(f"example {ex.id!r} has no field {name!r} to rank key tokens by")
        if isinstance(marks, str):
            marks = [marks]
        keys = {_norm_word(w) for m in marks for w in str(m).split()} - {""}
        return [1.0 if _norm_word(w) in keys else 0.0 for w in words]
    if by == "random":
        if seed is None:
            raise ValueError("the random ranking needs a seed")
        rng = random.Random(stable_seed(seed, ex.id, "keytokens:random"))
        return [rng.random() for _ in words]
    if by == "placeholder":
        cores = [_norm_word(w) for w in words]
        freq: dict[str, int] = {}
        for c in cores:
            freq[c] = freq.get(c, 0) + 1
        return [len(c) / freq[c] if c else 0.0 for c in cores]
    if by == "ig":
        raise ValueError(f"no Integrated Gradients ranking for example {ex.id!r}: pass rankings['ig']")
    raise ValueError(f"unknown ranking source {by!r} (ig | random | placeholder | field:NAME)")


def token_units(tok, text: str) -> tuple[list[str], list[tuple[int, int]] | None]:
    """The tokenizer's tokens of `text` (the units of a `unit: token` call) and, for fast
    tokenizers, their character offsets (None for slow ones)."""
    try:
        enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
        return tok.convert_ids_to_tokens(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]]
    except (NotImplementedError, ValueError, TypeError):
        return tok.tokenize(text), None


def spread_scores(tok, text: str, word_scores: Sequence[float]) -> list[float]:
    """Word scores (one per whitespace word of `text`) -> one score per token of `text`, for
    rankings of `unit: token` calls: each token takes the score of the word its first non-space
    character falls in (a pure-whitespace token takes the next word's)."""
    words, starts, pos = text.split(), [], 0
    for w in words:
        pos = text.index(w, pos)
        starts.append((pos, pos + len(w)))
        pos += len(w)
    toks, offsets = token_units(tok, text)
    if offsets is None:  # slow tokenizer: tokenise word by word (approximate but aligned)
        out = []
        for i, w in enumerate(words):
            out += [word_scores[i]] * len(tok.tokenize(w if i == 0 else " " + w))
        return out if len(out) == len(toks) else [word_scores[min(i, len(words) - 1)] for i in range(len(toks))]
    out, wi = [], 0
    for s, e in offsets:
        while s < e and text[s].isspace():
            s += 1
        while wi < len(words) - 1 and starts[wi][1] <= s:
            wi += 1
        out.append(word_scores[wi] if words else 0.0)
    return out


# ---- plugins ---------------------------------------------------------------------------------
ENTRY_POINT_GROUP = "cotdsl.perturbations"


def load_plugins(names: Sequence[str] = (), *, entry_points: bool = True) -> list[str]:
    """Import each named plugin module (its `@perturbation` decorators register on import) and
    every module/function of the `cotdsl.perturbations` entry-point group. A plugin that fails to
    import raises a CotError naming it. Returns the names of perturbations added."""
    before = set(REGISTRY)
    for name in names:
        try:
            # Re-import a module loaded earlier in this process (a notebook, a test): the render
            # key hashes the plugin's file as it is now, so the code that runs must be that too.
            mod = sys.modules.get(name)
            importlib.reload(mod) if mod is not None else importlib.import_module(name)
        except Exception as e:  # any failure inside the plugin is the plugin's, not ours
            raise CotError.one(f"plugin {name!r} failed to import: {type(e).__name__}: {e}",
                               hint="is the module on PYTHONPATH and free of errors?") from e
    if entry_points:
        for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
            try:
                obj = ep.load()
            except Exception as e:
                raise CotError.one(f"plugin entry point {ep.name!r} ({ep.value}) failed to load: "
                                   f"{type(e).__name__}: {e}") from e
            if isinstance(obj, Perturbation):  # an entry point may name a ready Perturbation
                REGISTRY.setdefault(obj.name, obj)
    return sorted(set(REGISTRY) - before)


@contextlib.contextmanager
def plugin_search(dirs: Sequence[str]):
    """Put `dirs` (empty entries skipped) first on sys.path while importing plugins, then take
    exactly those entries out again: a spec's folder must not stay importable for everything."""
    added = [d for d in dict.fromkeys(dirs) if d]
    sys.path[:0] = added
    try:
        yield
    finally:
        for d in added:
            with contextlib.suppress(ValueError):
                sys.path.remove(d)


def import_plugins(exp: Any) -> list[str]:
    """Import a checked experiment's plugins in this process (e.g. a worker), each from the
    folder `check` found it in; returns the perturbations added."""
    paths = exp.plugin_paths or ("",) * len(exp.plugins)
    added = []
    for module, where in zip(exp.plugins, paths):
        with plugin_search([where]):
            added += load_plugins([module], entry_points=False)
    return added
