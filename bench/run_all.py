"""Run every benchmark in bench/ one after another (each prints its own table).

Figures named in the issues are measured here, never in timed tests. Run on a quiet machine:
    make bench            # or: .venv/bin/python bench/run_all.py [name ...]
"""
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).parent
BENCHES = ["parse_speed", "train_speed", "train_ddp", "lens_speed", "ig_baselines", "ig_speed", "eval_speed", "scale_out"]

if __name__ == "__main__":
    names = sys.argv[1:] or BENCHES
    failed = []
    for name in names:
        print(f"\n=== bench/{name}.py ===", flush=True)
        t0 = time.perf_counter()
        rc = subprocess.call([sys.executable, str(HERE / f"{name}.py")])
        print(f"=== {name}: exit {rc}, {time.perf_counter() - t0:.0f} s ===", flush=True)
        if rc:
            failed.append(name)
    sys.exit(1 if failed else 0)
