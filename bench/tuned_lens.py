"""Tuned-lens training recipes on SmolLM2-135M: the zero-init SGD loop ("sgd", the default
before issue #12) vs the closed-form fit plus a few KL steps ("fit", the default now).

    HF_HUB_OFFLINE=1 .venv/bin/python bench/tuned_lens.py [--repeats 3] [--sgd-repeats 1]
        [--threads 2] [--pause] [--window 420] [--gap 20] [--held-out 32] [--train 160]

Data (what the probe stage trains the lens on): specs/quickstart.cot (the demo), condition
`after`, its 160 training questions rendered as in training (`cotdsl.render.render`, seed 0) in
batches of 8 (20 batches, ~8.9k real tokens); held-out: the first --held-out test questions
rendered the same way. Model: the bundled SmolLM2-135M-Instruct, fp32, CPU (the base every
SmolLM2 checkpoint starts from; the cost does not depend on the weights).

Time: `train_tuned_lens(model, batches, recipe=r)` at each recipe's defaults (seed 0), from
scratch, in one process, interleaved fit, sgd, fit, ... (--repeats fit runs, --sgd-repeats sgd
runs) so load on a shared machine hits both alike; the speed-up is the median over fit runs of
median(sgd seconds) / fit seconds. CPU seconds / wall seconds of the process are printed beside
each timing (2.0 = it had both cores).

Quality: held-out KL(final-layer distribution || lens) per layer, `interp.tuned.lens_kl`, for the
logit lens and the first lens each recipe trained above. Criterion (issue #12): mean over layers
of the fit's KL <= 1.1 x the sgd recipe's.

--pause: every heavy piece (each lens evaluation, each timed training) runs in a quiet window:
`pause-heavy` before, `resume-heavy` after (also on an error or SIGTERM), --gap seconds between
windows so the paused background runs progress. The sgd recipe's 100 steps take longer than a
window may last (< 10 min), so its window is cut between two steps once it has lasted --window
seconds, and only the time inside windows is counted: the whole run is timed, in pieces.

Printed: one row per recipe (seconds, x vs sgd, held-out KL mean, per-layer KL ratio vs sgd:
mean / max), a per-layer table, and the `BENCH_RESULT {json}` line (bench/common.py).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import signal
import shutil
import statistics
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))
from common import emit, figure  # noqa: E402  (bench/common.py, bench/machine.py)
from machine import cpu_name  # noqa: E402

# This file's name would shadow the tuned-lens package (`import tuned_lens` in interp.tuned)
# while bench/ is on sys.path (it is sys.path[0] when run as a script).
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]

def demo_batches(tok, n_held_out: int):
    """(train batches, held-out batches) of the demo's `after` condition: (ids [8, T], mask [8, T])."""
    import cotdsl
    from cotdsl.data import load_source
    from cotdsl.render import render
    from interp.lens import pad_right

    exp = cotdsl.load(str(HERE.parent / "specs" / "quickstart.cot"))
    cond = next(c for c in exp.conditions if c.name == "after")
    train, test = load_source(exp.data[0])
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0

    def batches(exs):
        seqs = [render(e, cond, tok, seed=0)[0].input_ids for e in exs]
        return [pad_right(seqs[i:i + 8], pad) for i in range(0, len(seqs), 8)]

    return batches(train), batches(test[:n_held_out])


class Quiet:
    """Quiet windows: `pause-heavy` at the start, `resume-heavy` at the end (when enabled)."""

    def __init__(self, enabled: bool, gap: float, budget: float):
        self.enabled, self.gap, self.budget, self.paused, self.last = enabled, gap, budget, False, 0.0
        if enabled:
            if not shutil.which("pause-heavy") or not shutil.which("resume-heavy"):
                sys.exit("--pause needs pause-heavy and resume-heavy on PATH")
            signal.signal(signal.SIGTERM, self._term)

    def _term(self, *_):
        self.resume()
        sys.exit(143)

    def pause(self):
        if self.enabled and not self.paused:
            time.sleep(max(0.0, self.gap - (time.monotonic() - self.last)))  # let paused runs progress
            subprocess.run(["pause-heavy"], stdout=subprocess.DEVNULL)
            self.paused = True

    def resume(self):
        if self.paused:
            subprocess.run(["resume-heavy"], stdout=subprocess.DEVNULL)
            self.paused, self.last = False, time.monotonic()

    @contextmanager
    def window(self):
        self.pause()
        try:
            yield
        finally:
            self.resume()

    def timed(self, fn):
        """fn(progress) -> (result, seconds, CPU seconds / wall seconds), timed inside quiet windows.

        `progress(step, steps)` (train_tuned_lens calls it after every step) ends the window
        once it has lasted `budget` seconds and opens the next one after the gap: only the
        time inside windows is counted, so a run longer than one window is still timed whole."""
        wall, cpu = 0.0, 0.0

        def start():
            nonlocal t0, c0
            self.pause()
            t0, c0 = time.perf_counter(), _cpu()

        def stop():
            nonlocal wall, cpu
            wall += time.perf_counter() - t0
            cpu += _cpu() - c0
            self.resume()

        def progress(step, steps):
            if self.enabled and time.perf_counter() - t0 > self.budget and step < steps:
                stop()
                print(f"  (window cut after step {step} of {steps})", flush=True)
                start()

        t0 = c0 = 0.0
        start()
        try:
            out = fn(progress)
        finally:
            stop()
        return out, wall, cpu / wall


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3, help="fit runs")
    ap.add_argument("--sgd-repeats", type=int, default=1, help="sgd runs (~9 min each on 2 cores)")
    ap.add_argument("--sgd-steps", type=int, default=None, help="sgd steps (default: the recipe's 100; fewer "
                    "only to check the plumbing)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads")
    ap.add_argument("--held-out", type=int, default=32, help="held-out test questions (batches of 8)")
    ap.add_argument("--train", type=int, default=160, help="training questions (the demo has 160)")
    ap.add_argument("--pause", action="store_true", help="quiet windows via pause-heavy / resume-heavy")
    ap.add_argument("--gap", type=float, default=20.0, help="seconds between quiet windows")
    ap.add_argument("--window", type=float, default=420.0, help="cut a timed training's window after this many s")
    a = ap.parse_args()

    import torch

    torch.set_num_threads(a.threads)
    from cotdsl.models import load_smollm2
    from interp import tuned

    model, tok = load_smollm2()
    train, held = demo_batches(tok, a.held_out)
    train = train[:(a.train + 7) // 8]
    n_train, n_held = sum(int(m.sum()) for _, m in train), sum(int(m.sum()) for _, m in held)
    machine = f"{cpu_name()}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads, fp32"
    print(f"SmolLM2-135M-Instruct; {machine}; {len(train)} training batches ({n_train} tokens), "
          f"{len(held)} held-out batches ({n_held} tokens)", flush=True)
    quiet = Quiet(a.pause, a.gap, a.window)
    recipes = {r: tuned.RECIPE_DEFAULTS[r] for r in ("sgd", "fit")}
    if a.sgd_steps is not None:
        recipes["sgd"] = (a.sgd_steps, recipes["sgd"][1])
    secs, util, lenses = {r: [] for r in recipes}, {r: [] for r in recipes}, {}
    try:
        with quiet.window():
            kl = {"logit": tuned.lens_kl(model, held)}
        print(f"logit lens held-out KL mean {float(kl['logit'].mean()):.3f}", flush=True)
        # fit, sgd, fit, sgd, ..., fit: the sgd recipe is run --sgd-repeats times (~9 min each here)
        order = ["fit"] + [r for i in range(max(a.repeats - 1, a.sgd_repeats)) for r in
                           (["sgd"] if i < a.sgd_repeats else []) + (["fit"] if i + 1 < a.repeats else [])]
        for r in order:
            steps = a.sgd_steps if r == "sgd" else None
            lens, sec, u = quiet.timed(lambda progress: tuned.train_tuned_lens(model, train, recipe=r, steps=steps,
                                                                               progress=progress))
            lenses.setdefault(r, lens)  # every repeat trains the same lens (seed 0): measure the first
            secs[r].append(sec)
            util[r].append(u)
            print(f"{r}: {sec:.1f} s (CPU / wall {u:.2f}, load {os.getloadavg()[0]:.1f})", flush=True)
        for r in recipes:
            with quiet.window():
                kl[r] = tuned.lens_kl(model, held, lenses[r])
            print(f"{r}: held-out KL mean {float(kl[r].mean()):.4f}", flush=True)
    finally:
        quiet.resume()

    print("RAW " + json.dumps({"seconds": secs, "cpu_per_wall": util, "kl": {k: v.tolist() for k, v in kl.items()}}),
          flush=True)  # the measurements, before any formatting
    sgd_med = statistics.median(secs["sgd"])
    ratios = [sgd_med / f for f in secs["fit"]]
    per_layer = (kl["fit"] / kl["sgd"]).tolist()
    kl_ratio = float(kl["fit"].mean() / kl["sgd"].mean())
    print(f"\n{machine}; interleaved runs: fit {len(secs['fit'])}, sgd {len(secs['sgd'])}")
    print("| recipe | steps, lr | s per lens (median) | × vs sgd (median / min) | held-out KL mean | "
          "KL / sgd KL: mean over layers of the ratio / max layer |")
    print("|---|---|---|---|---|---|")
    print(f"| logit lens | – | – | – | {float(kl['logit'].mean()):.3f} | – |")
    for r, (st, lr) in recipes.items():
        rr = (kl[r] / kl["sgd"])
        speed = "1" if r == "sgd" else f"{statistics.median(ratios):.2f} / {min(ratios):.2f}"
        print(f"| {r} | {st}, {lr:g} | {statistics.median(secs[r]):.1f} | {speed} | {float(kl[r].mean()):.4f} | "
              f"{float(rr.mean()):.3f} / {float(rr.max()):.3f} |")
    print(f"\nheld-out KL mean: fit / sgd = {kl_ratio:.3f} (criterion <= 1.10: "
          f"{'met' if kl_ratio <= 1.1 else 'NOT met'}); speed-up {statistics.median(ratios):.2f}x "
          f"(criterion >= 4: {'met' if statistics.median(ratios) >= 4 else 'NOT met'})")
    print("\n| layer | logit KL | sgd KL | fit KL | fit / sgd |")
    print("|---|---|---|---|---|")
    for i in range(len(per_layer)):
        print(f"| {i} | {float(kl['logit'][i]):.3f} | {float(kl['sgd'][i]):.4f} | {float(kl['fit'][i]):.4f} | "
              f"{per_layer[i]:.3f} |")
    emit("tuned_lens",
         [figure("fit recipe: s per lens (median)", statistics.median(secs["fit"]), "s",
                 ratio=statistics.median(ratios), vs="faster than the sgd recipe (median over fit runs)",
                 goal=(">=", 4)),
          figure("sgd recipe: s per lens (median)", sgd_med, "s"),
          figure("held-out KL mean, fit recipe", float(kl["fit"].mean()), "nats", ratio=kl_ratio,
                 vs="of the sgd recipe's", goal=("<=", 1.1)),
          figure("held-out KL mean, sgd recipe", float(kl["sgd"].mean()), "nats"),
          figure("held-out KL mean, logit lens", float(kl["logit"].mean()), "nats")],
         threads=a.threads, repeats=a.repeats, sgd_repeats=a.sgd_repeats, sgd_steps=recipes["sgd"][0],
         held_out=a.held_out,
         train=a.train, train_tokens=n_train, held_out_tokens=n_held, per_layer_kl_ratio=per_layer,
         seconds=secs, cpu_per_wall=util)


if __name__ == "__main__":
    main()
