from dataclasses import replace

from cotdsl.plan import make_plan
from cotdsl.spec import (Call, Condition, Experiment, ProbeCfg, Ref, Source, Student, Task, Teacher,
                         TrainCfg)

V = {s: "v1" for s in ("data", "teacher", "rank", "render", "train", "eval", "probe")}


def cond(name, *segs, eval_by="rank"):
    return Condition(name, name, (), (Task(tuple(segs)),), eval_by)


def experiment(**kw):
    base = dict(
        name="t", path="t.cot", seeds=(0, 1),
        data=(Source("toy", "builtin", (("task", "facts"), ("train", 8), ("test", 4))),),
        teacher=Teacher("gold", "gold"),
        students=(Student("tiny", "tiny", (("arch", "llama"),)),),
        conditions=(cond("none", Ref("label")), cond("after", Ref("label"), Ref("rationale")),
                    cond("keys", Ref("label"), Call("keytokens", (Ref("rationale"), 3), (("by", "ig"),)))),
        probe=ProbeCfg(),
    )
    base.update(kw)
    return Experiment(**base)


def test_grid_counts_and_dag_order():
    plan = make_plan(experiment(), versions=V)
    stages = [j.stage for j in plan.jobs]
    # 1 data, 1 teacher, 1 IG ranking; 3 conditions x 2 seeds x (render, train, eval, probe)
    assert stages.count("data") == 1 and stages.count("teacher") == 1 and stages.count("rank") == 1
    for s in ("render", "train", "eval", "probe"):
        assert stages.count(s) == 6
    seen = set()
    for j in plan.jobs:  # topological: every dependency comes earlier
        assert all(d in seen for d in j.deps), j.label
        seen.add(j.id)
    assert len({j.id for j in plan.jobs}) == len(plan.jobs)
    # only the keytokens condition waits for the IG ranking
    rank_id = plan.by_stage("rank")[0].id
    assert {j.condition.name for j in plan.by_stage("render") if rank_id in j.deps} == {"keys"}


def test_controls_plan_no_ig_ranking():
    ctl = (cond("rand", Ref("label"), Call("keytokens", (Ref("rationale"),), (("k", 3), ("by", "random")))),
           cond("swap", Ref("label"), Call("swap", (Ref("rationale"),))))
    plan = make_plan(experiment(conditions=ctl), versions=V)
    assert not plan.by_stage("rank")
    assert all(j.rank_job is None for j in plan.by_stage("render"))


def test_keys_depend_on_exactly_what_matters():
    a = make_plan(experiment(), versions=V)
    assert [j.id for j in a.jobs] == [j.id for j in make_plan(experiment(), versions=V).jobs]
    b = make_plan(experiment(train=TrainCfg(lr=1e-3)), versions=V)
    ids = lambda p, s: {j.id for j in p.by_stage(s)}  # noqa: E731
    assert ids(a, "render") == ids(b, "render")  # training settings do not touch rendering
    assert ids(a, "train").isdisjoint(ids(b, "train"))
    assert ids(a, "eval").isdisjoint(ids(b, "eval"))  # ... but everything downstream of training
    c = make_plan(experiment(), versions={**V, "eval": "v2"}, )
    assert ids(a, "train") == ids(c, "train") and ids(a, "eval").isdisjoint(ids(c, "eval"))
    # a condition's jobs are shared by any spec that contains the same condition
    other = experiment(name="other", conditions=(cond("after", Ref("label"), Ref("rationale")),))
    assert ids(make_plan(other, versions=V), "train") <= ids(a, "train")


def test_only_and_limit():
    plan = make_plan(experiment(), only={"target": ["after"], "seed": ["1"]}, versions=V)
    assert {j.condition.name for j in plan.by_stage("train")} == {"after"}
    assert {j.seed for j in plan.by_stage("train")} == {1}
    assert not plan.by_stage("rank")
    assert make_plan(experiment(), limit=5, versions=V).by_stage("data")[0].key != plan.by_stage("data")[0].key


def test_baseline_detection():
    e = experiment()
    assert [c.is_baseline() for c in e.conditions] == [True, False, False]
    assert not replace(e.conditions[0], tasks=(Task((Ref("label"),)), Task((Ref("rationale"),)))).is_baseline()


def test_ig_scorer_can_be_another_conditions_trained_student():
    keys = Condition("keys", "keys", (), (Task((Ref("label"), Call(
        "keytokens", (Ref("rationale"),), (("k", 3), ("by", "ig"), ("scorer", "before")))),),), "rank")
    before = cond("before", Ref("rationale"), Ref("label"), eval_by="generate")
    plan = make_plan(experiment(conditions=(keys, before)), versions=V)
    ranks = plan.by_stage("rank")
    assert len(ranks) == 2  # one per seed: each seed's "before" student scores its own keys
    order = [j.id for j in plan.jobs]
    for r in ranks:
        (scorer_train,) = [d for d in r.deps if d.startswith("train/")]
        assert plan.get(scorer_train).condition.name == "before"
        assert order.index(scorer_train) < order.index(r.id)
        seed = plan.get(scorer_train).seed
        (render,) = [j for j in plan.by_stage("render") if r.id in j.deps]
        assert render.condition.name == "keys" and render.seed == seed
