"""`cotdsl cache ls` and `cotdsl cache gc`: what the job store holds, and removing what no spec uses.

A store (cotdsl/cache.py) holds, per stage folder, for a job key KEY:

    KEY/               the result (complete when it holds DONE; published by an atomic rename)
    KEY.work/          a training job's checkpoints, so a killed run resumes
    .KEY.<rand>.tmp/   a result being written, or left by a killed run
    .KEY.lock          the job's OS file lock (empty), held while the job runs

`gc` keeps every entry whose id `stage/KEY` is a job of the given specs' full plans (every
condition, student, data source and seed; planning loads no model) or of the given run folders'
`plan.json` (what a `run --limit N` or `--only` run actually used). It never touches an entry
whose lock a process holds, and refuses to remove anything while a job that none of the given
specs plans is running (its inputs would be deleted under it). A result is first renamed to a
temp name (`.KEY.gc-*.tmp`, what the runner cleans as a killed run's leftovers), then deleted, so
an interrupted gc never leaves a half-deleted result that still looks done. Lock files stay:
removing one a waiting process has open would let two processes run that job.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from .errors import CotError, Diagnostic

_TMP = re.compile(r"^\.(?P<key>[^.]+)\..*\.tmp$")
_LOCK = re.compile(r"^\.(?P<key>[^.]+)\.lock$")


@dataclass
class Entry:
    """Everything the store holds for one job id."""

    stage: str
    key: str
    result: Path | None = None  # KEY/
    work: Path | None = None    # KEY.work/
    temps: list[Path] = field(default_factory=list)
    size: int = 0               # bytes on disk (allocated blocks, each inode counted once)

    @property
    def id(self) -> str:
        return f"{self.stage}/{self.key}"

    @property
    def done(self) -> bool:
        return self.result is not None and (self.result / "DONE").exists()

    def paths(self) -> list[Path]:
        return [p for p in (self.result, self.work, *self.temps) if p is not None]

    def label(self) -> str | None:
        """The job's label from its job.json (written by the runner), if any."""
        try:
            return json.loads((self.result / "job.json").read_text())["label"]
        except (OSError, ValueError, KeyError, TypeError):
            return None


@dataclass
class Scan:
    root: Path
    entries: list[Entry]
    other: list[Path]  # anything that is not a job's entry (e.g. `_slurm/` logs): never removed


def store_root(cache: Path | None) -> Path:
    """The store folder (`--cache`, else $COTDSL_JOBS, else .cotdsl-cache); it must exist."""
    from .run import default_cache

    root = Path(cache) if cache is not None else default_cache()
    where = "--cache" if cache is not None else ("$COTDSL_JOBS" if os.environ.get("COTDSL_JOBS") else "the default")
    if not root.exists():
        raise CotError([Diagnostic(None, f"no job store at {root} ({where})",
                                   hint="`cotdsl run` creates it; point --cache (or $COTDSL_JOBS) at the folder "
                                        "your runs used")])
    if not root.is_dir():
        raise CotError(f"{root} is not a folder; --cache takes the job store's folder (e.g. .cotdsl-cache)")
    return root


def _disk_usage(path: Path, seen: set[tuple[int, int]]) -> int:
    """Bytes allocated under `path` (like `du`): symlinks not followed, hard links counted once."""
    total = 0
    stack = [path]
    while stack:
        p = stack.pop()
        try:
            st = os.lstat(p)
        except FileNotFoundError:  # removed meanwhile (a run publishing or cleaning up)
            continue
        if (st.st_dev, st.st_ino) not in seen:
            seen.add((st.st_dev, st.st_ino))
            total += st.st_blocks * 512
        if os.path.isdir(p) and not os.path.islink(p):
            try:
                stack += [Path(e.path) for e in os.scandir(p)]
            except FileNotFoundError:
                continue
    return total


def scan(root: Path) -> Scan:
    """Group the store's files by job id."""
    from .jobs.types import STAGES

    entries: dict[tuple[str, str], Entry] = {}
    other: list[Path] = []
    seen: set[tuple[int, int]] = set()
    for stage_dir in sorted(root.iterdir()):
        if stage_dir.name not in STAGES or not stage_dir.is_dir():
            other.append(stage_dir)
            continue
        for p in sorted(stage_dir.iterdir()):
            name = p.name
            if _LOCK.match(name):
                continue
            if (m := _TMP.match(name)) is not None:
                key, slot = m["key"], "temp"
            elif name.endswith(".work") and p.is_dir():
                key, slot = name[: -len(".work")], "work"
            elif not name.startswith(".") and p.is_dir():
                key, slot = name, "result"
            else:
                other.append(p)
                continue
            e = entries.setdefault((stage_dir.name, key), Entry(stage_dir.name, key))
            if slot == "temp":
                e.temps.append(p)
            else:
                setattr(e, slot, p)
            e.size += _disk_usage(p, seen)
    return Scan(root, list(entries.values()), other)


def human(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"  # pragma: no cover


def ls(cache: Path | None, console: Console) -> int:
    """Entries per stage: finished results, unfinished ones (checkpoints, temp dirs, partial
    results), jobs running now, size on disk; and the total."""
    from .cache import Store

    root = store_root(cache)
    s = scan(root)
    store = Store(root, create=False)  # the store may be read-only
    t = Table(title=escape(f"job store {root}"), title_justify="left")
    for col, just in (("stage", "left"), ("results", "right"), ("unfinished", "right"), ("running", "right"),
                      ("size", "right")):
        t.add_column(col, justify=just)
    stages = list(dict.fromkeys(e.stage for e in s.entries))
    tot = [0, 0, 0, 0]
    for stage in stages:
        es = [e for e in s.entries if e.stage == stage]
        row = [sum(e.done for e in es), sum(not e.done for e in es), sum(store.held(e.stage, e.key) for e in es),
               sum(e.size for e in es)]
        tot = [a + b for a, b in zip(tot, row)]
        t.add_row(stage, *map(str, row[:3]), human(row[3]))
    t.add_section()
    t.add_row("total", *map(str, tot[:3]), human(tot[3]))
    console.print(t)
    console.print(f"{len(s.entries)} entries, {human(tot[3])} ({tot[3]:,} bytes); unfinished: training "
                  "checkpoints of a killed run (resumed by the next run), temp dirs, partial results", markup=False,
                  soft_wrap=True)
    if s.other:
        size = sum(_disk_usage(p, set()) for p in s.other)
        console.print(f"not job entries (never removed by gc): {', '.join(p.name for p in s.other[:6])}"
                      f"{' …' if len(s.other) > 6 else ''} ({human(size)})", markup=False, soft_wrap=True)
    return 0


def planned_ids(paths: list[Path], *, limit: int | None = None, limit_test: int | None = None) -> set[str]:
    """Job ids the given specs' full plans use (a .cot file), or a run folder's plan.json lists."""
    from . import load
    from .plan import make_plan

    ids: set[str] = set()
    for p in paths:
        if p.is_dir():
            plan = p / "plan.json"
            if not plan.exists():
                raise CotError([Diagnostic(None, f"{p} is a folder but not a cotdsl run folder (no plan.json)",
                                           hint="give spec files (.cot) or run folders (runs/NAME)")])
            try:
                ids |= {j["id"] for j in json.loads(plan.read_text())}
            except (ValueError, KeyError, TypeError) as e:
                raise CotError(f"{plan}: not a plan.json written by `cotdsl run` ({type(e).__name__}: {e})")
        else:
            ids |= {j.id for j in make_plan(load(p), limit=limit, limit_test=limit_test).jobs}
    return ids


def gc(cache: Path | None, paths: list[Path], console: Console, *, dry_run: bool = False,
       limit: int | None = None, limit_test: int | None = None) -> int:
    """Remove (or with `dry_run` list) every entry no given spec or run folder uses."""
    from .cache import Store

    if not paths:
        raise CotError("cache gc needs the specs (or run folders) whose jobs to keep, e.g. "
                       "`cotdsl cache gc specs/*.cot`")
    root = store_root(cache)
    keep = planned_ids(paths, limit=limit, limit_test=limit_test)
    s = scan(root)
    store = Store(root, create=False)
    running = sorted(f"{d.name}/{m['key']}" for d in root.iterdir() if d.is_dir()
                     for f in d.iterdir() if (m := _LOCK.match(f.name)) and store.held(d.name, m["key"]))
    foreign = [j for j in running if j not in keep]
    if foreign and not dry_run:
        raise CotError([Diagnostic(None, f"job {foreign[0]} is running and none of the given specs plans it"
                                         + (f" (and {len(foreign) - 1} more)" if len(foreign) > 1 else "")
                                         + ": gc could delete its inputs under it",
                                   hint="give its spec (or run folder) too, or wait until it finishes; "
                                        "--dry-run shows what would go")])
    drop = [e for e in s.entries if e.id not in keep]
    verb = "would remove" if dry_run else "removed"
    freed, n, busy = 0, 0, []
    for e in sorted(drop, key=lambda e: (e.stage, e.key)):
        if e.id in running:
            busy.append(e)
            continue
        label, what = e.label(), "" if e.done else "  (unfinished)"  # read before the files go
        if not dry_run and not _remove(store, e):
            busy.append(e)
            continue
        n += 1
        freed += e.size
        console.print(f"{verb} {e.id}  {human(e.size)}{what}" + (f"  {label}" if label else ""), markup=False,
                      soft_wrap=True)
    for e in busy:
        console.print(f"kept {e.id}: its job is running", markup=False, soft_wrap=True)
    kept = len(s.entries) - len(drop)
    console.print(f"{verb} {n} of {len(s.entries)} entries, "
                  f"{'freeing' if dry_run else 'freed'} {human(freed)} ({freed:,} bytes); kept {kept} that the "
                  f"{len(paths)} given spec(s) use" + (f" and {len(busy)} in use" if busy else ""), markup=False, soft_wrap=True)
    if foreign:
        console.print(f"note: {len(foreign)} running job(s) none of the given specs plans (e.g. {foreign[0]}): "
                      "a real gc refuses to run until they finish or their spec is given", markup=False, soft_wrap=True)
    return 0


def _remove(store, e: Entry) -> bool:
    """Delete one entry under its job's lock; False when a job took the lock meanwhile."""
    from filelock import FileLock, Timeout

    lk = FileLock(str(store.lock_path(e.stage, e.key)))
    try:
        lk.acquire(timeout=0)
    except Timeout:
        return False
    try:
        for p in e.paths():
            if not p.exists():
                continue
            # a result leaves its name at once (atomic rename): never a half-deleted result with DONE
            gone = Path(tempfile.mkdtemp(dir=p.parent, prefix=f".{e.key}.gc-", suffix=".tmp"))
            os.replace(p, gone / "x")
            shutil.rmtree(gone)
    finally:
        lk.release()
    return True
