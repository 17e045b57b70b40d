"""`cotdsl cache ls` / `cotdsl cache gc` (cotdsl/cache_cli.py) on a real tiny run's job store."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cotdsl import load
from cotdsl.cache import Store
from cotdsl.cache_cli import scan
from cotdsl.cli import app
from cotdsl.plan import make_plan


def cli(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture
def store(tiny_ig_run, tmp_path):
    """(spec, a copy of its job store, its run folder): tests/conftest.py's tiny run with IG."""
    run_dir, root = tiny_ig_run
    dst = tmp_path / "store"
    shutil.copytree(root, dst)
    return run_dir.parent.parent / "tinyig.cot", dst, run_dir


def tree(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_size for p in sorted(root.rglob("*"))}


def table(output: str) -> dict[str, list[str]]:
    """`cache ls`'s rows: stage -> [results, unfinished, running, size]."""
    return {line.split("│")[1].strip(): [c.strip() for c in line.split("│")[2:-1]]
            for line in output.splitlines() if line.startswith("│")}


def planned(spec: Path) -> set[str]:
    return {j.id for j in make_plan(load(spec)).jobs}


def orphan(root: Path, stage: str = "train", key: str = "0123456789abcdef", size: int = 50_000) -> Path:
    """A finished result no spec plans (an older code version's, say), with a checkpoint dir."""
    d = root / stage / key
    d.mkdir(parents=True)
    (d / "weights.bin").write_bytes(os.urandom(size))
    (d / "DONE").write_text("ok\n")
    (d / "job.json").write_text(json.dumps({"label": "train old · t · toy · seed 0"}))
    (root / stage / f"{key}.work").mkdir()
    (root / stage / f"{key}.work" / "ckpt").write_bytes(b"x" * 10_000)
    return d


def test_ls_counts_entries_per_stage_with_sizes(store):
    spec, root, _ = store
    ids = planned(spec)
    r = cli("cache", "ls", "--cache", root)
    assert r.exit_code == 0, r.output
    rows = table(r.output)
    for stage in ("data", "teacher", "render", "train", "eval"):
        n = sum(i.startswith(stage + "/") for i in ids)
        assert rows[stage][:3] == [str(n), "0", "0"], (stage, rows)
    assert rows["total"][0] == str(len(ids))
    s = scan(root)
    total = sum(e.size for e in s.entries)
    assert total > 0 and all(e.size > 0 for e in s.entries)
    assert f"{len(ids)} entries" in r.output and f"({total:,} bytes)" in r.output
    # a train result holds the model: the biggest stage
    assert max(s.entries, key=lambda e: e.size).stage == "train"


def test_ls_and_gc_on_a_missing_store_say_so(tmp_path):
    for args in (("cache", "ls"), ("cache", "gc", tmp_path / "x.cot")):
        r = cli(*args, "--cache", tmp_path / "nope")
        assert r.exit_code == 1 and "no job store at" in r.output and "Traceback" not in r.output
    (tmp_path / "file").write_text("")
    r = cli("cache", "ls", "--cache", tmp_path / "file")
    assert r.exit_code == 1 and "is not a folder" in r.output
    assert not (tmp_path / "nope").exists()  # looking created nothing


def test_gc_dry_run_removes_nothing_then_gc_removes_only_the_orphans(store):
    spec, root, _ = store
    ids = planned(spec)
    old = orphan(root)
    (root / "eval" / ".fedcba9876543210.abc123.tmp").mkdir()  # a killed run's temp dir
    (root / "_slurm").mkdir()  # not a stage: never touched
    size = next(e.size for e in scan(root).entries if e.key == "0123456789abcdef")
    before = tree(root)

    r = cli("cache", "gc", spec, "--dry-run", "--cache", root)
    assert r.exit_code == 0, r.output
    assert tree(root) == before
    assert "would remove train/0123456789abcdef" in r.output and "train old" in r.output
    assert "would remove eval/fedcba9876543210" in r.output and "(unfinished)" in r.output
    assert f"would remove 2 of {len(ids) + 2} entries" in r.output
    assert f"({size + 4096:,} bytes)" in r.output  # the temp dir: one 4 KiB block

    r = cli("cache", "gc", spec, "--cache", root)
    assert r.exit_code == 0, r.output
    assert "removed train/0123456789abcdef" in r.output and f"removed 2 of {len(ids) + 2}" in r.output
    assert "train old · t · toy · seed 0" in r.output  # its label, read before it went
    assert not old.exists() and not (root / "train" / "0123456789abcdef.work").exists()
    assert not list((root / "eval").glob(".fedcba9876543210.*.tmp"))
    assert (root / "train" / ".0123456789abcdef.lock").exists()  # locks stay (see cache_cli's docstring)
    assert (root / "_slurm").is_dir()
    st = Store(root)
    assert all(st.done(*i.split("/", 1)) for i in ids)  # every job the spec plans is still there
    assert {e.id for e in scan(root).entries} == ids
    assert not [p for p in root.rglob("*.gc-*")]  # no leftovers of the removal itself
    r = cli("cache", "gc", spec, "--cache", root)
    assert r.exit_code == 0 and "removed 0 of" in r.output


def test_gc_keeps_what_a_spec_uses_and_removes_a_dropped_condition(store, tmp_path):
    spec, root, _ = store
    smaller = tmp_path / "smaller.cot"
    text = spec.read_text()
    smaller.write_text(text.replace("  target keys  = label -> keytokens(rationale, 2, by: ig)\n", ""))
    keep, everything = planned(smaller), planned(spec)
    assert keep < everything
    r = cli("cache", "gc", smaller, "--cache", root)
    assert r.exit_code == 0, r.output
    assert {e.id for e in scan(root).entries} == keep
    gone = everything - keep
    assert {i.split("/")[0] for i in gone} == {"rank", "render", "train", "eval", "probe"}  # `keys`'s own jobs
    assert all(f"removed {i}" in r.output for i in gone)


def test_a_run_folder_keeps_what_that_run_used(store, tmp_path):
    """A `run --limit` run's jobs are not the spec's full plan; its run folder's plan.json keeps them."""
    spec, root, run_dir = store
    r = cli("cache", "gc", run_dir, "--dry-run", "--cache", root)
    assert r.exit_code == 0 and "would remove 0 of" in r.output, r.output
    limited = {j.id for j in make_plan(load(spec), limit=4).jobs}
    assert not limited & planned(spec)  # the data job's key holds the limit: nothing shared
    r = cli("cache", "gc", spec, "--limit", "4", "--dry-run", "--cache", root)
    assert f"would remove {len(planned(spec))} of" in r.output
    (tmp_path / "notarun").mkdir()
    r = cli("cache", "gc", tmp_path / "notarun", "--cache", root)
    assert r.exit_code == 1 and "not a cotdsl run folder (no plan.json)" in r.output


def test_gc_never_touches_a_running_job(store):
    """A job whose lock is held (running) keeps its entry; while a job no given spec plans is
    running, gc removes nothing (its inputs could go under it) and says why."""
    spec, root, _ = store
    orphan(root)
    held = orphan(root, "eval", "aaaaaaaaaaaaaaaa", size=100)
    st = Store(root)
    with st.lock("eval", "aaaaaaaaaaaaaaaa"):
        before = tree(root)
        assert st.held("eval", "aaaaaaaaaaaaaaaa") and not st.held("train", "0123456789abcdef")
        r = cli("cache", "gc", spec, "--cache", root)
        assert r.exit_code == 1 and "job eval/aaaaaaaaaaaaaaaa is running" in r.output, r.output
        assert tree(root) == before
        r = cli("cache", "gc", spec, "--dry-run", "--cache", root)
        assert r.exit_code == 0 and "kept eval/aaaaaaaaaaaaaaaa: its job is running" in r.output
        assert "would remove train/0123456789abcdef" in r.output
        n_eval = sum(i.startswith("eval/") for i in planned(spec))
        assert table(cli("cache", "ls", "--cache", root).output)["eval"][:3] == [str(n_eval + 1), "0", "1"]
    assert not st.held("eval", "aaaaaaaaaaaaaaaa")
    r = cli("cache", "gc", spec, "--cache", root)
    assert r.exit_code == 0 and not held.exists()
