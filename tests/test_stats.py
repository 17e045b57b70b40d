"""cotdsl.stats: paired bootstrap deltas and bootstrap means over test examples."""
import numpy as np
import pytest

from cotdsl import stats as ev


def test_paired_bootstrap():
    rng = np.random.default_rng(0)
    b = rng.random(400) < 0.5
    a = b | (rng.random(400) < 0.2)  # a strictly better on ~10% of examples
    d, lo, hi = ev.paired_bootstrap(a, b, n=4000, seed=1)
    assert d == pytest.approx(a.mean() - b.mean())
    assert 0 < lo < d < hi
    assert (d, lo, hi) == ev.paired_bootstrap(a, b, n=4000, seed=1)
    # identical systems: Δ = 0 and a degenerate CI; swapping flips the sign
    assert ev.paired_bootstrap(b, b, n=500, seed=0) == (0.0, 0.0, 0.0)
    d2, lo2, hi2 = ev.paired_bootstrap(b, a, n=4000, seed=1)
    assert d2 == pytest.approx(-d) and hi2 < 0
    # pairing matters: the paired CI is narrower than an unpaired one on correlated data
    unpaired = [rng.choice(a, 400).mean() - rng.choice(b, 400).mean() for _ in range(2000)]
    assert hi - lo < np.quantile(unpaired, 0.975) - np.quantile(unpaired, 0.025)
    with pytest.raises(ValueError):
        ev.paired_bootstrap([1, 0], [1], n=10)


def test_bootstrap_mean_covers_the_mean_and_shrinks_with_n():
    rng = np.random.default_rng(0)
    small, big = rng.random(50) < 0.6, rng.random(2000) < 0.6
    m, lo, hi = ev.bootstrap_mean(small, seed=0)
    assert m == pytest.approx(small.mean()) and lo < m < hi
    m2, lo2, hi2 = ev.bootstrap_mean(big, seed=0)
    assert hi2 - lo2 < (hi - lo) / 3  # ~1/sqrt(40) of the width
