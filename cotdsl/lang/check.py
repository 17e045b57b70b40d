"""Semantic checks: `ast.File` (+ imports, plugins) -> `spec.Experiment`, or a CotError listing
every problem found in the file at once.

Declarations are bound against the signatures below and section entries against the fields of
their `spec` dataclasses (`params.py` checks every value); targets (sweeps, segments,
perturbation calls against `cotdsl.perturb.REGISTRY`, eval mode) are built by `targets.py`; local
data files are looked at by `data.py`.
"""
from __future__ import annotations

import dataclasses
import os
import typing
from pathlib import Path
from typing import Any

from cotdsl import perturb, spec
from cotdsl.data.files import FIELDS as DATA_FIELDS
from cotdsl.errors import Collector, CotError, Pos, did_you_mean

from . import ast
from .expectations import build_expectations
from .params import BAD, Param, Signature, arg_values, bind, coerce, describe
from .parse import decode, parse_source, read_source
from .probe import build_mechanisms
from .targets import build_conditions

# ---- what declarations and sections accept ---------------------------------------------------
DATA = {
    "builtin": (Param("task", str, choices=("facts", "chain")), Param("train", int, lo=1), Param("test", int, lo=1),
                Param("seed", int, lo=0, default=0), Param("choices", int, lo=2, hi=10, default=4),
                Param("entities", int, lo=2, default=None)),
    "hf": (Param("dataset", "dataset"), Param("train", int, lo=1, default=None), Param("test", int, lo=1, default=None),
           Param("config", str, default=None), Param("train_split", str, default=None),
           Param("test_split", str, default=None), Param("files", "path_map", default=None, alias="data_files"),
           Param("disk", "path", default=None)),
    "file": (Param("train", "path"), Param("test", "path"), Param("fields", "map", default=None, choices=DATA_FIELDS),
             Param("format", str, default=None, choices=("jsonl", "csv", "parquet"))),
}
TEACHER = {
    "gold": (),
    "file": (Param("path", "path"), Param("field", str, default="rationale"), Param("strip_answer", bool, default=None)),
    "hf": (Param("model", "name_or_path"), Param("prompt", str, default=None), Param("samples", int, lo=1, default=1),
           Param("temperature", float, lo=0, default=0.0), Param("top_p", float, lo=0, hi=1, open_lo=True, default=None),
           Param("top_k", int, lo=1, default=None), Param("max_new_tokens", int, lo=1, default=128),
           Param("filter", bool, default=True), Param("batch", int, lo=1, default=8),
           Param("trust_remote_code", bool, default=False), Param("revision", str, default=None),
           Param("seed", int, lo=0, default=None), Param("strip_answer", bool, default=None),
           Param("shards", int, lo=1, default=None), Param("engine", str, default=None, choices=("hf", "vllm"))),
}
STUDENT = {
    "smollm2": (),
    "hf": (Param("model", "name_or_path"), Param("trust_remote_code", bool, default=False),
           Param("revision", str, default=None)),
    "gguf": (Param("path", "path"), Param("file", str, default=None)),
    "tiny": (Param("arch", str, default="llama", choices=("llama", "gpt2")), Param("layers", int, lo=1, default=2),
             Param("d_model", int, lo=8, default=64), Param("heads", int, lo=1, default=4)),
}
DECLS = {"data": (DATA, spec.Source), "teacher": (TEACHER, spec.Teacher), "student": (STUDENT, spec.Student)}


def _entries(cfg: type, **rules: dict) -> tuple[Param, ...]:
    """A section's entries: the fields of its spec dataclass (name, type, default: one source of
    truth) with the checks `rules` adds (bounds, choices, alias). `int | None` is an int entry, a
    tuple field a list of words, a tuple of pairs a list of `a -> b` pairs ("pairs")."""
    hints = typing.get_type_hints(cfg)
    out = []
    for f in dataclasses.fields(cfg):
        t = hints[f.name]
        if typing.get_origin(t) is tuple:
            t = "pairs" if typing.get_origin(typing.get_args(t)[0]) is tuple else "list"
        elif type(None) in typing.get_args(t):
            t, = (a for a in typing.get_args(t) if a is not type(None))
        out.append(Param(f.name, t, default=f.default, **rules.get(f.name, {})))
    return tuple(out)


_POSITIVE, _COUNT = {"lo": 0, "open_lo": True}, {"lo": 1}
SECTIONS = {
    "train": (spec.TrainCfg, _entries(
        spec.TrainCfg, epochs=_POSITIVE, lr=_POSITIVE, batch=_COUNT, max_len={"lo": 8}, warmup={"lo": 0, "hi": 1},
        weight_decay={"lo": 0}, grad_accum=_COUNT, max_steps=_COUNT, lora=_COUNT,
        precision={"choices": ("auto", "fp32", "bf16")}, checkpoint_every=_COUNT, devices=_COUNT,
        strategy={"choices": ("ddp", "fsdp")}, resample={"choices": ("first", "epoch")})),
    "eval": (spec.EvalCfg, _entries(spec.EvalCfg, by={"choices": ("auto", "rank", "generate")},
                                    max_new_tokens=_COUNT, batch=_COUNT)),
    "probe": (spec.ProbeCfg, _entries(spec.ProbeCfg, lenses={"choices": ("logit", "tuned"), "alias": "lens"},
                                      at={"choices": ("label",)}, examples=_COUNT, tuned_steps={"lo": 0},
                                      context={"choices": ("generated", "gold", "none")},
                                      score={"choices": ("label", "first_token")},
                                      attribute={"choices": ("dla",)}, patch_at={"choices": ("label", "all")},
                                      attention={"choices": ("rationale",)}, engine={"choices": ("hf", "tl")})),
}


def load(path: str | Path, *, library: bool = False) -> spec.Experiment:
    """Read, parse and check a .cot file. Raises CotError.

    `library=True` also accepts a file without an `experiment` block (what `import` merges):
    everything it declares is checked as written, no section is required, and the Experiment
    returned is named "" (its teacher None when it declares none)."""
    return check_source(read_source(path), str(path), library=library)


def check_source(text: str | bytes, path: str = "<string>", *, library: bool = False) -> spec.Experiment:
    """Parse and check one spec given as text (imports are read relative to `path`)."""
    if isinstance(text, bytes):
        text = decode(text, path)
    return _Checker(path, library=library).run(text)


class _Checker:
    def __init__(self, path: str, library: bool = False):
        self.path = path
        self.library = library  # a file without an experiment block is a library (set per file in run_parsed)
        self.real = not (path.startswith("<") and path.endswith(">"))
        self.col = Collector()
        self.notes: list[str] = []

    # ---- files and imports -------------------------------------------------------------------
    def _abs(self, path: str) -> str:
        return os.path.abspath(path) if self.real else path

    def _parse(self, text: str, path: str) -> ast.File | None:
        self.col.sources[path] = text
        try:
            return parse_source(text, path)
        except CotError as e:
            self.col.extend(e)
            return None

    def _gather(self, f: ast.File, stack: list[str], seen: set[str], out: list[ast.File]) -> None:
        """Depth-first: imported files before the importer; each file once."""
        base = Path(os.path.dirname(os.path.abspath(f.path))) if self.real or len(stack) > 1 else Path.cwd()
        for imp in f.imports:
            target = os.path.abspath(base / imp.path)
            if target in stack:
                chain = " -> ".join(os.path.basename(p) for p in stack[stack.index(target):] + [target])
                self.col.error(imp.pos, f"import cycle: {chain}", hint="remove one of these imports")
                continue
            if target in seen:
                continue
            seen.add(target)
            if not os.path.isfile(target):
                self.col.error(imp.pos, f"cannot import `{imp.path}`: no such file ({target})")
                continue
            try:
                text = read_source(target)
            except CotError as e:
                self.col.extend(e)
                continue
            sub = self._parse(text, target)
            if sub is None:
                continue
            for ex in sub.experiments:
                self.col.error(ex.pos, "an imported file may not declare an experiment",
                               hint="imported files hold top-level declarations (data, targets, ...)")
            self._gather(sub, stack + [target], seen, out)
        out.append(f)

    def run(self, text: str) -> spec.Experiment:
        main = self._parse(text, self.path)  # diagnostics name the file as the user did
        self.col.raise_if_any()
        return self.run_parsed(main)

    def run_parsed(self, main: ast.File) -> spec.Experiment:
        """Check an already parsed file (its source text must be in `self.col.sources`)."""
        path = self._abs(self.path)
        if not main.items:
            self.col.error(Pos(self.path, 1, 1), "empty file: nothing is declared",
                           hint="start with `experiment NAME { ... }`")
            self.col.raise_if_any()
        files: list[ast.File] = []
        self._gather(main, [path], {path}, files)
        exps = main.experiments
        self.library = self.library and not exps
        if not exps and not self.library:
            self.col.error(Pos(self.path, 1, 1), "no `experiment NAME { ... }` block in this file")
        for extra in exps[1:]:
            self.col.error(extra.pos, f"a file declares one experiment; `{extra.name}` is a second one")
        # statements in order: imported files' top level, then this file's top level and block
        stmts: list[tuple[Any, int]] = []  # (stmt, file rank)
        for rank, f in enumerate(files):
            stmts += [(s, rank) for s in f.toplevel]
        if exps:
            stmts += [(s, len(files) - 1) for s in exps[0].body]
        first: dict[str, ast.Plugin] = {}
        for p in (p for f in files for p in f.plugins):
            first.setdefault(p.module, p)  # a plugin named by several files loads once
        plugins = list(first.values())
        self._load_plugins(plugins)
        at = exps[0].pos if exps else Pos(self.path, 1, 1)
        exp = self._experiment(exps[0].name if exps else "" if self.library else "experiment", path, stmts,
                               plugins, at)
        self.col.raise_if_any()
        return exp

    def _plugin_dir(self, p: ast.Plugin) -> str:
        """The declaring spec's folder when the module (or its top package) sits there, else ""."""
        base = self._base(p.pos)
        top = p.module.split(".")[0]
        return str(base) if (base / f"{top}.py").is_file() or (base / top / "__init__.py").is_file() else ""

    def _load_plugins(self, plugins: list[ast.Plugin]) -> None:
        self.plugin_paths: list[str] = []
        for p in plugins:
            self.plugin_paths.append("")
            if not all(part.isidentifier() for part in p.module.split(".")):
                self.col.error(p.pos, f"`{p.module}` is not a Python module name")
                continue
            self.plugin_paths[-1] = where = self._plugin_dir(p)
            try:
                with perturb.plugin_search([where]):
                    perturb.load_plugins([p.module], entry_points=False)
            except CotError as e:
                for d in e.diagnostics:
                    self.col.error(p.pos, d.message, hint=d.hint)
            except Exception as e:  # a plugin's own bug is reported, not raised
                self.col.error(p.pos, f"plugin `{p.module}` failed to load: {type(e).__name__}: {e}")
        try:
            perturb.load_plugins((), entry_points=True)
        except CotError as e:
            self.col.extend(e)
        except Exception as e:  # pragma: no cover - a broken installed entry point
            self.col.error(None, f"a `cotdsl.perturbations` entry point failed: {type(e).__name__}: {e}")

    # ---- declarations ------------------------------------------------------------------------
    def _experiment(self, name: str, path: str, stmts, plugins, at: Pos) -> spec.Experiment:
        decls: dict[str, dict[str, ast.Decl]] = {kind: {} for kind in DECLS}
        targets: dict[str, ast.Target] = {}
        sections: dict[str, dict[str, ast.Entry]] = {s: {} for s in SECTIONS}
        present: set[str] = set()
        seen_in_file: set[tuple[str, int]] = set()
        seeds_stmt = None
        expects: list[ast.Expect] = []
        for s, rank in stmts:
            if isinstance(s, ast.Expect):
                expects.append(s)
            elif isinstance(s, ast.Seeds):
                if ("seeds", rank) in seen_in_file:
                    self.col.error(s.pos, "duplicate `seeds`")
                seen_in_file.add(("seeds", rank))
                seeds_stmt = s
            elif isinstance(s, ast.Section):
                if (s.kind, rank) in seen_in_file:
                    self.col.error(s.pos, f"duplicate section `{s.kind}`", hint="merge the two blocks")
                seen_in_file.add((s.kind, rank))
                present.add(s.kind)
                local: set[str] = set()
                alias = {p.alias: p.name for p in SECTIONS[s.kind][1] if p.alias}
                for e in s.entries:
                    key = alias.get(e.name, e.name)
                    if key in local:
                        self.col.error(e.pos, f"duplicate key `{e.name}` in `{s.kind}`")
                    local.add(key)
                    sections[s.kind][key] = e  # the importer's value wins
            elif isinstance(s, ast.Decl):
                table = decls[s.kind]
                if s.name in table:
                    first = table[s.name].name_pos
                    self.col.error(s.name_pos, f"duplicate {s.kind} `{s.name}` (first declared at {first})")
                    continue
                table[s.name] = s
            elif isinstance(s, ast.Target):
                if s.name in targets:
                    self.col.error(s.pos, f"duplicate target `{s.name}` (first declared at {targets[s.name].pos})")
                    continue
                targets[s.name] = s
        end = at
        for kind, what in (("data", "a `data` declaration"), ("teacher", "a `teacher`"),
                           ("student", "a `student`")):
            if not decls[kind] and not self.library:
                self.col.error(end, f"missing required section: {what}",
                               hint=f"e.g. `{_EXAMPLE[kind]}`")
        if not targets and not self.library:
            self.col.error(end, "missing required section: at least one `target`",
                           hint="e.g. `target after = label -> rationale`")
        if len(decls["teacher"]) > 1:
            extra = list(decls["teacher"].values())[1]
            self.col.error(extra.pos, "an experiment has exactly one teacher")
        data, teachers, students = ([x for x in map(self._decl, decls[kind].values()) if x]
                                    for kind in DECLS)
        vals = {kind: self._section(sections[kind], params, kind) for kind, (_, params) in SECTIONS.items()}
        pairs = vals["probe"].pop("patch", ())  # resolved against the conditions below
        cfg = {kind: cls(**vals[kind]) for kind, (cls, _) in SECTIONS.items()}
        train, evalc, probe = cfg["train"], cfg["eval"], cfg["probe"] if "probe" in present else None
        seeds = self._seeds(seeds_stmt)
        conds: list[spec.Condition] = []
        for t in targets.values():
            conds += build_conditions(t, evalc.by, self.col, self.notes)
        self._check_scorers(conds, teachers[0] if teachers else None)
        if probe is not None:
            probe = build_mechanisms(probe, pairs, sections["probe"], conds, students, set(targets), self.col)
        expectations = build_expectations(expects, conds, set(targets), probe, self.col)
        return spec.Experiment(
            name=name, path=path, seeds=seeds, data=tuple(data), teacher=teachers[0] if teachers else None,
            students=tuple(students), conditions=tuple(conds), train=train, eval=evalc, probe=probe,
            plugins=tuple(p.module for p in plugins), plugin_paths=tuple(self.plugin_paths),
            notes=tuple(dict.fromkeys(self.notes)), expectations=expectations)

    def _check_scorers(self, conds: list[spec.Condition], teacher: spec.Teacher | None) -> None:
        """`keytokens(..., by: ig, scorer: X)`: X is "student", "teacher" (an hf teacher) or the
        name of a condition whose own training needs no IG ranking (so the DAG has no cycle)."""
        names = {c.name: c for c in conds}
        for cond in conds:
            for call in cond.ig_calls():
                x = call.kw("scorer", "student")
                if x == "student":
                    continue
                if x == "teacher":
                    if teacher is not None and teacher.kind != "hf":
                        self.col.error(call.pos, f"`scorer: teacher` needs a model teacher, but `{teacher.name}` "
                                       f"is `{teacher.kind}`", hint="use `scorer: student` or a target name")
                elif x not in names:
                    self.col.error(call.pos, f"unknown scorer `{x}`", hint=did_you_mean(x, list(names))
                                   or "`student`, `teacher` or the name of a target")
                elif names[x].scorer() is not None:
                    self.col.error(call.pos, f"scorer `{x}` itself trains on IG key tokens",
                                   hint="score with a target that does not use `keytokens(..., by: ig)`")

    def _seeds(self, s: ast.Seeds | None) -> tuple[int, ...]:
        if s is None:
            return (0,)
        out = []
        for v in s.values:
            x = coerce(v, Param("seed", int, lo=0), self.col, "`seeds`")
            if x is BAD:
                continue
            if x in out:
                self.col.error(v.pos, f"duplicate seed {x}")
            out.append(x)
        return tuple(out)

    def _base(self, d_pos: Pos) -> Path:
        return Path(os.path.dirname(os.path.abspath(d_pos.file))) if self.real or d_pos.file != self.path \
            else Path.cwd()

    def _decl(self, d: ast.Decl):
        table, cls = DECLS[d.kind]
        v = d.value
        if isinstance(v, ast.Name):
            fn, call = v.id, ast.CallV(v.id, (), (), v.pos)
        elif isinstance(v, ast.CallV):
            fn, call = v.fn, v
        else:
            self.col.error(v.pos, f"a {d.kind} is declared as `name = kind(...)`",
                           expected=[f"`{k}`" for k in table])
            return None
        if fn not in table:
            self.col.error(v.pos, f"unknown {d.kind} kind `{fn}`", expected=[f"`{k}`" for k in table],
                           hint=did_you_mean(fn, table))
            return None
        sig = Signature(f"`{d.kind} {fn}`", table[fn])
        args = bind(call, sig, self.col, base=self._base(d.pos))
        if args is None:
            return None
        out = cls(d.name, fn, tuple((k, x) for k, x in args.items() if x is not None), d.pos)
        if d.kind in ("data", "teacher"):
            from .data import preflight  # reads only the files' headers / first rows
            preflight(out, arg_values(call, sig), self.col)
        return out

    def _section(self, entries: dict[str, ast.Entry], params: tuple[Param, ...], kind: str) -> dict:
        by_name = {p.name: p for p in params}
        out = {}
        for key, e in entries.items():
            p = by_name.get(key)
            if p is None:
                self.col.error(e.pos, f"unknown key `{e.name}` in `{kind}`",
                               expected=[f"`{k}`" for k in by_name], hint=did_you_mean(e.name, by_name))
                continue
            if p.type == "list":
                vals = [coerce(v, Param(key, str, choices=p.choices), self.col, f"`{kind}`") for v in e.values]
                if vals and BAD not in vals:
                    out[key] = tuple(dict.fromkeys(vals))
                continue
            if p.type == "pairs":  # kept as written: names are resolved once the conditions exist
                bad = [v for v in e.values if not isinstance(v, ast.Pair)]
                for v in bad:
                    self.col.error(v.pos, f"`{kind}`: `{e.name}` takes pairs `a -> b` of conditions or students, "
                                   f"got {describe(v)}", hint=f"e.g. `{e.name}: none -> after`")
                if not bad:
                    out[key] = tuple(e.values)
                continue
            if len(e.values) != 1:
                self.col.error(e.values[1].pos if len(e.values) > 1 else e.pos,
                               f"`{e.name}` takes one value, got {len(e.values)}")
                continue
            x = coerce(e.values[0], p, self.col, f"`{kind}`")
            if x is not BAD:
                out[key] = x
        return out


_EXAMPLE = {"data": 'data toy = builtin("facts", train: 400, test: 200)', "teacher": "teacher gold = gold",
            "student": "student smol = smollm2"}
