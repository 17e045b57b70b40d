"""The resolved experiment: what `check` returns and what the planner consumes.

Everything here is plain, frozen and hashable-by-content (via `to_dict`), so a job's cache key is
a hash of the subtree it depends on. Parameterised targets are already expanded into one
`Condition` per point of their sweep.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Union

from cotdsl.errors import Pos


# ---- target expressions -------------------------------------------------------------------
@dataclass(frozen=True)
class Ref:
    """A field of the example: `label` or `rationale`."""

    name: str
    pos: Pos | None = field(default=None, compare=False)


@dataclass(frozen=True)
class Lit:
    """A string literal placed verbatim between segments."""

    text: str
    pos: Pos | None = field(default=None, compare=False)


@dataclass(frozen=True)
class Call:
    """A perturbation/generator call, e.g. shuffle(rationale), mask(rationale, 0.6), unk(20),
    keytokens(rationale, 5, by: ig). As checked (`cotdsl.lang`; `cotdsl.lang.call` from Python)
    it is canonical: `args` holds the input expression only (none for a generator such as
    `unk`), `kwargs` every parameter by name, defaults filled, then `unit`; render trusts that."""

    fn: str
    args: tuple[Any, ...] = ()
    kwargs: tuple[tuple[str, Any], ...] = ()
    pos: Pos | None = field(default=None, compare=False)

    def kw(self, name: str, default: Any = None) -> Any:
        return dict(self.kwargs).get(name, default)

    def calls(self) -> Iterator["Call"]:
        """This call, then the calls nested in its input (`shuffle(mask(rationale, 0.5))`)."""
        yield self
        for a in self.args:
            if isinstance(a, Call):
                yield from a.calls()


Expr = Union[Ref, Lit, Call]


def reads(expr: Any, name: str) -> bool:
    """Whether `expr` reads the example field `name` (`label`, `rationale`) anywhere inside it."""
    if isinstance(expr, Ref):
        return expr.name == name
    if isinstance(expr, Call):
        return any(reads(a, name) for a in expr.args) or any(reads(v, name) for _, v in expr.kwargs)
    return False


@dataclass(frozen=True)
class Task:
    """One training sequence per example: `prefix` is prepended to the prompt (multitask,
    e.g. "predict: "/"explain: "), `segments` follow the prompt, loss weighted by `weight`."""

    segments: tuple[Expr, ...]
    prefix: str = ""
    weight: float = 1.0

    def label_index(self) -> int | None:
        """Where the first `label` segment stands, or None."""
        for i, s in enumerate(self.segments):
            if isinstance(s, Ref) and s.name == "label":
                return i
        return None

    def rationale_before_label(self) -> bool:
        """Whether something that needs the rationale precedes the label: then the label cannot be
        ranked at test time and evaluation generates. False when there is no label."""
        li = self.label_index()
        return li is not None and any(reads(s, "rationale") for s in self.segments[:li])


@dataclass(frozen=True)
class Condition:
    """One expanded target: `name` is unique, e.g. "masked[p=0.2]"; `family` is the target's
    declared name ("masked") and `params` the sweep point ({"p": 0.2}) so reports can plot sweeps.
    `tasks` has one entry for plain targets and several for multitask ones; the first task is
    the one evaluated. `eval_by` is "rank" or "generate" (resolved from eval.by = auto)."""

    name: str
    family: str
    params: tuple[tuple[str, Any], ...]
    tasks: tuple[Task, ...]
    eval_by: str
    pos: Pos | None = field(default=None, compare=False)

    def calls(self) -> Iterator[Call]:
        """Every perturbation call of every task, nested ones included."""
        return (c for t in self.tasks for s in t.segments if isinstance(s, Call) for c in s.calls())

    def ig_calls(self) -> Iterator[Call]:
        """The `keytokens(..., by: ig)` calls: the condition needs an Integrated Gradients ranking."""
        return (c for c in self.calls() if c.fn == "keytokens" and c.kw("by", "ig") == "ig")

    def scorer(self) -> str | None:
        """The model its IG key tokens are scored with: "student", "teacher" or a condition name;
        None when it needs no IG ranking."""
        return next((c.kw("scorer", "student") or "student" for c in self.ig_calls()), None)

    def is_baseline(self) -> bool:
        """The no-rationale condition (`target none = label`) that deltas are measured against."""
        return len(self.tasks) == 1 and self.tasks[0].segments == (Ref("label"),)


# ---- declarations ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Decl:
    """A named declaration `kind(args)`; args are (key, value) pairs in source order."""

    name: str
    kind: str
    args: tuple[tuple[str, Any], ...] = ()
    pos: Pos | None = field(default=None, compare=False)

    def arg(self, key: str, default: Any = None) -> Any:
        return dict(self.args).get(key, default)


@dataclass(frozen=True)
class Source(Decl):
    """Data. kind: "builtin" (args: task, train, test, seed, ...), "hf" (args: dataset e.g.
    "csqa"/"obqa"/"quarel" or a hub path, train_split, test_split, train, test),
    "file" (args: train, test paths, fields: mapping, format)."""


@dataclass(frozen=True)
class Teacher(Decl):
    """kind: "gold" (rationales shipped with the data), "file" (args: path), "hf" (args: model,
    prompt, samples, temperature, top_p, top_k, max_new_tokens, filter, trust_remote_code)."""


@dataclass(frozen=True)
class Student(Decl):
    """kind: "smollm2" (bundled GGUF), "hf" (args: model = hub name or path), "gguf" (args: path
    [, file]), "tiny" (args: arch, layers, d_model, heads)."""


@dataclass(frozen=True)
class TrainCfg:
    epochs: float = 1.0
    lr: float = 5e-5
    batch: int = 8
    max_len: int = 256
    warmup: float = 0.0  # fraction of steps
    weight_decay: float = 0.0
    grad_accum: int = 1
    max_steps: int | None = None
    lora: int | None = None  # LoRA rank; None = full fine-tuning
    precision: str = "auto"  # auto | fp32 | bf16
    checkpoint_every: int = 50  # optimizer steps between resumable checkpoints
    devices: int = 1  # processes (GPUs, or CPU processes over gloo) one training job runs on, data-parallel
    strategy: str = "ddp"  # ddp | fsdp (fsdp: CUDA only); used when devices > 1
    # which of an hf teacher's kept samples an example trains on: "first" (every epoch), or "epoch"
    # (SCoTD as published: a fresh kept sample each epoch, in a seeded order per example)
    resample: str = "first"


@dataclass(frozen=True)
class EvalCfg:
    by: str = "auto"  # auto | rank | generate
    max_new_tokens: int = 96
    batch: int = 16


@dataclass(frozen=True)
class ProbeCfg:
    lenses: tuple[str, ...] = ("logit",)
    at: str = "label"
    examples: int = 64  # test examples probed per job
    # KL steps after the tuned lens's closed-form fit (interp.tuned recipe "fit", whose default is
    # 20: docs/interp.md measures it 5.5x faster than 100 steps from zero, with lower held-out KL)
    tuned_steps: int = 20
    # what a rationale-first student reads before the label: its own generated rationale (the eval
    # job's), the gold one teacher-forced, or nothing (right after the prompt, every target)
    context: str = "generated"  # generated | gold | none
    score: str = "label"  # label: whole label, teacher-forced | first_token: its first token only
    # Mechanisms at the label, each its own cached job (cotdsl/jobs/mech.py), read where the lens reads:
    attribute: tuple[str, ...] = ()  # "dla": direct logit attribution per block, MLP and head
    # activation patching: (from, to) pairs of condition names (every student) or of student names
    # (every condition); `a -> b` runs b's student with a's activations patched in, one at a time
    patch: tuple[tuple[str, str], ...] = ()
    patch_at: str = "label"  # label: the label's reading positions | all: every position
    attention: tuple[str, ...] = ()  # "rationale": the label position's attention to the rationale
    # how the lens reads the residual stream: hf (HF hidden states, contexts shared through the KV
    # cache) | tl (TransformerLens hooks at the label's reading sites, interp.tl_lens); same numbers
    engine: str = "hf"

    def lens_view(self) -> "ProbeCfg":
        """The settings the lens reads (the mechanism entries at their defaults): the lens jobs'
        key, so adding `attribute: dla` re-runs no lens."""
        return dataclasses.replace(self, attribute=(), patch=(), patch_at="label", attention=())


@dataclass(frozen=True)
class Measure:
    """One side of an expectation: a metric ("acc": test accuracy; "commit": the lens commit layer)
    of one condition, named as the condition is ("masked[p=0.8]")."""

    metric: str
    condition: str

    def __str__(self) -> str:
        return self.condition if self.metric == "acc" else f"{self.metric}({self.condition})"


@dataclass(frozen=True)
class Expectation:
    """`expect left op right [within D] [alpha A]`, checked after the run (`cotdsl/expect.py`)
    from the results alone: it is in no job's key. `op` is ">", "<" or "~" (equivalence within
    `within`: percentage points for acc, layers for commit). `text` is the canonical source text."""

    text: str
    op: str
    left: Measure
    right: Measure
    within: float | None = None
    alpha: float = 0.05
    pos: Pos | None = field(default=None, compare=False)

    @property
    def metric(self) -> str:
        return self.left.metric


@dataclass(frozen=True)
class Experiment:
    name: str
    path: str
    seeds: tuple[int, ...]
    data: tuple[Source, ...]
    teacher: Teacher
    students: tuple[Student, ...]
    conditions: tuple[Condition, ...]
    train: TrainCfg = TrainCfg()
    eval: EvalCfg = EvalCfg()
    probe: ProbeCfg | None = None
    plugins: tuple[str, ...] = ()
    # per plugin: the folder it was imported from when it sits next to its spec ("" = found on
    # sys.path); a worker process imports it again with `perturb.import_plugins(exp)`
    plugin_paths: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()  # check-time remarks shown by `cotdsl check` (e.g. placeholder rankings)
    expectations: tuple[Expectation, ...] = ()  # evaluated after the run; in no job's key


def to_dict(obj: Any) -> Any:
    """Plain, JSON-able view of any spec object without positions (for hashing and saving)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        out = {"__type__": type(obj).__name__}
        for f in dataclasses.fields(obj):
            if f.name == "pos":
                continue
            out[f.name] = to_dict(getattr(obj, f.name))
        return out
    if isinstance(obj, (list, tuple)):
        return [to_dict(x) for x in obj]
    if isinstance(obj, dict):
        return {str(k): to_dict(v) for k, v in obj.items()}
    if isinstance(obj, Path):
        return str(obj)
    return obj
