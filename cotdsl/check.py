"""Semantic checks: `ast.File` (+ imports, plugins) -> `spec.Experiment`, or a CotError listing
every problem found in the file at once.

Declarations and sections are validated against the signature tables in `check_decls.py`;
targets (sweeps, segments, perturbation calls against `cotdsl.perturb.REGISTRY`, eval mode) in
`check_targets.py`. Every problem is collected; `CotError` lists them all.
"""
from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path
from typing import Any

from cotdsl import ast, perturb, spec
from cotdsl.errors import Collector, CotError, did_you_mean
from cotdsl.parse import parse_source, read_source
from cotdsl.check_decls import BAD, DATA, EVAL, PROBE, STUDENT, TEACHER, TRAIN, P, arg_values, bind, coerce
from cotdsl.check_targets import build_conditions

FIELDS = ("label", "rationale")


def load(path: str | Path) -> spec.Experiment:
    """Read, parse and check a .cot file. Raises CotError."""
    return check_source(read_source(path), str(path))


def check_source(text: str | bytes, path: str = "<string>") -> spec.Experiment:
    """Parse and check one spec given as text (imports are read relative to `path`)."""
    from cotdsl.parse import decode
    if isinstance(text, bytes):
        text = decode(text, path)
    return _Checker(path).run(text)


class _Checker:
    def __init__(self, path: str):
        self.path = path
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
            self.col.error(spec.Pos(self.path, 1, 1), "empty file: nothing is declared",
                           hint="start with `experiment NAME { ... }`")
            self.col.raise_if_any()
        files: list[ast.File] = []
        self._gather(main, [path], {path}, files)
        exps = main.experiments
        if not exps:
            self.col.error(spec.Pos(self.path, 1, 1), "no `experiment NAME { ... }` block in this file")
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
        at = exps[0].pos if exps else spec.Pos(self.path, 1, 1)
        exp = self._experiment(exps[0].name if exps else "experiment", path, stmts, plugins, at)
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
                with plugin_search([where]):
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
    def _experiment(self, name: str, path: str, stmts, plugins, at: spec.Pos) -> spec.Experiment:
        decls: dict[str, dict[str, ast.Decl]] = {"data": {}, "teacher": {}, "student": {}}
        targets: dict[str, ast.Target] = {}
        sections: dict[str, dict[str, tuple[ast.Entry, str]]] = {s: {} for s in ("train", "eval", "probe")}
        present: set[str] = set()
        seen_in_file: set[tuple[str, int]] = set()
        seeds_stmt = None
        for s, rank in stmts:
            if isinstance(s, ast.Seeds):
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
                for e in s.entries:
                    key = "lenses" if (s.kind, e.key) == ("probe", "lens") else e.key
                    if key in local:
                        self.col.error(e.pos, f"duplicate key `{e.key}` in `{s.kind}`")
                    local.add(key)
                    sections[s.kind][key] = (e, s.kind)  # the importer's value wins
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
            if not decls[kind]:
                self.col.error(end, f"missing required section: {what}",
                               hint=f"e.g. `{_EXAMPLE[kind]}`")
        if not targets:
            self.col.error(end, "missing required section: at least one `target`",
                           hint="e.g. `target after = label -> rationale`")
        if len(decls["teacher"]) > 1:
            extra = list(decls["teacher"].values())[1]
            self.col.error(extra.pos, "an experiment has exactly one teacher")
        data = tuple(x for x in (self._decl(d, DATA, spec.Source) for d in decls["data"].values()) if x)
        teachers = [x for x in (self._decl(d, TEACHER, spec.Teacher) for d in decls["teacher"].values()) if x]
        students = tuple(x for x in (self._decl(d, STUDENT, spec.Student) for d in decls["student"].values()) if x)
        train = spec.TrainCfg(**self._section(sections["train"], TRAIN, "train"))
        evalc = spec.EvalCfg(**self._section(sections["eval"], EVAL, "eval"))
        probe = spec.ProbeCfg(**self._section(sections["probe"], PROBE, "probe")) if "probe" in present else None
        seeds = self._seeds(seeds_stmt)
        conds: list[spec.Condition] = []
        for t in targets.values():
            conds += self._target(t, evalc.by)
        self._check_scorers(conds, teachers[0] if teachers else None)
        return spec.Experiment(
            name=name, path=path, seeds=seeds, data=data, teacher=teachers[0] if teachers else None,
            students=students, conditions=tuple(conds), train=train, eval=evalc, probe=probe,
            plugins=tuple(p.module for p in plugins), plugin_paths=tuple(self.plugin_paths),
            notes=tuple(dict.fromkeys(self.notes)))

    def _check_scorers(self, conds: list[spec.Condition], teacher: spec.Teacher | None) -> None:
        """`keytokens(..., by: ig, scorer: X)`: X is "student", "teacher" (an hf teacher) or the
        name of a condition whose own training needs no IG ranking (so the DAG has no cycle)."""
        from cotdsl.plan import ig_calls

        names = {c.name: c for c in conds}
        for cond in conds:
            for call in ig_calls(cond):
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
                elif list(ig_calls(names[x])):
                    self.col.error(call.pos, f"scorer `{x}` itself trains on IG key tokens",
                                   hint="score with a target that does not use `keytokens(..., by: ig)`")

    def _seeds(self, s: ast.Seeds | None) -> tuple[int, ...]:
        if s is None:
            return (0,)
        out = []
        for v in s.values:
            x = coerce(v, P("seed", int, lo=0), self.col, "`seeds`")
            if x is BAD:
                continue
            if x in out:
                self.col.error(v.pos, f"duplicate seed {x}")
            out.append(x)
        return tuple(out)

    def _base(self, d_pos: spec.Pos) -> Path:
        return Path(os.path.dirname(os.path.abspath(d_pos.file))) if self.real or d_pos.file != self.path \
            else Path.cwd()

    def _decl(self, d: ast.Decl, table: dict, cls):
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
        args = bind(call, table[fn], self.col, f"`{d.kind} {fn}`", base=self._base(d.pos))
        if args is None:
            return None
        out = cls(d.name, fn, tuple(args.items()), d.pos)
        if d.kind in ("data", "teacher"):
            from cotdsl.check_data import preflight  # reads only the files' headers / first rows
            preflight(out, arg_values(call, table[fn]), self.col)
        return out

    def _section(self, entries: dict, table: tuple, kind: str) -> dict:
        params = {p.name: p for p in table}
        out = {}
        for key, (e, _) in entries.items():
            p = params.get(key)
            if p is None:
                self.col.error(e.pos, f"unknown key `{e.key}` in `{kind}`",
                               expected=[f"`{k}`" for k in params], hint=did_you_mean(e.key, params))
                continue
            if p.type == "list":
                vals = [coerce(v, P(key, str, choices=p.choices), self.col, f"`{kind}`") for v in e.values]
                if vals and BAD not in vals:
                    out[key] = tuple(dict.fromkeys(vals))
                continue
            if len(e.values) != 1:
                self.col.error(e.values[1].pos if len(e.values) > 1 else e.pos,
                               f"`{e.key}` takes one value, got {len(e.values)}")
                continue
            x = coerce(e.values[0], p, self.col, f"`{kind}`")
            if x is not BAD:
                out[key] = x
        return out

    # ---- targets -----------------------------------------------------------------------------
    def _target(self, t: ast.Target, eval_by: str) -> list[spec.Condition]:
        return build_conditions(t, eval_by, self.col, self.notes)


@contextlib.contextmanager
def plugin_search(dirs):
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


def import_plugins(exp: spec.Experiment) -> list[str]:
    """Import a checked experiment's plugins in this process (e.g. a worker), each from the
    folder `check` found it in; returns the perturbations added."""
    paths = exp.plugin_paths or ("",) * len(exp.plugins)
    added = []
    for module, where in zip(exp.plugins, paths):
        with plugin_search([where]):
            added += perturb.load_plugins([module], entry_points=False)
    return added


_EXAMPLE = {"data": 'data toy = builtin("facts", train: 400, test: 200)', "teacher": "teacher gold = gold",
            "student": "student smol = smollm2"}
