import os
import signal
import subprocess
import sys
import textwrap

import pytest

from cotdsl.cache import Store, atomic_write_json, stable_hash
from cotdsl.spec import Lit, Ref, Task


def test_stable_hash_ignores_positions_and_sees_content():
    from cotdsl.spec import Pos

    a = Task((Ref("label", Pos("a.cot", 1, 1)), Lit("x")))
    b = Task((Ref("label", Pos("b.cot", 9, 9)), Lit("x")))
    c = Task((Ref("label"), Lit("y")))
    assert stable_hash(a) == stable_hash(b)
    assert stable_hash(a) != stable_hash(c)


def test_store_publishes_only_whole_results(tmp_path):
    store = Store(tmp_path)
    with pytest.raises(RuntimeError):
        with store.writing("train", "k1") as out:
            (out / "half.bin").write_bytes(b"x")
            raise RuntimeError("crash mid-job")
    assert not store.done("train", "k1")
    assert not any(p.name.startswith(".k1") for p in (tmp_path / "train").iterdir())
    with store.writing("train", "k1") as out:
        atomic_write_json(out / "r.json", {"ok": 1})
    assert store.done("train", "k1")
    assert (store.path("train", "k1") / "r.json").read_text().strip().startswith("{")


def test_store_survives_kill_9(tmp_path):
    """A process killed inside a job leaves no published result and no corrupt file."""
    code = textwrap.dedent(f"""
        import time
        from cotdsl.cache import Store
        s = Store({str(tmp_path)!r})
        with s.writing("eval", "k") as out:
            (out / "big").write_bytes(b"0" * 10_000_000)
            print("inside", flush=True)
            time.sleep(60)
    """)
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "inside"
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    assert not Store(tmp_path).done("eval", "k")


def test_published_files_and_job_dirs_are_readable_by_others(tmp_path):
    import os
    import stat

    import polars as pl

    from cotdsl.cache import Store, atomic_write_json, atomic_write_parquet

    old = os.umask(0o022)
    try:
        atomic_write_json(tmp_path / "a.json", {"x": 1})
        atomic_write_parquet(tmp_path / "b.parquet", pl.DataFrame({"x": [1]}))
        store = Store(tmp_path / "store")
        with store.writing("eval", "k1") as out:
            (out / "p.txt").write_text("hi")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.json").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "b.parquet").stat().st_mode) == 0o644
    assert stat.S_IMODE(store.path("eval", "k1").stat().st_mode) == 0o755
