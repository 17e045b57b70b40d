"""End to end: `cotdsl run` on a tiny random student — caching, determinism, failure isolation,
kill -9 and resume, the report. Every run here is real (tiny model, CPU, seconds)."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pytest
from rich.console import Console

from cotdsl.run import EXIT_JOBS, EXIT_OK, report, run

SPEC = """
experiment tiny {{
  seeds 0, 1
  data    toy  = builtin("facts", train: 24, test: 12)
  teacher gold = gold
  student t    = tiny(arch: "llama", layers: 2, d_model: 32, heads: 4)
  target none   = label
  target before = rationale -> "So the answer is: " label
  target after  = label -> rationale
  {extra}
  train {{ epochs: {epochs}, lr: 3e-3, batch: 8, checkpoint_every: 2 }}
  eval  {{ by: auto, max_new_tokens: 24 }}
  probe {{ lens: logit; examples: 6 }}
}}
"""


def write_spec(tmp_path: Path, extra: str = "", epochs: int = 1, name: str = "tiny.cot") -> Path:
    p = tmp_path / name
    p.write_text(SPEC.format(extra=extra, epochs=epochs))
    return p


def quiet() -> Console:
    return Console(file=open(os.devnull, "w"), width=120)


def jobs(run_dir: Path) -> dict:
    return json.loads((run_dir / "jobs.json").read_text())


@pytest.fixture
def env(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_run_then_rerun_is_all_cached_and_identical(env):
    spec = write_spec(env)
    assert run(spec, console=quiet()) == EXIT_OK
    rd = env / "runs" / "tiny"
    res = pl.read_parquet(rd / "results.parquet")
    # 3 conditions x 2 seeds x 12 test examples, one row each
    assert res.shape[0] == 3 * 2 * 12
    assert set(res["condition"]) == {"none", "before", "after"}
    summ = pl.read_parquet(rd / "summary.parquet")
    assert summ.filter(pl.col("condition") == "after")["delta"][0] is not None
    assert summ.filter(pl.col("condition") == "none")["delta"][0] is None
    lens = pl.read_parquet(rd / "lens.parquet")
    assert set(lens["lens"]) == {"logit"} and lens["layer"].max() == 2
    assert (rd / "figures" / "accuracy.png").stat().st_size > 0
    assert (rd / "figures" / "layerwise_confidence.png").exists()
    assert {"spec.cot", "resolved.json", "environment.json"} <= {p.name for p in rd.iterdir()}
    first = jobs(rd)
    assert {v["status"] for v in first.values()} == {"ran"}

    assert run(spec, console=quiet()) == EXIT_OK
    assert {v["status"] for v in jobs(rd).values()} == {"cached"}
    assert pl.read_parquet(rd / "results.parquet").sort(["condition", "seed", "ex_id"]).equals(
        res.sort(["condition", "seed", "ex_id"]))
    # another spec sharing a condition reuses its jobs
    other = env / "other.cot"
    other.write_text(spec.read_text().replace("experiment tiny", "experiment other")
                     .replace('  target before = rationale -> "So the answer is: " label\n', ""))
    assert run(other, console=quiet()) == EXIT_OK
    assert {v["status"] for v in jobs(env / "runs" / "other").values()} == {"cached"}
    con = Console(record=True, width=120)
    assert report(rd, console=con, png=False) == EXIT_OK
    text = con.export_text()
    assert "after" in text and "95% CI" in text and "logit lens" in text


def test_same_spec_and_seeds_give_the_same_numbers(env):
    spec = write_spec(env)
    assert run(spec, console=quiet(), cache=env / "c1", out=env / "r1") == EXIT_OK
    assert run(spec, console=quiet(), cache=env / "c2", out=env / "r2") == EXIT_OK
    a = pl.read_parquet(env / "r1/tiny/results.parquet").sort(["condition", "seed", "ex_id"])
    b = pl.read_parquet(env / "r2/tiny/results.parquet").sort(["condition", "seed", "ex_id"])
    assert a.equals(b)


PLUGIN = '''
from cotdsl.perturb import perturbation

@perturbation("explode")
def explode(units, ctx):
    """Always fails: stands in for a job that breaks."""
    raise RuntimeError("boom in explode")
'''


def test_a_failing_job_is_reported_and_the_others_finish(env, monkeypatch):
    (env / "boom_plugin.py").write_text(PLUGIN)
    monkeypatch.syspath_prepend(str(env))
    spec = write_spec(env, extra="target broken = label -> explode(rationale)")
    spec.write_text('plugin "boom_plugin"\n' + spec.read_text())
    assert run(spec, console=quiet()) == EXIT_JOBS
    rd = env / "runs" / "tiny"
    st = jobs(rd)
    broken = [v for v in st.values() if "broken" in v["label"]]
    assert {v["status"] for v in broken if v["stage"] == "render"} == {"failed"}
    assert all("boom in explode" in v["cause"] for v in broken if v["stage"] == "render")
    assert {v["status"] for v in broken if v["stage"] != "render"} == {"skipped"}
    others = [v for v in st.values() if "broken" not in v["label"]]
    assert {v["status"] for v in others} == {"ran"}
    summ = pl.read_parquet(rd / "summary.parquet")
    assert summ.filter(pl.col("condition") == "broken")["failed"][0] > 0
    assert len(list((rd / "failures").iterdir())) == 2  # one render failure per seed


def test_kill_9_mid_training_then_resume(env):
    spec = write_spec(env, epochs=30)
    code = f"from cotdsl.run import run; run({str(spec)!r}, only=['target=after', 'seed=0'])"
    p = subprocess.Popen([sys.executable, "-c", code], cwd=env, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)
    ckpts = env / ".cotdsl-cache" / "train"
    deadline = time.time() + 240
    while time.time() < deadline and not list(ckpts.glob("*.work/ckpt/*")):
        time.sleep(0.2)
    time.sleep(0.5)
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    assert list(ckpts.glob("*.work/ckpt/*")), "training never checkpointed"
    assert not list(ckpts.glob("*/DONE"))
    assert run(spec, only=["target=after", "seed=0"], console=quiet()) == EXIT_OK
    st = jobs(env / "runs" / "tiny")
    assert {v["status"] for v in st.values() if v["stage"] in ("data", "teacher", "render")} == {"cached"}
    (train,) = [v for v in st.values() if v["stage"] == "train"]
    assert train["status"] == "ran" and train["info"]["resumed_from"] > 0
    assert not list(ckpts.glob("*.work"))  # scratch space is cleaned once the job is published


def test_keytokens_by_ig_trains_on_the_ig_selected_words(env):
    spec = write_spec(env, extra="target keys = label -> keytokens(rationale, 2, by: ig)")
    assert run(spec, only=["target=keys", "seed=0"], console=quiet()) == EXIT_OK
    rd = env / "runs" / "tiny"
    st = jobs(rd)
    (rank,) = [k for k, v in st.items() if v["stage"] == "rank"]
    assert st[rank]["status"] == "ran"
    store = env / ".cotdsl-cache"
    rankings = json.loads((store / rank / "rankings.json").read_text())
    (render_id,) = [k for k, v in st.items() if v["stage"] == "render"]
    rendered = pl.read_parquet(store / render_id / "rendered.parquet")
    train = {json.loads(line)["id"]: json.loads(line)
             for line in next(store.glob("teacher/*/train.jsonl")).read_text().splitlines()}
    assert len(rendered) == len(train) == len(rankings)
    for row in rendered.iter_rows(named=True):
        words = train[row["ex_id"]]["rationale"].split()
        scores = rankings[row["ex_id"]]
        assert len(scores) == len(words)
        top2 = sorted(sorted(range(len(words)), key=lambda i: (-scores[i], i))[:2])
        kept = row["text"].split("Answer:", 1)[1].split("\n", 1)[1].split()
        assert kept == [words[i] for i in top2]
    assert (rd / "figures" / "ig_example.png").stat().st_size > 0
    con = Console(record=True, width=120)
    report(rd, console=con, png=False)
    assert "IG completeness" in con.export_text()


def test_probe_any_checkpoint_on_a_data_file(env):
    from cotdsl.run import probe

    spec = write_spec(env)
    assert run(spec, only=["target=after", "seed=0"], console=quiet()) == EXIT_OK
    st = jobs(env / "runs" / "tiny")
    (train_id,) = [k for k, v in st.items() if v["stage"] == "train"]
    (data_id,) = [k for k, v in st.items() if v["stage"] == "data"]
    store = env / ".cotdsl-cache"
    ckpt, data = store / train_id / "model", store / data_id / "test.jsonl"
    assert (ckpt / "model.safetensors").exists()
    con = Console(record=True, width=120)
    assert probe(checkpoint=ckpt, data=data, target="label -> rationale", lenses=("logit", "tuned"),
                 n=6, tuned_steps=5, console=con) == EXIT_OK
    text = con.export_text()
    assert "logit lens" in text and "tuned lens" in text
    lens = pl.read_parquet(env / "runs" / "probe-model" / "lens.parquet")
    assert set(lens["lens"]) == {"logit", "tuned"} and lens["ex_id"].n_unique() == 6
    # the logit lens of the checkpoint equals the run's own probe of the same student
    (probe_id,) = [k for k, v in st.items() if v["stage"] == "probe"]
    mine = pl.read_parquet(store / probe_id / "lens.parquet").filter(pl.col("lens") == "logit")
    theirs = lens.filter(pl.col("lens") == "logit").select("ex_id", "layer", pl.col("p_gold").alias("p2"))
    joined = mine.join(theirs, on=["ex_id", "layer"])
    assert len(joined) == 6 * 3 and (joined["p_gold"] - joined["p2"]).abs().max() < 1e-5
    with pytest.raises(Exception, match="no layerwise results"):
        probe(env, console=con)


def test_keytokens_scored_by_a_trained_rationale_first_student(env):
    spec = write_spec(env, extra="target keys = label -> keytokens(rationale, 2, by: ig, scorer: before)")
    assert run(spec, only=["target=keys,before", "seed=0"], console=quiet()) == EXIT_OK
    st = jobs(env / "runs" / "tiny")
    (rank,) = [v for v in st.values() if v["stage"] == "rank"]
    assert rank["status"] == "ran" and "before scorer" in rank["label"]
    order = [j["id"] for j in json.loads((env / "runs" / "tiny" / "plan.json").read_text())]
    (before_train,) = [k for k, v in st.items() if v["stage"] == "train" and "before" in v["label"]]
    (rank_id,) = [k for k, v in st.items() if v["stage"] == "rank"]
    assert order.index(before_train) < order.index(rank_id)


STOPWORDS = '''
from cotdsl.perturb import perturbation

STOP = {stop!r}

@perturbation("nostop")
def nostop(units, ctx):
    """Drop stopwords."""
    return [u for u in units if u.lower() not in STOP]
'''


def test_editing_a_plugin_reruns_the_jobs_that_use_it(env, monkeypatch):
    (env / "stop_plugin.py").write_text(STOPWORDS.format(stop={"the"}))
    monkeypatch.syspath_prepend(str(env))
    spec = write_spec(env, extra="target strip = label -> nostop(rationale)")
    spec.write_text('plugin "stop_plugin"\n' + spec.read_text())
    only = ["target=strip,none", "seed=0"]
    assert run(spec, only=only, console=quiet()) == EXIT_OK
    rd, store = env / "runs" / "tiny", env / ".cotdsl-cache"

    def rendered_text():
        (rid,) = [k for k, v in jobs(rd).items() if v["stage"] == "render" and "strip" in v["label"]]
        texts = pl.read_parquet(store / rid / "rendered.parquet")["text"]
        return " ".join(" " + t.split("Answer:", 1)[1].split("\n", 1)[1] + " " for t in texts)

    before = rendered_text()
    assert " The " not in before and " is " in before
    (env / "stop_plugin.py").write_text(STOPWORDS.format(stop={"is", "are"}))
    assert run(spec, only=only, console=quiet()) == EXIT_OK
    st = jobs(rd)
    assert {v["status"] for v in st.values() if "strip" in v["label"]} == {"ran"}
    assert {v["status"] for v in st.values() if "strip" not in v["label"]} == {"cached"}
    after = rendered_text()
    assert " The " in after and " is " not in after


def test_a_failed_student_gives_a_readable_report_and_exit_1(env, monkeypatch):
    """Every eval skipped (an offline student): the summary keeps its columns, the table names
    the cause, and the exit code says the input was at fault — never an internal error."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    spec = write_spec(env).read_text().replace('tiny(arch: "llama", layers: 2, d_model: 32, heads: 4)',
                                               'hf("no-such-org/no-such-model")')
    (env / "tiny.cot").write_text(spec)
    con = Console(record=True, width=200)
    assert run(env / "tiny.cot", only=["seed=0"], console=con) == 1
    text = con.export_text()
    assert "no-such-org/no-such-model" in text and "internal error" not in text
    summ = pl.read_parquet(env / "runs" / "tiny" / "summary.parquet")
    assert set(summ["condition"]) == {"none", "before", "after"} and summ["acc"].null_count() == 3
    assert all("no-such-org/no-such-model" in c for c in summ["cause"])
    con = Console(record=True, width=200)
    assert report(env / "runs" / "tiny", console=con, png=False) == EXIT_OK
    assert "evaluation(s) did not finish" in con.export_text()


def test_sweep_points_are_named_in_every_display(env):
    spec = write_spec(env, extra="target masked[p in 0.25, 0.5] = label -> mask(rationale, p)")
    con = Console(record=True, width=200)
    assert run(spec, only=["target=masked", "seed=0"], console=con) == EXIT_OK
    text = con.export_text()
    assert "train masked[p=0.25] · t · toy · seed 0" in text and "masked[p=0.5]" in text
    con = Console(record=True, width=200)
    report(env / "runs" / "tiny", console=con, png=False)
    lens_part = con.export_text().split("logit lens", 1)[1]
    assert "masked[p=0.25]" in lens_part and "masked[p=0.5]" in lens_part
    from cotdsl.run import show

    con = Console(record=True, width=200)
    show(spec, target="masked", n=1, console=con)
    assert "masked[p=0.25]" in con.export_text()


def test_one_seed_shows_no_spread_and_failures_do_not_outlive_a_clean_run(env, monkeypatch):
    (env / "boom_plugin.py").write_text(PLUGIN)
    monkeypatch.syspath_prepend(str(env))
    spec = write_spec(env, extra="target broken = label -> explode(rationale)")
    spec.write_text('plugin "boom_plugin"\n' + spec.read_text())
    assert run(spec, only=["seed=0", "target=none,broken"], console=quiet()) == EXIT_JOBS
    rd = env / "runs" / "tiny"
    assert list((rd / "failures").iterdir())
    con = Console(record=True, width=200)
    assert run(spec, only=["seed=0", "target=none"], console=con) == EXIT_OK
    assert not list((rd / "failures").iterdir())
    text = con.export_text()
    assert "± 0.0" not in text and "mean ± std" not in text
    assert pl.read_parquet(rd / "summary.parquet")["acc_std"].null_count() == 1


def test_unknown_names_in_only_are_errors_with_a_suggestion(env):
    from cotdsl.errors import CotError

    spec = write_spec(env)
    with pytest.raises(CotError, match="no target named 'aftr'") as e:
        run(spec, only=["target=aftr"], console=quiet())
    assert "did you mean `after`" in e.value.render()
    with pytest.raises(CotError, match="no seed named '7'"):
        run(spec, only=["seed=7"], console=quiet())
    assert not (env / ".cotdsl-cache" / "data").exists()  # nothing ran


def test_a_rationale_first_target_with_no_test_rationales_reports_zero_probed(env):
    # probe { context: gold } teacher-forces the test rationale, which real data lacks (the default,
    # context: generated, probes after the student's own generation: see the tests at the end)
    rows = [json.dumps({"id": f"q{i}", "question": f"what is {i}?", "choices": ["a", "b"], "label": "a",
                        "rationale": "because a" if i < 8 else None}) for i in range(12)]
    (env / "train.jsonl").write_text("\n".join(rows[:8]) + "\n")
    (env / "test.jsonl").write_text("\n".join(rows[8:]) + "\n")
    spec = write_spec(env).read_text().replace('builtin("facts", train: 24, test: 12)',
                                               'file(train: "train.jsonl", test: "test.jsonl")')
    (env / "tiny.cot").write_text(spec.replace("examples: 6 }", "examples: 6; context: gold }"))
    con = Console(record=True, width=200)
    assert run(env / "tiny.cot", only=["seed=0", "target=before,after"], console=con) == EXIT_OK
    text = con.export_text()
    assert "before · t · seed 0: 0 of 4 test examples could be probed at the label (4 have no gold rationale)" in text
    assert set(pl.read_parquet(env / "runs" / "tiny" / "lens.parquet")["condition"]) == {"after"}


def _spawn_run(env, spec, only):
    code = f"from cotdsl.run import run; import sys; sys.exit(run({str(spec)!r}, only={only!r}))"
    return subprocess.Popen([sys.executable, "-c", code], cwd=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def test_two_concurrent_runs_on_one_cache_run_each_job_once(env):
    spec = write_spec(env, epochs=6)
    only = ["target=after,none", "seed=0"]
    a, b = _spawn_run(env, spec, only), _spawn_run(env, spec, only)
    out_a, out_b = a.communicate(timeout=400)[0], b.communicate(timeout=400)[0]
    assert a.returncode == 0 and b.returncode == 0, out_a + out_b
    ran_a, ran_b = out_a.count("✓ "), out_b.count("✓ ")
    n_jobs = len(json.loads((env / "runs" / "tiny" / "plan.json").read_text()))
    assert ran_a + ran_b == n_jobs  # every job computed exactly once between the two
    assert not list((env / ".cotdsl-cache").glob("*/.*.tmp"))


def test_sigint_to_a_background_run_stops_it_and_leaves_the_store_consistent(env):
    spec = write_spec(env, epochs=60)
    # a shell starts background jobs with SIGINT ignored; the run must still stop on it
    p = subprocess.Popen(["bash", "-c", f"{sys.executable} -c \"from cotdsl.run import run; import sys; "
                          f"sys.exit(run('{spec}', only=['target=after', 'seed=0']))\" & wait"],
                         cwd=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    work = env / ".cotdsl-cache" / "train"
    deadline = time.time() + 240
    while time.time() < deadline and not list(work.glob("*.work/ckpt/*")):
        time.sleep(0.2)
    child = subprocess.run(["pgrep", "-P", str(p.pid)], capture_output=True, text=True).stdout.split()
    assert child, "the run did not start"
    t0 = time.time()
    os.kill(int(child[0]), signal.SIGINT)
    assert p.wait(timeout=60) == 0  # bash's `wait` returns; the child exited
    assert time.time() - t0 < 30
    assert not list((env / ".cotdsl-cache").glob("*/.*.tmp"))  # the job in flight dropped its temp dir
    assert not list(work.glob("*/DONE"))


def test_stale_temp_dirs_are_cleaned_when_the_job_runs(env):
    spec = write_spec(env)
    store = env / ".cotdsl-cache"
    assert run(spec, only=["target=none", "seed=0"], console=quiet(), dry_run=True) == EXIT_OK
    from cotdsl.plan import make_plan
    from cotdsl import load

    (data,) = make_plan(load(spec), only={"target": ["none"], "seed": ["0"]}).by_stage("data")
    stale = store / "data" / f".{data.key}.abc123.tmp"
    stale.mkdir(parents=True)
    assert run(spec, only=["target=none", "seed=0"], console=quiet()) == EXIT_OK
    assert not stale.exists()


def test_editing_a_data_file_in_place_reruns_its_jobs(env):
    rows = [{"id": f"q{i}", "question": f"what is {i}?", "choices": ["a", "b"], "label": "a",
             "rationale": "because a"} for i in range(12)]
    data = env / "d.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    spec = write_spec(env).read_text().replace('builtin("facts", train: 24, test: 12)',
                                               'file(train: "d.jsonl", test: "d.jsonl")')
    (env / "tiny.cot").write_text(spec)
    only = ["target=none", "seed=0"]
    assert run(env / "tiny.cot", only=only, console=quiet()) == EXIT_OK
    rows[3]["label"] = "b"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert run(env / "tiny.cot", only=only, console=quiet()) == EXIT_OK
    st = jobs(env / "runs" / "tiny")
    assert {v["status"] for v in st.values()} == {"ran"}  # the data job and everything after it
    res = pl.read_parquet(env / "runs" / "tiny" / "results.parquet")
    assert res.filter(pl.col("ex_id") == "q3")["gold"][0] == 1


def test_status_counts_jobs_per_stage_from_the_store(env):
    from cotdsl.run import status

    spec = write_spec(env)
    assert run(spec, only=["target=none,after", "seed=0"], console=quiet()) == EXIT_OK
    import shutil

    (tid,) = [k for k, v in jobs(env / "runs" / "tiny").items() if v["stage"] == "train" and "after" in v["label"]]
    shutil.rmtree(env / ".cotdsl-cache" / tid)  # as if that job had not run yet
    con = Console(record=True, width=120)
    assert status(env / "runs" / "tiny", console=con) == EXIT_OK
    text = con.export_text()
    train_row = next(line for line in text.splitlines() if "train" in line)
    assert "1" in train_row.split("│")[2] and "1" in train_row.split("│")[3]  # 1 done, 1 not done


def test_limit_test_caps_the_test_set_apart_from_train(env):
    spec = write_spec(env)
    assert run(spec, only=["target=none", "seed=0"], limit=8, limit_test=5, console=quiet()) == EXIT_OK
    st = jobs(env / "runs" / "tiny")
    (data,) = [v for v in st.values() if v["stage"] == "data"]
    assert data["info"] == {"train": 8, "test": 5}
    assert len(pl.read_parquet(env / "runs" / "tiny" / "results.parquet")) == 5


# ---- probing: whole labels, the student's own generated rationale (issue 10, items 0-1) ---------
PROBE_TARGETS = """
experiment p {
  data    toy  = builtin("facts", train: 8, test: 4)
  teacher gold = gold
  student t    = tiny(arch: "llama", layers: 2, d_model: 32, heads: 4)
  target none   = label
  target after  = label -> rationale
  target before = rationale -> "So the answer is: " label
  target plain  = rationale -> label
  target nl     = shuffle(rationale) -> "\\nAnswer:\\n" label
  target unk3   = unk(3) -> label
  probe { lens: logit }
}
"""


@pytest.fixture(scope="module")
def probe_setup():
    from cotdsl import check_source
    from cotdsl.tiny import train_tokenizer

    exp = check_source(PROBE_TARGETS, "<probe>")
    conds = {c.name: c for c in exp.conditions}
    from cotdsl.schema import Example

    ex = Example(id="x1", question="What color is snow?", choices=("white", "white gold", "black"), answer=0,
                 rationale="snow is white")
    tok = train_tokenizer(["Question: What color is snow? Choices: white gold black Answer: snow is white "
                           "So the answer is: my own words falls in winter"] * 4, vocab_size=300)
    return conds, ex, tok


def test_probe_context_generated_is_the_students_own_text_tokenised_as_in_training(probe_setup):
    """A student that emits exactly what it was trained on (planted: a training rendering with its
    own rationale) is probed after exactly those tokens, for every rationale-first target shape;
    each choice's ids are the label's training tokens."""
    from dataclasses import replace

    from cotdsl.jobs.stages import probe_batch
    from cotdsl.render import render

    conds, ex, tok = probe_setup
    own = replace(ex, rationale="my own words falls in winter")  # not the gold rationale
    for name in ("before", "plain", "nl"):
        cond = conds[name]
        per_choice = [render(replace(own, answer=i), cond, tok, seed=0)[0] for i in range(3)]
        planted = per_choice[0].text[per_choice[0].text.index("Answer:") + len("Answer:"):]
        for gold_ex in (ex, replace(ex, rationale=None)):  # real data: no test rationale needed
            (item,), skipped = probe_batch([gold_ex], cond, tok, 0, context="generated", generated={"x1": planted})
            assert item["context"] == "generated" and skipped == {"unparsed": 0, "no rationale": 0}
            for c, r in enumerate(per_choice):
                assert item["context_ids"] + item["choice_ids"][c] == r.input_ids[:r.label_span[1]], (name, c)
            assert item["names_choice"] is False  # "my own words falls in winter" names no choice
    # unparseable or missing generations are counted, not probed
    items, skipped = probe_batch([ex], conds["before"], tok, 0, context="generated", generated={"x1": " no idea"})
    assert items == [] and skipped["unparsed"] == 1
    items, skipped = probe_batch([ex], conds["before"], tok, 0, context="generated", generated={})
    assert items == [] and skipped["unparsed"] == 1


def test_probe_context_gold_and_none_and_label_first(probe_setup):
    from dataclasses import replace

    from cotdsl.jobs.stages import probe_batch
    from cotdsl.render import eval_context, generation_prompt_ids, render, token_ids

    conds, ex, tok = probe_setup
    cond = conds["before"]
    (item,), _ = probe_batch([ex], cond, tok, 0, context="gold")
    g = render(ex, cond, tok, seed=0)[0]
    assert item["context"] == "gold" and item["context_ids"] == g.input_ids[:g.label_span[0]]
    assert item["names_choice"] is True  # "snow is white" states the answer: flagged
    (quiet,), _ = probe_batch([replace(ex, rationale="it falls in winter")], cond, tok, 0, context="gold")
    assert quiet["names_choice"] is False
    items, skipped = probe_batch([replace(ex, rationale=None)], cond, tok, 0, context="gold")
    assert items == [] and skipped["no rationale"] == 1
    for name in ("before", "unk3", "none"):  # none: right after the prompt, whatever the target
        (item,), _ = probe_batch([ex], conds[name], tok, 0, context="none")
        assert item["context"] == "prompt" and item["context_ids"] == generation_prompt_ids(ex, conds[name], tok)
        assert item["choice_ids"] == [token_ids(tok, " " + c) for c in ex.choices]
    for mode in ("generated", "gold"):  # label first: rank evaluation's context, no rationale involved
        for name in ("none", "after", "unk3"):
            (item,), _ = probe_batch([replace(ex, rationale=None)], conds[name], tok, 0, context=mode, generated={})
            c = eval_context(ex, conds[name], tok, seed=0)
            assert item["context"] == "label first"
            assert (item["context_ids"], item["choice_ids"]) == (c.context_ids, c.choice_ids)


def test_lens_frame_scores_whole_labels_and_flags_first_token_ties(probe_setup, monkeypatch):
    import cotdsl.jobs.evaluate as evaluate
    from cotdsl.jobs.stages import lens_frame
    from cotdsl.tiny import sharpen, tiny_model

    conds, ex, tok = probe_setup
    model = sharpen(tiny_model(tok, layers=2, d_model=32), 1)
    info = {}
    whole = lens_frame(model, tok, [ex], conds["none"], 0, ("logit",), score="label", info=info)
    first = lens_frame(model, tok, [ex], conds["none"], 0, ("logit",), score="first_token")
    assert set(whole["score"]) == {"label"} and not whole["tied"].any() and info["tied"] == 0
    assert set(first["score"]) == {"first_token"} and first["tied"].all()  # "white" / "white gold"
    assert (first["commit_layer"] == -1).all()  # the gold ties with "white gold": it never wins
    assert info["contexts"] == [{"ex_id": "x1", "probed": True, "context": "label first", "text": "",
                                 "names_choice": False}]
    # no eval job's texts (`cotdsl probe --checkpoint`): a rationale-first student generates here
    monkeypatch.setattr(evaluate, "generate", lambda model, tok, prompts, **kw: [" it is cold\nSo the answer is: white"])
    info = {}
    own = lens_frame(model, tok, [ex], conds["before"], 0, ("logit",), info=info)
    assert set(own["context"]) == {"generated"} and info["contexts"][0]["text"] == " it is cold\nSo the answer is:"


def _plant(answer_every_other: bool = True):
    """A stand-in for greedy generation: "... So the answer is: a" for even prompts, nonsense for odd."""
    def generate(model, tok, prompts, **kw):
        return [" i reckon so\nSo the answer is: a" if i % 2 == 0 or not answer_every_other else " no idea"
                for i in range(len(prompts))]
    return generate


def test_rationale_first_is_probed_after_its_own_generation_on_data_without_test_rationales(env, monkeypatch):
    """Real-data setting (no gold test rationale): the rationale-first student is probed after the
    text its evaluation generated (the probe job depends on the eval job); examples whose
    generation names no choice are counted and reported; label-first rows agree with rank."""
    import cotdsl.jobs.evaluate as evaluate

    monkeypatch.setattr(evaluate, "generate", _plant())
    rows = [json.dumps({"id": f"q{i}", "question": f"what is {i}?", "choices": ["a", "b"], "label": "a",
                        "rationale": "because a" if i < 8 else None}) for i in range(12)]
    (env / "train.jsonl").write_text("\n".join(rows[:8]) + "\n")
    (env / "test.jsonl").write_text("\n".join(rows[8:]) + "\n")
    spec = write_spec(env).read_text().replace('builtin("facts", train: 24, test: 12)',
                                               'file(train: "train.jsonl", test: "test.jsonl")')
    (env / "tiny.cot").write_text(spec)
    con = Console(record=True, width=250)
    assert run(env / "tiny.cot", only=["seed=0"], console=con) == EXIT_OK
    text = con.export_text()
    assert "before · t · seed 0: 2 of 4 test examples could be probed at the label (2 generated no parseable answer)" \
        in text
    assert "before — its own generated rationale" in text
    rd = env / "runs" / "tiny"
    st = jobs(rd)
    (probe_id,) = [k for k, v in st.items() if v["stage"] == "probe" and "before" in v["label"]]
    (eval_id,) = [k for k, v in st.items() if v["stage"] == "eval" and "before" in v["label"]]
    plan = {j["id"]: j for j in json.loads((rd / "plan.json").read_text())}
    assert eval_id in plan[probe_id]["deps"]
    ctx = [json.loads(x) for x in (env / ".cotdsl-cache" / probe_id / "contexts.jsonl").read_text().splitlines()]
    assert [c["probed"] for c in ctx] == [True, False, True, False]
    assert {c["text"] for c in ctx if c["probed"]} == {" i reckon so\nSo the answer is:"}
    assert {c["reason"] for c in ctx if not c["probed"]} == {"unparsed"}
    cov = {c["condition"]: c for c in json.loads((rd / "probe_coverage.json").read_text())}
    assert cov["before"]["context"] == "generated" and cov["before"]["unparsed"] == 2
    lens = pl.read_parquet(rd / "lens.parquet")
    assert set(lens.filter(pl.col("condition") == "before")["context"]) == {"generated"}
    # label first: the last lens row is the rank evaluation (gold wins there <=> eval got it right)
    res = pl.read_parquet(rd / "results.parquet")
    last = lens.filter(pl.col("layer") == pl.col("layer").max()).select("condition", "ex_id", "commit_layer")
    both = last.join(res.select("condition", "ex_id", "correct"), on=["condition", "ex_id"])
    both = both.filter(pl.col("condition").is_in(["none", "after"]))
    assert len(both) == 8 and ((both["commit_layer"] >= 0) == both["correct"]).all()


def test_probe_context_gold_is_labelled_and_its_leaks_flagged(env):
    spec = write_spec(env).read_text().replace("probe { lens: logit; examples: 6 }",
                                               "probe { lens: logit; examples: 6; context: gold }")
    (env / "tiny.cot").write_text(spec)
    con = Console(record=True, width=250)
    assert run(env / "tiny.cot", only=["seed=0", "target=before,none"], console=con) == EXIT_OK
    text = con.export_text()
    assert "before — the GOLD rationale, teacher-forced" in text and "before [gold rationale]" in text
    cov = {c["condition"]: c for c in json.loads((env / "runs" / "tiny" / "probe_coverage.json").read_text())}
    assert cov["before"]["context"] == "gold" and cov["before"]["probed"] == 6
    k = cov["before"]["names_choice"]
    assert k > 0 and f"before: {k} of 6 gold contexts contain a choice's text" in text
    st = jobs(env / "runs" / "tiny")
    plan = {j["id"]: j for j in json.loads((env / "runs" / "tiny" / "plan.json").read_text())}
    (probe_id,) = [k for k, v in st.items() if v["stage"] == "probe" and "before" in v["label"]]
    assert not any(d.startswith("eval/") for d in plan[probe_id]["deps"])  # gold: no wait for the eval job


def test_probe_context_and_score_keys_are_checked():
    from cotdsl import CotError, check_source

    exp = check_source(PROBE_TARGETS, "<probe>")
    assert (exp.probe.context, exp.probe.score) == ("generated", "label")  # the defaults
    exp = check_source(PROBE_TARGETS.replace("lens: logit", "lens: logit; context: none; score: first_token"))
    assert (exp.probe.context, exp.probe.score) == ("none", "first_token")
    for bad in ("context: teacher", "score: first"):
        with pytest.raises(CotError) as e:
            check_source(PROBE_TARGETS.replace("lens: logit", f"lens: logit; {bad}"), "<probe>")
        assert bad.split(":")[0] in e.value.render()


def test_a_fully_cached_rerun_imports_no_torch_and_redraws_nothing(env):
    spec = write_spec(env)
    only = ["target=none,after", "seed=0"]
    assert run(spec, only=only, console=quiet()) == EXIT_OK
    figs = env / "runs" / "tiny" / "figures"
    before = {p.name: p.stat().st_mtime_ns for p in figs.iterdir()}
    code = (f"import sys; from cotdsl.run import run; from rich.console import Console; import os; "
            f"rc = run({str(spec)!r}, only={only!r}, console=Console(file=open(os.devnull, 'w'))); "
            f"print(rc, sorted(m for m in ('torch', 'transformers', 'matplotlib.figure') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "0 []"
    assert {p.name: p.stat().st_mtime_ns for p in figs.iterdir()} == before
