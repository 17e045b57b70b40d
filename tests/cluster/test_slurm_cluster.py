"""The real one-node Slurm cluster of scripts/slurm-cluster, driven through submitit.

Functions sent to Slurm are defined inside the tests: cloudpickle then ships them by value.
A module-level function of a test module would be pickled by reference, and the job's Python
(cwd = the submit dir, no pytest sys.path tweaks) could not import ``test_slurm_cluster``.
"""

from __future__ import annotations

import subprocess
import time

import pytest

submitit = pytest.importorskip("submitit", reason="submitit not installed: pip install -e '.[slurm]'")

JOB_TIMEOUT_S = 45


def _result(job, timeout: float = JOB_TIMEOUT_S):
    """job.result(), but cancel the job and fail instead of waiting forever."""
    deadline = time.monotonic() + timeout
    polls = 0
    # done() looks for the result file, and asks sacct only every 2, 4, 8... s (up to 60 s) after
    # the watcher's first job of the session; force that check every second.
    while not job.done(force_check=polls % 5 == 4):
        if time.monotonic() > deadline:
            job.cancel(check=False)
            pytest.fail(f"Slurm job {job.job_id} not done after {timeout} s (state {job.state})")
        polls += 1
        time.sleep(0.2)
    return job.result()


def _squeue_state(job_id: str, fmt: str = "%T") -> str:
    out = subprocess.run(
        ["squeue", "-h", "--states=all", "-j", job_id, "-o", fmt], capture_output=True, text=True, timeout=15
    )
    return out.stdout.strip()


def _executor(tmp_path, partition, **params):
    ex = submitit.AutoExecutor(folder=tmp_path / "submitit", cluster="slurm")
    assert ex.cluster == "slurm"
    ex.update_parameters(slurm_partition=partition, timeout_min=5, cpus_per_task=1, mem_gb=1, **params)
    return ex


def test_submit_returns_result(slurm, slurm_partition, tmp_path):
    def where(x):
        import os
        import socket

        return x * 2, os.environ.get("SLURM_JOB_ID"), os.environ.get("SLURM_JOB_PARTITION"), socket.gethostname()

    job = _executor(tmp_path, slurm_partition).submit(where, 21)
    value, job_id, partition, _host = _result(job)
    assert value == 42
    assert job_id == job.job_id  # it really ran as that Slurm job
    assert partition == slurm_partition


def test_dependency_afterok_orders_jobs(slurm, slurm_partition, tmp_path):
    def stamp(sleep_s):
        import time

        start = time.time()
        time.sleep(sleep_s)
        return start, time.time()

    first = _executor(tmp_path, slurm_partition).submit(stamp, 3)
    dep = {"dependency": f"afterok:{first.job_id}"}
    second = _executor(tmp_path, slurm_partition, slurm_additional_parameters=dep).submit(stamp, 0)

    # While the first runs, Slurm holds the second back for its dependency (a CPU is free otherwise).
    assert _squeue_state(second.job_id, "%T %r") == "PENDING Dependency"

    _first_start, first_end = _result(first)
    second_start, _second_end = _result(second)
    assert second_start >= first_end


def test_cancelled_job_is_reported(slurm, slurm_partition, tmp_path):
    """submitit learns job states from `sacct`; our cluster has no accounting storage, so the
    `slurm` fixture puts the stand-in scripts/sacct-squeue first on PATH. Without it submitit
    would never see that this job was cancelled and `job.result()` would wait forever."""

    def nap():
        import time

        time.sleep(120)

    job = _executor(tmp_path, slurm_partition).submit(nap)
    deadline = time.monotonic() + 20
    while _squeue_state(job.job_id) != "RUNNING" and time.monotonic() < deadline:
        time.sleep(0.2)
    job.cancel()
    # A job that left no result file costs result() 15 s of waiting for a slow (NFS) filesystem
    # by default; the jobs here write to the local disk.
    job._results_timeout_s = 0
    with pytest.raises(submitit.core.utils.UncompletedJobError, match="CANCELLED"):
        _result(job, timeout=30)
