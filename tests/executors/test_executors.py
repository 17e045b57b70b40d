"""Every executor runs the same jobs to the same numbers: local in-process, local workers and a
Ray cluster (Slurm: tests/cluster/). A crashed worker's job is retried and a failing job is
isolated. All runs are real, on a tiny random student."""
import json
import os
import signal
import subprocess
import sys
import time

import polars as pl
import pytest

from cotdsl.executors import ExecutorCfg, load_cfg
from cotdsl.run import EXIT_JOBS, EXIT_OK, run

sys.path.insert(0, os.path.dirname(os.path.dirname(__file__)))
from test_run import PLUGIN, jobs, quiet, write_spec  # noqa: E402

ONLY = ["target=after,none", "seed=0"]
KEYS = ["condition", "seed", "ex_id"]


@pytest.fixture
def env(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


def results(out):
    return pl.read_parquet(out / "tiny" / "results.parquet").sort(KEYS)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The in-process run every executor must reproduce."""
    d = tmp_path_factory.mktemp("ref")
    spec = write_spec(d)
    assert run(spec, only=ONLY, console=quiet(), cache=d / "c", out=d / "r") == EXIT_OK
    return results(d / "r")


@pytest.mark.parametrize("cfg", [ExecutorCfg(kind="local", workers=2), ExecutorCfg(kind="ray")],
                         ids=["local2", "ray"])
def test_executors_give_identical_results(env, reference, cfg):
    if cfg.kind == "ray":
        pytest.importorskip("ray")
    spec = write_spec(env)
    assert run(spec, only=ONLY, console=quiet(), cache=env / "c", out=env / "r", executor=cfg) == EXIT_OK
    assert results(env / "r").equals(reference)
    st = jobs(env / "r" / "tiny")
    assert {v["status"] for v in st.values()} == {"ran"}


@pytest.mark.parametrize("kind", ["local", "ray"])
def test_a_failing_job_is_isolated(env, monkeypatch, kind):
    if kind == "ray":
        pytest.importorskip("ray")
    (env / "boom_plugin.py").write_text(PLUGIN)
    monkeypatch.syspath_prepend(str(env))
    spec = write_spec(env, extra="target broken = label -> explode(rationale)")
    spec.write_text('plugin "boom_plugin"\n' + spec.read_text())
    cfg = ExecutorCfg(kind=kind, workers=2)
    assert run(spec, only=["target=after,broken", "seed=0"], console=quiet(), executor=cfg) == EXIT_JOBS
    st = jobs(env / "runs" / "tiny")
    broken = {v["stage"]: v for v in st.values() if "broken" in v["label"]}
    assert broken["render"]["status"] == "failed" and "boom in explode" in broken["render"]["cause"]
    assert broken["render"]["attempts"] == 1  # a job that raises is not retried
    assert {broken[s]["status"] for s in ("train", "eval", "probe")} == {"skipped"}
    assert "boom in explode" in broken["eval"]["cause"]
    assert {v["status"] for v in st.values() if "broken" not in v["label"]} == {"ran"}


def _workers_of(pid: int, marker: str) -> list[int]:
    out = subprocess.run(["ps", "-ww", "-eo", "pid,ppid,args"], capture_output=True, text=True).stdout
    rows = [line.split(None, 2) for line in out.splitlines()[1:]]
    return [int(p) for p, pp, args in rows if marker in args and (pp == str(pid) or marker.startswith("ray::"))]


@pytest.mark.parametrize("kind,marker", [("local", "spawn_main"), ("ray", "ray::")])
def test_a_killed_worker_is_retried_to_the_same_table(env, kind, marker):
    if kind == "ray":
        pytest.importorskip("ray")
    slow = write_spec(env, epochs=60)  # long enough to be killed mid-training
    only = ["target=after", "seed=0"]
    code = (f"import sys; from cotdsl.run import run; from cotdsl.executors import ExecutorCfg; "
            f"sys.exit(run({str(slow)!r}, only={only!r}, executor=ExecutorCfg(kind={kind!r}, workers=2)))")
    p = subprocess.Popen([sys.executable, "-c", code], cwd=env, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 240
    while time.time() < deadline and not list((env / ".cotdsl-cache" / "train").glob("*.work/ckpt/*")):
        time.sleep(0.1)
    victims = _workers_of(p.pid, marker)
    if kind == "ray":  # the task running the training (Ray names its process after the task)
        victims = [v for v in victims if "train" in open(f"/proc/{v}/cmdline").read()]
    assert p.poll() is None and victims, "no worker found mid-training"
    for v in victims:
        os.kill(v, signal.SIGKILL)
    out = p.communicate(timeout=400)[0]
    assert p.returncode == 0, out
    st = jobs(env / "runs" / "tiny")
    (train,) = [v for v in st.values() if v["stage"] == "train"]
    assert train["status"] == "ran"
    if kind == "local":  # Ray retries inside its own task system, unseen by the driver
        assert train["attempts"] == 2 and "retrying" in out
    killed = results(env / "runs")
    assert run(slow, only=only, console=quiet(), cache=env / "clean", out=env / "clean_out") == EXIT_OK
    assert results(env / "clean_out").equals(killed)


def test_executor_config_file_and_flags(tmp_path):
    from cotdsl.errors import CotError

    f = tmp_path / "ex.toml"
    f.write_text('[executor]\nkind = "slurm"\npartition = "gpu"\nsbatch = ["--qos=high"]\n')
    cfg = load_cfg(f, partition="debug", workers=None)
    assert (cfg.kind, cfg.partition, cfg.sbatch) == ("slurm", "debug", ("--qos=high",))
    f.write_text('[executor]\npartiton = "gpu"\n')
    with pytest.raises(CotError, match="unknown executor setting `partiton`") as e:
        load_cfg(f)
    assert "did you mean `partition`" in e.value.render()
    with pytest.raises(CotError, match="unknown executor 'slrum'"):
        load_cfg(None, kind="slrum")
