"""What a spec's grid costs before it runs: jobs, tokens, FLOPs and device-hours per stage.

`estimate(exp)` plans the experiment exactly as `cotdsl run` does (the same jobs) and gives each
job a token count and a FLOP count from the data sources' sizes and documented per-example token
averages. No model, tokenizer or dataset is loaded and torch is never imported:

    teacher  2·N_teacher·tokens·samples   hf teachers (gold / file teachers: no model)
    rank     6·N·tokens·IG_STEPS          Integrated Gradients: forward + backward per step
    train    6·N·tokens                   forward + backward (LoRA: 4·N, no base weight gradients)
    eval     2·N·tokens                   forward passes (rank: context once + every choice;
                                          generate: prompt + max_new_tokens, an upper bound)
    probe    2·N·tokens                   lens forward passes (+ the tuned lens's fit pool and
                                          tuned_steps batches of 8)
    dla, attention  2·N·tokens            one forward pass over the probe's contexts
    patch    2·N·tokens·(3·L + 3)         both runs, then one patched run per residual row,
                                          attention and MLP output (L blocks: a tiny
                                          student's, SmolLM2's 30, otherwise 32)
    data, render                          no model: 0

N is `jobs.types.student_params` (a rough count read from the student's name). Device-hours are
FLOPs / (peak × MFU) of a device class (`DEVICES`). docs/scaling.md explains the numbers.
"""
from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from .errors import CotError, Diagnostic, did_you_mean
from .jobs.stages import IG_STEPS
from .jobs.types import (STAGES, AttentionJob, DataJob, DlaJob, EvalJob, Job, PatchJob, ProbeJob, RankJob, RenderJob,
                         SampleJob, TeacherJob, TrainJob, student_params)
from .spec import Call, Condition, Experiment, Lit, Ref, Source, Student, Task, Teacher

# interp.tuned.FIT_TOKENS: the tuned lens's fit pool (not imported: estimating loads no torch;
# tests/test_estimate.py checks the two agree)
FIT_POOL = 4096


# ---- device classes ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Device:
    name: str
    peak: float  # FLOP/s: dense bf16 tensor-core peak for GPUs, measured fp32 matmul for the CPU
    mfu: float  # fraction of `peak` a training/inference job really sustains
    unit: str  # "GPU" or "CPU": totals are GPU-hours or CPU-hours (a whole machine)
    mem_gb: float | None  # memory of one device, for the fits-on-one-device check
    about: str

    @property
    def rate(self) -> float:
        return self.peak * self.mfu

    def hours(self, flops: float) -> float:
        return flops / self.rate / 3600


# The CPU figure: a 2048x2048 fp32 matmul loop with torch 2.13 on this project's 2-core AMD EPYC
# (AVX2 + FMA, no AVX-512), shared with other work, gave 34-64 GFLOP/s; 50 is the constant. x 0.5
# MFU = 25 GFLOP/s; cotdsl's `train` fine-tuned SmolLM2-135M there at 35.9 tokens/s = 29 GFLOP/s
# at 6·N (docs/scaling.md), so the class is ~15% conservative.
DEVICES: dict[str, Device] = {
    "a100": Device("a100", 312e12, 0.35, "GPU", 80.0, "NVIDIA A100 SXM, 312 TFLOP/s dense bf16 x 0.35 MFU"),
    "h100": Device("h100", 989e12, 0.35, "GPU", 80.0, "NVIDIA H100 SXM, 989 TFLOP/s dense bf16 x 0.35 MFU"),
    "cpu": Device("cpu", 50e9, 0.5, "CPU", None,
                  "2-core AMD EPYC (AVX2, no AVX-512), 50 GFLOP/s fp32 matmul (measured 34-64) x 0.5"),
}


def device(name: str) -> Device:
    """The device class called `name`; a CotError with a did-you-mean otherwise."""
    key = name.strip().lower()
    if key in DEVICES:
        return DEVICES[key]
    raise CotError([Diagnostic(None, f"--device: unknown device class {name!r}",
                               expected=[f"`{k}`" for k in DEVICES],
                               hint=did_you_mean(key, DEVICES))])


# ---- tokens per example -----------------------------------------------------------------------
WORD_TOKENS = 1.3  # tokens per whitespace word, for literals, task prefixes and word-unit counts


@dataclass(frozen=True)
class Profile:
    """Mean tokens per example: the prompt ("Question: ...\\nChoices:\\nA: ...\\nAnswer:"), the
    rationale and the label (each with its leading space), and the number of choices."""

    prompt: float
    rationale: float
    label: float
    choices: int
    about: str


def builtin_profile(task: str, choices: int) -> Profile:
    """Measured with SmolLM2-135M's tokenizer over 600 generated questions per setting (choices
    2 and 4): the prompt is 19.1 + 4.25 per choice tokens; rationales 17.4 (facts) or 21.2 (chain);
    labels 1.3. (Whitespace words x 1.3 undercounts these prompts by a third: the newlines and
    "A:" markers are tokens of their own.)"""
    return Profile(19.1 + 4.25 * choices, 21.2 if task == "chain" else 17.4, 1.3, choices,
                   "measured with SmolLM2's tokenizer")


# Hub and file data: a documented average, not a measurement (the datasets are not read): a
# ~15-40 word question with its choices ~60 tokens, a teacher rationale of one or two sentences
# ~40, a choice-text label ~5.
HUB_PROMPT, HUB_RATIONALE, HUB_LABEL = 60.0, 40.0, 5.0

# Split sizes of the datasets the hf(...) adapters read, from their dataset cards on the HF hub:
# tau/commonsense_qa, allenai/openbookqa (config main; `additional` has the same rows),
# allenai/quarel. Choices per question: CSQA 5, OBQA 4, QuaRel 2.
HF_SPLITS: dict[str, dict[str, int]] = {
    "csqa": {"train": 9741, "validation": 1221, "test": 1140},
    "obqa": {"train": 4957, "validation": 500, "test": 500},
    "quarel": {"train": 1941, "validation": 278, "test": 552},
}
HF_CHOICES = {"csqa": 5, "obqa": 4, "quarel": 2}
FILE_CHOICES = 4  # file(...) sources: rows are counted, not read


@dataclass(frozen=True)
class Sized:
    train: int
    test: int
    profile: Profile
    about: str  # where the sizes come from


def _user_error(src: Source, message: str, hint: str | None = None) -> CotError:
    return CotError.one(f"data {src.name}: {message}", src.pos, hint=hint)


def count_rows(path: Path, fmt: str | None = None) -> int:
    """Rows of a jsonl / csv / parquet file without parsing them (parquet: footer metadata)."""
    fmt = fmt or {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl", ".csv": "csv",
                  ".parquet": "parquet"}.get(path.suffix.lower())
    if fmt == "parquet":
        import pyarrow.parquet as pq

        return pq.read_metadata(path).num_rows
    with open(path, newline="", encoding="utf-8", errors="replace") as f:
        if fmt == "csv":
            return max(0, sum(1 for _ in csv.reader(f)) - 1)  # quoted newlines stay in their row
        if fmt == "jsonl":
            return sum(1 for line in f if line.strip())
    raise ValueError(f"cannot count rows of {path} (format {fmt or path.suffix!r})")


def _capped(n: int | None, cap: int | None) -> int:
    return n if cap is None or n is None else min(n, cap)


def size_source(src: Source) -> Sized:
    """Train/test example counts and the token profile of one data source, without loading it."""
    if src.kind == "builtin":
        task, ch = str(src.arg("task", "facts")), int(src.arg("choices", 4))
        n, m = int(src.arg("train", 400)), int(src.arg("test", 200))
        return Sized(n, m, builtin_profile(task, ch), f"builtin {task}: train {n}, test {m}")
    if src.kind == "hf":
        from .data.adapters import ADAPTERS, local_splits, resolve

        try:
            key = resolve(src.arg("dataset", ""))
        except ValueError as e:
            raise _user_error(src, str(e)) from None
        ad = ADAPTERS[key]
        local = dict(src.arg("files")) if src.arg("files") is not None else None
        if local is None and src.arg("disk") is not None:  # a save_to_disk folder: sized by the card
            local = {s: str(Path(src.arg("disk")) / s) for s in HF_SPLITS[key]}
        splits = (local_splits(ad, src, local) if local is not None else
                  {r: src.arg(f"{r}_split") or d for r, d in (("train", ad.train_split), ("test", ad.test_split))})
        counts, about = {}, []
        for role, split in splits.items():
            known, how = HF_SPLITS[key].get(split), "dataset card"
            path = Path(local[split]) if local is not None and split in local else None
            if path is not None and path.is_file() and path.suffix.lower() in (".jsonl", ".json", ".parquet"):
                known, how = count_rows(path), f"rows of {path.name}"
            cap = src.arg(role)
            if known is None and cap is None:
                raise _user_error(src, f"no known size for the {split!r} split of {key}",
                                  hint=f"give the count: {role}: N")
            counts[role] = cap if known is None else _capped(known, cap)
            if cap is not None and (known is None or cap < known):
                how = f"{role}: {cap}"
            about.append(f"{role} {counts[role]} ({split} split, {how})")
        prof = Profile(HUB_PROMPT, HUB_RATIONALE, HUB_LABEL, HF_CHOICES[key], "documented average")
        return Sized(counts["train"], counts["test"], prof, f"{key} " + ", ".join(about))
    if src.kind == "file":
        counts = {}
        for role in ("train", "test"):
            try:
                counts[role] = count_rows(Path(src.arg(role)), src.arg("format"))
            except (OSError, ValueError) as e:
                raise _user_error(src, f"cannot count the rows of {src.arg(role)}: {e}") from None
        prof = Profile(HUB_PROMPT, HUB_RATIONALE, HUB_LABEL, FILE_CHOICES, "documented average")
        return Sized(counts["train"], counts["test"], prof, f"train {counts['train']}, test {counts['test']} rows")
    raise _user_error(src, f"unknown source kind {src.kind!r}")


# ---- tokens per sequence ----------------------------------------------------------------------
def words(text: str) -> float:
    return len(text.split()) * WORD_TOKENS


def segment_tokens(seg, p: Profile) -> float:
    """Mean tokens a target segment renders to (perturbations keep their input's length unless
    they are known to shorten it: unk(n), keytokens(k), truncate(n), drop(p))."""
    if isinstance(seg, Ref):
        return p.label if seg.name == "label" else p.rationale
    if isinstance(seg, Lit):
        return words(seg.text)
    if not isinstance(seg, Call):
        return 0.0
    kw = dict(seg.kwargs)
    base = next((segment_tokens(a, p) for a in seg.args if isinstance(a, (Ref, Lit, Call))), p.rationale)
    nums = [a for a in seg.args if isinstance(a, (int, float)) and not isinstance(a, bool)]
    per_unit = 1.0 if kw.get("unit") == "token" else WORD_TOKENS
    if seg.fn == "unk":
        if isinstance(kw.get("like"), Ref):  # unk(like: rationale): as many units as the rationale
            return segment_tokens(kw["like"], p)
        return float(kw.get("n", nums[0] if nums else 0)) * per_unit
    if seg.fn in ("keytokens", "truncate"):
        n = kw.get("k", kw.get("n", nums[0] if nums else None))
        return base if n is None else min(base, float(n) * per_unit)
    if seg.fn == "drop":
        return base * (1 - float(kw.get("p", nums[0] if nums else 0.0)))
    return base


def _joined(segs: Iterable, p: Profile) -> float:
    """Segments plus the "\\n" separator between consecutive non-literal ones (render.py)."""
    segs = list(segs)
    seps = sum(1 for a, b in zip(segs, segs[1:]) if not isinstance(a, Lit) and not isinstance(b, Lit))
    return sum(segment_tokens(s, p) for s in segs) + seps


def task_tokens(task: Task, p: Profile, max_len: int | None = None) -> float:
    """One training sequence: prefix + prompt + segments + separators + eos, capped at max_len."""
    n = words(task.prefix) + p.prompt + _joined(task.segments, p) + 1
    return min(n, max_len) if max_len else n


def context_tokens(cond: Condition, p: Profile) -> float:
    """Tokens before the label in the evaluated (first) task: what rank evaluation and the lens
    probes run on (rationale-first targets: the teacher-forced rationale)."""
    t = cond.tasks[0]
    segs = list(t.segments)
    i = next((k for k, s in enumerate(segs) if isinstance(s, Ref) and s.name == "label"), len(segs))
    before = segs[:i]
    return words(t.prefix) + p.prompt + (_joined(before, p) + 1 if before else 0)


# ---- per-job costs ----------------------------------------------------------------------------
@dataclass(frozen=True)
class JobCost:
    job: Job
    tokens: float  # token positions of one pass (the basis names the multipliers)
    flops: float
    basis: str  # FLOPs per token position: "6N", "2N", "6N·20" (x IG steps), "-" (no model)


def teacher_params(teacher: Teacher) -> float:
    name = str(teacher.arg("model", "smollm2"))
    if name == "smollm2":
        return student_params(Student("teacher", "smollm2"))
    return student_params(Student("teacher", "hf", (("model", name),)))


def teacher_prompt_tokens(teacher: Teacher, p: Profile) -> float:
    """The default SCoTD prompt (instruction + two shots) is 194 SmolLM2 tokens before the
    example; a custom prompt is counted in words."""
    custom = teacher.arg("prompt")
    return (words(custom) if custom else 194.0) + p.prompt + 1


def _cost(job: Job, exp: Experiment, sizes: dict[str, Sized], data_of: dict[str, DataJob]) -> JobCost:
    if isinstance(job, (DataJob, RenderJob)):
        return JobCost(job, 0.0, 0.0, "-")
    if isinstance(job, TeacherJob):  # gold / file, or the merge of an hf teacher's sample shards
        return JobCost(job, 0.0, 0.0, "-")
    if isinstance(job, SampleJob):
        d = data_of[job.data]
        s = sizes[d.source.name]
        samples = int(job.teacher.arg("samples", 1))
        tok = _capped(s.train, d.limit) / job.shards * (teacher_prompt_tokens(job.teacher, s.profile)
                                                        + int(job.teacher.arg("max_new_tokens", 128)))
        return JobCost(job, tok, 2 * teacher_params(job.teacher) * tok * samples,
                       f"2N·{samples}" if samples > 1 else "2N")
    if isinstance(job, RankJob):
        d = data_of[job.teacher_job]
        s = sizes[d.source.name]
        n = teacher_params(job.teacher) if job.scorer == "teacher" else student_params(job.student)
        p = s.profile
        tok = _capped(s.train, d.limit) * (p.prompt + p.rationale + p.label + 2)
        return JobCost(job, tok, 6 * n * tok * IG_STEPS, f"6N·{IG_STEPS}")
    if isinstance(job, (DlaJob, AttentionJob, PatchJob)):
        return _mech_cost(job, sizes[job.source.name], data_of[job.data_job])
    s = sizes[job.source.name]
    d = data_of[job.teacher_job if not isinstance(job, (EvalJob, ProbeJob)) else job.data_job]
    p, n = s.profile, student_params(job.student)
    if isinstance(job, TrainJob):
        cfg = job.train
        per_example = sum(task_tokens(t, p, cfg.max_len) for t in job.condition.tasks)
        if cfg.max_steps:
            seqs = cfg.max_steps * cfg.batch * cfg.grad_accum
            tok = seqs * per_example / len(job.condition.tasks)
        else:
            tok = cfg.epochs * _capped(s.train, d.limit) * per_example
        k, how = (4, "4N (LoRA)") if cfg.lora else (6, "6N")
        return JobCost(job, tok, k * n * tok, how)
    n_test = _capped(s.test, d.limit_test)
    if isinstance(job, EvalJob):
        if job.condition.eval_by == "rank":
            tok = n_test * (context_tokens(job.condition, p) + p.choices * p.label)
        else:
            tok = n_test * (words(job.condition.tasks[0].prefix) + p.prompt + job.eval.max_new_tokens)
    else:  # ProbeJob
        tok = min(job.probe.examples, n_test) * context_tokens(job.condition, p)
        if "tuned" in job.probe.lenses:
            # the fit's pool of training tokens (one body forward), then the KL steps' batches
            tok += FIT_POOL + job.probe.tuned_steps * 8 * task_tokens(job.condition.tasks[0], p, exp.train.max_len)
    return JobCost(job, tok, 2 * n * tok, "2N")


def _mech_cost(job: Job, s: Sized, d: DataJob) -> JobCost:
    """dla / attention: one forward over the probe's contexts; patch: 3·L + 3 of them."""
    cond, stu = (job.to_condition, job.to_student) if isinstance(job, PatchJob) else (job.condition, job.student)
    tok = min(job.probe.examples, _capped(s.test, d.limit_test)) * context_tokens(cond, s.profile)
    n = student_params(stu)
    if not isinstance(job, PatchJob):
        return JobCost(job, tok, 2 * n * tok, "2N")
    blocks = int(stu.arg("layers", 2)) if stu.kind == "tiny" else 30 if stu.kind == "smollm2" else 32
    passes = 3 * blocks + 3
    return JobCost(job, tok, 2 * n * tok * passes, f"2N·{passes}")


# ---- the estimate -----------------------------------------------------------------------------
@dataclass(frozen=True)
class Estimate:
    experiment: str
    costs: tuple[JobCost, ...]  # one per planned job, in plan (topological) order
    sizes: dict[str, Sized]
    notes: tuple[str, ...]

    def stages(self) -> list[tuple[str, int, float, float, str]]:
        """(stage, jobs, tokens, FLOPs, basis) for every stage that has jobs, in DAG order."""
        out = []
        for st in STAGES:
            cs = [c for c in self.costs if c.job.stage == st]
            if cs:
                bases = sorted({c.basis for c in cs if c.basis != "-"}) or ["-"]
                out.append((st, len(cs), sum(c.tokens for c in cs), sum(c.flops for c in cs), "; ".join(bases)))
        return out

    @property
    def flops(self) -> float:
        return sum(c.flops for c in self.costs)

    def longest(self) -> JobCost:
        return max(self.costs, key=lambda c: c.flops)

    def critical_hours(self, dev: Device) -> float:
        """Wall time with as many devices as jobs: the longest chain of dependent jobs."""
        done: dict[str, float] = {}
        for c in self.costs:
            done[c.job.id] = dev.hours(c.flops) + max((done.get(d, 0.0) for d in c.job.deps), default=0.0)
        return max(done.values(), default=0.0)


def _size_guessed(s: Student) -> bool:
    if s.kind in ("tiny", "smollm2"):
        return False
    name = str(s.arg("model") or s.arg("path") or s.arg("file") or "").split("/")[-1]
    return student_params(s) == 1e9 and not re.search(r"\d\s*[bB](?![a-zA-Z])", name)


def estimate(exp: Experiment, *, limit: int | None = None, limit_test: int | None = None) -> Estimate:
    """Plan `exp` as `cotdsl run` would and cost every job (see the module docstring)."""
    from .plan import make_plan

    sizes = {src.name: size_source(src) for src in exp.data}
    plan = make_plan(exp, limit=limit, limit_test=limit_test, versions={s: "" for s in STAGES}, gpu=False)
    by_id = {j.id: j for j in plan.jobs}
    data_of: dict[str, DataJob] = {}
    for j in plan.jobs:  # teacher job id -> its data job, and data job id -> itself
        if isinstance(j, DataJob):
            data_of[j.id] = j
        elif isinstance(j, TeacherJob):
            data_of[j.id] = by_id[j.data]
    costs = tuple(_cost(j, exp, sizes, data_of) for j in plan.jobs)
    notes = [f"data {name}: {s.about}; per example {s.profile.prompt:.0f} prompt + {s.profile.rationale:.0f} "
             f"rationale + {s.profile.label:.0f} label tokens ({s.profile.about}), {s.profile.choices} choices"
             for name, s in sizes.items()]
    guessed = sorted({s.name for s in exp.students if _size_guessed(s)})
    if guessed:
        notes.append(f"student size unknown for {', '.join(guessed)}: counted as 1e9 parameters")
    if exp.teacher.kind == "hf" and exp.teacher.arg("filter", True):
        notes.append("the teacher's answer filter drops some questions: training counts every one (an upper bound)")
    if exp.train.devices > 1:
        notes.append(f"train.devices {exp.train.devices}: a training job's wall time is its device-hours "
                     f"/ {exp.train.devices}; the device-hours are the same")
    return Estimate(exp.name, costs, sizes, tuple(notes))


def fits(est: Estimate, dev: Device) -> list[str]:
    """Training jobs whose memory estimate (jobs.types.resources_for) exceeds one device."""
    if dev.mem_gb is None:
        return []
    over = {}
    for c in est.costs:
        if isinstance(c.job, TrainJob) and c.job.resources.mem_gb > dev.mem_gb * max(1, c.job.train.devices):
            over[c.job.student.name] = c.job.resources.mem_gb
    return [f"{dev.name}: training {k} needs ~{v:.0f} GB (> {dev.mem_gb:.0f} GB): use lora or more devices"
            for k, v in over.items()]


# ---- display ----------------------------------------------------------------------------------
def si(x: float) -> str:
    """1234567 -> "1.23M"."""
    for div, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "k")):
        if x >= div:
            return f"{x / div:.3g}{suffix}"
    return f"{x:.0f}"


def sci(x: float) -> str:
    """1.234e18 -> "1.23e18"; 0 -> "-"."""
    if not x:
        return "-"
    m, e = f"{x:.2e}".split("e")
    return f"{m}e{int(e)}"


def hours(h: float) -> str:
    if h == 0:
        return "-"
    if h < 1e-4:
        return "<0.0001"
    return f"{h:.2g}" if h < 1 else f"{h:.2f}" if h < 10 else f"{h:.1f}" if h < 100 else f"{h:,.0f}"


def table(est: Estimate, devs: list[Device]):
    """A rich table: one row per stage (jobs, tokens, FLOPs, device-hours per class) + totals."""
    from rich.markup import escape
    from rich.table import Table

    t = Table(title=escape(f"estimate: experiment {est.experiment}"))
    for col, right in (("stage", False), ("jobs", True), ("tokens", True), ("FLOPs", True)):
        t.add_column(col, justify="right" if right else "left")
    for d in devs:
        t.add_column(f"{d.name} {d.unit}-h", justify="right")
    t.add_column("FLOPs/tok", no_wrap=True)
    rows = est.stages()
    for st, n, tok, fl, basis in rows:
        t.add_row(st, str(n), si(tok) if tok else "-", sci(fl), *(hours(d.hours(fl)) for d in devs), escape(basis))
    t.add_section()
    t.add_row("[bold]total[/bold]", f"[bold]{sum(r[1] for r in rows)}[/bold]", "", f"[bold]{sci(est.flops)}[/bold]",
              *(f"[bold]{hours(d.hours(est.flops))}[/bold]" for d in devs), "")
    return t


def summary(est: Estimate, devs: list[Device]) -> list[str]:
    """Per device: total device-hours, the longest job, the critical path; then the assumptions."""
    out = []
    top = est.longest()
    for d in devs:
        h = d.hours(est.flops)
        days = f" (~{h / 24:,.0f} {d.unit}-days)" if h >= 48 else ""
        out.append(f"{d.name}: {hours(h)} {d.unit}-hours{days}; longest job {hours(d.hours(top.flops))} h "
                   f"({top.job.label}); longest chain of dependent jobs {hours(est.critical_hours(d))} h")
        out += [f"  warning: {w}" for w in fits(est, d)]
    out.append("assumptions:")
    out += [f"  device {d.name}: {d.about} = {d.rate / 1e12:.3g} TFLOP/s sustained" for d in devs]
    out += [f"  {n}" for n in est.notes]
    out.append(f"  FLOPs: train 6·N·tokens, eval/probe/dla/attention 2·N·tokens, patch 2·N·tokens·(3·blocks + 3), "
               f"IG ranking 6·N·tokens·{IG_STEPS} steps, hf teacher 2·N_teacher·tokens·samples; N from the model's "
               "name (jobs.types.student_params)")
    out.append("  tokens: epochs x examples x (prompt + target segments + separators + eos) x conditions x "
               "students x seeds; generation counts max_new_tokens (an upper bound)")
    if any(d.unit == "GPU" for d in devs):
        out.append("  MFU 0.35 needs large batches: students of ~100M parameters at batch 8 leave a GPU mostly "
                   "idle, so their real time can be several times the estimate")
    return out
