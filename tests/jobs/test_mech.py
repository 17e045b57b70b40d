"""The probe section's mechanism stages (`cotdsl/jobs/mech.py`, `cotdsl/mech_report.py`): planned
as cached jobs with the right inputs and keys, and end to end through `cotdsl run` on tiny random
students (seconds): DLA, activation patching and attention outputs, their reports and figures, a
fully cached re-run."""
from __future__ import annotations

import json
import os
from pathlib import Path

import polars as pl
import pytest
from rich.console import Console

from cotdsl.jobs import stages
from cotdsl.lang.check import check_source
from cotdsl.plan import make_plan
from cotdsl.errors import CotError
from cotdsl.run import EXIT_OK, probe, report, run

SPEC = """
experiment tiny {{
  seeds {seeds}
  data    toy  = builtin("facts", train: 24, test: 12)
  teacher gold = gold
  student t    = tiny(arch: "llama", layers: 2, d_model: 32, heads: 4)
  {students}
  target none   = label
  target before = rationale -> "So the answer is: " label
  target after  = label -> rationale
  train {{ epochs: 1, lr: 3e-3, batch: 8, checkpoint_every: 2 }}
  eval  {{ by: auto, max_new_tokens: 24 }}
  probe {{ lens: logit; examples: 6; context: gold{mech} }}
}}
"""
MECH = "; attribute: dla; patch: none -> after, before -> after; attention: rationale"


def spec_text(mech: str = MECH, seeds: str = "0", students: str = "") -> str:
    return SPEC.format(mech=mech, seeds=seeds, students=students)


def plan_of(text: str, **kw):
    return make_plan(check_source(text, "tiny.cot"), gpu=False, **kw)


def test_jobs_inputs_and_keys():
    plan = plan_of(spec_text(seeds="0, 1"))
    by = {s: plan.by_stage(s) for s in ("train", "eval", "probe", "dla", "attention", "patch")}
    assert len(by["dla"]) == 3 * 2  # every condition x seed
    assert {j.condition.name for j in by["attention"]} == {"before"}  # rationale-first only
    assert len(by["patch"]) == 2 * 2  # pairs x seeds
    train = {(j.condition.name, j.seed): j.id for j in by["train"]}
    for j in by["patch"]:
        assert j.deps[:2] == (train[(j.from_condition.name, j.seed)], train[(j.to_condition.name, j.seed)])
        assert j.from_student == j.to_student and j.eval_job is None  # gold contexts: no generations needed
    assert {j.label.split(" · ")[0] for j in by["patch"]} == {"patch none -> after", "patch before -> after"}
    # the mechanism entries re-run no lens; each mechanism's key ignores the others' settings
    bare = plan_of(spec_text(mech="", seeds="0, 1"))
    assert {j.key for j in bare.by_stage("probe")} == {j.key for j in by["probe"]}
    assert not bare.by_stage("dla") and not bare.by_stage("patch") and not bare.by_stage("attention")
    other = plan_of(spec_text(mech=MECH + "; patch_at: all", seeds="0, 1"))
    assert {j.key for j in other.by_stage("dla")} == {j.key for j in by["dla"]}
    assert not {j.key for j in other.by_stage("patch")} & {j.key for j in by["patch"]}
    # a generating student read after its own generations waits for them
    gen = plan_of(spec_text(seeds="0").replace("context: gold", "context: generated"))
    evals = {j.condition.name: j.id for j in gen.by_stage("eval")}
    (att,) = gen.by_stage("attention")
    assert att.eval_job == evals["before"] and evals["before"] in att.deps
    assert {j.to_condition.name: j.eval_job for j in gen.by_stage("patch")} == {"after": None}
    # --only: a pair whose end is filtered out is left out
    assert not plan_of(spec_text(), only={"target": ["none", "before"]}).by_stage("patch")


def test_a_pair_of_students_patches_every_condition():
    plan = plan_of(spec_text(mech="; patch: t -> u", students='student u    = tiny(arch: "llama", layers: 2, '
                                                              'd_model: 32, heads: 4)'))
    jobs = plan.by_stage("patch")
    assert sorted(j.to_condition.name for j in jobs) == ["after", "before", "none"]
    assert all(j.from_student.name == "t" and j.to_student.name == "u" for j in jobs)
    assert all(j.from_condition == j.to_condition for j in jobs)


def test_stage_code_covers_the_interp_modules():
    mods = stages.STAGE_MODULES
    assert {"interp.dla", "interp.lens", "interp.bridge", "cotdsl.jobs.mech"} <= set(mods["dla"])
    assert {"interp.patching", "interp.dla", "interp.lens", "interp.bridge", "cotdsl.jobs.mech"} <= set(mods["patch"])
    assert {"interp.attention", "interp.lens", "interp.bridge", "cotdsl.jobs.mech"} <= set(mods["attention"])
    v = stages.code_versions()
    assert len({v["dla"], v["patch"], v["attention"], v["probe"]}) == 4


def quiet() -> Console:
    return Console(file=open(os.devnull, "w"), width=120)


def statuses(run_dir: Path) -> dict:
    st = json.loads((run_dir / "jobs.json").read_text())
    out: dict = {}
    for v in st.values():
        out.setdefault(v["stage"], set()).add(v["status"])
    return out


@pytest.fixture
def env(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_run_reports_dla_patching_and_attention_then_reruns_cached(env):
    spec = env / "tiny.cot"
    spec.write_text(spec_text(mech=""))
    assert run(spec, console=quiet()) == EXIT_OK
    rd = env / "runs" / "tiny"
    assert not (rd / "dla.parquet").exists()
    spec.write_text(spec_text())
    con = Console(record=True, width=100)
    assert run(spec, console=con) == EXIT_OK
    st = statuses(rd)
    assert st["train"] == st["probe"] == {"cached"}  # the mechanism entries re-run no lens
    assert st["dla"] == st["patch"] == st["attention"] == {"ran"}

    dla = pl.read_parquet(rd / "dla.parquet")
    assert sorted(set(dla["condition"])) == ["after", "before", "none"] and len(dla) == 3 * 6
    for r in dla.iter_rows(named=True):  # the parts add up to the model's own logit difference
        total = r["embed"] + r["pos_embed"] + r["final_bias"] + sum(r["attn"]) + sum(r["mlp"])
        assert abs(total - r["logit_diff"]) < 1e-3 and len(r["heads"]) == 2 and len(r["heads"][0]) == 4
    patch = pl.read_parquet(rd / "patch.parquet")
    assert sorted(set(patch["pair"])) == ["before -> after", "none -> after"] and len(patch) == 2 * 6
    assert all(len(r["resid"]) == 3 and len(r["attn"]) == len(r["mlp"]) == 2 for r in patch.iter_rows(named=True))
    # none and after read the same prompt and labels: the two unpatched runs are each student's own
    # logit difference, as DLA measured it (another code path: plain hooks vs the bridge)
    own = dict(zip(zip(dla["condition"], dla["ex_id"]), dla["logit_diff"]))
    for r in patch.filter(pl.col("pair") == "none -> after").iter_rows(named=True):
        assert abs(r["clean"] - own[("none", r["ex_id"])]) < 1e-3
        assert abs(r["corrupted"] - own[("after", r["ex_id"])]) < 1e-3
    att = pl.read_parquet(rd / "attention.parquet")
    assert set(att["condition"]) == {"before"} and len(att) == 6 * 2 * 4
    sums = att.select((pl.col("prompt") + pl.col("rationale") + pl.col("other")).alias("s"))["s"]
    assert ((sums - 1).abs() < 1e-4).all() and (att["len_rationale"] > 0).all()

    text = con.export_text()
    lens_at = text.index("logit lens")
    for title in ("DLA [none]: mean contribution", "activation patching [none -> after]",
                  "attention of the label position [before [gold rationale]]", "top 8 heads [after]"):
        assert text.index(title) > lens_at, title
    assert max(len(line) for line in text.splitlines()) <= 100
    for name in ("dla.png", "patching.png", "attention.png"):
        assert (rd / "figures" / name).stat().st_size > 0

    assert run(spec, console=quiet()) == EXIT_OK  # again: everything cached, same numbers
    assert set().union(*statuses(rd).values()) == {"cached"}
    assert pl.read_parquet(rd / "dla.parquet").equals(dla)
    con = Console(record=True, width=100)
    assert report(rd, console=con, png=False) == EXIT_OK
    assert "activation patching [before -> after]" in con.export_text()
    con = Console(record=True, width=100)  # cotdsl probe RUN_DIR --patch: that report alone
    assert probe(rd, console=con, png=False, mech=("patch",)) == EXIT_OK
    text = con.export_text()
    assert "activation patching [none -> after]" in text and "DLA" not in text and "logit lens" not in text
    (rd / "attention.parquet").unlink()
    with pytest.raises(CotError, match="no attention.parquet here; its spec's probe section needs "
                                       "`attention: rationale`"):
        probe(rd, console=con, mech=("attention",))


def test_rationale_spans_of_generated_and_gold_contexts():
    """The attention stage's spans: the prompt, then the rationale up to the literal before the
    label (a generated context) or the rationale segment's tokens (a gold one)."""
    from cotdsl.data.builtin import generate
    from cotdsl.schema import format_prompt
    from cotdsl.tiny import train_tokenizer

    train, test = generate("facts", train=8, test=4)
    tok = train_tokenizer([format_prompt(e) + " " + e.rationale for e in train + test])
    (cond,) = [c for c in check_source(spec_text(), "tiny.cot").conditions if c.name == "before"]
    gen = {e.id: f" {e.rationale}\nSo the answer is: {e.label}" for e in test}
    items, skipped = stages.probe_batch(test, cond, tok, 0, context="generated", generated=gen)
    assert len(items) == len(test) and skipped["unparsed"] == 0
    for it in items:
        a, b = it["rationale"]
        assert a == it["prompt"] and tok.decode(it["context_ids"][a:b]).strip() == it["ex"].rationale.strip()
        assert tok.decode(it["context_ids"][b:]).strip() == "So the answer is:"
    items, _ = stages.probe_batch(test, cond, tok, 0, context="gold")
    for it in items:
        a, b = it["rationale"]
        assert a >= it["prompt"] and tok.decode(it["context_ids"][a:b]).strip() == it["ex"].rationale.strip()
    items, _ = stages.probe_batch(test, cond, tok, 0, context="none")
    assert all(it["rationale"] is None and len(it["context_ids"]) == it["prompt"] for it in items)
