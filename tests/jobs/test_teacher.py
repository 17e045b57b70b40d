"""Teachers: gold, rationale files, and HF models (tiny random offline; the bundled SmolLM2, slow)."""
import json
from dataclasses import replace

import pytest

from cotdsl.data.builtin import generate
from cotdsl.errors import CotError
from cotdsl.jobs import teacher as T
from cotdsl.jobs.teacher import apply_filter, build_prompt, clean, rationalize, stated_answer
from cotdsl.schema import Example
from cotdsl.spec import Teacher
from cotdsl.tiny import tiny_model, train_tokenizer


def exs(n=3):
    return generate("facts", n, 1, seed=0)[0]


def test_gold_keeps_rationales_and_names_missing(tmp_path):
    data = exs()
    assert rationalize(Teacher("t", "gold"), data, cache_dir=tmp_path) == data
    bad = data[:1] + [data[1].with_rationale(None), data[2].with_rationale("  ")]
    with pytest.raises(CotError) as e:
        rationalize(Teacher("t", "gold"), bad, cache_dir=tmp_path)
    assert data[1].id in str(e.value) and data[2].id in str(e.value) and "2 example(s)" in str(e.value)


def test_rationale_file(tmp_path):
    data = exs()
    p = tmp_path / "r.jsonl"
    p.write_text("\n".join(json.dumps({"id": e.id, "why": f"because {i}"}) for i, e in enumerate(data)))
    out = rationalize(Teacher("t", "file", (("path", str(p)), ("field", "why"))), data, cache_dir=tmp_path)
    assert [e.rationale for e in out] == ["because 0", "because 1", "because 2"]
    p.write_text(json.dumps({"id": data[0].id, "why": "x"}) + "\n")
    with pytest.raises(CotError, match=f"no rationale for 2 example.*{data[1].id}"):
        rationalize(Teacher("t", "file", (("path", str(p)), ("field", "why"))), data, cache_dir=tmp_path)
    with pytest.raises(CotError, match="row 1: field 'rationale'"):
        rationalize(Teacher("t", "file", (("path", str(p)),)), data, cache_dir=tmp_path)
    with pytest.raises(CotError, match="does not exist"):
        rationalize(Teacher("t", "file", (("path", str(tmp_path / "no.jsonl")),)), data, cache_dir=tmp_path)


EX = Example("q1", "Which is cold?", ("fire", "ice", "sun"), 1)


@pytest.mark.parametrize("text,want", [
    ("The answer is B because ice is frozen.", 1),
    ("the answer is (A) since", 0),
    ("The answer is: C.", 2),
    ("The answer is ice because it is frozen.", 1),
    ("The answer is D because", None),  # not a choice of this question
    ("Because ice is frozen.", None),
    ("The answer is Because", None),  # a capitalised word, not a letter
])
def test_stated_answer(text, want):
    assert stated_answer(text, EX) == want


def test_prompt_building_and_cleaning():
    p = build_prompt(T.DEFAULT_PROMPT, EX)
    assert p.startswith(T.INSTRUCTION) and p.endswith("Question: Which is cold?\nChoices:\nA: fire\n"
                                                       "B: ice\nC: sun\nAnswer: B\nRationale:")
    assert build_prompt("Why is {label} ({letter}) right? {{literal}}", EX) == "Why is ice (B) right? {{literal}}"
    custom = build_prompt("Explain.", EX)
    assert custom.startswith("Explain.\n\nQuestion:") and T.SHOTS[0] not in custom
    assert clean(" The answer is B.\n\nQuestion: next") == "The answer is B."
    assert clean("x\nQuestion: y") == "x"


def test_filter_keeps_consistent_samples(monkeypatch, caplog):
    data = exs(3)
    samples = {data[0].id: ["good", "bad", "good2"], data[1].id: ["bad"], data[2].id: ["", "good"]}
    # Stub the parser: "good*" states the gold answer, anything else a wrong one.
    monkeypatch.setattr(T, "stated_answer", lambda s, e: e.answer if s.startswith("good") else -1)
    out = apply_filter(data, samples, True)
    assert [e.rationale for e in out] == ["good", None, "good"]
    assert [e.meta["teacher_kept"] for e in out] == [2, 0, 1]
    assert out[0].meta["rationales"] == ["good", "good2"] and out[0].meta["teacher_samples"] == 3
    assert data[1].id in caplog.text
    off = apply_filter(data, samples, False)
    assert [e.meta["teacher_kept"] for e in off] == [3, 1, 1] and off[1].rationale == "bad"


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("teacher")
    data = exs(4)
    tok = train_tokenizer([build_prompt(T.DEFAULT_PROMPT, e) + " " + e.rationale for e in data])
    tiny_model(tok, layers=1, d_model=32, heads=2).save_pretrained(d)
    tok.save_pretrained(d)
    return d


def hf_teacher(path, **kw):
    args = {"model": str(path), "max_new_tokens": 6, "batch": 2, **kw}
    return Teacher("t", "hf", tuple(args.items()))


def test_hf_teacher_samples_caches_and_resumes(tiny_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(T, "stated_answer", lambda s, e: e.answer)  # random model: accept all
    data = exs(3)
    calls = []
    t = hf_teacher(tiny_dir, samples=2, temperature=1.0, top_k=20)
    out = rationalize(t, data, cache_dir=tmp_path, progress=lambda i, n: calls.append((i, n)))
    assert calls[0] == (0, 3) and calls[-1] == (3, 3)
    assert all(e.meta["teacher_samples"] == 2 for e in out)
    (cache,) = tmp_path.glob("*.json")
    assert set(json.loads(cache.read_text())["samples"]) == {e.id for e in data}
    # Cache hit: generation must not run again, and the result is identical.
    monkeypatch.setattr(T, "generate_samples", lambda *a, **k: pytest.fail("regenerated"))
    again = rationalize(t, data, cache_dir=tmp_path)
    assert [e.meta["rationales"] for e in again] == [e.meta["rationales"] for e in out]
    # Resume: drop one question from the cache; only that one is generated.
    blob = json.loads(cache.read_text())
    del blob["samples"][data[2].id]
    cache.write_text(json.dumps(blob))
    seen = []
    monkeypatch.setattr(T, "generate_samples", lambda m, tok, prompts, s, seed: seen.append(prompts) or [["x", "y"]] * len(prompts))
    rationalize(t, data, cache_dir=tmp_path)
    assert len(seen) == 1 and len(seen[0]) == 1


def test_hf_teacher_cache_key_covers_settings(tiny_dir, tmp_path):
    data = exs(2)
    base = T.cache_key(T.hf_settings(hf_teacher(tiny_dir), 0), data)
    assert base == T.cache_key(T.hf_settings(hf_teacher(tiny_dir), 0), data)
    assert base == T.cache_key(T.hf_settings(hf_teacher(tiny_dir, filter=False), 0), data)  # post-hoc
    assert base == T.cache_key(T.hf_settings(hf_teacher(tiny_dir), 5), data)  # greedy ignores seed
    for other in [T.hf_settings(hf_teacher(tiny_dir, max_new_tokens=7), 0),
                  T.hf_settings(hf_teacher(tiny_dir, prompt="Why?"), 0),
                  T.hf_settings(hf_teacher(tiny_dir, temperature=0.5), 0),
                  T.hf_settings(hf_teacher(tiny_dir, temperature=0.5), 1)]:
        assert T.cache_key(other, data) != base
    assert T.cache_key(T.hf_settings(hf_teacher(tiny_dir), 0), data[:1]) != base


def test_hf_teacher_greedy_is_deterministic(tiny_dir, tmp_path):
    data = exs(3)
    a = rationalize(hf_teacher(tiny_dir, filter=False), data, cache_dir=tmp_path / "a")
    b = rationalize(hf_teacher(tiny_dir, filter=False, batch=3), data, cache_dir=tmp_path / "b")
    assert [e.meta["rationales"] for e in a] == [e.meta["rationales"] for e in b]


def test_hf_teacher_user_errors(tmp_path):
    with pytest.raises(CotError, match="temperature 0"):
        rationalize(hf_teacher(tmp_path, samples=3), exs(1), cache_dir=tmp_path)
    with pytest.raises(CotError, match="could not load"):
        rationalize(hf_teacher(tmp_path / "missing"), exs(1), cache_dir=tmp_path)
    with pytest.raises(CotError, match="unknown kind"):
        rationalize(Teacher("t", "oracle"), exs(1), cache_dir=tmp_path)


@pytest.mark.slow
def test_smollm2_teacher_rationalizes_builtin_questions(tmp_path):
    data = exs(4)
    t = Teacher("t", "hf", (("model", "smollm2"), ("max_new_tokens", 32), ("batch", 4)))
    out = rationalize(t, data, cache_dir=tmp_path)
    kept = [e for e in out if e.rationale]
    assert all(e.meta["teacher_samples"] == 1 for e in out)
    # Given the gold letter, even the 135M instruct model states it ("The answer is X because").
    assert len(kept) >= 2
    for e in kept:
        assert stated_answer(e.rationale, e) == e.answer and "\n\n" not in e.rationale


HOT = Example("q2", "What protects hands from a hot oven tray?", ("ice cubes", "holding hot trays", "oven mitts"), 2)


@pytest.mark.parametrize("text,want", [
    ("The answer is C because oven mitts are thick.", "Oven mitts are thick."),
    ("Answer: (C). Mitts are thick.", "Mitts are thick."),
    ("C is correct because mitts insulate.", "Mitts insulate."),
    ("The answer is holding hot trays because that is what mitts are for.", "That is what mitts are for."),
    ("So the correct answer is (C), since mitts insulate.", "Mitts insulate."),
    ("the answer is: oven mitts - they insulate", "They insulate"),
    ("The answer is C.", None),  # nothing but the statement
    ("Oven mitts are thick, so the answer is C.", "Oven mitts are thick, so the answer is C."),  # not leading
    ("Because mitts insulate.", "Because mitts insulate."),
    ("The answer is Because", "The answer is Because"),
])
def test_strip_answer(text, want):
    assert T.strip_answer(text, HOT) == want


def test_file_teacher_strip_answer(tmp_path, caplog):
    data = exs(3)
    p = tmp_path / "r.jsonl"
    texts = [f"The answer is {data[0].letter} because it is made of {data[0].meta['material']}.",
             f"The answer is {data[1].label}, since that is its colour.", "The answer is A."]
    p.write_text("\n".join(json.dumps({"id": e.id, "rationale": t}) for e, t in zip(data, texts)))
    plain = Teacher("t", "file", (("path", str(p)),))
    assert [e.rationale for e in rationalize(plain, data, cache_dir=tmp_path)] == texts
    out = rationalize(Teacher("t", "file", (("path", str(p)), ("strip_answer", True))), data, cache_dir=tmp_path)
    assert [e.rationale for e in out] == [f"It is made of {data[0].meta['material']}.", "That is its colour.", None]
    assert data[2].id in caplog.text


def test_hf_teacher_strips_after_the_filter_read_the_answer(tiny_dir, tmp_path, monkeypatch):
    data = exs(3)

    def fake(model, tok, prompts, settings, seed):  # per prompt: a wrong answer, then the gold one
        golds = [p.rsplit("Answer: ", 1)[1][0] for p in prompts]
        return [[f"The answer is {'A' if g != 'A' else 'B'} because no.", f"The answer is {g} because yes."]
                for g in golds]

    monkeypatch.setattr(T, "generate_samples", fake)
    out = rationalize(hf_teacher(tiny_dir, samples=2, temperature=1.0, strip_answer=True), data, cache_dir=tmp_path)
    assert [e.rationale for e in out] == ["Yes."] * 3
    assert [e.meta["rationales"] for e in out] == [["Yes."]] * 3 and all(e.meta["teacher_kept"] == 1 for e in out)


# ---- diagnostics: what the rationales look like ------------------------------------------------------
Q = ("fire", "ice", "sun")


def test_diagnostics_leakage_on_hand_made_rationales():
    exs_ = [Example("a", "Which is cold?", Q, 1, "Ice is frozen water, so it is cold."),  # gold only
            Example("b", "Which is cold?", Q, 1, "Unlike fire or the Sun, ICE is cold."),  # gold and others
            Example("c", "Which is cold?", Q, 1, "Frozen things are cold; the answer is B."),  # states, names none
            Example("d", "Which is cold?", Q, 1, "Firewood burns; suns shine."),  # no whole-word mention
            Example("e", "Which is cold?", Q, 1, None)]  # no rationale: counted apart
    d = T.diagnostics(exs_)
    assert (d["questions"], d["rationales"], d["no_rationale"]) == (5, 4, 1)
    assert d["gold_label"] == 0.5 and d["gold_label_ids"] == ["a", "b"]
    assert d["other_choice"] == 0.25 and d["other_choice_ids"] == ["b"]
    assert d["gold_only"] == 0.25 and d["states_answer"] == 0.25
    assert d["words"] == {"mean": 7.0, "min": 4, "p10": 4, "median": 8, "p90": 8, "max": 8}
    assert "scotd" not in d
    line = T.diagnostics_line(d)
    assert line == {"gold label in rationale": "50%", "other choice": "25%", "words (median)": 8}


def test_diagnostics_longer_choice_wins_an_overlap():
    ex = Example("s", "What is above?", ("the blue sky", "sky", "grass"), 0, "We see the blue sky above.")
    d = T.diagnostics([ex])
    assert d["gold_label"] == 1.0 and d["other_choice"] == 0.0  # "sky" is part of the gold mention
    d = T.diagnostics([replace(ex, answer=1)])
    assert d["gold_label"] == 0.0 and d["other_choice"] == 1.0  # the rationale names the longer, wrong choice


def test_diagnostics_scotd_kept_rates():
    e = [Example(f"q{i}", "Which is cold?", Q, 1) for i in range(3)]
    samples = {"q0": ["The answer is B because ice.", "The answer is B since cold.", "The answer is A."],
               "q1": ["The answer is C because.", "", "The answer is B because it is cold."],
               "q2": ["The answer is A.", "The answer is C.", "no answer"]}
    out = apply_filter(e, samples, True)
    d = T.diagnostics(out, use_filter=True)
    assert d["scotd"] == {"samples": 3, "filter": True, "kept_mean": 1.0, "kept_rate": round(3 / 9, 4),
                          "none_kept": round(1 / 3, 4), "kept_per_question": {"0": 1, "1": 1, "2": 1}}
    assert (d["questions"], d["rationales"]) == (3, 2) and d["states_answer"] == 1.0
    assert T.diagnostics_line(d)["kept per question"] == "1/3"
    assert T.diagnostics(apply_filter(e, samples, False), use_filter=False)["scotd"]["kept_mean"] == round(8 / 3, 3)
