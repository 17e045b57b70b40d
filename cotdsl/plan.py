"""Checked experiment -> DAG of jobs with content hashes.

    data ─► teacher ─► [rank (IG, when a target asks for it)] ─► render ─► train ─► eval
                                                                                 ├─► probe
                                                                                 ├─► dla, attention
                                                            (two train jobs) ───────► patch
One `data` and `teacher` job per source; `render`/`train`/`eval`/`probe` per
condition × student × source × seed; `dla`/`attention` as `probe` when the probe section asks for
them (attention: rationale-first conditions only); one `patch` job per `patch: a -> b` pair ×
student (or condition, for a pair of students) × source × seed. A job's key hashes its spec
subtree, its inputs' keys and its stage's code version, so finished jobs are reused across runs
and across specs.
"""
from __future__ import annotations

from dataclasses import dataclass
from .cache import files_digest, stable_hash
from .jobs.types import (STAGES, AttentionJob, DataJob, DlaJob, EvalJob, Job, PatchJob, ProbeJob, RankJob, RenderJob,
                         Resources, SampleJob, TeacherJob, TrainJob, resources_for)
from .spec import Condition, Experiment

__all__ = ["STAGES", "Job", "Plan", "make_plan"]


@dataclass(frozen=True)
class Plan:
    experiment: Experiment
    jobs: tuple[Job, ...]  # topologically ordered
    limit: int | None = None

    def by_stage(self, stage: str) -> list[Job]:
        return [j for j in self.jobs if j.stage == stage]

    def get(self, job_id: str) -> Job:
        return next(j for j in self.jobs if j.id == job_id)


def perturbation_versions(cond: Condition) -> dict[str, str]:
    """Code version of every perturbation a condition calls that lives outside cotdsl (a plugin
    module or an entry point): editing a plugin re-renders the conditions that use it. Built-ins
    are covered by the render stage's own version."""
    from . import perturb
    from .cache import code_version

    out = {}
    for c in cond.calls():
        p = perturb.REGISTRY.get(c.fn)
        if p is not None and getattr(p.fn, "__module__", None) != perturb.__name__:
            out[c.fn] = code_version(p.fn)
    return out


def _toposort(jobs: list[Job]) -> list[Job]:
    """Stable topological order (a rank job may wait for a later condition's training)."""
    done: set[str] = set()
    out: list[Job] = []
    pending = list(jobs)
    while pending:
        rest = []
        for j in pending:
            if all(d in done for d in j.deps):
                out.append(j)
                done.add(j.id)
            else:
                rest.append(j)
        if len(rest) == len(pending):  # the checker forbids cycles; this guards the invariant
            raise ValueError(f"cyclic job dependencies: {[j.label for j in rest]}")
        pending = rest
    return out


def stage_versions() -> dict[str, str]:
    """Code version of each stage: editing a stage's module invalidates that stage's jobs."""
    from .jobs import stages

    return stages.code_versions()


def make_plan(exp: Experiment, *, limit: int | None = None, limit_test: int | None = None,
              only: dict[str, list[str]] | None = None, versions: dict[str, str] | None = None,
              gpu: bool | None = None) -> Plan:
    """Expand the experiment into jobs. `only` filters, e.g. {"target": ["after", "none"],
    "student": [...], "seed": ["0"]}; a target filter matches a condition name or its family.
    `limit` caps the training examples (and the test ones unless `limit_test` is given).
    `gpu` says whether jobs should ask for a GPU (default: whether this machine has one)."""
    v = versions if versions is not None else stage_versions()
    gpu = _gpu_visible() if gpu is None else gpu
    only = only or {}
    conds = [c for c in exp.conditions
             if "target" not in only or c.name in only["target"] or c.family in only["target"]]
    students = [s for s in exp.students if "student" not in only or s.name in only["student"]]
    seeds = [s for s in exp.seeds if "seed" not in only or str(s) in only["seed"]]
    sources = [d for d in exp.data if "data" not in only or d.name in only["data"]]
    lt = limit if limit_test is None else limit_test
    devices = getattr(exp.train, "devices", 1)

    def res(stage, stu, batch=8):
        return resources_for(stage, stu, batch=batch, gpu=gpu, devices=devices)

    jobs: list[Job] = []
    probe = exp.probe
    for src in sources:
        runs: dict[tuple[str, str, int], tuple[Job, Job]] = {}  # (student, condition, seed) -> (train, eval)
        d = DataJob(key=stable_hash([src, files_digest(src), limit, lt, v["data"]]), deps=(), label=f"data {src.name}",
                    source=src, limit=limit, limit_test=lt)
        samples = []
        if exp.teacher.kind == "hf":  # sampling runs as shards; the teacher job merges them
            k = int(exp.teacher.arg("shards") or 1)
            samples = [SampleJob(key=stable_hash(["sample", exp.teacher, files_digest(exp.teacher), d.key, i, k,
                                                  v["sample"]]),
                                 deps=(d.id,), label=f"teacher {exp.teacher.name} samples {i + 1}/{k} · {src.name}",
                                 teacher=exp.teacher, data=d.id, shard=i, shards=k,
                                 resources=Resources(gpus=1.0 if gpu else 0.0, mem_gb=8.0))
                       for i in range(k)]
        t = TeacherJob(key=stable_hash([exp.teacher, files_digest(exp.teacher), d.key, [s.key for s in samples],
                                        v["teacher"]]),
                       deps=(d.id,) + tuple(s.id for s in samples), label=f"teacher {exp.teacher.name} on {src.name}",
                       teacher=exp.teacher, data=d.id, samples=tuple(s.id for s in samples))
        jobs += [d, *samples, t]
        for stu in students:
            trains: dict[tuple[str, int], Job] = {}  # (condition, seed) -> its train job
            ranks: dict[tuple[str, int], Job] = {}   # (scorer, seed) -> IG ranking job
            deferred = []
            for cond in sorted(conds, key=lambda c: c.scorer() not in (None, "student", "teacher")):
                for seed in seeds:
                    name = f"{cond.name} · {stu.name} · {src.name} · seed {seed}"
                    rank = None
                    scorer = cond.scorer()
                    if scorer is not None:
                        if scorer in ("student", "teacher"):
                            rk, deps, what = (scorer, 0), (t.id,), stu if scorer == "student" else exp.teacher
                            key = stable_hash(["ig", scorer, what, t.key, v["rank"]])
                        else:
                            if (scorer, seed) not in trains:
                                raise ValueError(f"scorer {scorer!r} of {cond.name} is not a planned target "
                                                 "(is it filtered out by --only?)")
                            tr0 = trains[(scorer, seed)]
                            rk, deps, key = (scorer, seed), (t.id, tr0.id), stable_hash(["ig", tr0.key, t.key, v["rank"]])
                        if rk not in ranks:
                            per_seed = "" if scorer in ("student", "teacher") else f" · seed {seed}"
                            ranks[rk] = RankJob(
                                key=key, deps=deps, resources=res("rank", stu),
                                label=f"IG key tokens · {scorer} scorer · {stu.name} · {src.name}{per_seed}",
                                student=stu, teacher_job=t.id, scorer=scorer,
                                teacher=exp.teacher if scorer == "teacher" else None,
                                scorer_train=deps[1] if len(deps) > 1 else None)
                            deferred.append(ranks[rk])
                        rank = ranks[rk]
                    deps = (t.id,) + ((rank.id,) if rank is not None else ())
                    common = dict(condition=cond, student=stu, source=src, seed=seed)
                    r = RenderJob(key=stable_hash([cond.tasks, stu, seed, exp.train.max_len, deps, v["render"],
                                                   perturbation_versions(cond), exp.train.resample]),
                                  deps=deps, label=f"render {name}", teacher_job=t.id,
                                  rank_job=rank.id if rank is not None else None, max_len=exp.train.max_len,
                                  plugins=exp.plugins, plugin_paths=plugin_dirs(exp.plugins),
                                  resample=exp.train.resample, **common)
                    tr = TrainJob(key=stable_hash([r.key, exp.train, v["train"]]), deps=(r.id,), label=f"train {name}",
                                  render_job=r.id, teacher_job=t.id, train=exp.train,
                                  resources=res("train", stu, exp.train.batch), **common)
                    trains[(cond.name, seed)] = tr
                    ev = EvalJob(key=stable_hash([tr.key, cond.eval_by, cond.tasks[0], exp.eval, d.key, v["eval"]]),
                                 deps=(tr.id, d.id), label=f"eval {name}", train_job=tr.id, data_job=d.id,
                                 eval=exp.eval, resources=res("eval", stu, exp.eval.batch), **common)
                    deferred += [r, tr, ev]
                    runs[(stu.name, cond.name, seed)] = (tr, ev)
                    if probe is not None:
                        # a generating student is probed after its own generations: the eval job's
                        own = probe.context == "generated" and cond.eval_by == "generate"
                        lens = probe.lens_view()  # the mechanism entries re-run no lens
                        deferred.append(ProbeJob(
                            key=stable_hash([tr.key, lens, cond.tasks[0], d.key, v["probe"]]
                                            + ([ev.key] if own else [])),
                            deps=(tr.id, d.id) + ((ev.id,) if own else ()), label=f"probe {name}", train_job=tr.id,
                            data_job=d.id, render_job=r.id, probe=lens, eval_job=ev.id if own else None,
                            resources=res("probe", stu), **common))
                        for cls, wanted in ((DlaJob, bool(probe.attribute)),
                                            (AttentionJob, bool(probe.attention) and reads_rationale(cond, probe))):
                            if wanted:
                                deferred.append(cls(
                                    key=stable_hash([tr.key, mech_view(probe, cls.stage), cond.tasks[0], d.key,
                                                     v[cls.stage]] + ([ev.key] if own else [])),
                                    deps=(tr.id, d.id) + ((ev.id,) if own else ()), label=f"{cls.stage} {name}",
                                    train_job=tr.id, data_job=d.id, probe=probe, eval_job=ev.id if own else None,
                                    resources=res(cls.stage, stu), **common))
            jobs += deferred
        if probe is not None and probe.patch:
            jobs += patch_jobs(probe, conds, students, seeds, src, d, runs, v, res)
    return Plan(exp, tuple(_toposort(jobs)), limit)


def reads_rationale(cond: Condition, probe) -> bool:
    """Whether the probe reads `cond`'s label after a rationale (attention jobs need one)."""
    return probe.context != "none" and cond.tasks[0].rationale_before_label()


def mech_view(probe, stage: str) -> dict:
    """The probe settings a mechanism job's output depends on (its key): where and on what the
    label is read, plus `patch_at` for patching. Not the lens, not the other mechanisms."""
    keys = ("at", "examples", "context", "score") + (("patch_at",) if stage == "patch" else ())
    return {"stage": stage, **{k: getattr(probe, k) for k in keys}}


def patch_jobs(probe, conds, students, seeds, src, d, runs, v, res) -> list[Job]:
    """One PatchJob per `patch` pair x seed: a pair of conditions for every student, a pair of
    students for every condition. Pairs whose ends are filtered out (`--only`) are left out."""
    by_cond = {c.name: c for c in conds}
    by_stu = {s.name: s for s in students}
    out: list[Job] = []
    for a, b in probe.patch:
        if a in by_cond or b in by_cond:
            combos = [(by_cond.get(a), s, by_cond.get(b), s) for s in students]
        else:
            combos = [(c, by_stu.get(a), c, by_stu.get(b)) for c in conds]
        for ca, sa, cb, sb in combos:
            if None in (ca, sa, cb, sb):
                continue
            for seed in seeds:
                (tra, _), (trb, evb) = runs[(sa.name, ca.name, seed)], runs[(sb.name, cb.name, seed)]
                own = probe.context == "generated" and cb.eval_by == "generate"
                who = sa.name if sa == sb else f"{sa.name} -> {sb.name}"
                what = f"{ca.name} -> {cb.name}" if ca != cb else ca.name
                out.append(PatchJob(
                    key=stable_hash([tra.key, trb.key, mech_view(probe, "patch"), cb.tasks[0], d.key, v["patch"]]
                                    + ([evb.key] if own else [])),
                    deps=(tra.id, trb.id, d.id) + ((evb.id,) if own else ()),
                    label=f"patch {what} · {who} · {src.name} · seed {seed}", source=src, seed=seed,
                    from_condition=ca, from_student=sa, from_train=tra.id, to_condition=cb, to_student=sb,
                    to_train=trb.id, data_job=d.id, probe=probe, eval_job=evb.id if own else None,
                    resources=res("patch", sb)))
    return out


def plugin_dirs(modules: tuple[str, ...]) -> tuple[str, ...]:
    """The sys.path entry each loaded plugin module was imported from, so a worker process (local,
    Ray, Slurm) can import it too: the spec's folder, a PYTHONPATH entry, site-packages."""
    import sys
    from pathlib import Path

    out = []
    for name in modules:
        f = getattr(sys.modules.get(name), "__file__", None)
        if not f:
            continue
        d = Path(f).resolve().parent
        for _ in range(name.count(".") + (Path(f).name == "__init__.py")):
            d = d.parent
        out.append(str(d))
    return tuple(dict.fromkeys(out))


def _gpu_visible() -> bool:
    """Whether jobs should request a GPU: CUDA_VISIBLE_DEVICES, else `nvidia-smi` (no torch import)."""
    import os
    import shutil

    vis = os.environ.get("CUDA_VISIBLE_DEVICES")
    if vis is not None:
        return bool(vis.strip()) and vis.strip() != "-1"
    return shutil.which("nvidia-smi") is not None
