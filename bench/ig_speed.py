"""Integrated Gradients speed on the real student: the fast path vs captum one example at a time.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/ig_speed.py [--n 8] [--steps 20] [--baseline pad]
        [--repeats 3] [--threads N] [--json out.json]

SmolLM2-135M-Instruct (fp32) scores log p(gold label | prompt + gold rationale + "So the answer
is:") for --n embedded-task test examples (`generate("facts", test=n, seed=0)` and their gold
rationales; --shots k prepends k solved training examples to every context, a longer fixed
prefix) with --steps Gauss-Legendre steps. Methods, on the same items, back to back in one
process (interleaved per repeat, so load on a shared machine hits them alike):

  captum        `ig_word_scores(..., method="captum", internal_batch_size=10)`: captum
                LayerIntegratedGradients one example at a time, 10 steps per forward (the
                default before the fast path; what bench/ig_baselines.py measured)
  captum-ibs20  the same with all 20 steps in one forward (captum's own batching)
  fast          `ig_word_scores(...)` with its defaults: the fixed prefix's KV cache computed
                once, steps of several examples per forward over the rationale + label only
  fast-rows60   the same with 60 (example, step) rows per forward instead of 20 (a larger
                internal batch: three examples' steps in one forward at 20 steps)

Printed: seconds per example (min / median over repeats), the speed-up of each method over
`captum` (min / median of per-repeat ratios), and against `captum` the max |word score|
difference, the same relative to the example's max |word score|, the max difference of f(x)
and f(baseline) and of delta; plus whether the top-1 word is the same for every example.

--rules [--rule-steps 4 8 16 32] [--ref-steps 200]: no timing; the quadrature rules at equal
step counts instead. Reference: Gauss-Legendre with --ref-steps steps (fast path). For each rule
(captum's `gausslegendre` and `riemann_trapezoid`, through `ig_word_scores(rule=...)`) and step
count: the error of each example's word scores against the reference, max |diff| / max |ref
score| (median and max over examples), top-1 agreement (share of examples with the reference's
top word) and top-3 overlap (mean |top-3 ∩ reference top-3| / 3), and the median relative
convergence delta. captum's trapezoid step sizes sum to 1 - 1/steps (not 1), a uniform shrink of
every score by that factor: rankings do not see it, the error column does; the `trapezoid x
n/(n-1)` rows undo it (the textbook trapezoid rule) to show the rule's own error.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SEP = "\nSo the answer is:"
METHODS = {
    "captum": dict(method="captum", internal_batch_size=10),
    "captum-ibs20": dict(method="captum", internal_batch_size=20),
    "fast": dict(method="fast"),
    "fast-rows60": dict(method="fast", internal_batch_size=60),
}


def rules(model, tok, items, args) -> None:
    """--rules: quadrature error and top-k agreement against a many-step Gauss-Legendre reference."""
    from common import emit, figure
    from interp.attribution import ig_word_scores, summarize

    def run(rule, steps):
        return ig_word_scores(model, tok, items, baseline=args.baseline, steps=steps, sep=SEP, rule=rule)

    t0 = time.perf_counter()
    ref = run("gausslegendre", args.ref_steps)
    print(f"reference: gausslegendre, {args.ref_steps} steps ({time.perf_counter() - t0:.0f} s), median relative "
          f"delta {summarize(ref)['median_rel_delta']:.4f}", flush=True)
    print("\n| rule | steps | error: max abs diff / max abs ref score (median / max over examples) | top-1 agreement "
          "| top-3 overlap | median rel. delta |")
    print("|---|---|---|---|---|---|")
    figs, runs = [], {}
    for rule, name, scale in (("gausslegendre", "gausslegendre", None), ("riemann_trapezoid", "riemann_trapezoid", None),
                              ("riemann_trapezoid", "trapezoid x n/(n-1)", True)):
        for steps in args.rule_steps:
            res = runs[rule, steps] = runs.get((rule, steps)) or run(rule, steps)
            f = steps / (steps - 1) if scale else 1.0
            err = [max(abs(f * u - v) for u, v in zip(r.word_scores, q.word_scores)) / max(map(abs, q.word_scores))
                   for r, q in zip(res, ref)]
            top1 = statistics.fmean(r.top_words(1) == q.top_words(1) for r, q in zip(res, ref))
            top3 = statistics.fmean(len(set(r.top_words(3)) & set(q.top_words(3))) / min(3, len(q.words))
                                    for r, q in zip(res, ref))
            rel = summarize(res)["median_rel_delta"]
            print(f"| {name} | {steps} | {statistics.median(err):.2e} / {max(err):.2e} | {top1:.2f} | {top3:.2f} | "
                  f"{rel:.4f} |", flush=True)
            if not scale:
                figs.append(figure(f"{rule}, {steps} steps: median error vs {args.ref_steps}-step reference",
                                   statistics.median(err), ""))
                figs.append(figure(f"{rule}, {steps} steps: top-1 agreement", top1, ""))
    emit("ig_speed", figs, mode="rules", n=len(items), baseline=args.baseline, ref_steps=args.ref_steps,
         rule_steps=args.rule_steps, threads=torch.get_num_threads(), shots=args.shots)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=8, help="examples")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--baseline", default="pad", help="zero | pad | unk (pad: what keytokens(by: ig) uses)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--shots", type=int, default=0,
                    help="prepend this many solved training examples to each context (a longer fixed prefix)")
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--json", help="write the figures here")
    ap.add_argument("--rules", action="store_true", help="compare quadrature rules against a reference (no timing)")
    ap.add_argument("--rule-steps", type=int, nargs="+", default=[4, 8, 16, 32])
    ap.add_argument("--ref-steps", type=int, default=200)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from cotdsl.data.builtin import generate
    from cotdsl.models import load_smollm2
    from cotdsl.schema import format_prompt
    from interp.attribution import IGItem, ig_word_scores

    train, test = generate("facts", train=args.shots, test=args.n, seed=0)
    shots = "".join(f"{format_prompt(e)} {e.rationale}{SEP} {e.label}\n\n" for e in train)
    items = [IGItem(shots + format_prompt(e), e.rationale, e.label) for e in test]
    model, tok = load_smollm2()
    n_tok = [len(tok(i.context + " " + i.rationale + SEP)["input_ids"]) for i in items]
    print(f"SmolLM2-135M-Instruct fp32, {torch.get_num_threads()} torch threads, {len(items)} examples "
          f"(prompt + rationale {min(n_tok)}-{max(n_tok)} tokens, {args.shots} shots), baseline {args.baseline}, {args.steps} steps",
          flush=True)

    if args.rules:
        return rules(model, tok, items, args)

    def run(m):
        return ig_word_scores(model, tok, items, baseline=args.baseline, steps=args.steps, sep=SEP, **METHODS[m])

    run("fast")  # warm-up (allocator, first-call overheads)
    secs: dict[str, list[float]] = {m: [] for m in args.methods}
    res = {}
    for r in range(args.repeats):
        for m in args.methods:
            t0 = time.perf_counter()
            res[m] = run(m)
            secs[m].append((time.perf_counter() - t0) / len(items))
        print(f"repeat {r + 1}: " + ", ".join(f"{m} {secs[m][-1]:.2f} s/example" for m in args.methods), flush=True)

    ref_name = "captum" if "captum" in res else args.methods[0]
    ref = res[ref_name]
    out = {"n": len(items), "shots": args.shots, "steps": args.steps, "baseline": args.baseline, "threads": torch.get_num_threads(),
           "methods": {}}
    print(f"\n| method | s / example (min / median) | × vs {ref_name} (min / median) | max abs word-score diff "
          f"| max diff / max abs score | max diff f(x), f(b) | max diff delta | same top-1 word |")
    print("|---|---|---|---|---|---|---|---|")
    for m in args.methods:
        ratios = [a / b for a, b in zip(secs[ref_name], secs[m])]
        absd = max(abs(u - v) for x, y in zip(ref, res[m]) for u, v in zip(x.word_scores, y.word_scores))
        reld = max(max(abs(u - v) for u, v in zip(x.word_scores, y.word_scores)) / max(map(abs, x.word_scores))
                   for x, y in zip(ref, res[m]))
        fd = max(max(abs(x.f_x - y.f_x), abs(x.f_baseline - y.f_baseline)) for x, y in zip(ref, res[m]))
        dd = max(abs(x.delta - y.delta) for x, y in zip(ref, res[m]))
        top = all(x.top_words(1) == y.top_words(1) for x, y in zip(ref, res[m]))
        out["methods"][m] = {"s_per_example": secs[m], "speedup": ratios, "max_abs_word_diff": absd,
                             "max_rel_word_diff": reld, "max_f_diff": fd, "max_delta_diff": dd, "same_top1": top}
        print(f"| {m} | {min(secs[m]):.2f} / {statistics.median(secs[m]):.2f} | {min(ratios):.2f} / "
              f"{statistics.median(ratios):.2f} | {absd:.1e} | {reld:.1e} | {fd:.1e} | {dd:.1e} | {top} |")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))
    from common import emit, figure  # bench/common.py: the figures for bench/run_all.py

    emit("ig_speed", [figure(f"{m}: s / example (median)", statistics.median(r["s_per_example"]), "s",
                             ratio=statistics.median(r["speedup"]) if m != ref_name else None,
                             vs=f"faster than {ref_name} (median of per-repeat ratios)",
                             goal=(">=", 3) if (m, ref_name) == ("fast", "captum") else None)
                      for m, r in out["methods"].items()]
         + [figure(f"{m}: max word-score diff / max |score|, vs {ref_name}", r["max_rel_word_diff"], "")
            for m, r in out["methods"].items() if m != ref_name],
         **{k: v for k, v in out.items() if k != "methods"}, repeats=args.repeats)


if __name__ == "__main__":
    main()
