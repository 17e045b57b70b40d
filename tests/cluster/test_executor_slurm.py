"""`cotdsl run --executor slurm` on a real one-node Slurm cluster (scripts/slurm-cluster): the
same numbers as in-process, failures isolated, jobs that become ready together go in as one job
array, a detached run is collected later."""
import os
import sys

import polars as pl

from cotdsl.executors import ExecutorCfg
from cotdsl.run import EXIT_JOBS, EXIT_OK, run

sys.path.insert(0, os.path.dirname(os.path.dirname(__file__)))
from test_run import PLUGIN, jobs, quiet, write_spec  # noqa: E402

KEYS = ["condition", "seed", "ex_id"]


def test_slurm_gives_the_in_process_numbers_and_isolates_a_failure(slurm, slurm_partition, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "boom_plugin.py").write_text(PLUGIN)
    monkeypatch.syspath_prepend(str(tmp_path))
    spec = write_spec(tmp_path, extra="target broken = label -> explode(rationale)")
    spec.write_text('plugin "boom_plugin"\n' + spec.read_text())
    only = ["target=after,broken", "seed=0"]
    assert run(spec, only=only, console=quiet(), cache=tmp_path / "c1", out=tmp_path / "r1") == EXIT_JOBS
    cfg = ExecutorCfg(kind="slurm", partition=slurm_partition, time_min=10)
    assert run(spec, only=only, console=quiet(), cache=tmp_path / "c2", out=tmp_path / "r2", executor=cfg) == EXIT_JOBS
    a = pl.read_parquet(tmp_path / "r1/tiny/results.parquet").sort(KEYS)
    b = pl.read_parquet(tmp_path / "r2/tiny/results.parquet").sort(KEYS)
    assert len(a) == 12 and a.equals(b)
    st = jobs(tmp_path / "r2" / "tiny")
    broken = {v["stage"]: v for v in st.values() if "broken" in v["label"]}
    assert broken["render"]["status"] == "failed" and "boom in explode" in broken["render"]["cause"]
    assert {broken[s]["status"] for s in ("train", "eval", "probe")} == {"skipped"}
    assert {v["status"] for v in st.values() if "broken" not in v["label"]} == {"ran"}
    # submitit's logs live beside the store, a folder per Slurm job
    logs = [d.name for d in (tmp_path / "c2" / "_slurm").iterdir() if d.name[0].isdigit()]
    # the two render jobs (after, broken) became ready together and asked for the same resources:
    # one job array (Slurm ids `<array>_<index>`), the others single jobs
    assert sum("_" in name for name in logs) == 2 and len({n.split("_")[0] for n in logs if "_" in n}) == 1, logs


def test_detached_run_then_status_then_collect(slurm, slurm_partition, tmp_path, monkeypatch):
    import time

    from rich.console import Console

    from cotdsl.run import status

    monkeypatch.chdir(tmp_path)
    spec = write_spec(tmp_path)
    only = ["target=after"]
    cfg = ExecutorCfg(kind="slurm", partition=slurm_partition, time_min=10)
    assert run(spec, only=only, console=quiet(), executor=cfg, detach=True) == EXIT_OK
    rd = tmp_path / "runs" / "tiny"
    det = __import__("json").loads((rd / "detached.json").read_text())
    # data, teacher, render, then train, eval, probe for seeds 0 and 1: all submitted at once,
    # the two seeds' jobs of each stage as one job array (`<array id>_<index>`)
    ids = det["slurm"]
    assert len(ids) == 10, ids
    for stage in ("train", "eval", "probe"):
        mine = sorted(v for k, v in ids.items() if k.startswith(stage + "/"))
        assert len(mine) == 2 and mine[0].split("_")[0] == mine[1].split("_")[0] and "_" in mine[0], ids
    deadline = time.time() + 240
    while time.time() < deadline:
        con = Console(record=True, width=150)
        status(rd, console=con)
        text = con.export_text()
        if "done" in text and not any(w in text for w in ("running", "waiting", "not done")):
            break
        time.sleep(2)
    assert "failed" not in text and "probe" in text
    assert run(spec, only=only, console=quiet()) == EXIT_OK  # collects: everything is cached
    assert {v["status"] for v in jobs(rd).values()} == {"cached"}
