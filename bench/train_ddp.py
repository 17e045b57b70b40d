"""One training job on 1 process vs `devices` processes (DDP over gloo on CPU, or nccl on CUDA).

    HF_HUB_OFFLINE=1 .venv/bin/python bench/train_ddp.py [--devices 2] [--steps 8] [--seqs 64]

The job: SmolLM2-135M (`cotdsl.models.load_smollm2`), `--seqs` synthetic sequences of 100–150
tokens, ~50% prompt (as bench/train_speed.py), batch 8, `--steps` optimizer steps, precision
auto, no checkpoints. Three runs see the same global batches: one process with all torch threads,
one process with the threads one worker gets (threads / devices), and `devices` processes.
Prints, per run: wall time of the
whole `train()` call (for devices > 1 that includes starting the workers, handing them the model
and loading the result back), the training loop's own time, tokens/s of the loop, and the
largest relative loss difference between the two curves.
"""
from __future__ import annotations

import argparse
import copy
import os
import tempfile
import time
from pathlib import Path

import torch

from common import emit, figure  # bench/common.py (bench/ is on sys.path when a bench runs)
from machine import cpu_name

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--devices", type=int, default=2)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--seqs", type=int, default=64)
    a = ap.parse_args()
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    from train_speed import make_seqs

    from cotdsl.jobs.train import train
    from cotdsl.models import load_smollm2
    from cotdsl.spec import TrainCfg

    base, tok = load_smollm2()
    seqs = make_seqs(tok, a.seqs, "synthetic")
    print(f"{cpu_name()}, {os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} threads), "
          f"CUDA devices: {torch.cuda.device_count()}")
    print(f"job: SmolLM2-135M, {len(seqs)} seqs, batch 8, {a.steps} steps")
    cfg = TrainCfg(batch=8, lr=5e-5, max_steps=a.steps, checkpoint_every=0)
    rows = []
    threads = torch.get_num_threads()
    with tempfile.TemporaryDirectory() as tmp:
        # 1 process with all threads; 1 process with one thread (what each DDP worker gets); DDP.
        # With one thread in all the first two are the same run (and the second would find the
        # first's finished checkpoint in its out_dir): it runs once.
        for n, th in dict.fromkeys(((1, threads), (1, max(1, threads // a.devices)), (a.devices, threads))):
            c = TrainCfg(**{**cfg.__dict__, "devices": n})
            torch.set_num_threads(th)
            t = time.perf_counter()
            res = train(copy.deepcopy(base), tok, seqs, c, seed=0, out_dir=Path(tmp) / f"d{n}t{th}")
            rows.append((n, th, time.perf_counter() - t, res))
            torch.set_num_threads(threads)
    ref = rows[0][3].losses
    print(f"\n{'devices':>7} {'train() s':>10} {'loop s':>8} {'tok/s':>8}  {'max rel Δloss':>13}  device")
    figs = []
    for i, (n, th, wall, res) in enumerate(rows):
        d = max(abs(x - y) / abs(y) for x, y in zip(res.losses, ref))
        print(f"{n:7d} {wall:10.1f} {res.time_s:8.1f} {res.tokens_per_s:8.1f}  {d:13.2e}  {res.device}")
        run = f"devices: {n} (DDP, {th} threads each)" if n > 1 else f"1 process, {th} threads"
        figs += [figure(f"{run}: train() wall", wall, "s"), figure(f"{run}: loop", res.time_s, "s"),
                 figure(f"{run}: tokens/s of the loop", res.tokens_per_s, "tok/s",
                        ratio=res.tokens_per_s / rows[0][3].tokens_per_s if i else None,
                        vs=f"1 process, {threads} threads")]
        if i:
            figs.append(figure(f"{run}: max relative Δloss vs 1 process, {threads} threads", d, ""))
    emit("train_ddp", figs, devices=a.devices, steps=a.steps, seqs=a.seqs, batch=8, threads=threads)


if __name__ == "__main__":
    main()
