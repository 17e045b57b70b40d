"""Content hashes and crash-safe writes: the two things that make `cotdsl run` resumable.

A job's key is the hash of everything it depends on (its spec subtree, its inputs' keys, the
code version of its stage). Its output lives in `<root>/<stage>/<key>/` and only ever appears
there by an atomic directory rename, so after `kill -9` a job either exists whole or not at all.
"""
from __future__ import annotations

import hashlib
import inspect
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from .spec import to_dict


def stable_hash(obj: Any, n: int = 16) -> str:
    """sha256 of the canonical JSON of `obj` (spec dataclasses via `to_dict`), first n hex chars."""
    blob = json.dumps(to_dict(obj), sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:n]


def files_digest(decl: Any) -> dict[str, str]:
    """sha256 of every local file (or folder, recursively) a declaration's arguments name — data
    files, rationale files, save_to_disk folders — so editing one in place re-runs the jobs that
    read it. The checker has already made those paths absolute; other strings are not paths."""
    out: dict[str, str] = {}

    def visit(v: Any) -> None:
        if isinstance(v, (tuple, list)):
            for x in v:
                visit(x)
        elif isinstance(v, dict):
            for x in v.values():
                visit(x)
        elif isinstance(v, str) and os.path.isabs(v) and os.path.exists(v):
            p = Path(v)
            files = sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p]
            h = hashlib.sha256()
            for f in files:
                h.update(str(f.relative_to(p) if p.is_dir() else f.name).encode())
                with open(f, "rb") as fh:
                    for chunk in iter(lambda: fh.read(1 << 20), b""):
                        h.update(chunk)
            out[v] = h.hexdigest()[:16]

    visit(getattr(decl, "args", ()))
    return out


def code_version(*objs: Any) -> str:
    """Hash of the source files defining `objs` (modules, functions): edit a stage, rerun it."""
    h = hashlib.sha256()
    for o in objs:
        path = inspect.getsourcefile(o)
        h.update(Path(path).read_bytes() if path else repr(o).encode())
    return h.hexdigest()[:12]


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _share(path: Path | str, directory: bool = False) -> None:
    """mkstemp/mkdtemp create 0600/0700 entries; published results get the modes of any file the
    user creates (0644/0755 under the usual umask), so collaborators can read a run folder."""
    os.chmod(path, (0o777 if directory else 0o666) & ~_umask())


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        _share(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, json.dumps(obj, indent=1, sort_keys=True, default=str).encode())


def atomic_write_parquet(path: Path, df) -> None:
    """polars DataFrame -> parquet, atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        df.write_parquet(tmp)
        _share(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class Store:
    """Job outputs under `root/<stage>/<key>/`; `work(stage, key)` is a persistent scratch dir a
    long job (training) checkpoints into so that a killed run resumes instead of restarting."""

    def __init__(self, root: Path, *, create: bool = True):
        self.root = Path(root)
        if create:  # False: inspect a store (`cotdsl cache ls`), perhaps read-only, without writing
            self.root.mkdir(parents=True, exist_ok=True)

    def path(self, stage: str, key: str) -> Path:
        return self.root / stage / key

    def done(self, stage: str, key: str) -> bool:
        return (self.path(stage, key) / "DONE").exists()

    @contextmanager
    def lock(self, stage: str, key: str, *, on_wait=None) -> Iterator[None]:
        """Hold the job's lock: one process at a time runs a job, across processes and (on a
        shared filesystem with working `flock`) across nodes. The lock is an OS file lock, so a
        holder that dies (even by `kill -9`) releases it: there are no stale locks to break.
        `on_wait()` is called once if another process holds it."""
        from filelock import FileLock, Timeout

        path = self.lock_path(stage, key)
        path.parent.mkdir(parents=True, exist_ok=True)
        lk = FileLock(str(path))
        try:
            lk.acquire(timeout=0)
        except Timeout:
            if on_wait is not None:
                on_wait()
            lk.acquire()
        try:
            yield
        finally:
            lk.release()

    def lock_path(self, stage: str, key: str) -> Path:
        return self.root / stage / f".{key}.lock"

    def held(self, stage: str, key: str) -> bool:
        """Whether some process holds the job's lock now (its job is running). Creates nothing,
        so a read-only store can be inspected; the same flock `lock` takes (filelock on Unix)."""
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not Unix: ask filelock, which creates the lock file
            from filelock import FileLock, Timeout

            lk = FileLock(str(self.lock_path(stage, key)))
            try:
                lk.acquire(timeout=0)
            except Timeout:
                return True
            lk.release()
            return False
        try:
            fd = os.open(self.lock_path(stage, key), os.O_RDONLY)
        except FileNotFoundError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)  # closing drops a lock this probe took
        return False

    def clean_stale(self, stage: str, key: str) -> int:
        """Remove temp dirs a killed run left for this job (call while holding its lock)."""
        n = 0
        for tmp in (self.root / stage).glob(f".{key}.*.tmp"):
            shutil.rmtree(tmp, ignore_errors=True)
            n += 1
        return n

    def work(self, stage: str, key: str) -> Path:
        p = self.root / stage / f"{key}.work"
        p.mkdir(parents=True, exist_ok=True)
        return p

    @contextmanager
    def writing(self, stage: str, key: str) -> Iterator[Path]:
        """Yield a fresh temp dir; on success it is renamed to the job's final dir (with DONE)."""
        final = self.path(stage, key)
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{key}.", suffix=".tmp"))
        try:
            yield tmp
            (tmp / "DONE").write_text("ok\n")
            _share(tmp, directory=True)
            if final.exists():  # a stale partial result from an older layout: replace it
                shutil.rmtree(final)
            os.replace(tmp, final)
            _fsync_dir(final.parent)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        work = self.root / stage / f"{key}.work"
        if work.exists():
            shutil.rmtree(work, ignore_errors=True)
