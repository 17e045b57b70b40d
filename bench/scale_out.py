"""Scale-out: one grid of tiny students under every executor, and each executor's per-job overhead.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/scale_out.py [--repeats 3] [--grids short,long]
        [--engines local1,local1-1t,local2,ray,slurm,slurm-1t] [--noop 24] [--noop-slurm 12] [--no-wait]

(a) The grid (`GRID` below): data + teacher, then render -> train -> eval for 2 targets (none,
after) x 2 seeds: 14 jobs, 4 independent training chains. The student is a random-init tiny Llama
(2 layers, d_model 64) on 64 training / 24 test questions of the embedded task; `short` trains
4 epochs (32 steps), `long` 100 (800 steps), `xlong` 400 (3200 steps; not run by default).
Every run is a fresh Python process with a fresh cache and run folder calling
`cotdsl.run.run(spec, executor=ExecutorCfg(...))`; its wall time is that call's (importing torch,
starting workers / Ray / Slurm jobs, writing the report included; the interpreter's own start-up
not). Ray's `ray.init` is also timed on its own. Each executor runs --repeats times, interleaved
(local1, local1-1t, local2, ray, slurm, slurm-1t, local1, ...): min and median are printed, with
the sum of the jobs' own compute seconds (`jobs.json`). The `-1t` variants set OMP_NUM_THREADS=1
(one torch thread per job, as each of 2 local workers gets).
(b) Dispatch: N copies of the grid's data job (distinct keys; each loads and writes 64 builtin
questions, a few ms) pushed through one engine with `executors.drive` / `drive_engine`, after a
warm-up of 2 independent jobs (that starts the workers; timed as start-up). Twice: as a chain
(each job depends on the one before, so wall - sum of compute = N x the per-job round trip) and
as a fan-out (all independent: wall / N is the throughput).
(c) Every run's results.parquet is compared with the first local-1 run's (sorted by condition,
seed, example).

Slurm runs when a cluster answers (`$SLURM_CONF`, else `scripts/slurm-cluster status`); the
`sacct` stand-in beside its slurm.conf (`bin/`) goes first on PATH.

The machine may be shared: before each measurement the bench waits (up to 20 min) until no
`bin/pytest` runs and other people's processes use under 10% of the CPUs over 3 s; during it, it
samples /proc every 0.5 s for their CPU time (processes outside this bench's tree and Slurm's
daemons); a measurement they took more than 10% of is redone (3 tries, the last kept). The
printed lines give each measurement's "others' share"; --no-wait skips all this.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import emit, figure  # bench/common.py (bench/ is on sys.path when a bench runs)
from machine import cpu_name

ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

GRID = """
experiment scale {{
  seeds 0, 1
  data    toy  = builtin("facts", train: 64, test: 24)
  teacher gold = gold
  student t    = tiny(arch: "llama", layers: 2, d_model: 64, heads: 4)
  target none  = label
  target after = label -> rationale
  train {{ epochs: {epochs}, lr: 3e-3, batch: 8 }}
  eval  {{ by: auto }}
}}
"""
GRIDS = {"short": 4, "long": 100, "xlong": 400}  # epochs
ENGINES = {"local1": dict(kind="local", workers=1), "local1-1t": dict(kind="local", workers=1),
           "local2": dict(kind="local", workers=2), "ray": dict(kind="ray"),
           "slurm": dict(kind="slurm", time_min=10), "slurm-1t": dict(kind="slurm", time_min=10)}
# local1-1t: in-process with one torch thread, what each of 2 local workers gets. slurm-1t: Slurm jobs
# with one torch thread each (sbatch passes the environment on); the test cluster does not bind
# jobs to their CPU (task/none), so without it each job's torch starts a thread per core.
ENV = {"local1-1t": {"OMP_NUM_THREADS": "1"}, "slurm-1t": {"OMP_NUM_THREADS": "1"}}
GOAL_MS = {"local1": 50, "local2": 50, "ray": 200}
KEYS = ["condition", "seed", "ex_id"]


# ---- children: one measurement each, in a fresh interpreter; print one JSON line ---------------
def child_grid(a: dict) -> dict:
    from rich.console import Console

    from cotdsl.executors import ExecutorCfg
    from cotdsl.run import EXIT_OK, run

    extra = {}
    if a["cfg"]["kind"] == "ray":  # time ray.init on its own
        from cotdsl.executors import on_ray

        init = on_ray.RayEngine.__init__

        def timed(self, *args, **kw):
            t = time.perf_counter()
            init(self, *args, **kw)
            extra["ray_init_s"] = time.perf_counter() - t

        on_ray.RayEngine.__init__ = timed
    cfg = ExecutorCfg(**a["cfg"])
    console = Console(file=open(os.devnull, "w"), width=120)
    t = time.perf_counter()
    rc = run(Path(a["spec"]), cache=Path(a["cache"]), out=Path(a["out"]), executor=cfg, console=console)
    wall = time.perf_counter() - t
    jobs = json.loads((Path(a["out"]) / "scale" / "jobs.json").read_text())
    assert rc == EXIT_OK and {v["status"] for v in jobs.values()} == {"ran"}, (rc, jobs)
    by_stage: dict[str, float] = {}
    for v in jobs.values():
        by_stage[v["stage"]] = by_stage.get(v["stage"], 0.0) + v["seconds"]
    threads = sorted({v["info"].get("device", "?") for v in jobs.values() if v["stage"] == "train"})
    return {"wall": wall, "jobs": len(jobs), "compute": sum(by_stage.values()), "by_stage": by_stage,
            "train_device": ", ".join(threads), **extra}


class _NullView:
    def start(self, job):
        return lambda i, n: None

    def done(self, job, out):
        pass

    def retry(self, job, cause):
        raise RuntimeError(f"{job.label}: worker crashed: {cause}")


def child_dispatch(a: dict) -> dict:
    from dataclasses import replace

    from cotdsl import load
    from cotdsl.cache import Store
    from cotdsl.executors import ExecutorCfg, drive, drive_engine, engine
    from cotdsl.plan import Plan, make_plan

    exp = load(Path(a["spec"]))
    (data,) = make_plan(exp).by_stage("data")
    cfg, store = ExecutorCfg(**a["cfg"]), Store(Path(a["cache"]))

    def copies(tag: str, n: int, chain: bool) -> Plan:
        jobs = []
        for i in range(n):
            deps = (jobs[-1].id,) if chain and jobs else ()
            jobs.append(replace(data, key=f"{tag}{i:04d}", deps=deps, label=f"no-op {tag} {i}"))
        return Plan(exp, tuple(jobs))

    def push(plan: Plan) -> tuple[float, float]:
        t = time.perf_counter()
        if hasattr(eng, "run"):
            outs = drive_engine(plan, eng, _NullView())
        else:
            outs = drive(plan, store, eng, _NullView(), retries=0)
        wall = time.perf_counter() - t
        assert {o.status for o in outs.values()} == {"ran"}, outs
        return wall, sum(o.seconds for o in outs.values())

    t = time.perf_counter()
    eng = engine(cfg, store)
    res = {"engine_s": time.perf_counter() - t}
    try:
        res["warm_s"] = push(copies("warm", 2, chain=False))[0]
        n = a["n"]
        res["chain_wall"], res["chain_compute"] = push(copies("chain", n, chain=True))
        res["fan_wall"], res["fan_compute"] = push(copies("fan", n, chain=False))
        res["n"] = n
    finally:
        eng.close()
    return res


# ---- the parent -------------------------------------------------------------------------------
def slurm_env() -> dict | None:
    """Environment for a child that uses Slurm, or None when no cluster answers."""
    conf = os.environ.get("SLURM_CONF")
    if not conf:
        st = subprocess.run([str(ROOT / "scripts" / "slurm-cluster"), "status"], capture_output=True, text=True)
        if st.returncode != 0:
            return None
        conf = st.stdout.strip().splitlines()[-1].split("=", 1)[1]
    env = {**os.environ, "SLURM_CONF": conf}
    if shutil.which("sinfo") is None or subprocess.run(["sinfo", "-h"], env=env, capture_output=True).returncode:
        return None
    stand_in = Path(conf).parent / "bin"
    if (stand_in / "sacct").exists():
        env["PATH"] = f"{stand_in}{os.pathsep}{env['PATH']}"
    return env


CLK = os.sysconf("SC_CLK_TCK")
OURS = ("slurmctld", "slurmd", "slurmstepd", "slurmscriptd")  # Slurm's daemons run our Slurm jobs


def procs() -> dict[int, tuple[int, int, str]]:
    """pid -> (ppid, CPU ticks used so far, command name), from /proc."""
    out = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                raw = Path(f"/proc/{d}/stat").read_text()
            except OSError:
                continue
            r = raw.rfind(")")
            f = raw[r + 2:].split()
            out[int(d)] = (int(f[1]), int(f[11]) + int(f[12]), raw[raw.find("(") + 1:r])
    return out


def foreign(pid: int, table: dict, roots: set[int]) -> bool:
    """Not ours: neither under `roots` (this bench and its measurement) nor Slurm's, nor a kernel thread."""
    for _ in range(64):
        if pid in roots or pid in (0, 2):  # 2: kthreadd, the parent of kernel threads
            return False
        if pid == 1:
            return True
        ent = table.get(pid)
        if ent is None:
            return True
        if ent[2] in OURS:
            return False
        pid = ent[0]
    return True


class Watch:
    """CPU seconds that other people's processes used while we measured (sampled from /proc)."""

    def __init__(self, roots: set[int]):
        self.roots, self.first, self.last, self.pytest = roots, {}, {}, 0
        self.samples, self.t0 = 0, time.perf_counter()
        self._sample(start=True)

    def _sample(self, start: bool = False) -> None:
        table = procs()
        for pid, (_, ticks, _) in table.items():
            if foreign(pid, table, self.roots):
                self.first.setdefault(pid, ticks if start else 0)
                self.last[pid] = ticks

    def sample(self) -> None:
        self._sample()
        self.samples += 1
        self.pytest += pytest_running()

    def share(self) -> float:
        """Their CPU time as a share of the machine's capacity over the watch."""
        used = sum(self.last[p] - self.first[p] for p in self.last) / CLK
        return used / (max(1e-9, time.perf_counter() - self.t0) * (os.cpu_count() or 1))


def busy_jiffies() -> tuple[int, int]:
    """(busy, total) CPU jiffies of the whole machine so far (/proc/stat)."""
    f = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = f[3] + (f[4] if len(f) > 4 else 0)
    return sum(f) - idle, sum(f)


def pytest_running() -> bool:
    return subprocess.run(["pgrep", "-f", "bin/pytest"], capture_output=True).returncode == 0


class Quiet:
    """Before a measurement, wait (up to `patience` s) until no pytest runs and other people's
    processes use under `limit` of the CPUs; during it, watch their CPU use; a measurement they
    used more than `limit` of is repeated, up to `tries` times in all (the last one is kept)."""

    def __init__(self, wait: bool, tries: int = 3, limit: float = 0.10, patience: float = 1200):
        self.wait, self.tries, self.limit, self.patience = wait, tries, limit, patience
        self.loads, self.shares, self.waited, self.redone, self.gave_up = [], [], 0.0, 0, 0

    def settle(self) -> float:
        t = time.time()
        while self.wait:
            w = Watch({os.getpid()})
            time.sleep(3)
            w.sample()
            if not pytest_running() and w.share() < self.limit:
                break
            if time.time() - t > self.patience:
                self.gave_up += 1
                break
            time.sleep(7)
        self.waited += time.time() - t
        return os.getloadavg()[0]


def measure(what: str, args: dict, env: dict | None, quiet: Quiet) -> dict:
    for attempt in range(quiet.tries if quiet.wait else 1):
        if attempt:  # the last one was disturbed: again, from a fresh cache
            quiet.redone += 1
            shutil.rmtree(args["cache"], ignore_errors=True)
            shutil.rmtree(args.get("out", args["cache"]), ignore_errors=True)
        load = quiet.settle()
        b0, t0 = busy_jiffies()
        p = subprocess.Popen([sys.executable, __file__, "--child", what, json.dumps(args)], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=args["cwd"])
        watch = Watch({os.getpid(), p.pid})
        while p.poll() is None:
            watch.sample()
            time.sleep(0.5)
        out, err = p.communicate()
        b1, t1 = busy_jiffies()
        lines = [ln for ln in out.splitlines() if ln.startswith("{")]
        if p.returncode or not lines:
            raise RuntimeError(f"{what} {args['cfg']} failed (exit {p.returncode}):\n{out[-3000:]}\n{err[-3000:]}")
        m = {**json.loads(lines[-1]), "load": load, "foreign": watch.share(),
             "pytest": watch.pytest / max(1, watch.samples), "cpu_busy": (b1 - b0) / max(1, t1 - t0)}
        if m["foreign"] < quiet.limit and not m["pytest"]:
            break
    quiet.loads.append(m["load"])
    quiet.shares.append(m["foreign"])
    return m


def results_of(out: Path):
    import polars as pl

    return pl.read_parquet(out / "scale" / "results.parquet").sort(KEYS)


def fmt(xs: list[float]) -> str:
    return f"{min(xs):.1f} / {statistics.median(xs):.1f}"


def env_for(e: str, env: dict, senv: dict | None) -> dict:
    return {**(senv if e.startswith("slurm") else env), **ENV.get(e, {})}


def grid_table(rows, identical) -> None:
    print("\n### (a) the grid: wall time of `run()` in a fresh process, s\n")
    print("| grid | executor | jobs | runs | wall min / median | jobs' compute min / median | "
          "torch threads per training job | ray.init median | results.parquet = first local1 |")
    print("|---|---|---|---|---|---|---|---|---|")
    for grid, e, ms in rows:
        ri = [m["ray_init_s"] for m in ms if "ray_init_s" in m]
        same = identical[(grid, e)]
        print(f"| {grid} ({GRIDS[grid]} epochs) | {e} | {ms[0]['jobs']} | {len(ms)} | {fmt([m['wall'] for m in ms])} | "
              f"{fmt([m['compute'] for m in ms])} | {ms[0]['train_device']} | "
              f"{f'{statistics.median(ri):.1f}' if ri else '-'} | "
              f"{'yes' if all(same) else f'NO ({sum(same)}/{len(same)})'} |")
    by = {(g, e): ms for g, e, ms in rows}
    print()
    for grid in dict.fromkeys(g for g, _, _ in rows):
        for base in ("local1", "local1-1t"):
            if (grid, base) in by and (grid, "local2") in by:
                one, two = [m["wall"] for m in by[(grid, base)]], [m["wall"] for m in by[(grid, "local2")]]
                print(f"local2 vs {base}, {grid} grid: {statistics.median(one) / statistics.median(two):.2f}x "
                      f"(medians), {min(one) / min(two):.2f}x (minima)")
    for grid, e, ms in rows:
        st = {k: statistics.median([m["by_stage"][k] for m in ms]) for k in ms[0]["by_stage"]}
        print(f"  {grid} {e}: jobs' compute by stage (median s): " + ", ".join(f"{k} {v:.1f}" for k, v in st.items()))


def dispatch_table(out) -> None:
    print("\n| executor | N | start-up: engine + 2 warm-up jobs, s (median) | chain: (wall − compute) / N, ms "
          "(min / median) | fan-out: wall / N, ms (min / median) | no-op job's compute, ms | goal |")
    print("|---|---|---|---|---|---|---|")
    for e, n, ds in out:
        chain = [1000 * (m["chain_wall"] - m["chain_compute"]) / n for m in ds]
        fan = [1000 * m["fan_wall"] / n for m in ds]
        comp = statistics.median([1000 * m["chain_compute"] / n for m in ds])
        goal = GOAL_MS.get(e)
        met = goal is not None and statistics.median(chain) <= goal
        verdict = "-" if goal is None else f"≤ {goal} ms: {'met' if met else 'NOT met'}"
        print(f"| {e} | {n} | {statistics.median([m['engine_s'] + m['warm_s'] for m in ds]):.2f} | "
              f"{min(chain):.0f} / {statistics.median(chain):.0f} | {min(fan):.0f} / {statistics.median(fan):.0f} | "
              f"{comp:.1f} | {verdict} |")


def figures(rows, out, identical) -> list[dict]:
    """The tables' figures for bench/run_all.py: medians over the repeats."""
    walls = {(g, e): statistics.median([m["wall"] for m in ms]) for g, e, ms in rows}
    figs = []
    for (grid, e), wall in walls.items():
        one = walls.get((grid, "local1")) if e == "local2" else None
        figs.append(figure(f"{grid} grid ({GRIDS[grid]} epochs), {e}: wall of run() (median)", wall, "s",
                           ratio=one / wall if one else None, vs="faster than local1 (medians)",
                           goal=(">=", 1.7) if one and grid == "long" else None))
    for e, n, ds in out:
        goal = GOAL_MS.get(e)
        figs += [figure(f"dispatch, {e}: start-up, engine + 2 warm-up jobs (median)",
                        statistics.median([m["engine_s"] + m["warm_s"] for m in ds]), "s"),
                 figure(f"dispatch, {e}: chain of {n} no-op jobs, (wall - compute) / N (median)",
                        statistics.median([1000 * (m["chain_wall"] - m["chain_compute"]) / n for m in ds]), "ms",
                        goal=("<=", goal) if goal else None),
                 figure(f"dispatch, {e}: fan-out of {n} no-op jobs, wall / N (median)",
                        statistics.median([1000 * m["fan_wall"] / n for m in ds]), "ms")]
    if identical:
        figs.append(figure("runs whose results.parquet differs from the first local1 run",
                           sum(not x for v in identical.values() for x in v), "runs", goal=("==", 0)))
    return figs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--grids", default="short,long")
    ap.add_argument("--engines", default="local1,local1-1t,local2,ray,slurm,slurm-1t",
                    help=f"any of {', '.join(ENGINES)} (-1t: OMP_NUM_THREADS=1)")
    ap.add_argument("--noop", type=int, default=24, help="no-op jobs per dispatch phase")
    ap.add_argument("--noop-slurm", type=int, default=12, help="the same for Slurm (each is an sbatch job)")
    ap.add_argument("--no-wait", action="store_true", help="do not wait for running pytests")
    ap.add_argument("--skip-dispatch", action="store_true")
    ap.add_argument("--skip-grid", action="store_true")
    a = ap.parse_args()
    engines = [e for e in a.engines.split(",") if e]
    env = dict(os.environ)
    slurms = [e for e in engines if e.startswith("slurm")]
    senv = slurm_env() if slurms else None
    if slurms and senv is None:
        print("slurm: skipped, no cluster answers (scripts/slurm-cluster up, then export its SLURM_CONF)")
        engines = [e for e in engines if e not in slurms]
    if "ray" in engines:
        try:
            import ray  # noqa: F401
        except ImportError:
            print("ray: skipped, not installed (pip install cotdsl[ray])")
            engines.remove("ray")
    quiet = Quiet(not a.no_wait)
    print(f"{cpu_name()}, {os.cpu_count()} cores, Python {platform.python_version()}; "
          f"{time.strftime('%Y-%m-%d %H:%M')}; engines: {', '.join(engines)}", flush=True)

    tmp = Path(tempfile.mkdtemp(prefix="cotdsl-scale-"))
    rows, identical, out = [], {}, []
    try:
        for grid in ([] if a.skip_grid else a.grids.split(",")):
            spec = tmp / f"{grid}.cot"
            spec.write_text(GRID.format(epochs=GRIDS[grid]))
            runs: dict[str, list[dict]] = {e: [] for e in engines}
            ref = None
            for r in range(a.repeats):  # interleaved, so a slow spell of the machine hits every executor
                for e in engines:
                    d = tmp / f"{grid}-{e}-{r}"
                    args = {"spec": str(spec), "cache": str(d / "cache"), "out": str(d / "runs"),
                            "cfg": ENGINES[e], "cwd": str(tmp)}
                    m = measure("grid", args, env_for(e, env, senv), quiet)
                    runs[e].append(m)
                    res = results_of(d / "runs")
                    if ref is None:
                        ref = res
                    identical.setdefault((grid, e), []).append(res.equals(ref))
                    print(f"  {grid} {e} #{r + 1}: {m['wall']:.1f} s (results.parquet = first local1: "
                          f"{'yes' if identical[(grid, e)][-1] else 'NO'}; jobs' compute {m['compute']:.1f} s; "
                          f"load {m['load']:.2f} before; machine CPU busy {m['cpu_busy']:.0%}, "
                          f"others' share {m['foreign']:.0%})", flush=True)
                    shutil.rmtree(d, ignore_errors=True)
            rows += [(grid, e, runs[e]) for e in engines]
        if rows:
            grid_table(rows, identical)

        if not a.skip_dispatch:
            print("\n### (b) per-job dispatch overhead, no-op jobs\n", flush=True)
            spec = tmp / "noop.cot"
            spec.write_text(GRID.format(epochs=GRIDS["short"]))
            for e in [e for e in engines if e not in ENV]:
                n = a.noop_slurm if e.startswith("slurm") else a.noop
                ds = []
                for r in range(a.repeats):
                    d = tmp / f"noop-{e}-{r}"
                    args = {"spec": str(spec), "cache": str(d), "cfg": ENGINES[e], "n": n, "cwd": str(tmp)}
                    ds.append(measure("dispatch", args, env_for(e, env, senv), quiet))
                    shutil.rmtree(d, ignore_errors=True)
                    m = ds[-1]
                    print(f"  {e} #{r + 1}: start {m['engine_s'] + m['warm_s']:.2f} s, chain {m['chain_wall']:.2f} s, "
                          f"fan-out {m['fan_wall']:.2f} s for {n} jobs (load {m['load']:.2f} before; "
                          f"others' share {m['foreign']:.0%})", flush=True)
                out.append((e, n, ds))
            dispatch_table(out)
        sh = quiet.shares
        print(f"\n1-min load average before each of the {len(quiet.loads)} measurements: min {min(quiet.loads):.2f}, "
              f"median {statistics.median(quiet.loads):.2f}, max {max(quiet.loads):.2f}. Other people's processes used "
              f"{statistics.median(sh):.0%} of the CPUs during the median measurement (max {max(sh):.0%}); "
              f"waited {quiet.waited:.0f} s for a quiet machine (gave up waiting {quiet.gave_up} time(s)); "
              f"{quiet.redone} measurement(s) redone because others used > {quiet.limit:.0%} during them")
        bad = [k for k, v in identical.items() if not all(v)]
        emit("scale_out", figures(rows, out, identical), repeats=a.repeats, grids=a.grids, engines=engines,
             noop=a.noop, noop_slurm=a.noop_slurm, waited_for_quiet=not a.no_wait)
        if bad:
            print(f"results.parquet DIFFERS from the first local1 run for: {bad}")
            sys.exit(1)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--child":
        fn = {"grid": child_grid, "dispatch": child_dispatch}[sys.argv[2]]
        print(json.dumps(fn(json.loads(sys.argv[3]))), flush=True)
    else:
        main()
