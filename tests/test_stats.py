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


# ---- exact tests (McNemar, sign test) ------------------------------------------------------------
from fractions import Fraction
from math import comb


def reference_binomial_p(k: int, n: int) -> Fraction:
    """Independent reference: the two-sided exact binomial p under 1/2 by the "sum of outcomes no
    more likely than the observed one" definition (what scipy.stats.binomtest computes), in exact
    fractions over every outcome."""
    probs = [Fraction(comb(n, i), 2 ** n) for i in range(n + 1)]
    return min(Fraction(1), sum(p for p in probs if p <= probs[k]))


def test_mcnemar_against_hand_computed_values():
    # 10 pairs where a alone is right, 2 where b alone is: 2 * (C(12,0)+C(12,1)+C(12,2)) / 2^12
    a = [1] * 10 + [0] * 2 + [1] * 30 + [0] * 40
    b = [0] * 10 + [1] * 2 + [1] * 30 + [0] * 40  # concordant pairs do not count
    ab, ba, p = ev.mcnemar(a, b)
    assert (ab, ba) == (10, 2)
    assert p == pytest.approx(2 * 79 / 4096, abs=1e-15) == pytest.approx(0.03857421875)
    assert ev.mcnemar(b, a)[2] == p  # two-sided: symmetric
    # 7 vs 1: 2 * (1 + 8) / 256; no discordant pair at all: p = 1
    assert ev.mcnemar([1] * 7 + [0], [0] * 7 + [1])[2] == pytest.approx(18 / 256)
    assert ev.mcnemar([1, 0, 1], [1, 0, 1]) == (0, 0, 1.0)
    assert ev.binomial_two_sided(0, 5) == pytest.approx(2 / 32)
    assert ev.binomial_two_sided(3, 6) == 1.0


@pytest.mark.parametrize("k,n", [(0, 1), (1, 3), (4, 9), (12, 30), (17, 40), (45, 100), (130, 300)])
def test_exact_binomial_equals_an_independent_reference(k, n):
    assert ev.binomial_two_sided(k, n) == pytest.approx(float(reference_binomial_p(k, n)), rel=1e-12)
    assert ev.binomial_two_sided(n - k, n) == ev.binomial_two_sided(k, n)


def test_binomial_is_exact_for_large_n_and_rejects_bad_counts():
    assert ev.binomial_two_sided(5000, 10000) == 1.0
    assert 0 < ev.binomial_two_sided(4700, 10000) < 1e-8
    with pytest.raises(ValueError):
        ev.binomial_two_sided(4, 3)


def test_sign_test_drops_ties():
    x = [1, 2, 3, 3, 5, 0]
    y = [2, 3, 4, 3, 5, 1]  # x < y in 4 pairs, 2 ties
    assert ev.sign_test(x, y) == (4, 0, pytest.approx(2 / 16))


# ---- expectation verdicts --------------------------------------------------------------------------
def _pairs(both: int, a_only: int, b_only: int, neither: int):
    a = [1] * both + [1] * a_only + [0] * b_only + [0] * neither
    b = [1] * both + [0] * a_only + [1] * b_only + [0] * neither
    return np.array(a, float), np.array(b, float)


def test_greater_and_less_verdicts_on_accuracy():
    a, b = _pairs(40, 30, 2, 28)  # a clearly better: Δ = +28 pp
    c = ev.compare(a * 100, b * 100, ">", binary=True)
    assert (c.verdict, c.test, c.n, c.level) == ("holds", "exact McNemar", 100, 0.95)
    assert c.estimate == pytest.approx(28) and 0 < c.lo < c.estimate < c.hi
    assert c.p == pytest.approx(ev.mcnemar(a, b)[2]) and c.p < 1e-6
    assert ev.compare(b, a, ">", binary=True).verdict == "contradicted"
    assert ev.compare(b, a, "<", binary=True).verdict == "holds"
    assert ev.compare(a, b, "<", binary=True).verdict == "contradicted"
    small = _pairs(40, 3, 2, 55)  # Δ = +1 pp: neither way
    assert ev.compare(*small, ">", binary=True).verdict == "inconclusive"
    assert ev.compare(*small, "<", binary=True).verdict == "inconclusive"


def test_a_ci_away_from_zero_without_a_significant_exact_test_is_inconclusive():
    a, b = _pairs(0, 4, 0, 6)  # 4 of 4 discordant pairs favour a: every bootstrap draw > 0 ...
    c = ev.compare(a, b, ">", binary=True, alpha=0.1)
    assert c.lo > 0 and c.p == pytest.approx(2 / 16)  # ... but McNemar's p = 0.125 > alpha
    assert c.verdict == "inconclusive"
    assert ev.compare(a, b, ">", binary=True, alpha=0.25).verdict == "holds"


def test_equivalence_uses_the_1_minus_2_alpha_interval():
    rng = np.random.default_rng(3)
    a = (rng.random(2000) < 0.6).astype(float)
    b = a.copy()
    flip = rng.choice(2000, 40, replace=False)  # 2% of pairs disagree, both ways
    b[flip] = 1 - b[flip]
    c = ev.compare(a * 100, b * 100, "~", within=3)
    assert (c.verdict, c.level, c.test) == ("holds", 0.9, "TOST (bootstrap)")
    assert -3 < c.lo <= c.hi < 3 and c.p < 0.05
    far = _pairs(40, 30, 2, 28)
    assert ev.compare(far[0] * 100, far[1] * 100, "~", within=3).verdict == "contradicted"
    few = _pairs(3, 1, 1, 5)  # 10 pairs: the CI is far wider than ±3 pp
    assert ev.compare(few[0] * 100, few[1] * 100, "~", within=3).verdict == "inconclusive"
    with pytest.raises(ValueError):
        ev.compare(a, b, "~")


def test_commit_layers_use_the_sign_test():
    rng = np.random.default_rng(0)
    late = rng.integers(8, 13, 60).astype(float)
    early = late - rng.integers(1, 4, 60)
    c = ev.compare(early, late, "<")
    assert (c.verdict, c.test) == ("holds", "exact sign test") and c.hi < 0
    assert c.p == ev.sign_test(early, late)[2]
    assert ev.compare(late, early, "<").verdict == "contradicted"
    same = ev.compare(late, late.copy(), "<")
    assert same.verdict == "inconclusive" and same.p == 1.0
