"""Cost of direct logit attribution at the label position vs a plain forward of the same batch.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/dla_cost.py [--model tiny|smollm2] [--batch 16]
        [--seq 64] [--choices 4] [--label-tokens 1] [--repeats 5] [--threads 1]

Batch: --batch contexts of --seq random token ids (seed 0) and --choices random labels of
--label-tokens tokens each, fp32, CPU. Measured in one process, the methods interleaved in each
repeat (so machine load hits them alike), after one warm-up each; the median is reported:

  plain       `model(input_ids, attention_mask)`: logits at every position, no_grad
  plain_last  the same with `logits_to_keep=1` (the lm_head at one position; a floor)
  dla         `interp.direct_logit_attribution(model, contexts, choices, gold, tl_bridge=br)`:
              one TransformerLens bridge forward with site-only hooks, the decomposition into
              embeddings, L x H heads, L attention and L MLP outputs (bridge built once, before)
  dla_hf      the same with method="hf": plain forward hooks on the HF modules, each context
              once and the choices' later label tokens on its KV cache

  plain_rows  (--label-tokens > 1 only) a plain forward of the rows DLA runs

With --label-tokens > 1 DLA runs one row per choice (context + label but its last token), so it
does C x the rows of the plain forward over the contexts: TransformerLens 4.3's bridge leaves the
transformers 5.24 KV cache empty, so the context cannot be shared between choices as
`interp.lens.label_lens` shares it. Ratios are given against the plain forward of the B contexts
and of the same rows.
`--model tiny`: a sharpened 4-block Llama (d_model 64, 4 heads, vocab ~300).
`--model smollm2`: the bundled SmolLM2-135M (cotdsl.models.load_smollm2; bench may import cotdsl).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

from common import emit, figure  # bench/common.py (bench/ is on sys.path when a bench runs)
from machine import cpu_name

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def load(name: str):
    if name == "smollm2":
        from cotdsl.models import load_smollm2

        model, tok = load_smollm2()
        return model, len(tok)
    from cotdsl.tiny import sharpen, tiny_model, train_tokenizer

    tok = train_tokenizer(["the quick brown fox jumps over the lazy dog"] * 4, vocab_size=300)
    return sharpen(tiny_model(tok, arch="llama", layers=4, d_model=64, heads=4), 1), len(tok)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", choices=["tiny", "smollm2"], default="tiny")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq", type=int, default=64)
    ap.add_argument("--choices", type=int, default=4)
    ap.add_argument("--label-tokens", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (0 = torch's default)")
    a = ap.parse_args()
    import torch

    from interp import direct_logit_attribution
    from interp.bridge import build_bridge
    from interp.dla import label_sites

    if a.threads:
        torch.set_num_threads(a.threads)
    model, vocab = load(a.model)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, vocab, (a.batch, a.seq), generator=g)
    mask = torch.ones_like(ids)
    ctxs = ids.tolist()
    chs = [[torch.randint(5, vocab, (a.label_tokens,), generator=g).tolist() for _ in range(a.choices)]
           for _ in range(a.batch)]
    gold = torch.randint(0, a.choices, (a.batch,), generator=g)
    t0 = time.perf_counter()
    br = build_bridge(model)
    t_bridge = time.perf_counter() - t0

    def plain():
        with torch.no_grad():
            model(input_ids=ids, attention_mask=mask)

    def plain_last():
        with torch.no_grad():
            model(input_ids=ids, attention_mask=mask, logits_to_keep=1)

    def dla():
        return direct_logit_attribution(model, ctxs, chs, gold, tl_bridge=br, batch=a.batch)

    def dla_hf():
        return direct_logit_attribution(model, ctxs, chs, gold, method="hf", batch=a.batch)

    methods = {"plain": plain, "plain_last": plain_last, "dla": dla, "dla_hf": dla_hf}
    if a.label_tokens > 1:  # the rows DLA runs: one per multi-token choice (context + label[:-1])
        sites = label_sites(ctxs, chs, gold)

        def plain_rows():
            with torch.no_grad():
                model(input_ids=sites.ids, attention_mask=sites.mask)

        methods["plain_rows"] = plain_rows
    for fn in methods.values():
        fn()  # warm-up
    times = {m: [] for m in methods}
    for _ in range(a.repeats):
        for m, fn in methods.items():
            t0 = time.perf_counter()
            fn()
            times[m].append(time.perf_counter() - t0)
    med = {m: statistics.median(t) for m, t in times.items()}
    res = dla()
    out = {"model": a.model, "cpu": cpu_name(), "threads": torch.get_num_threads(), "batch": a.batch,
           "seq": a.seq, "choices": a.choices, "label_tokens": a.label_tokens, "repeats": a.repeats,
           "median_s": med, "times_s": times, "bridge_build_s": t_bridge,
           "dla_over_plain": med["dla"] / med["plain"], "dla_over_plain_last": med["dla"] / med["plain_last"],
           "dla_hf_over_plain": med["dla_hf"] / med["plain"],
           "components_error": res.error()}
    if "plain_rows" in med:
        out["dla_over_plain_rows"] = med["dla"] / med["plain_rows"]
    for m in methods:
        print(f"{m:10s} median {med[m]:8.3f} s  (runs: {', '.join(f'{t:.3f}' for t in times[m])})")
    print(f"bridge build (once): {t_bridge:.2f} s")
    print(f"dla / plain forward: {out['dla_over_plain']:.2f}x (goal <= 3)   dla / plain_last: "
          f"{out['dla_over_plain_last']:.2f}x")
    print(f"dla_hf / plain forward: {out['dla_hf_over_plain']:.2f}x")
    if "plain_rows" in med:
        print(f"dla / plain forward of the same {a.batch * a.choices} rows (context + label): "
              f"{out['dla_over_plain_rows']:.2f}x")
    print(f"{a.model}, batch {a.batch} x {a.seq}, {a.choices} choices x {a.label_tokens} label tokens, "
          f"{out['threads']} torch threads, fp32, {out['cpu']}; components add up within {res.error():.1e}")
    print("RESULT " + json.dumps(out))
    figs = [figure("plain forward (median)", med["plain"], "s"),
            figure("plain forward, logits_to_keep=1 (median)", med["plain_last"], "s"),
            figure("dla, method tl (median)", med["dla"], "s", ratio=out["dla_over_plain"], vs="plain forward",
                   goal=("<=", 3)),
            figure("dla, method hf (median)", med["dla_hf"], "s", ratio=out["dla_hf_over_plain"], vs="plain forward",
                   goal=("<=", 3)),
            figure("bridge build (once)", t_bridge, "s"),
            figure("components' sum vs the gold logit difference, max abs error", res.error(), "")]
    if "plain_rows" in med:
        rows = a.batch * a.choices
        figs += [figure(f"plain forward of the {rows} rows DLA tl runs (median)", med["plain_rows"], "s"),
                 figure("dla, method tl (median)", med["dla"], "s", ratio=out["dla_over_plain_rows"],
                        vs="plain forward of the same rows")]
    emit("dla_cost", figs, **{k: out[k] for k in ("model", "threads", "batch", "seq", "choices", "label_tokens",
                                                   "repeats")})


if __name__ == "__main__":
    main()
