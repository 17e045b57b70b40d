"""Run every benchmark in bench/ one after another (each prints its own table) and collect the
figures they emit (bench/common.py) into bench/results/<date>-<machine>.json and a markdown table
bench/results/<date>-<machine>.md: one row per figure, the machine block on top.

Figures named in the issues are measured here, never in timed tests. Run on a quiet machine:
    make bench            # or: .venv/bin/python bench/run_all.py [name ...]
    .venv/bin/python bench/run_all.py --quick [name ...]   # small arguments: checks the plumbing
                                                           # in minutes; writes <date>-<machine>-quick.*
Each bench's peak RSS is its process's, from wait4(2): the largest resident set of the bench
process or of any child it waited for (processes it did not start, e.g. Ray's workers, are not in
it; an in-process cotdsl run resets its process's peak counter before every job, see runner.py).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import met
from machine import machine, slug

HERE = Path(__file__).resolve().parent
# name: (full arguments, --quick arguments)
BENCHES = {
    "fuzz_check": ([], ["--n", "2000"]),
    "parse_speed": ([], ["--runs", "3"]),
    "train_speed": ([], ["--steps", "2", "--seqs", "16", "--no-fp32", "--peak-n", "512"]),
    "train_ddp": ([], ["--steps", "2", "--seqs", "16"]),
    "lens_speed": ([], ["--batch", "8", "--seq", "32", "--repeats", "1", "--tl-rows", "1"]),
    "ig_baselines": ([], ["--n", "1", "--steps", "4", "--baselines", "pad"]),
    "ig_speed": ([], ["--n", "1", "--steps", "4", "--repeats", "1"]),
    "eval_speed": ([], ["--n", "8", "--repeats", "1"]),
    "scale_out": ([], ["--repeats", "1", "--grids", "short", "--engines", "local1,local2", "--noop", "4",
                       "--no-wait"]),
    "dla_cost": ([], ["--repeats", "2", "--batch", "4", "--seq", "16"]),
}


def run_one(name: str, args: list[str]) -> dict:
    """Run bench/<name>.py; its exit status, wall time, peak RSS and emitted figures."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "result.json"
        t0 = time.perf_counter()
        p = subprocess.Popen([sys.executable, str(HERE / f"{name}.py"), *args],
                             env={**os.environ, "BENCH_RESULT_PATH": str(path)})
        _, status, usage = os.wait4(p.pid, 0)
        p.returncode = os.waitstatus_to_exitcode(status)
        res = json.loads(path.read_text()) if path.exists() else {"params": {}, "figures": []}
    return {"bench": name, "args": args, "exit": p.returncode, "seconds": round(time.perf_counter() - t0, 1),
            "peak_rss_bytes": usage.ru_maxrss * 1024, "params": res["params"], "figures": res["figures"]}


def git_version() -> str:
    def git(*a):
        return subprocess.run(["git", *a], cwd=HERE, capture_output=True, text=True).stdout.strip()

    head = git("rev-parse", "--short", "HEAD") or "?"
    return head + (" (with uncommitted changes)" if git("status", "--porcelain", "--untracked-files=no") else "")


def num(x) -> str:
    if x is None:
        return "–"
    if isinstance(x, bool) or (isinstance(x, int) and abs(x) < 10_000):
        return str(x)
    if isinstance(x, int) or abs(x) >= 1000:
        return f"{x:,.0f}"
    return f"{x:.3g}" if abs(x) < 100 else f"{x:.0f}"


def cell(x) -> str:
    """Text for a markdown table cell: lists joined, `|` escaped."""
    return (", ".join(map(str, x)) if isinstance(x, list) else str(x)).replace("|", "\\|")


def gib(b: int) -> str:
    return f"{b / 2**30:.2f} GiB"


def markdown(res: dict) -> str:
    m = res["machine"]
    flags = ", ".join(m["flags"]) or "none of " + ", ".join(("avx2", "avx512f", "amx"))
    missing = [name for name, flag in (("avx512f", "avx512f"), ("amx", "amx_tile")) if flag not in m["flags"]]
    quick = " (--quick: small arguments, not figures for the docs)" if res["quick"] else ""
    lines = [f"# Benchmarks, {res['date']}, {slug(m)}{quick}",
             "",
             f"Machine: {m['cpu']}, {m['cores']} cores ({m['cores_usable']} usable), {m['mem_gib']} GiB; CPU flags: "
             f"{flags}{' (no ' + ', no '.join(missing) + ')' if missing else ''}; Python {m['python']}, torch "
             f"{m['torch']}, torch threads by default: {m['torch_threads']} (OMP_NUM_THREADS "
             f"{m['OMP_NUM_THREADS'] or 'unset'}; a bench's own --threads is in its arguments).",
             f"Code: git {res['git']}. Load average (1 min) {res['load_before']:.2f} before, {res['load_after']:.2f} "
             f"after; {res['seconds']:.0f} s in all. Command: `{res['command']}`.",
             "",
             "| bench | figure | value | ratio | goal | bench peak RSS |",
             "|---|---|---|---|---|---|"]
    for b in res["benches"]:
        if not b["figures"]:
            lines.append(f"| {b['bench']} | (no figures: exit {b['exit']}) | | | | {gib(b['peak_rss_bytes'])} |")
        for f in b["figures"]:
            ratio = f"{num(f['ratio'])}× {cell(f['vs'])}" if f["ratio"] is not None else ""
            ok = met(f)
            op = {"<=": "≤", ">=": "≥", "==": "="}.get(f["goal"][0], f["goal"][0]) if f["goal"] else ""
            goal = (f"{op} {num(f['goal'][1])}: {'met' if ok else 'NOT met' if ok is False else '?'}"
                    if f["goal"] else "")
            value = f"{num(f['value'])} {cell(f['unit'])}".strip()
            lines.append(f"| {b['bench']} | {cell(f['name'])} | {value} | {ratio} | {goal} | {gib(b['peak_rss_bytes'])} |")
    lines += ["", "| bench | arguments | exit | wall s | peak RSS | settings it reported |",
              "|---|---|---|---|---|---|"]
    for b in res["benches"]:
        params = "; ".join(f"{k} {cell(v)}" for k, v in b["params"].items())
        lines.append(f"| {b['bench']} | {' '.join(b['args']) or '(defaults)'} | {b['exit']} | {b['seconds']:.0f} | "
                     f"{gib(b['peak_rss_bytes'])} | {params} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("names", nargs="*", choices=[[]] + list(BENCHES), metavar="name",
                    help=f"benches to run (default: all): {', '.join(BENCHES)}")
    ap.add_argument("--quick", action="store_true", help="small arguments: the plumbing, not the figures")
    ap.add_argument("--out", type=Path, default=HERE / "results")
    a = ap.parse_args()
    names = a.names or list(BENCHES)
    unlisted = sorted(p.stem for p in HERE.glob("*.py") if p.stem not in {*BENCHES, "common", "machine", "run_all"})
    if unlisted:  # a bench joins the suite with an entry in BENCHES and an emit() of its figures
        print(f"not in run_all.BENCHES, not run: {', '.join(unlisted)}")
    m = machine()
    res = {"date": time.strftime("%Y-%m-%d"), "quick": a.quick, "git": git_version(), "machine": m,
           "command": " ".join(["bench/run_all.py", *sys.argv[1:]]), "load_before": os.getloadavg()[0],
           "benches": []}
    t0 = time.perf_counter()
    for name in names:
        print(f"\n=== bench/{name}.py ===", flush=True)
        b = run_one(name, BENCHES[name][1 if a.quick else 0])
        res["benches"].append(b)
        print(f"=== {name}: exit {b['exit']}, {b['seconds']:.0f} s, peak RSS {gib(b['peak_rss_bytes'])}, "
              f"{len(b['figures'])} figures ===", flush=True)
    res["seconds"], res["load_after"] = time.perf_counter() - t0, os.getloadavg()[0]
    a.out.mkdir(parents=True, exist_ok=True)
    stem = a.out / f"{res['date']}-{slug(m)}{'-quick' if a.quick else ''}"
    stem.with_suffix(".json").write_text(json.dumps(res, indent=1) + "\n")
    stem.with_suffix(".md").write_text(markdown(res))
    print(f"\nwrote {stem}.json and {stem}.md")
    failed = [b["bench"] for b in res["benches"] if b["exit"] or not b["figures"]]
    if failed:
        print(f"failed or emitted no figures: {', '.join(failed)}")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
