"""Statistics over evaluation results, in one place: bootstrap intervals (paired and not).
numpy only, so a cached run's report never imports torch."""
from __future__ import annotations

from typing import Sequence

import numpy as np


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
    rng = np.random.default_rng(seed)
    boots = np.empty(n)
    chunk = max(1, 2_000_000 // d.size)  # bound memory: at most ~2M indices at once
    for s in range(0, n, chunk):
        k = min(chunk, n - s)
        boots[s:s + k] = d[rng.integers(0, d.size, size=(k, d.size))].mean(1)
    alpha = (1 - level) / 2
    lo, hi = np.quantile(boots, [alpha, 1 - alpha])
    return float(d.mean()), float(lo), float(hi)


def bootstrap_mean(values: Sequence[float], *, n: int = 10000, seed: int = 0,
                   level: float = 0.95) -> tuple[float, float, float]:
    """Mean of per-example values with a percentile bootstrap CI over examples."""
    v = np.asarray(values, dtype=float)
    return paired_bootstrap(v, np.zeros_like(v), n=n, seed=seed, level=level)
