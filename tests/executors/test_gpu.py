"""The CUDA path end to end (marker `gpu`): device pick, bf16 autocast, two workers sharing one
GPU, DDP over two GPUs. Skipped, with the reason, on machines without CUDA (this project's CI)."""
import json
import os
import sys

import polars as pl
import pytest

torch = pytest.importorskip("torch")
pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")]

from cotdsl.executors import ExecutorCfg  # noqa: E402
from cotdsl.run import EXIT_OK, run  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(__file__)))
from test_run import jobs, quiet, write_spec  # noqa: E402

KEYS = ["condition", "seed", "ex_id"]


def test_a_tiny_grid_trains_on_cuda_in_process_and_on_two_workers_sharing_the_gpu(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    spec = write_spec(tmp_path)
    only = ["target=after,none", "seed=0"]
    assert run(spec, only=only, console=quiet(), cache=tmp_path / "c1", out=tmp_path / "r1") == EXIT_OK
    st = jobs(tmp_path / "r1" / "tiny")
    assert all(str(v["info"]["device"]).startswith("cuda") for v in st.values() if v["stage"] == "train")
    cfg = ExecutorCfg(kind="local", workers=2)  # one visible GPU: both workers share it
    assert run(spec, only=only, console=quiet(), cache=tmp_path / "c2", out=tmp_path / "r2", executor=cfg) == EXIT_OK
    a = pl.read_parquet(tmp_path / "r1/tiny/results.parquet").sort(KEYS)
    b = pl.read_parquet(tmp_path / "r2/tiny/results.parquet").sort(KEYS)
    assert a.equals(b)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="DDP on GPUs needs two of them")
def test_ddp_on_two_gpus(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    spec = write_spec(tmp_path)
    spec.write_text(spec.read_text().replace("checkpoint_every: 2", "checkpoint_every: 2, devices: 2"))
    assert run(spec, only=["target=after", "seed=0"], console=quiet()) == EXIT_OK
    st = json.loads((tmp_path / "runs" / "tiny" / "jobs.json").read_text())
    assert {v["status"] for v in st.values()} == {"ran"}
