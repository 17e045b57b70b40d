"""Rendering: exact text, ids and loss masks; eval context; answer parsing; determinism."""
import random

import pytest

from cotdsl.lang import call
from cotdsl.perturb import count_of
from cotdsl.render import (EvalContext, Rendered, Split, eval_context, generation_prompt_ids, parse_answer,
                           render, stable_seed)
from cotdsl.schema import Example, format_prompt
from cotdsl.spec import Call, Condition, Lit, Ref, Task
from cotdsl.tiny import train_tokenizer

EX = Example("ex-7", "Where does the cat sleep at night?", ("on the mat", "in the box", "under the bed"), 0,
             "The cat always sleeps on the mat because the mat is warm and soft at night.", ("mat", "warm"))
EX2 = Example("ex-8", "What colour is the sky?", ("blue", "green", "red"), 0,
              "On a clear day the sky looks blue because air scatters blue light most.", ("scatters",))
L, R = Ref("label"), Ref("rationale")


@pytest.fixture(scope="module")
def tok():
    texts = [format_prompt(e) + " " + e.rationale + " So the answer is: " + e.label for e in (EX, EX2)]
    return train_tokenizer(texts * 20, vocab_size=400)


def cond(name, *segs, tasks=None):
    return Condition(name, name, (), tasks or (Task(tuple(segs)),), "rank")


def ids(tok, text):
    return tok(text, add_special_tokens=False)["input_ids"]


def target(r: Rendered) -> str:
    return r.text[len(format_prompt(EX)):]


def test_label_then_rationale_exact(tok):
    (r,) = render(EX, cond("after", L, R), tok, seed=0)
    prompt = format_prompt(EX)
    assert r.text == prompt + " on the mat\n" + EX.rationale
    assert r.input_ids == (ids(tok, prompt) + ids(tok, " on the mat") + ids(tok, "\n") + ids(tok, EX.rationale)
                           + [tok.eos_token_id])
    n_p, n_l = len(ids(tok, prompt)), len(ids(tok, " on the mat"))
    assert r.prompt_len == n_p
    assert r.label_span == (n_p, n_p + n_l)
    assert tok.decode(r.input_ids[slice(*r.label_span)]) == " on the mat"
    assert [k for k, _, _ in r.spans] == ["prompt", "label", "sep", "rationale", "eos"]
    assert r.spans[-1] == ("eos", len(r.input_ids) - 1, len(r.input_ids))
    assert (r.ex_id, r.task, r.weight) == ("ex-7", 0, 1.0)


def test_rationale_then_label_and_label_only(tok):
    (r,) = render(EX, cond("before", R, L), tok, seed=0)
    assert target(r) == " " + EX.rationale + "\non the mat"
    assert r.input_ids[slice(*r.label_span)] == ids(tok, "on the mat")
    (r,) = render(EX, cond("none", L), tok, seed=0)
    assert r.input_ids == ids(tok, format_prompt(EX)) + ids(tok, " on the mat") + [tok.eos_token_id]


@pytest.mark.parametrize("segs", [(L,), (L, R), (R, L), (call("unk", 4), L),
                                  (L, call("mask", R, 0.5)), (R, Lit(" So the answer is: "), L)])
def test_loss_mask_covers_exactly_the_target(tok, segs):
    (r,) = render(EX, cond("c", *segs), tok, seed=0)
    assert len(r.loss_mask) == len(r.input_ids)
    assert r.loss_mask == [0] * r.prompt_len + [1] * (len(r.input_ids) - r.prompt_len)
    assert r.input_ids[:r.prompt_len] == ids(tok, format_prompt(EX))
    # spans tile the sequence without gaps
    pos = 0
    for _, s, e in r.spans:
        assert s == pos and e >= s
        pos = e
    assert pos == len(r.input_ids)


def test_shuffle_exact_and_seeded(tok):
    c = cond("shuffled", L, call("shuffle", R))
    (r,) = render(EX, c, tok, seed=3)
    words = EX.rationale.split()
    random.Random(stable_seed(3, "ex-7", "shuffled", 0, "1")).shuffle(words)
    assert target(r) == " on the mat\n" + " ".join(words)
    assert render(EX, c, tok, seed=3) == [r]
    assert render(EX, c, tok, seed=4)[0].input_ids != r.input_ids
    # the condition name is part of the seed: a differently named condition shuffles differently
    assert render(EX, cond("shuffled2", L, call("shuffle", R)), tok, seed=3)[0].text != r.text


@pytest.mark.parametrize("p", [0.0, 0.2, 0.5, 0.8, 1.0])
def test_mask_ratio_exact_in_ids(tok, p):
    (r,) = render(EX, cond(f"m{p}", L, call("mask", R, p)), tok, seed=0)
    n = len(EX.rationale.split())
    assert r.input_ids.count(tok.mask_token_id) == count_of(p, n)
    assert r.input_ids[slice(*r.label_span)] == ids(tok, " on the mat")  # label untouched
    kept = target(r).split("\n")[1].replace("<mask>", " ").split()
    assert len(kept) == n - count_of(p, n)
    # every masked word is exactly one id: no stray space tokens around the mask token
    rat = next((s, e) for k, s, e in r.spans if k == "rationale")
    assert all(tok.decode([i]).strip() for i in r.input_ids[slice(*rat)])


def test_mask_token_unit_and_explicit_token(tok):
    c = cond("mt", L, call("mask", R, 0.5, unit="token"))
    (r,) = render(EX, c, tok, seed=0)
    n_tok = len(tok.tokenize(EX.rationale))
    assert r.input_ids.count(tok.mask_token_id) == count_of(0.5, n_tok)
    (r,) = render(EX, cond("mx", L, call("mask", R, 1.0, token="<unk>")), tok, seed=0)
    assert target(r) == " on the mat\n" + "<unk>" * len(EX.rationale.split())  # special: no spaces
    assert tok.mask_token_id not in r.input_ids
    (r,) = render(EX, cond("my", L, call("mask", R, 1.0, token="___")), tok, seed=0)
    assert target(r) == " on the mat\n" + " ".join(["___"] * len(EX.rationale.split()))


@pytest.mark.parametrize("n", [0, 1, 5, 20])
def test_unk_count_exact(tok, n):
    (r,) = render(EX, cond(f"unk{n}", call("unk", n), L), tok, seed=0)
    assert r.input_ids.count(tok.mask_token_id) == n
    if n == 0:  # the n=0 sweep point is the label-only target
        assert r.input_ids == render(EX, cond("none", L), tok, seed=0)[0].input_ids
    else:
        assert target(r) == "<mask>" * n + "\non the mat"
        assert r.spans[1] == ("unk", r.prompt_len, r.prompt_len + n)
        assert [k for k, _, _ in r.spans] == ["prompt", "unk", "sep", "label", "eos"]
    (w,) = render(EX, cond(f"unkw{n}", call("unk", n, unit="word"), L), tok, seed=0)
    assert w.input_ids == r.input_ids  # special fills join without spaces in word units too


def test_drop_reverse_truncate_exact(tok):
    w = EX.rationale.split()
    (r,) = render(EX, cond("rev", L, call("reverse", R)), tok, seed=0)
    assert target(r) == " on the mat\n" + " ".join(w[::-1])
    (r,) = render(EX, cond("tr", L, call("truncate", R, 4)), tok, seed=0)
    assert target(r) == " on the mat\n" + " ".join(w[:4])
    (r,) = render(EX, cond("dr", L, call("drop", R, p=0.25)), tok, seed=0)
    assert len(target(r).split("\n")[1].split()) == len(w) - count_of(0.25, len(w))
    # nesting: shuffle(truncate(rationale, 4)) permutes exactly the first four words
    (r,) = render(EX, cond("nest", L, call("shuffle", call("truncate", R, 4))), tok, seed=0)
    assert sorted(target(r).split("\n")[1].split()) == sorted(w[:4])


def test_keytokens_rankings(tok):
    w = EX.rationale.split()
    scores = [0.0] * len(w)
    for i, s in {3: 0.9, 6: 0.5, 11: 0.7}.items():
        scores[i] = s
    c = cond("keys", L, call("keytokens", R, 3))  # by defaults to ig
    (r,) = render(EX, c, tok, seed=0, rankings={"ig": {"ex-7": scores}})
    assert target(r) == " on the mat\n" + " ".join([w[3], w[6], w[11]])
    with pytest.raises(ValueError, match="ex-7"):
        render(EX, c, tok, seed=0)
    with pytest.raises(ValueError, match="ex-7"):
        render(EX, c, tok, seed=0, rankings={"ig": {"other": scores}})
    with pytest.raises(ValueError, match="has 2 scores"):
        render(EX, c, tok, seed=0, rankings={"ig": {"ex-7": [1.0, 2.0]}})
    (r,) = render(EX, cond("kf", L, call("keytokens", R, 2, by="field:highlights")), tok, seed=0)
    assert target(r) == " on the mat\nmat mat"
    (r,) = render(EX, cond("kp", L, call("keytokens", R, 1, by="placeholder")), tok, seed=0)
    assert target(r) == " on the mat\nbecause"


def test_keytokens_token_unit_spreads_word_scores(tok):
    w = EX.rationale.split()
    scores = [1.0 if x == "sleeps" else 0.0 for x in w]
    k = len(tok.tokenize(" sleeps"))
    c = cond("kt", L, call("keytokens", R, k, unit="token"))
    (r,) = render(EX, c, tok, seed=0, rankings={"ig": {"ex-7": scores}})
    assert target(r) == " on the mat\nsleeps"


def label_part(r: Rendered):
    """The prompt, the label's ids and the loss mask up to the label's end."""
    return r.prompt_len, r.input_ids[:r.label_span[1]], r.loss_mask[:r.label_span[1]], r.label_span


def test_keytokens_random_is_seeded_nested_and_needs_no_ranking(tok):
    w = EX.rationale.split()

    def kept(k, seed, name="kr"):
        (r,) = render(EX, cond(name, L, call("keytokens", R, k, by="random")), tok, seed=seed)
        assert label_part(r) == label_part(render(EX, cond("none", L), tok, seed=seed)[0])  # label untouched
        return target(r).split("\n")[1].split()

    three = kept(3, 0)
    it = iter(w)
    assert len(three) == 3 and all(any(x == y for y in it) for x in three)  # a subsequence: original order
    assert three == kept(3, 0) == kept(3, 0, name="other")  # per (seed, example), not per condition
    assert set(three) <= set(kept(6, 0))  # nested as k grows, like an IG ranking
    assert any(kept(3, s) != three for s in range(1, 6))  # another seed, another draw


EX3 = Example("ex-9", "Which animal barks?", ("a dog", "a cat", "a fish"), 0,
              "Dogs bark loudly at strangers and cats meow.")


def test_swap_takes_another_examples_rationale_and_keeps_the_label(tok):
    split = Split([EX, EX2, EX3])
    c = cond("swapped", L, call("swap", R))
    rationales = {e.id: e.rationale for e in (EX, EX2, EX3)}
    for seed in range(4):
        got = {}
        for e in (EX, EX2, EX3):
            (r,) = render(e, c, tok, seed=seed, split=split)
            (plain,) = render(e, cond("after", L, R), tok, seed=seed)
            assert label_part(r) == label_part(plain)  # the prompt and label ids and their mask
            assert r.loss_mask == [0] * r.prompt_len + [1] * (len(r.input_ids) - r.prompt_len)
            head, body = r.text[len(format_prompt(e)):].split("\n", 1)
            assert head == " " + e.label and body != e.rationale and body in rationales.values()
            assert [k for k, _, _ in r.spans] == ["prompt", "label", "sep", "rationale", "eos"]
            got[e.id] = body
            assert render(e, c, tok, seed=seed, split=[EX, EX2, EX3]) == [r]  # deterministic
        assert sorted(got.values()) == sorted(rationales.values())  # a derangement of the split
        if seed == 0:
            first = got
    assert any(not render(EX, c, tok, seed=s, split=split)[0].text.endswith(first[EX.id]) for s in range(1, 6))
    # nested: the partner's input goes through the inner perturbation, seeded by the partner
    (r,) = render(EX, cond("sw", L, call("swap", call("truncate", R, 2))), tok, seed=0, split=split)
    partner = split.partner(EX.id, 0, "swap")
    assert target(r) == " on the mat\n" + " ".join(partner.rationale.split()[:2])
    with pytest.raises(ValueError, match="swap needs the other examples"):
        render(EX, c, tok, seed=0)


def test_unk_like_rationale_matches_the_rationales_length(tok):
    (r,) = render(EX, cond("ul", L, call("unk", like=R)), tok, seed=0)
    (plain,) = render(EX, cond("after", L, R), tok, seed=0)
    assert len(r.input_ids) == len(plain.input_ids) and r.loss_mask == plain.loss_mask
    assert label_part(r) == label_part(plain)
    n_tok = len(ids(tok, EX.rationale))
    assert r.input_ids.count(tok.mask_token_id) == n_tok
    assert [k for k, _, _ in r.spans] == ["prompt", "label", "sep", "unk", "eos"]
    (w,) = render(EX, cond("ulw", L, call("unk", like=R, unit="word")), tok, seed=0)
    assert w.input_ids.count(tok.mask_token_id) == len(EX.rationale.split())
    # cut to max_len like the rationale it matches: the run of mask tokens, not all of it
    cut = len(plain.input_ids) - 5
    (short,) = render(EX, cond("ul", L, call("unk", like=R)), tok, seed=0, max_len=cut)
    assert len(short.input_ids) == cut >= len(render(EX, cond("after", L, R), tok, seed=0, max_len=cut)[0].input_ids)
    assert short.input_ids.count(tok.mask_token_id) == n_tok - 5
    # before the label it needs the rationale: evaluated by generation, no rank context
    c = Condition("ub", "ub", (), (Task((call("unk", like=R), L)),), "generate")
    assert c.tasks[0].rationale_before_label() and eval_context(EX, c, tok, seed=0) is None


def test_label_is_never_perturbed(tok):
    # hand-built calls, as the checker would never give them
    for segs in [(Call("shuffle", (L,)),), (R, Call("mask", (Call("reverse", (L,)), 0.5)))]:
        with pytest.raises(ValueError, match="label"):
            render(EX, cond("bad", *segs), tok, seed=0)


def test_unknown_perturbation_and_missing_rationale_are_value_errors(tok):
    # render trusts a checked call's arguments; bad ones are refused when the call is built
    # (`cotdsl.lang.call`, tests/lang/test_targets.py) or checked
    with pytest.raises(ValueError, match="unknown perturbation"):
        render(EX, cond("c", L, Call("nope", (R,))), tok, seed=0)
    with pytest.raises(ValueError, match="no rationale"):
        render(EX.with_rationale(None), cond("c", L, R), tok, seed=0)


def test_literals_verbatim_and_spaces_carried(tok):
    c = cond("scotd", R, Lit(" So the answer is: "), L)
    (r,) = render(EX, c, tok, seed=0)
    assert target(r) == " " + EX.rationale + " So the answer is: on the mat"
    assert r.input_ids[slice(*r.label_span)] == ids(tok, " on the mat")  # trailing space joins the label
    c = cond("lead", Lit("The answer is "), L, Lit(". "), R)
    (r,) = render(EX, c, tok, seed=0)
    assert target(r) == " The answer is on the mat. " + EX.rationale
    assert [k for k, _, _ in r.spans] == ["prompt", "literal", "label", "literal", "rationale", "eos"]


def test_multitask_one_sequence_per_task(tok):
    c = cond("mt", tasks=(Task((L,), prefix="predict: ", weight=0.5), Task((R,), prefix="explain: ", weight=0.5)))
    a, b = render(EX, c, tok, seed=0)
    assert (a.task, b.task, a.weight, b.weight) == (0, 1, 0.5, 0.5)
    assert a.text == "predict: " + format_prompt(EX) + " on the mat"
    assert b.text == "explain: " + format_prompt(EX) + " " + EX.rationale and b.label_span is None
    assert generation_prompt_ids(EX, c, tok) == ids(tok, "predict: " + format_prompt(EX))
    ec = eval_context(EX, c, tok, seed=0)
    assert ec.context_ids + ec.choice_ids[0] == a.input_ids[:a.label_span[1]]


def test_max_len_shortens_only_the_rationale(tok):
    c = cond("after", L, call("shuffle", R))
    (full,) = render(EX, c, tok, seed=0)
    (r,) = render(EX, c, tok, seed=0, max_len=len(full.input_ids) - 5)
    assert len(r.input_ids) <= len(full.input_ids) - 5
    assert r.input_ids[:r.label_span[1]] == full.input_ids[:full.label_span[1]]
    short, whole = target(r).split("\n")[1].split(), target(full).split("\n")[1].split()
    assert short == whole[:len(short)] and 0 < len(short) < len(whole)
    (r,) = render(EX, c, tok, seed=0, max_len=full.label_span[1] + 1)  # room for the label + eos only
    assert r.input_ids == render(EX, cond("x", L), tok, seed=0)[0].input_ids
    with pytest.raises(ValueError, match="max_len"):
        render(EX, c, tok, seed=0, max_len=full.prompt_len)


@pytest.mark.parametrize("segs", [(L,), (L, R), (call("unk", 3), L), (Lit("The answer is "), L, Lit(". "), R),
                                  (L, call("mask", R, 0.4))])
def test_eval_context_matches_training_ids(tok, segs):
    c = cond("c", *segs)
    for ex in (EX, EX2):
        (r,) = render(ex, c, tok, seed=11)
        ec = eval_context(ex, c, tok, seed=11)
        assert isinstance(ec, EvalContext)
        assert ec.context_ids == r.input_ids[:r.label_span[0]]
        assert ec.context_ids + ec.choice_ids[ex.answer] == r.input_ids[:r.label_span[1]]
        assert ec.choice_texts == list(ex.choices) and len(ec.choice_ids) == len(ex.choices)
        assert all(len(x) > 0 for x in ec.choice_ids)


def test_eval_context_none_after_rationale(tok):
    for segs in [(R, L), (call("shuffle", R), L), (R, Lit(" So the answer is: "), L), (R,)]:
        assert eval_context(EX, cond("c", *segs), tok, seed=0) is None


def test_parse_answer():
    scotd = cond("s", R, Lit(" So the answer is: "), L)
    assert parse_answer(" cats like mats. So the answer is: In the Box.", EX, scotd) == 1
    assert parse_answer("So the answer is: blue. So the answer is: on the mat", EX, scotd) == 0
    assert parse_answer("the cat is on the mat", EX, scotd) is None  # marker missing
    assert parse_answer("So the answer is: on a mat", EX, scotd) is None  # not a choice
    after = cond("a", L, R)
    assert parse_answer(" Under the bed!\nbecause cats hide", EX, after) == 2
    assert parse_answer(" the box\nin the box", EX, after) is None  # the label line is the first
    before = cond("b", R, L)
    assert parse_answer(" it is warm on the mat\nON THE MAT\n", EX, before) == 0
    assert parse_answer(" rambling without end", EX, before) is None
    lead = cond("l", Lit("The answer is "), L, Lit(". "), R)
    assert parse_answer(" The answer is in the box. Boxes are warm.", EX, lead) == 1
    unk = cond("u", call("unk", 3), L)
    assert parse_answer("<unk><unk><unk>\nunder the bed", EX, unk) == 2
    assert parse_answer("under the bed", EX, cond("u0", call("unk", 0), L)) == 2  # unk(0) renders nothing
    assert parse_answer("<unk><unk><unk>\nunder the bed\nin the box", EX, unk) == 2


def test_parse_answer_roundtrips_rendered_targets(tok):
    for segs in [(L,), (L, R), (R, L), (R, Lit(" So the answer is: "), L), (Lit("The answer is "), L, Lit(". "), R)]:
        c = cond("c", *segs)
        for ex in (EX, EX2):
            (r,) = render(ex, c, tok, seed=0)
            assert parse_answer(r.text[len(format_prompt(ex)):], ex, c) == ex.answer


def test_render_is_deterministic_across_examples_and_calls(tok):
    c = cond("m", L, call("mask", R, 0.5))
    a = [render(e, c, tok, seed=5) for e in (EX, EX2)]
    b = [render(e, c, tok, seed=5) for e in (EX2, EX)][::-1]
    assert a == b


@pytest.mark.slow
def test_smollm2_tokenizer_falls_back_to_unk():
    from transformers import AutoTokenizer

    from cotdsl.models import cache_dir, load_smollm2, smollm2_gguf

    snaps = sorted((cache_dir() / "gguf").glob(smollm2_gguf().stem + "-*")) if (cache_dir() / "gguf").exists() else []
    snaps = [s for s in snaps if (s / "tokenizer_config.json").exists()]
    sm = AutoTokenizer.from_pretrained(snaps[0]) if snaps else load_smollm2()[1]
    assert sm.mask_token is None and sm.unk_token is not None
    (r,) = render(EX, cond("m", L, call("mask", R, 0.6)), sm, seed=0)
    n = len(EX.rationale.split())
    assert r.input_ids.count(sm.unk_token_id) == count_of(0.6, n)
    assert r.input_ids[-1] == sm.eos_token_id and sm.eos_token_id != sm.unk_token_id
    (r,) = render(EX, cond("u", call("unk", 20), L), sm, seed=0)
    assert r.input_ids.count(sm.unk_token_id) == 20
    ec = eval_context(EX, cond("u", call("unk", 20), L), sm, seed=0)
    assert ec.context_ids + ec.choice_ids[0] == r.input_ids[:r.label_span[1]]
    assert sm.decode(ec.choice_ids[0]) == "on the mat"


CHECKED = '''
experiment q {
  seeds 0
  data toy = builtin("facts", train: 8, test: 4)
  teacher g = gold
  student s = tiny(arch: "llama")
  target none = label
  target after = label -> rationale
  target before = rationale -> label
  target masked[p in 0.2, 0.8] = label -> mask(rationale, p)
  target maskt = label -> mask(rationale, 0.5, unit: token, token: "<unk>")
  target keysf = label -> keytokens(rationale, 2, by: field(highlights))
  target unks[n in 0, 5] = unk(n) -> label
  target scotd = rationale " So the answer is: " label
  target lead = "The answer is " label ". " shuffle(mask(rationale, 0.5))
  target mt = multitask { "predict: ": label weight 0.5, "explain: ": rationale weight 0.5 }
  eval { by: auto }
}
'''


def _check_all(tok, exp):
    for c in exp.conditions:
        for ex in (EX, EX2):
            ig = {"ig": {ex.id: [float(len(w)) for w in ex.rationale.split()]}}
            rs = render(ex, c, tok, seed=0, rankings=ig, split=[EX, EX2])
            assert len(rs) == len(c.tasks)
            ec = eval_context(ex, c, tok, seed=0)
            assert (ec is None) == (c.eval_by == "generate"), c.name
            r = rs[0]
            if ec is not None:
                assert ec.context_ids + ec.choice_ids[ex.answer] == r.input_ids[:r.label_span[1]]
            gen = r.text[len(c.tasks[0].prefix + format_prompt(ex)):]
            assert parse_answer(gen, ex, c) == ex.answer, c.name


def test_checked_conditions_render(tok):
    check = pytest.importorskip("cotdsl.lang.check")
    exp = check.check_source(CHECKED, "q.cot")
    assert {c.name for c in exp.conditions} >= {"masked[p=0.2]", "unks[n=0]", "lead", "mt"}
    _check_all(tok, exp)
    by = {c.name: render(EX, c, tok, seed=0)[0] for c in exp.conditions}
    assert by["unks[n=0]"].input_ids == by["none"].input_ids
    assert by["keysf"].text.endswith("\nmat mat")


def test_bundled_specs_render(tok):
    check = pytest.importorskip("cotdsl.lang.check")
    from pathlib import Path

    specs = sorted((Path(__file__).parent.parent / "specs").glob("*.cot"))
    if not specs:
        pytest.skip("no specs yet")
    for path in specs:
        _check_all(tok, check.load(path))


def test_a_degenerate_ig_item_keeps_the_rationales_first_words(tok):
    """IG attributions of an item with f(x) == f(baseline) are noise: the rank stage hands
    keytokens the stated fallback (first words) instead of their order."""
    from types import SimpleNamespace

    from cotdsl.jobs.stages import ig_ranking

    w = EX.rationale.split()
    noise = [0.0, 1e-9, -2e-9, 3e-9] + [0.0] * (len(w) - 4)
    assert ig_ranking(SimpleNamespace(word_scores=noise, degenerate=False)) == noise
    ranking = ig_ranking(SimpleNamespace(word_scores=noise, degenerate=True))
    assert ranking == sorted(ranking, reverse=True) and len(set(ranking)) == len(w)
    c = cond("keys", L, call("keytokens", R, 3))
    (r,) = render(EX, c, tok, seed=0, rankings={"ig": {"ex-7": ranking}})
    assert target(r) == " on the mat\n" + " ".join(w[:3])
