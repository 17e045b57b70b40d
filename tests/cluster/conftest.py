"""Fixtures for tests that need a real Slurm cluster (``scripts/slurm-cluster up``).

``slurm`` (session): the path of a slurm.conf whose cluster answers ``sinfo`` with its node up;
  ``SLURM_CONF`` is set to it for the session (so ``sbatch``/submitit in the tests use it) and, when
  the conf sits in a ``scripts/slurm-cluster`` dir, that dir's ``bin/`` (the ``sacct`` stand-in,
  ``scripts/sacct-squeue``) goes first on ``PATH`` so submitit sees cancelled or failed jobs.
  The conf is ``$SLURM_CONF`` if set, else ``${COTDSL_SLURM_DIR:-/tmp/cotdsl-slurm}/slurm.conf``.
  Without a working cluster the test is skipped, or fails when ``COTDSL_REQUIRE_SLURM=1``
  (``make test`` sets that when it brought the cluster up itself).
``slurm_partition`` (session): the default partition's name in that conf (``debug`` for ours).
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
from pathlib import Path

import pytest

DEFAULT_DIR = Path(os.environ.get("COTDSL_SLURM_DIR") or "/tmp/cotdsl-slurm")
HOW = "run `scripts/slurm-cluster up` (needs root + apt-get) and export the SLURM_CONF it prints"
UP_STATES = ("idle", "mixed", "allocated", "completing")


def _no_slurm(why: str) -> None:
    msg = f"no Slurm: {why}; {HOW}"
    if os.environ.get("COTDSL_REQUIRE_SLURM") == "1":
        pytest.fail(msg + " (COTDSL_REQUIRE_SLURM=1)", pytrace=False)
    pytest.skip(msg)


def _controller(conf: Path) -> tuple[str, int] | None:
    """(address, port) of the first SlurmctldHost in conf, to fail fast where sinfo would retry."""
    try:
        text = conf.read_text()
    except OSError:
        return None
    host = re.search(r"^\s*(?:SlurmctldHost|ControlMachine)=([^\s(#]+)(?:\(([^)\s]+)\))?", text, re.M | re.I)
    port = re.search(r"^\s*SlurmctldPort=(\d+)", text, re.M | re.I)
    if host is None:
        return None
    return host.group(2) or host.group(1), int(port.group(1)) if port else 6817


def _find_conf() -> Path:
    env = os.environ.get("SLURM_CONF")
    conf = Path(env) if env else DEFAULT_DIR / "slurm.conf"
    if shutil.which("sinfo") is None:
        why = "`sinfo` is not installed"
        if os.geteuid() != 0:
            why += " and we are not root"
        elif shutil.which("apt-get") is None:
            why += " and there is no apt-get"
        _no_slurm(why)
    if not conf.is_file():
        _no_slurm(f"{conf} does not exist")
    ctld = _controller(conf)
    if ctld is not None:
        try:
            socket.create_connection(ctld, timeout=3).close()
        except OSError as e:
            _no_slurm(f"slurmctld of {conf} not answering on {ctld[0]}:{ctld[1]} ({e.strerror or e})")
    try:
        out = subprocess.run(
            ["sinfo", "-h", "-N", "-o", "%N %T"],
            env={**os.environ, "SLURM_CONF": str(conf)},
            capture_output=True, text=True, timeout=15,
        )
    except subprocess.TimeoutExpired:
        _no_slurm(f"sinfo (SLURM_CONF={conf}) did not answer in 15 s")
    if out.returncode != 0:
        err = (out.stderr.strip().splitlines() or ["?"])[-1]
        _no_slurm(f"sinfo failed (SLURM_CONF={conf}): {err}")
    states = [line.split()[-1] for line in out.stdout.splitlines() if line.strip()]
    if not any(s in UP_STATES for s in states):  # "idle*" (not responding), "drained" etc. are not up
        _no_slurm(f"no node is up (SLURM_CONF={conf}, sinfo: {out.stdout.strip() or 'no nodes'})")
    return conf


@pytest.fixture(scope="session")
def slurm():
    conf = _find_conf()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SLURM_CONF", str(conf))
        shim = conf.parent / "bin" / "sacct"
        if shim.is_file() and os.access(shim, os.X_OK):
            mp.setenv("PATH", f"{shim.parent}{os.pathsep}{os.environ.get('PATH', '')}")
        yield str(conf)


@pytest.fixture(scope="session")
def slurm_partition(slurm) -> str:
    text = Path(slurm).read_text()
    names = re.findall(r"^\s*PartitionName=(\S+)(.*)$", text, re.M | re.I)
    for name, rest in names:
        if re.search(r"\bDefault=YES\b", rest, re.I):
            return name
    if names:
        return names[0][0]
    pytest.fail(f"no PartitionName in {slurm}", pytrace=False)
