"""Teacher sampling at scale: shards of whole batches that merge into exactly the samples of one
uninterrupted run; the vLLM engine's clear errors."""
import json
import sys
from pathlib import Path

import pytest

from cotdsl import check_source
from cotdsl.errors import CotError
from cotdsl.jobs import teacher as T
from cotdsl.plan import make_plan
from cotdsl.spec import Teacher
from cotdsl.tiny import tiny_model, train_tokenizer

sys.path.insert(0, str(Path(__file__).parent.parent))
from test_teacher import exs  # noqa: E402


@pytest.mark.parametrize("n,batch,shards", [(10, 3, 3), (7, 2, 4), (5, 8, 2), (0, 2, 2), (12, 4, 3)])
def test_shards_cover_the_questions_in_whole_batches(n, batch, shards):
    ranges = [T.shard_range(n, batch, i, shards) for i in range(shards)]
    assert ranges[0][0] == 0 and ranges[-1][1] == n
    assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))
    assert all(start % batch == 0 for start, _ in ranges)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("teacher")
    data = exs(4)
    tok = train_tokenizer([T.build_prompt(T.DEFAULT_PROMPT, e) + " " + e.rationale for e in data])
    tiny_model(tok, layers=1, d_model=32, heads=2).save_pretrained(d)
    tok.save_pretrained(d)
    return d


def test_sampling_in_shards_equals_one_run(tiny_dir, tmp_path):
    t = Teacher("t", "hf", (("model", str(tiny_dir)), ("max_new_tokens", 6), ("batch", 2), ("samples", 2),
                            ("temperature", 1.0), ("top_k", 20)))
    data = exs(7)
    whole = T.sample(t, data, tmp_path / "whole", None, seed=3)
    pieces = {}
    for i in range(3):
        a, b = T.shard_range(len(data), 2, i, 3)
        pieces.update(T.sample(t, data[a:b], tmp_path / f"shard{i}", None, seed=3, offset=a))
    assert pieces == whole
    assert len({json.dumps(v) for v in whole.values()}) > 1  # sampled, not all the same


SPEC = """
experiment shards {{
  seeds 0
  data toy = builtin("facts", train: 10, test: 4)
  teacher t = hf("{model}", max_new_tokens: 6, batch: 2, samples: 2, temperature: 1.0, filter: false{extra})
  student s = tiny(arch: "llama", layers: 1, d_model: 16, heads: 2)
  target after = label -> rationale
}}
"""


def test_a_sharded_teacher_runs_as_jobs_and_merges_to_the_unsharded_rationales(tiny_dir, tmp_path, monkeypatch):
    from rich.console import Console

    from cotdsl.run import run

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("COTDSL_CACHE", str(tmp_path / "models"))
    outs = {}
    for k in (1, 3):
        spec = tmp_path / f"s{k}.cot"
        spec.write_text(SPEC.format(model=tiny_dir, extra=f", shards: {k}"))
        exp = check_source(spec.read_text(), str(spec))
        plan = make_plan(exp)
        assert len(plan.by_stage("sample")) == k
        (teacher,) = plan.by_stage("teacher")
        assert teacher.samples == tuple(j.id for j in plan.by_stage("sample"))
        assert run(spec, console=Console(file=open("/dev/null", "w")), cache=tmp_path / f"c{k}",
                   out=tmp_path / f"r{k}", only=["target=after"]) == 0
        outs[k] = (tmp_path / f"c{k}" / teacher.id / "train.jsonl").read_text()
    assert outs[1] == outs[3] and outs[1].count("\n") == 10


def test_vllm_engine_without_vllm_or_gpu_is_a_clear_error(tiny_dir, tmp_path, monkeypatch):
    t = Teacher("t", "hf", (("model", str(tiny_dir)), ("engine", "vllm")))
    monkeypatch.setitem(sys.modules, "vllm", None)  # not installed
    with pytest.raises(CotError, match="engine: vllm needs the vllm package") as e:
        T.sample(t, exs(2), tmp_path, None, seed=0)
    assert "cotdsl[vllm]" in e.value.render()
    monkeypatch.setitem(sys.modules, "vllm", type(sys)("vllm"))  # installed, but no GPU here
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    with pytest.raises(CotError, match="needs a CUDA GPU"):
        T.sample(t, exs(2), tmp_path, None, seed=0)


def test_engine_and_shards_are_checked():
    base = SPEC.format(model="smollm2", extra="")
    with pytest.raises(CotError, match="engine"):
        check_source(base.replace("filter: false", 'filter: false, engine: "vlm"'), "x.cot")
    with pytest.raises(CotError, match="shards"):
        check_source(base.replace("filter: false", "filter: false, shards: 0"), "x.cot")


def test_resample_epoch_renders_every_kept_sample(tiny_dir, tmp_path, monkeypatch):
    """train { resample: epoch } end to end: the render job renders each kept sample (variant j),
    its key covers the setting, and the teacher job's diagnostics give the kept rate."""
    from rich.console import Console

    from cotdsl.jobs.stages import load_examples, load_rendered
    from cotdsl.run import run

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("COTDSL_CACHE", str(tmp_path / "models"))
    text = SPEC.format(model=tiny_dir, extra="").replace("\n}\n", "\n  train { epochs: 2, batch: 4, resample: epoch }\n}\n")
    spec = tmp_path / "r.cot"
    spec.write_text(text)
    plan = make_plan(check_source(text, str(spec)))
    first = make_plan(check_source(text.replace("resample: epoch", "resample: first"), str(spec)))
    (render,), (render1,) = plan.by_stage("render"), first.by_stage("render")
    assert (render.resample, render1.resample) == ("epoch", "first") and render.key != render1.key
    assert plan.by_stage("teacher")[0].key == first.by_stage("teacher")[0].key  # the samples are shared
    assert run(spec, console=Console(file=open("/dev/null", "w")), cache=tmp_path / "c", out=tmp_path / "r") == 0
    (teacher,) = plan.by_stage("teacher")
    kept = {e.id: e.meta["rationales"] for e in load_examples(tmp_path / "c" / teacher.id / "train.jsonl")}
    rows = load_rendered(tmp_path / "c" / render.id)
    by_ex = {}
    for r in rows:
        by_ex.setdefault(r.ex_id, []).append(r)
    assert {x: [r.variant for r in rs] for x, rs in by_ex.items()} == {x: list(range(len(k))) for x, k in kept.items()}
    assert any(len(k) > 1 for k in kept.values())
    for x, rs in by_ex.items():  # variant j is rendered from kept sample j
        assert all(r.text.endswith(kept[x][r.variant].strip()) for r in rs)
    diag = json.loads((tmp_path / "c" / teacher.id / "diagnostics.json").read_text())
    assert diag["scotd"]["samples"] == 2 and diag["scotd"]["filter"] is False
    assert diag["scotd"]["kept_mean"] == sum(map(len, kept.values())) / 10
    saved = json.loads((tmp_path / "r" / "shards" / "teacher.json").read_text())
    assert saved[0]["scotd"] == diag["scotd"]
