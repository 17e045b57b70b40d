"""run_job records the peak RSS of the process that ran a job (job.json, the Outcome, jobs.json,
`cotdsl status`), measured from the job's start."""
import json
import mmap
import os
import sys
from pathlib import Path

import pytest
from rich.console import Console

from cotdsl.executors import ExecutorCfg
from cotdsl.jobs.runner import PeakRss
from cotdsl.run import EXIT_OK, run, status

sys.path.insert(0, os.path.dirname(os.path.dirname(__file__)))
from test_run import jobs, quiet, write_spec  # noqa: E402

MiB = 2**20
LINUX_RESET = os.path.exists("/proc/self/clear_refs") and os.access("/proc/self/clear_refs", os.W_OK)


def _resident(n: int) -> mmap.mmap:
    m = mmap.mmap(-1, n)
    for i in range(0, n, mmap.PAGESIZE):
        m[i] = 1
    return m


@pytest.mark.skipif(not LINUX_RESET, reason="needs /proc/self/clear_refs (Linux) to reset the peak")
def test_peak_is_measured_from_the_start_not_from_the_process_start():
    # Anonymous mmaps, pages touched: resident while mapped, returned on close whatever malloc's
    # state (inside a long pytest process freed heap memory is reused without growing the RSS).
    before = _resident(256 * MiB)  # the process's peak is now >= 256 MiB above what follows
    before.close()
    mem = PeakRss()
    held = _resident(64 * MiB)
    r = mem.read()
    held.close()
    assert r["peak_rss_scope"] == "job"
    assert r["peak_rss_bytes"] >= r["rss_start_bytes"] + 64 * MiB
    assert r["peak_rss_bytes"] < r["rss_start_bytes"] + 256 * MiB  # the earlier 256 MiB is not in it


@pytest.mark.parametrize("workers", [1, 2], ids=["in-process", "local-workers"])
def test_a_tiny_runs_train_job_records_its_peak_rss(tmp_path, monkeypatch, workers):
    monkeypatch.chdir(tmp_path)
    spec = write_spec(tmp_path)
    cfg = ExecutorCfg(kind="local", workers=workers)
    assert run(spec, only=["target=none", "seed=0"], console=quiet(), executor=cfg) == EXIT_OK
    st = jobs(tmp_path / "runs" / "tiny")
    (tid,) = [k for k, v in st.items() if v["stage"] == "train"]
    rec = json.loads((Path(".cotdsl-cache") / tid / "job.json").read_text())
    # a Python process with torch imported holds far more than 50 MiB; the peak includes what it held
    assert rec["peak_rss_bytes"] >= max(50 * MiB, rec["rss_start_bytes"] or 0)
    assert rec["peak_rss_scope"] == ("job" if LINUX_RESET else "process")
    assert st[tid]["peak_rss_bytes"] == rec["peak_rss_bytes"]  # the run's jobs.json shows the same figure
    assert all(v["peak_rss_bytes"] > 0 for v in st.values())  # every job that ran has one
    con = Console(record=True, width=160)
    assert status(tmp_path / "runs" / "tiny", console=con) == EXIT_OK
    text = con.export_text()
    train_row = next(line for line in text.splitlines() if line.strip("│ ").startswith("train"))
    assert "peak RSS" in text and f"{rec['peak_rss_bytes'] / MiB:,.0f} MiB" in train_row  # its stage's largest
