"""Training throughput: cotdsl's `train` vs `transformers.Trainer` (default settings) on one job.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/train_speed.py [--steps 16] [--seqs 64] [--no-fp32] [--peak-n 2048]

The job: SmolLM2-135M (`cotdsl.models.load_smollm2`), `--seqs` sequences of 100–150 tokens with
the first ~50% unsupervised (a synthetic stand-in cut from the embedded task's rationales; or
`--data builtin` for the embedded task rendered label-then-rationale, ~56 tokens), batch 8,
lr 5e-5 linear decay, `--steps` optimizer steps, same seed. The Trainer runs with its defaults
(fp32, fused AdamW, grad clip 1.0) and DataCollatorForSeq2Seq (labels -100 on prompt tokens);
its sampler is replaced by a sequential one over cotdsl's batch order so both see the same
batches in the same order and the loss curves can be compared step by step.

Prints a table: tokens/s, ratio to Trainer, MFU = 6·N·tokens/s over the measured matmul peak
(fp32 and bf16, measured here with --peak-n² matrices; a CPU without native bf16 takes minutes for
the bf16 one at 2048), then both loss curves.
"""
from __future__ import annotations

import argparse
import copy
import os
import random
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from common import emit, figure  # bench/common.py (bench/ is on sys.path when a bench runs)

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@dataclass(frozen=True)
class Seq:  # a render.Rendered stand-in (train reads input_ids, loss_mask, weight)
    input_ids: list
    loss_mask: list
    weight: float = 1.0


def matmul_peak(dtype: torch.dtype, n: int = 2048, reps: int = 6) -> float:
    """Best observed GFLOP/s of an n×n @ n×n matmul in `dtype` on this CPU."""
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    a @ b  # warm-up (oneDNN kernel selection)
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best / 1e9


def make_seqs(tok, n: int, data: str, seed: int = 0) -> list[Seq]:
    from cotdsl.data import builtin

    train, _ = builtin.generate(train=max(n, 64), test=8, seed=seed)
    if data == "builtin":
        from cotdsl import render
        from cotdsl.spec import Condition, Lit, Ref, Task

        cond = Condition("after", "after", (), (Task((Ref("label"), Lit(" because "), Ref("rationale"))),), "rank")
        return [Seq(list(r.input_ids), list(r.loss_mask)) for r in
                (render.render(ex, cond, tok, seed=seed)[0] for ex in train[:n])]
    rng = random.Random(seed)
    stream = tok(" ".join(ex.question + " " + (ex.rationale or "") for ex in train))["input_ids"]
    out = []
    for _ in range(n):
        L = rng.randint(100, 150)
        s = rng.randrange(0, len(stream) - L)
        ids = stream[s:s + L]
        p = L // 2
        out.append(Seq(ids, [0] * p + [1] * (L - p)))
    return out


def run_trainer(model, tok, seqs, order, steps: int, seed: int, out: Path):
    """transformers.Trainer with default settings; returns (tokens/s, per-step losses)."""
    from torch.utils.data import SequentialSampler
    from transformers import DataCollatorForSeq2Seq, Trainer, TrainerCallback, TrainingArguments

    flat = [i for b in order for i in b]  # cotdsl's batch order, consumed sequentially
    rows = [{"input_ids": seqs[i].input_ids, "attention_mask": [1] * len(seqs[i].input_ids),
             "labels": [t if m else -100 for t, m in zip(seqs[i].input_ids, seqs[i].loss_mask)]} for i in flat]

    class Seq_(Trainer):
        def _get_train_sampler(self, *a, **k):
            return SequentialSampler(self.train_dataset)

    times = {}

    class Clock(TrainerCallback):
        def on_train_begin(self, *a, **k):
            times["t0"] = time.perf_counter()

        def on_train_end(self, *a, **k):
            times["t1"] = time.perf_counter()

    args = TrainingArguments(output_dir=str(out), per_device_train_batch_size=8, max_steps=steps,
                             learning_rate=5e-5, logging_steps=1, save_strategy="no", report_to=[],
                             seed=seed, disable_tqdm=True)
    trainer = Seq_(model=model, args=args, train_dataset=rows, callbacks=[Clock()],
                   data_collator=DataCollatorForSeq2Seq(tok, padding=True, label_pad_token_id=-100))
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    n_rows = steps * 8
    tokens = sum(len(r["input_ids"]) for r in (rows * (1 + n_rows // len(rows)))[:n_rows])
    return tokens / (times["t1"] - times["t0"]), losses


def run_cotdsl(model, tok, seqs, steps: int, seed: int, out: Path, precision: str):
    from cotdsl.jobs.train import train
    from cotdsl.spec import TrainCfg

    cfg = TrainCfg(batch=8, lr=5e-5, max_steps=steps, precision=precision, checkpoint_every=0)
    res = train(model, tok, seqs, cfg, seed=seed, out_dir=out)
    return res.tokens_per_s, res.losses, res.device


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=16, help="optimizer steps per run")
    ap.add_argument("--seqs", type=int, default=64)
    ap.add_argument("--data", choices=["synthetic", "builtin"], default="synthetic")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-fp32", action="store_true", help="skip the cotdsl fp32 run (gathered logits only)")
    ap.add_argument("--peak-n", type=int, default=2048, help="matrix size of the matmul peak measurement")
    a = ap.parse_args()
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()

    from cotdsl.jobs.train import batch_order
    from cotdsl.models import load_smollm2

    t = time.perf_counter()
    base, tok = load_smollm2()
    print(f"loaded SmolLM2 in {time.perf_counter() - t:.1f} s; torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    n_params = sum(p.numel() for p in base.parameters())
    peak32, peak16 = matmul_peak(torch.float32, a.peak_n), matmul_peak(torch.bfloat16, a.peak_n)
    print(f"matmul peak: fp32 {peak32:.0f} GFLOP/s, bf16 {peak16:.0f} GFLOP/s ({a.peak_n}³, best of 6)")
    seqs = make_seqs(tok, a.seqs, a.data, a.seed)
    lens = [len(s.input_ids) for s in seqs]
    print(f"job: {len(seqs)} seqs, {min(lens)}–{max(lens)} tokens (mean {np.mean(lens):.0f}), "
          f"{np.mean([1 - sum(s.loss_mask) / len(s.loss_mask) for s in seqs]):.0%} prompt, batch 8, {a.steps} steps")
    order = batch_order(lens, 8, a.seed, 0)

    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        tps, losses = run_trainer(copy.deepcopy(base), tok, seqs, order, a.steps, a.seed, Path(tmp) / "hf")
        results["transformers.Trainer (fp32 default)"] = (tps, losses, 1)
        tps, losses, where = run_cotdsl(copy.deepcopy(base), tok, seqs, a.steps, a.seed, Path(tmp) / "c", "auto")
        results[f"cotdsl train (auto: {where.split(', ')[-1]})"] = (tps, losses, 2 if "bf16" in where else 1)
        if not a.no_fp32:
            tps, losses, _ = run_cotdsl(copy.deepcopy(base), tok, seqs, a.steps, a.seed, Path(tmp) / "f", "fp32")
            results["cotdsl train (fp32)"] = (tps, losses, 1)

    ref = next(iter(results.values()))
    print(f"\n{'run':<40} {'tok/s':>8} {'× Trainer':>10} {'MFU fp32pk':>11} {'MFU bf16pk':>11}")
    for name, (tps, _, _) in results.items():
        flops = 6 * n_params * tps / 1e9
        print(f"{name:<40} {tps:8.1f} {tps / ref[0]:10.2f} {flops / peak32:11.2f} {flops / peak16:11.2f}")
    print(f"(N = {n_params / 1e6:.1f}M parameters; MFU = 6·N·tokens/s / peak; cotdsl skips the lm_head on "
          "prompt tokens, so its useful FLOPs are below 6·N per token)")

    figs = [figure(f"matmul peak {name} ({a.peak_n}³, best of 6)", peak, "GFLOP/s")
            for name, peak in (("fp32", peak32), ("bf16", peak16))]
    for i, (name, (tps, _, _)) in enumerate(results.items()):
        figs.append(figure(f"{name}: tokens/s", tps, "tok/s", ratio=tps / ref[0] if i else None,
                           vs="transformers.Trainer"))
        figs += [figure(f"{name}: MFU vs the {pk} peak", 6 * n_params * tps / 1e9 / peak, "")
                 for pk, peak in (("fp32", peak32), ("bf16", peak16))]
    names = list(results)
    print("\nloss per step: " + " | ".join(names))
    for i in range(a.steps):
        print(f"{i + 1:4d}  " + "  ".join(f"{results[n][1][i]:8.4f}" if i < len(results[n][1]) else "      --"
                                          for n in names))
    for n in names[1:]:
        x, y = np.array(ref[1]), np.array(results[n][1])
        k = min(len(x), len(y))
        r = np.corrcoef(x[:k], y[:k])[0, 1] if k > 2 else float("nan")
        print(f"{n} vs Trainer: max |Δloss| {np.abs(x[:k] - y[:k]).max():.4f}, correlation {r:.3f}")
        figs.append(figure(f"{n}: max |Δloss| vs Trainer over {k} steps", float(np.abs(x[:k] - y[:k]).max()), "nats"))
    emit("train_speed", figs, steps=a.steps, seqs=a.seqs, data=a.data, seed=a.seed, batch=8,
         threads=torch.get_num_threads(), params_m=round(n_params / 1e6, 1), peak_n=a.peak_n)


if __name__ == "__main__":
    main()
