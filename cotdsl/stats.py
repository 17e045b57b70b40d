"""Statistics over evaluation results, in one place: bootstrap intervals (paired and not), the
exact McNemar / sign test, and the verdicts of `expect` statements (docs/language.md,
"Expectations"). numpy only, so a cached run's report never imports torch (or scipy)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np


def bootstrap_deltas(d: Sequence[float], *, n: int = 10000, seed: int = 0) -> np.ndarray:
    """[n] means of `d` resampled with replacement (percentile-bootstrap draws of its mean)."""
    d = np.asarray(d, dtype=float)
    if d.ndim != 1 or d.size == 0:
        raise ValueError(f"bootstrap needs a non-empty 1-D sequence, got shape {d.shape}")
    rng = np.random.default_rng(seed)
    boots = np.empty(n)
    chunk = max(1, 2_000_000 // d.size)  # bound memory: at most ~2M indices at once
    for s in range(0, n, chunk):
        k = min(chunk, n - s)
        boots[s:s + k] = d[rng.integers(0, d.size, size=(k, d.size))].mean(1)
    return boots


def paired_bootstrap(a_correct: Sequence[float], b_correct: Sequence[float], *, n: int = 10000,
                     seed: int = 0, level: float = 0.95) -> tuple[float, float, float]:
    """Δ = mean(a) − mean(b) with a percentile bootstrap CI, resampling examples (pairs) jointly.

    a/b are per-example correctness (bool or 0/1, or per-example scores averaged over seeds) for
    the same examples in the same order. Returns (delta, lo, hi)."""
    a = np.asarray(a_correct, dtype=float)
    b = np.asarray(b_correct, dtype=float)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"paired bootstrap needs two equally long 1-D sequences, got {a.shape} and {b.shape}")
    if a.size == 0:
        raise ValueError("paired bootstrap needs at least one example")
    d = a - b
    boots = bootstrap_deltas(d, n=n, seed=seed)
    alpha = (1 - level) / 2
    lo, hi = np.quantile(boots, [alpha, 1 - alpha])
    return float(d.mean()), float(lo), float(hi)


def bootstrap_mean(values: Sequence[float], *, n: int = 10000, seed: int = 0,
                   level: float = 0.95) -> tuple[float, float, float]:
    """Mean of per-example values with a percentile bootstrap CI over examples."""
    v = np.asarray(values, dtype=float)
    return paired_bootstrap(v, np.zeros_like(v), n=n, seed=seed, level=level)


# ---- exact tests -------------------------------------------------------------------------------
def binomial_two_sided(k: int, n: int) -> float:
    """Exact two-sided p of k successes in n trials under p = 1/2: P(X <= min(k, n-k)) doubled,
    capped at 1 (the distribution is symmetric, so this is also the sum of the probabilities no
    larger than P(X = k)). Integer arithmetic: exact for any n."""
    if not 0 <= k <= n:
        raise ValueError(f"need 0 <= k <= n, got k={k}, n={n}")
    if n == 0:
        return 1.0
    low, tail, c = min(k, n - k), 0, 1
    for i in range(low + 1):  # C(n, i) by the recurrence
        tail += c
        c = c * (n - i) // (i + 1)
    return min(1.0, 2 * tail / 2 ** n)


def mcnemar(a_correct: Sequence[bool], b_correct: Sequence[bool]) -> tuple[int, int, float]:
    """McNemar's exact test on paired correctness: (a right and b wrong, a wrong and b right, the
    two-sided p: a binomial test of the discordant pairs against 1/2)."""
    a, b = np.asarray(a_correct, dtype=bool), np.asarray(b_correct, dtype=bool)
    if a.shape != b.shape:
        raise ValueError(f"McNemar needs paired sequences, got {a.shape} and {b.shape}")
    ab, ba = int((a & ~b).sum()), int((~a & b).sum())
    return ab, ba, binomial_two_sided(ab, ab + ba)


def sign_test(x: Sequence[float], y: Sequence[float]) -> tuple[int, int, float]:
    """The exact sign test on pairs: (pairs with x < y, pairs with x > y, two-sided p); ties drop
    out. McNemar's test is this test on 0/1 values."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if x.shape != y.shape:
        raise ValueError(f"the sign test needs paired sequences, got {x.shape} and {y.shape}")
    lt, gt = int((x < y).sum()), int((x > y).sum())
    return lt, gt, binomial_two_sided(lt, lt + gt)


# ---- expectations ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Comparison:
    """The statistics of one `expect` on paired values: estimate = mean(left − right), its
    percentile bootstrap CI [lo, hi] at `level`, a p value (`test` names it) and the verdict."""

    n: int
    estimate: float
    lo: float
    hi: float
    level: float
    p: float
    test: str
    verdict: str  # holds | contradicted | inconclusive


def compare(left: Sequence[float], right: Sequence[float], op: str, *, alpha: float = 0.05,
            within: float | None = None, binary: bool = False, n_boot: int = 10000,
            seed: int = 0) -> Comparison:
    """The verdict of `left op right` on values paired by position (e.g. by (seed, example)).

    `>` / `<`: the CI at 1 − alpha; p is the exact two-sided McNemar test (`binary`: 0/1 values)
    or the exact sign test. Holds when the CI lies entirely on the expected side of 0 and
    p < alpha, contradicted when it lies entirely on the other side and p < alpha, else
    inconclusive. `~` (equivalence within ±`within`, TOST): the CI at 1 − 2 alpha; holds when it
    lies inside (−within, within), contradicted when it lies entirely outside, else inconclusive;
    p is the TOST bootstrap p: the larger share of draws at or beyond either margin.
    """
    if op not in (">", "<", "~"):
        raise ValueError(f"unknown comparison {op!r}")
    if op == "~" and (within is None or within <= 0):
        raise ValueError("`~` needs a positive margin `within`")
    a, b = np.asarray(left, dtype=float), np.asarray(right, dtype=float)
    if a.shape != b.shape or a.ndim != 1 or a.size == 0:
        raise ValueError(f"compare needs two equally long, non-empty 1-D sequences, got {a.shape} and {b.shape}")
    d = a - b
    boots = bootstrap_deltas(d, n=n_boot, seed=seed)
    level = 1 - 2 * alpha if op == "~" else 1 - alpha
    tail = (1 - level) / 2
    lo, hi = (float(x) for x in np.quantile(boots, [tail, 1 - tail]))
    if op == "~":
        p = float(max((boots <= -within).mean(), (boots >= within).mean()))
        test = "TOST (bootstrap)"
        if -within < lo and hi < within:
            verdict = "holds"
        elif lo > within or hi < -within:
            verdict = "contradicted"
        else:
            verdict = "inconclusive"
    else:
        p = mcnemar(a > 0.5, b > 0.5)[2] if binary else sign_test(a, b)[2]
        test = "exact McNemar" if binary else "exact sign test"
        above, below = lo > 0, hi < 0
        expected, other = (above, below) if op == ">" else (below, above)
        verdict = "holds" if expected and p < alpha else "contradicted" if other and p < alpha else "inconclusive"
    return Comparison(int(d.size), float(d.mean()), lo, hi, level, p, test, verdict)
