"""Jobs as self-contained units: one frozen, picklable dataclass per stage.

A job carries everything its stage needs (the spec subtrees, the ids of the jobs whose outputs it
reads), so a runner gets `(job, store)` and nothing else and can run in this process, a local
worker, a Ray task or a Slurm job. Nothing here imports torch: jobs cross process boundaries.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import ClassVar

from ..spec import Condition, EvalCfg, ProbeCfg, Source, Student, Teacher, TrainCfg


@dataclass(frozen=True)
class Resources:
    """What one job asks of a worker. `gpus` may be fractional: small jobs can share a GPU."""

    cpus: int = 1
    gpus: float = 0.0
    mem_gb: float = 1.0


@dataclass(frozen=True, kw_only=True)
class Job:
    key: str  # content hash: spec subtree + input keys + stage code version
    deps: tuple[str, ...]  # ids of jobs whose outputs this one reads
    label: str  # short human name for progress and errors
    resources: Resources = Resources()
    stage: ClassVar[str] = ""

    @property
    def id(self) -> str:
        return f"{self.stage}/{self.key}"


@dataclass(frozen=True, kw_only=True)
class DataJob(Job):
    stage: ClassVar[str] = "data"
    source: Source
    limit: int | None = None  # first N train examples (and test, unless limit_test is given)
    limit_test: int | None = None


@dataclass(frozen=True, kw_only=True)
class SampleJob(Job):
    """One shard of an hf teacher's sampling: whole batches of the training questions
    (`teacher.shard_range`), so shards run in parallel and an interrupted run resumes by shard."""

    stage: ClassVar[str] = "sample"
    teacher: Teacher
    data: str  # DataJob id
    shard: int
    shards: int


@dataclass(frozen=True, kw_only=True)
class TeacherJob(Job):
    """Rationales for the training set: gold / file directly, hf by merging its SampleJobs in
    order and applying the filter."""

    stage: ClassVar[str] = "teacher"
    teacher: Teacher
    data: str  # DataJob id
    samples: tuple[str, ...] = ()  # SampleJob ids, in shard order (hf teachers)


@dataclass(frozen=True, kw_only=True)
class RankJob(Job):
    """IG word scores of every training rationale under a scorer model."""

    stage: ClassVar[str] = "rank"
    student: Student
    teacher_job: str
    scorer: str  # "student" | "teacher" | a condition name
    teacher: Teacher | None = None  # the hf teacher, when it is the scorer
    scorer_train: str | None = None  # TrainJob id, when a trained condition is the scorer


@dataclass(frozen=True, kw_only=True)
class _PerCondition(Job):
    condition: Condition
    student: Student
    source: Source
    seed: int

    def columns(self, experiment: str) -> dict:
        """Who this job's rows belong to, as columns of the run's parquet files."""
        import json

        c = self.condition
        return {"experiment": experiment, "condition": c.name, "family": c.family,
                "params": json.dumps(dict(c.params)), "student": self.student.name,
                "data": self.source.name, "seed": self.seed}


@dataclass(frozen=True, kw_only=True)
class RenderJob(_PerCondition):
    stage: ClassVar[str] = "render"
    teacher_job: str
    rank_job: str | None
    max_len: int
    plugins: tuple[str, ...] = ()  # modules a worker imports so the spec's perturbations exist
    plugin_paths: tuple[str, ...] = ()  # folders those modules are found in (beside the spec)
    resample: str = "first"  # "epoch": render every kept teacher sample (train picks one per epoch)


@dataclass(frozen=True, kw_only=True)
class TrainJob(_PerCondition):
    stage: ClassVar[str] = "train"
    render_job: str
    teacher_job: str  # a tiny student's tokenizer is trained on its corpus
    train: TrainCfg


@dataclass(frozen=True, kw_only=True)
class EvalJob(_PerCondition):
    stage: ClassVar[str] = "eval"
    train_job: str
    data_job: str
    eval: EvalCfg


@dataclass(frozen=True, kw_only=True)
class ProbeJob(_PerCondition):
    stage: ClassVar[str] = "probe"
    train_job: str
    data_job: str
    render_job: str
    probe: ProbeCfg
    eval_job: str | None = None  # EvalJob id whose generations a rationale-first student is probed after


@dataclass(frozen=True, kw_only=True)
class _AtLabel(_PerCondition):
    """A mechanism read at the label of one trained student, on the probe's examples and context."""

    train_job: str
    data_job: str
    probe: ProbeCfg
    eval_job: str | None = None  # as ProbeJob's: the generations a rationale-first student is read after


@dataclass(frozen=True, kw_only=True)
class DlaJob(_AtLabel):
    """Direct logit attribution of the gold logit difference (`probe { attribute: dla }`)."""

    stage: ClassVar[str] = "dla"


@dataclass(frozen=True, kw_only=True)
class AttentionJob(_AtLabel):
    """The label position's attention to the prompt and the rationale (`probe { attention: rationale }`)."""

    stage: ClassVar[str] = "attention"


@dataclass(frozen=True, kw_only=True)
class PatchJob(Job):
    """Activation patching `from -> to` (`probe { patch: none -> after }`): the `to` student's run
    with the `from` student's activations patched in, one site at a time, both reading the `to`
    condition's probe contexts. Two trained students of one base, one seed, one data source."""

    stage: ClassVar[str] = "patch"
    source: Source
    seed: int
    from_condition: Condition
    from_student: Student
    from_train: str  # TrainJob id
    to_condition: Condition
    to_student: Student
    to_train: str  # TrainJob id
    data_job: str
    probe: ProbeCfg
    eval_job: str | None = None  # the `to` condition's EvalJob, when it is read after its generations


STAGES = ("data", "sample", "teacher", "rank", "render", "train", "eval", "probe", "dla", "attention", "patch")
MODEL_STAGES = ("rank", "train", "eval", "probe", "dla", "attention", "patch")  # stages that put a model on a device
MODEL_COPIES = {"dla": 2, "attention": 2, "patch": 4}


def student_params(student: Student) -> float:
    """Rough parameter count of a student, for memory and FLOP estimates (not exact: a hub name
    is read for a size such as "2b" or "135M"; unknown names count as 1e9)."""
    if student.kind == "tiny":
        d, layers = float(student.arg("d_model", 64)), float(student.arg("layers", 2))
        return 12 * layers * d * d + 2000 * d
    if student.kind == "smollm2":
        return 135e6
    name = str(student.arg("model") or student.arg("path") or student.arg("file") or "")
    m = re.search(r"(\d+(?:\.\d+)?)\s*([mMbB])(?![a-zA-Z])", name.split("/")[-1])
    if m:
        return float(m.group(1)) * (1e6 if m.group(2) in "mM" else 1e9)
    return {"gpt2": 124e6, "phi-1_5": 1.4e9}.get(name.split("/")[-1].lower(), 1e9)


def resources_for(stage: str, student: Student | None, *, batch: int = 8, gpu: bool = False,
                  devices: int = 1) -> Resources:
    """Training holds weights, gradients and two Adam moments in fp32 (16 bytes a parameter) plus
    activations; inference holds the weights (4 bytes) plus activations. +1 GB for the runtime."""
    if stage not in MODEL_STAGES or student is None:
        return Resources(cpus=1, gpus=0.0, mem_gb=1.0)
    n = student_params(student)
    # inference holds one copy of the weights; a TransformerLens bridge is a second (dla's fallback,
    # attention), and patching holds two students and a bridge of each
    per_param = 16 if stage == "train" else 4 * MODEL_COPIES.get(stage, 1)
    mem = 1.0 + n * per_param / 1e9 + 0.05 * batch * max(n, 1e8) / 1e9
    return Resources(cpus=1, gpus=float(devices if stage == "train" else 1) if gpu else 0.0,
                     mem_gb=round(mem, 1))
