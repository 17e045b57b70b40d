"""Logit-lens cost on SmolLM2-135M: plain forward vs the fast lens vs TL's every-position unembed.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/lens_speed.py [--batch 32] [--seq 96] [--tl-rows 2]
        [--repeats 3] [--threads N]

Batch: 32 sequences x 96 random token ids (seed 0), fp32, CPU, --threads torch threads. Each
method runs in a fresh subprocess so its peak memory can be read cleanly:

  plain  `model(input_ids, attention_mask)` (full logits at every position), no_grad
  body   the transformer body only (`model.model(...)`, hidden states, no lm_head) - a floor
  lens   `interp.logit_lens` at the last position, 5 choice tokens (body forward + unembedding
         at B positions for all L+1 rows + full-vocab softmax/ranks)
  tl     TransformerLens 4: bridge `run_with_cache` + `accumulated_resid(apply_ln=True)` +
         `unembed` of every position. Materialising all L+1=31 rows needs 31*32*96*V*4 B
         (~17 GiB), so only --tl-rows rows are unembedded and that part is scaled by 31/rows.

`--engines` instead compares the two engines of `probe { engine: hf | tl }` at the label's reading
sites (whole-label lens, 4 choices of --label-tokens random tokens each, one chunk of --batch):

  plain     `model(...)` over the contexts, for scale
  label_hf  `interp.label_lens` (HF hidden states; choices' later tokens on the context's KV cache)
  label_tl  `interp.tl_lens.tl_label_lens` through a prebuilt bridge (resid hooks keep only the
            sites; one row per multi-token choice), plus the bridge's build time and RSS (a copy of
            the model) and max |dp| against label_hf on the same inputs

Times come from one process that interleaves the three methods in each of --repeats rounds (the
per-round tl / hf ratio is robust to load changes on a shared machine); each method's peak RSS
growth from a fresh process of its own (one warm-up call, then one measured call).

Time: median wall-clock of --repeats runs after one warm-up. Peak memory: the process's peak
RSS (VmHWM, reset through /proc/self/clear_refs just before the measured calls) minus its RSS
at that moment, with the model (and, for tl, the bridge) already loaded; the TL figure scales the unembedding part's RSS growth by
31/rows and adds it to the cache phase's peak growth. RSS counts every allocation torch makes on
CPU, which tracemalloc cannot see. Note: on a shared machine, timings are noisy.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import emit, figure  # noqa: E402 - bench/common.py (bench/ is on sys.path when a bench runs)


def rss() -> int:
    """Current resident set size in bytes."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def reset_peak() -> None:
    """Reset the kernel's peak-RSS counter (VmHWM) to the current RSS (Linux >= 4.0)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def peak_rss() -> int:
    """Peak RSS in bytes since the last `reset_peak` (VmHWM)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def inputs(tok, batch: int, seq: int):
    import torch

    g = torch.Generator().manual_seed(0)
    ids = torch.randint(100, len(tok), (batch, seq), generator=g)
    mask = torch.ones_like(ids)
    pos = torch.full((batch,), seq - 1)
    targets = torch.tensor([[tok.encode(f" {c}")[0] for c in "ABCDE"]] * batch)
    return ids, mask, pos, targets


def timed(fn, repeats: int):
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def measure(run, repeats: int) -> dict:
    """One warm-up call, then `repeats` timed calls: {times, time (median), peak_delta (peak RSS
    growth over the calls, bytes)}."""
    run()
    gc.collect()
    base = rss()
    reset_peak()
    times = timed(run, repeats)
    return {"times": times, "time": statistics.median(times), "peak_delta": peak_rss() - base}


def label_choices(batch: int, k: int, n_choices: int = 4, vocab: int = 49152) -> list:
    """Per example, `n_choices` labels of k random token ids (seed 1)."""
    import torch

    g = torch.Generator().manual_seed(1)
    return torch.randint(100, vocab, (batch, n_choices, k), generator=g).tolist()


def subrun(args: list[str], what: str) -> dict:
    """Run this script with `args` in a fresh process (offline) -> the dict of its RESULT line."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    proc = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, env=env)
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode or not line:
        sys.exit(f"{what} failed:\n{proc.stderr[-3000:]}")
    return json.loads(line[0][7:])


def engine_setup(method: str, batch: int, seq: int, k: int, out: dict):
    """(run, model, label inputs): a no-arg call of one method on SmolLM2 (plain forward, label lens
    engine hf, engine tl through a bridge built here: its build time and RSS go into `out`)."""
    import torch

    from cotdsl.models import load_smollm2
    from interp import bridge
    from interp.lens import label_lens
    from interp.tl_lens import tl_label_lens

    model, tok = load_smollm2()
    ids, mask, _, _ = inputs(tok, batch, seq)
    ctxs, chs, gold = ids.tolist(), label_choices(batch, k, vocab=len(tok)), [b % 4 for b in range(batch)]
    out.update(batch=batch, seq=seq, label_tokens=k, threads=torch.get_num_threads())
    br = None
    if method in ("label_tl", "all"):
        gc.collect()
        before = rss()
        t0 = time.perf_counter()
        br = bridge.build_bridge(model)
        out.update(bridge_build=time.perf_counter() - t0, bridge_rss=rss() - before)

    def run(m=method):
        with torch.no_grad():
            if m == "plain":
                return model(input_ids=ids, attention_mask=mask).logits
            if m == "label_hf":
                return label_lens(model, ctxs, chs, gold, batch=batch)
            return tl_label_lens(model, ctxs, chs, gold, tl_bridge=br, batch=batch)
    return run


def one_engine(method: str, batch: int, seq: int, repeats: int, k: int) -> dict:
    """Peak RSS growth of one method's call, in a fresh process (one warm-up call first)."""
    out = {"method": method}
    out.update(measure(engine_setup(method, batch, seq, k, out), 1))
    return out


def engine_times(batch: int, seq: int, repeats: int, k: int) -> dict:
    """Wall time of plain / label_hf / label_tl interleaved in each of `repeats` rounds (one
    process, one warm-up each): a load change on a shared machine hits all three alike, and the
    per-round ratio tl / hf is reported beside the medians. Then the engines' max differences."""
    import torch

    out: dict = {}
    run = engine_setup("all", batch, seq, k, out)
    methods = ("plain", "label_hf", "label_tl")
    for m in methods:
        run(m)  # warm-up
    times: dict = {m: [] for m in methods}
    for _ in range(repeats):
        for m in methods:
            t0 = time.perf_counter()
            run(m)
            times[m].append(time.perf_counter() - t0)
    tl, hf = run("label_tl"), run("label_hf")
    out.update(times=times, time={m: statistics.median(t) for m, t in times.items()},
               ratio_tl_hf=statistics.median(a / b for a, b in zip(times["label_tl"], times["label_hf"])),
               max_dp=float((tl.probs - hf.probs).abs().max()),
               max_dchoice=float((tl.choice_probs - hf.choice_probs).abs().max()),
               rel_dp=float(((tl.probs - hf.probs).abs() / hf.probs.clamp_min(1e-30)).max()),
               rank_diff=int((tl.ranks - hf.ranks).abs().max()), rows=tl.meta["rows"], sites=tl.meta["sites"],
               ranks_equal_share=float((tl.ranks == hf.ranks).double().mean()), torch_threads=torch.get_num_threads())
    return out


def engines_main(a) -> None:
    """`--engines`: the lens engines hf vs tl at the label's reading sites (see the docstring)."""
    from machine import cpu_name

    common = ["--batch", str(a.batch), "--seq", str(a.seq), "--repeats", str(a.repeats), "--label-tokens",
              str(a.label_tokens), "--threads", str(a.threads)]
    res = {m: subrun(["--engines", "--one", m if m != "times" else "engine_times", *common], m)
           for m in ("times", "plain", "label_hf", "label_tl")}
    t = res["times"]
    for m in ("plain", "label_hf", "label_tl"):
        print(f"{m:9s} time {t['time'][m]:7.2f} s (median; runs: {', '.join(f'{x:.2f}' for x in t['times'][m])})   "
              f"peak RSS growth {gib(res[m]['peak_delta'])}")
    p, hf, tl = t["time"]["plain"], t["time"]["label_hf"], t["time"]["label_tl"]
    print(f"\n{cpu_name()}, {t['torch_threads']} torch threads, fp32; {a.batch} contexts x {a.seq} tokens, 4 choices "
          f"of {a.label_tokens} token(s); tl: {t['rows']} forward rows, {t['sites']} reading sites; methods "
          f"interleaved in each of {a.repeats} rounds")
    print(f"tl / hf time: {tl / hf:.2f}x (medians; per-round median {t['ratio_tl_hf']:.2f}x); hf / plain "
          f"{hf / p:.2f}x; tl / plain {tl / p:.2f}x")
    print(f"bridge (once per job): built in {res['label_tl']['bridge_build']:.2f} s, RSS "
          f"+{gib(res['label_tl']['bridge_rss'])}")
    print(f"tl vs hf: max |dp| {t['max_dp']:.2e} (relative {t['rel_dp']:.2e}), max |d choice p| "
          f"{t['max_dchoice']:.2e}, first-token vocabulary ranks equal in {100 * t['ranks_equal_share']:.1f}% of "
          f"cells, max |d rank| {t['rank_diff']} (logits within float noise of the label's reorder)")
    emit("lens_speed", [
        figure("plain forward (median)", p, "s"),
        figure("label lens, engine hf (median)", hf, "s", ratio=hf / p, vs="plain forward"),
        figure("label lens, engine tl (median)", tl, "s", ratio=t["ratio_tl_hf"], vs="engine hf (per-round median)"),
        figure("engine hf: peak RSS growth", res["label_hf"]["peak_delta"] / 2**30, "GiB"),
        figure("engine tl: peak RSS growth", res["label_tl"]["peak_delta"] / 2**30, "GiB"),
        figure("plain forward: peak RSS growth", res["plain"]["peak_delta"] / 2**30, "GiB"),
        figure("engine tl: bridge build (once)", res["label_tl"]["bridge_build"], "s"),
        figure("engine tl: bridge RSS (a model copy)", res["label_tl"]["bridge_rss"] / 2**30, "GiB"),
        figure("engine tl vs hf: max |dp|", t["max_dp"], "", goal=("<", 1e-5)),
        figure("engine tl vs hf: max |d choice p|", t["max_dchoice"], "", goal=("<", 1e-5)),
    ], mode="engines", batch=a.batch, seq=a.seq, repeats=a.repeats, label_tokens=a.label_tokens,
        threads=t["torch_threads"])


def one(method: str, batch: int, seq: int, repeats: int, tl_rows: int) -> dict:
    import torch

    from cotdsl.models import load_smollm2
    from interp import bridge
    from interp.lens import logit_lens

    model, tok = load_smollm2()
    ids, mask, pos, tgt = inputs(tok, batch, seq)
    L = bridge.num_layers(model)
    out = {"method": method, "batch": batch, "seq": seq, "threads": torch.get_num_threads()}
    if method in ("plain", "body", "lens"):
        def run():
            with torch.no_grad():
                if method == "plain":
                    return model(input_ids=ids, attention_mask=mask).logits
                if method == "body":
                    return model.model(input_ids=ids, attention_mask=mask).last_hidden_state
                return logit_lens(model, ids, mask, pos, tgt)
        out.update(measure(run, repeats))
        return out
    # TransformerLens path
    tlb = bridge.build_bridge(model)
    del model
    gc.collect()
    with torch.no_grad():
        _, c = tlb.run_with_cache(ids[:2, :8])  # warm-up on a tiny input (lazy hook setup)
        tlb.unembed(c.accumulated_resid(apply_ln=True)[:1])
    del c
    gc.collect()
    base = rss()
    reset_peak()
    with torch.no_grad():
        t0 = time.perf_counter()
        _, cache = tlb.run_with_cache(ids, attention_mask=mask)
        resid = cache.accumulated_resid(apply_ln=True)  # [L+1, B, T, D]
        t_cache = time.perf_counter() - t0
        peak_cache = peak_rss() - base
        mid = rss() - base
        rows = list(range(0, L + 1, max(1, (L + 1) // tl_rows)))[:tl_rows]
        t0 = time.perf_counter()
        logits = tlb.unembed(resid[rows])  # [rows, B, T, V]
        t_unembed = time.perf_counter() - t0
        peak_rows = peak_rss() - base
    scale = (L + 1) / len(rows)
    out.update(time_cache=t_cache, time_unembed_rows=t_unembed, rows=rows,
               time=t_cache + scale * t_unembed,
               peak_cache=peak_cache, peak_rows=peak_rows,
               logits_bytes_rows=logits.numel() * logits.element_size(),
               peak_delta=max(peak_cache, mid + scale * (peak_rows - mid)),
               logits_bytes_full=(L + 1) * logits[0].numel() * logits.element_size(),
               scaled_from_rows=len(rows))
    return out


def gib(b: float) -> str:
    return f"{b / 2 ** 30:.2f} GiB"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--one", choices=["plain", "body", "lens", "tl", "label_hf", "label_tl", "engine_times"])
    ap.add_argument("--engines", action="store_true", help="compare probe { engine: hf | tl } instead")
    ap.add_argument("--label-tokens", type=int, default=1, help="--engines: tokens per choice label")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seq", type=int, default=96)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--tl-rows", type=int, default=2)
    ap.add_argument("--threads", type=int, default=0,
                    help="torch threads (0 = torch's default). On a crowded machine 1 thread is "
                         "far steadier: OpenMP barriers spin when cores are taken")
    a = ap.parse_args()
    if a.threads:
        import torch

        torch.set_num_threads(a.threads)
    if a.one == "engine_times":
        print("RESULT " + json.dumps(engine_times(a.batch, a.seq, a.repeats, a.label_tokens)))
        return
    if a.one in ("label_hf", "label_tl") or (a.one == "plain" and a.engines):
        print("RESULT " + json.dumps(one_engine(a.one, a.batch, a.seq, a.repeats, a.label_tokens)))
        return
    if a.one:
        print("RESULT " + json.dumps(one(a.one, a.batch, a.seq, a.repeats, a.tl_rows)))
        return
    if a.engines:
        return engines_main(a)
    res = {}
    for m in ("plain", "body", "lens", "tl"):
        r = res[m] = subrun(["--one", m, "--batch", str(a.batch), "--seq", str(a.seq), "--repeats",
                             str(a.repeats if m != "tl" else 1), "--tl-rows", str(a.tl_rows), "--threads",
                             str(a.threads)], m)
        extra = (f" (cache {r['time_cache']:.2f} s + {r['scaled_from_rows']} rows unembedded in "
                 f"{r['time_unembed_rows']:.2f} s, scaled x{(31 / r['scaled_from_rows']):.1f})"
                 if m == "tl" else f" (runs: {', '.join(f'{t:.2f}' for t in r['times'])})")
        print(f"{m:6s} time {r['time']:7.2f} s   peak RSS growth {gib(r['peak_delta'])}{extra}")
    p, lz, tl = res["plain"], res["lens"], res["tl"]
    print(f"\nbatch {a.batch} x {a.seq}, {p['threads']} torch threads, fp32 CPU")
    print(f"lens / plain forward time:   {lz['time'] / p['time']:.3f}  (target <= 1.1)")
    print(f"lens / body forward time:    {lz['time'] / res['body']['time']:.3f}")
    print(f"TL full / lens time:         {tl['time'] / lz['time']:.1f}x  (target >= 8)")
    print(f"TL full / lens peak memory:  {tl['peak_delta'] / lz['peak_delta']:.1f}x  (target >= 10)")
    print(f"TL full logits alone would be {gib(tl['logits_bytes_full'])}; TL peak measured with "
          f"{tl['scaled_from_rows']} rows: {gib(tl['peak_rows'])}, cache phase {gib(tl['peak_cache'])}")
    k = tl["scaled_from_rows"]
    emit("lens_speed", [
        figure("plain forward (median)", p["time"], "s"),
        figure("body only, no lm_head (median)", res["body"]["time"], "s"),
        figure("fast logit lens (median)", lz["time"], "s", ratio=lz["time"] / p["time"], vs="plain forward",
               goal=("<=", 1.1)),
        figure(f"TransformerLens every-position unembed ({k} rows, time scaled to 31)", tl["time"], "s",
               ratio=tl["time"] / lz["time"], vs="fast lens", goal=(">=", 8)),
        figure("plain forward: peak RSS growth", p["peak_delta"] / 2**30, "GiB"),
        figure("fast logit lens: peak RSS growth", lz["peak_delta"] / 2**30, "GiB"),
        figure(f"TransformerLens: peak RSS growth ({k} rows measured, scaled to 31)", tl["peak_delta"] / 2**30, "GiB",
               ratio=tl["peak_delta"] / lz["peak_delta"] if lz["peak_delta"] > 0 else None, vs="fast lens",
               goal=(">=", 10)),
    ], batch=a.batch, seq=a.seq, repeats=a.repeats, tl_rows=a.tl_rows, threads=p["threads"])


if __name__ == "__main__":
    main()
