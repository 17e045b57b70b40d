"""The built-in perturbations on plain unit lists, and the non-IG rankings for keytokens."""
import random

import pytest

from cotdsl import perturb
from cotdsl.perturb import REGISTRY, Ctx, count_of, rank_words
from cotdsl.schema import Example

WORDS = "the quick brown fox jumps over the lazy dog again".split()


def ctx(seed=0, mask="<mask>", ranker=None):
    return Ctx(rng=random.Random(seed), mask_token=mask, ranker=ranker)


def call(name, units, c=None, **params):
    return REGISTRY[name].fn(list(units), c or ctx(), **params)


def test_builtins_registered_with_typed_params():
    assert {"shuffle", "mask", "unk", "keytokens", "drop", "reverse", "truncate"} <= set(REGISTRY)
    p = REGISTRY["mask"].params[0]
    assert (p.name, p.type, p.lo, p.hi, p.required) == ("p", float, 0.0, 1.0, True)
    n, _, like = REGISTRY["unk"].params
    assert (n.name, n.type, n.lo, n.required) == ("n", int, 0, False)
    assert (like.name, like.type, like.choices) == ("like", "field", ("rationale",))
    assert REGISTRY["unk"].one_of == (("n", "like"),)
    assert REGISTRY["unk"].takes_input is False and REGISTRY["unk"].unit == "token"
    by = REGISTRY["keytokens"].params[1]
    assert (by.name, by.default) == ("by", "ig")
    for name in ("shuffle", "mask", "keytokens", "drop", "reverse", "truncate", "swap"):
        assert REGISTRY[name].unit == "word" and REGISTRY[name].takes_input
        assert "Unit:" in REGISTRY[name].doc


def test_count_of_rounds_half_up():
    assert count_of(0.5, 5) == 3  # Python's round(2.5) would give 2
    assert count_of(0.7, 10) == 7  # 0.7 * 10 = 7.000000000000001
    assert count_of(0.3, 10) == 3
    assert count_of(0.0, 9) == 0 and count_of(1.0, 9) == 9
    assert count_of(0.25, 2) == 1  # 0.5 -> 1


def test_shuffle_is_a_seeded_permutation():
    a = call("shuffle", WORDS, ctx(1))
    assert sorted(a) == sorted(WORDS) and a != WORDS
    assert a == call("shuffle", WORDS, ctx(1))
    assert a != call("shuffle", WORDS, ctx(2))
    expected = list(WORDS)
    random.Random(1).shuffle(expected)
    assert a == expected


@pytest.mark.parametrize("p", [0.0, 0.2, 0.4, 0.5, 0.6, 0.8, 1.0])
def test_mask_replaces_exactly_round_p_n(p):
    out = call("mask", WORDS, ctx(3), p=p)
    assert len(out) == len(WORDS)
    assert out.count("<mask>") == count_of(p, len(WORDS))
    # unmasked units stay in place
    assert all(o == w for o, w in zip(out, WORDS) if o != "<mask>")


def test_mask_token_choice():
    assert call("mask", WORDS, ctx(mask="<unk>"), p=1.0) == ["<unk>"] * len(WORDS)
    assert call("mask", WORDS, ctx(mask="<unk>"), p=1.0, token="[X]") == ["[X]"] * len(WORDS)
    with pytest.raises(ValueError, match="neither a mask nor an unk"):
        call("mask", WORDS, ctx(mask=None), p=0.5)
    assert call("mask", WORDS, ctx(mask=None), p=0.2, token="_").count("_") == 2


def test_unk_generates_n_units():
    assert call("unk", [], n=0) == []
    assert call("unk", [], n=7) == ["<mask>"] * 7
    assert call("unk", [], ctx(mask="<unk>"), n=2, token="?") == ["?", "?"]


def test_unk_like_a_field_generates_one_unit_per_unit_of_it():
    # render passes the field's units (`unk(like: rationale)`): words or tokens, by the call's unit
    assert call("unk", [], like=WORDS) == ["<mask>"] * len(WORDS)
    assert call("unk", [], like=[]) == []


def test_keytokens_keeps_top_k_in_original_order():
    scores = [0.1, 0.9, 0.0, 0.8, 0.2, 0.95, 0.0, 0.3, 0.0, 0.0]
    c = ctx(ranker=lambda by: scores)
    assert call("keytokens", WORDS, c, k=3) == ["quick", "fox", "over"]
    assert call("keytokens", WORDS, c, k=0) == []
    assert call("keytokens", WORDS, c, k=99) == WORDS
    # ties keep the earlier unit
    c = ctx(ranker=lambda by: [1.0] * len(WORDS))
    assert call("keytokens", WORDS, c, k=2) == WORDS[:2]
    with pytest.raises(ValueError, match="2 scores for 10 units"):
        call("keytokens", WORDS, ctx(ranker=lambda by: [1, 2]), k=1)


def test_keytokens_uses_a_fixed_ranking_without_a_ranker():
    c = Ctx(rng=random.Random(0), mask_token=None, ranking=list(range(len(WORDS))))
    assert call("keytokens", WORDS, c, k=2) == WORDS[-2:]
    with pytest.raises(ValueError, match="needs a ranking"):
        call("keytokens", WORDS, ctx(), k=2)


def test_keytokens_passes_by_to_the_ranker():
    seen = []
    c = ctx(ranker=lambda by: seen.append(by) or [0.0] * len(WORDS))
    call("keytokens", WORDS, c, k=1, by="field:highlights")
    assert seen == ["field:highlights"]


def test_drop_reverse_truncate():
    out = call("drop", WORDS, ctx(4), p=0.3)
    assert len(out) == 7
    it = iter(WORDS)  # a subsequence of the input, order kept
    assert all(any(w == x for x in it) for w in out)
    assert call("drop", WORDS, p=1.0) == [] and call("drop", WORDS, p=0.0) == WORDS
    assert call("reverse", WORDS) == WORDS[::-1]
    assert call("truncate", WORDS, n=3) == ["the", "quick", "brown"]
    assert call("truncate", WORDS, n=50) == WORDS


EX = Example("q1", "Who?", ("a", "b"), 0, "The Brave knight, who was brave, slept.",
             ("knight", "slept"), meta={"gold_words": ["brave"], "phrase": "who slept"})


def test_rank_words_field():
    assert rank_words(EX, "field:highlights") == [0, 0, 1, 0, 0, 0, 1]
    assert rank_words(EX, "field:gold_words") == [0, 1, 0, 0, 0, 1, 0]  # case/punct-insensitive
    assert rank_words(EX, "field:phrase") == [0, 0, 0, 1, 0, 0, 1]
    with pytest.raises(ValueError, match="'q1'.*'nope'"):
        rank_words(EX, "field:nope")


def test_rank_words_placeholder_prefers_long_rare_words():
    s = rank_words(EX, "placeholder")
    words = EX.rationale.split()
    assert len(s) == len(words) and s == rank_words(EX, "placeholder")
    assert s[words.index("knight,")] == 6.0
    assert s[words.index("brave,")] == 2.5  # "brave" occurs twice
    assert max(s) == s[words.index("knight,")]


def test_rank_words_rejects_ig_and_unknown():
    with pytest.raises(ValueError, match="Integrated Gradients.*'q1'"):
        rank_words(EX, "ig")
    with pytest.raises(ValueError, match="unknown ranking source"):
        rank_words(EX, "randomly")
    with pytest.raises(ValueError, match="needs a seed"):
        rank_words(EX, "random")
    with pytest.raises(ValueError, match="no rationale"):
        rank_words(EX.with_rationale(None), "placeholder")


def test_builtins_set_is_frozen_snapshot():
    assert perturb.BUILTINS == {"shuffle", "mask", "unk", "keytokens", "drop", "reverse", "truncate", "swap"}


def test_rank_words_random_is_seeded_per_example_only():
    words = EX.rationale.split()
    s = rank_words(EX, "random", seed=0)
    assert len(s) == len(words) and len(set(s)) == len(s)
    assert s == rank_words(EX, "random", seed=0)  # deterministic per (seed, example)
    assert s != rank_words(EX, "random", seed=1)  # another seed, another ranking
    other = Example("q2", EX.question, EX.choices, 0, EX.rationale)
    assert s != rank_words(other, "random", seed=0)  # another example, another ranking


SPLIT = [Example(f"s{i}", f"q{i}?", ("a", "b"), 0, f"rationale number {i} here") for i in range(7)]


@pytest.mark.parametrize("n", [2, 3, 7])
def test_split_derangement_has_no_fixed_point_and_is_seeded(n):
    split = perturb.Split(SPLIT[:n])
    for seed in range(5):
        d = split.derangement(seed)
        assert sorted(d) == list(range(n)) and all(i != j for i, j in enumerate(d))
        assert d == perturb.Split(SPLIT[:n]).derangement(seed)  # same in a fresh object
    if n > 2:
        assert len({tuple(split.derangement(s)) for s in range(10)}) > 1
    with pytest.raises(ValueError, match="at least 2"):
        perturb.Split(SPLIT[:1]).derangement(0)
    with pytest.raises(ValueError, match="not in the split"):
        split.partner("nope", 0)
    dup = perturb.Split(SPLIT[:2] + SPLIT[:1])  # built fine (render builds one for every target) ...
    with pytest.raises(ValueError, match="unique example ids"):
        dup.partner(SPLIT[0].id, 0)  # ... but cannot pair


def test_swap_takes_the_partner_examples_input():
    split = perturb.Split(SPLIT)

    def run(ex, seed):
        c = Ctx(rng=random.Random(0), mask_token="<mask>", example=ex, seed=seed, split=split,
                input_of=lambda other: other.rationale.split())
        return call("swap", ex.rationale.split(), c)

    for seed in (0, 1):
        outs = [run(e, seed) for e in SPLIT]
        assert all(o != e.rationale.split() for o, e in zip(outs, SPLIT))  # never its own
        assert sorted(map(tuple, outs)) == sorted(tuple(e.rationale.split()) for e in SPLIT)  # a permutation
        assert outs == [run(e, seed) for e in SPLIT]  # deterministic per seed
    assert [run(e, 0) for e in SPLIT] != [run(e, 1) for e in SPLIT]  # differs across seeds
    with pytest.raises(ValueError, match="swap needs the other examples"):
        call("swap", WORDS, ctx())
