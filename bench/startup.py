"""Startup of the light commands: wall time of `cotdsl --help`, `cotdsl check SPEC` and
`cotdsl report RUN_DIR` (median of --runs fresh processes) and which heavy libraries each
imports (`python -X importtime`).

    HF_HUB_OFFLINE=1 .venv/bin/python bench/startup.py --run-dir runs/quickstart [--runs 5]

`report` writes figures, so it runs on a copy of RUN_DIR (made once; the first, untimed call
draws the figures, the timed ones find them up to date, as a second `cotdsl report` does).
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HEAVY = ("torch", "transformers", "datasets", "polars", "matplotlib", "numpy")


def command(args: list[str]) -> list[str]:
    exe = Path(sys.executable).with_name("cotdsl")  # the console script, as a user runs it
    return [str(exe), *args] if exe.exists() else [sys.executable, "-m", "cotdsl.cli", *args]


def wall(args: list[str], runs: int) -> list[float]:
    out = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run(command(args), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
        out.append(time.perf_counter() - t0)
    return out


def heavy_imports(args: list[str]) -> list[str]:
    """Top-level packages among HEAVY that the command imports (from -X importtime's log)."""
    code = "import sys; from cotdsl.cli import app; sys.argv = ['cotdsl', *sys.argv[1:]]; app()"
    r = subprocess.run([sys.executable, "-X", "importtime", "-c", code, *args], cwd=ROOT, capture_output=True,
                       text=True)
    seen = {line.split("|")[-1].strip().split(".")[0] for line in r.stderr.splitlines() if line.startswith("import time:")}
    return [m for m in HEAVY if m in seen]


def main() -> None:
    from machine import cpu_name

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run-dir", type=Path, required=True, help="a finished run folder (copied first)")
    ap.add_argument("--spec", default="specs/quickstart.cot")
    ap.add_argument("--runs", type=int, default=5)
    a = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp) / a.run_dir.name
        shutil.copytree(a.run_dir, run_dir)
        cases = {"--help": ["--help"], f"check {a.spec}": ["check", a.spec], "report RUN_DIR": ["report", str(run_dir)]}
        wall(cases["report RUN_DIR"], 1)  # draws the copy's figures once
        print(f"cpu: {cpu_name()}, {os.cpu_count()} cores; load average {os.getloadavg()[0]:.1f}; "
              f"median of {a.runs} runs (wall, s)")
        for name, args in cases.items():
            ts = wall(args, a.runs)
            print(f"  cotdsl {name:<28} {statistics.median(ts):6.2f} s   (min {min(ts):.2f}, max {max(ts):.2f})   "
                  f"imports: {', '.join(heavy_imports(args)) or 'none of ' + '/'.join(HEAVY)}")


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    main()
