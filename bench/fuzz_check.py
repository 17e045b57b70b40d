"""Robustness run: 100,000 generated and mutated specs through `check`, nothing but CotError.

    .venv/bin/python bench/fuzz_check.py [--n 100000] [--seed 0] [--show 5]

The inputs come from the fuzz tests' own strategies (tests/lang/fuzz_specs.py): half `generated`
(specs assembled from the grammar's pieces: targets, sweeps, sections, expectations, seeds, with
wrong names, values and arrows among them), half `mutated` (up to 6 byte-level deletions,
insertions and replacements in a real spec from specs/). Hypothesis draws them (seeded, generation
phase only, no shrinking, no example database), and each goes through `check_source`, what
`cotdsl check` does per file. An input passes when it gives a checked Experiment or raises a
CotError that has diagnostics and renders; anything else is an offender: the first --show are
printed with their input and traceback, and the exit status is 1.

Printed: how many checks ran (and how many distinct inputs), how many were accepted / rejected
with a CotError, the wall and CPU time of the whole run (drawing the inputs included) and the time
spent inside `check_source`, and the offenders. Pure Python, one thread; on a shared machine the CPU
time is the steadier figure.
"""
from __future__ import annotations

import argparse
import sys
import time
import traceback
from pathlib import Path

from common import emit, figure

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests" / "lang")]

from hypothesis import HealthCheck, Phase, given, seed, settings  # noqa: E402

from cotdsl import spec  # noqa: E402
from cotdsl.errors import CotError  # noqa: E402
from cotdsl.lang.check import check_source  # noqa: E402
from fuzz_specs import generated, mutated  # noqa: E402 - tests/lang/fuzz_specs.py


class Tally:
    def __init__(self) -> None:
        self.checks = self.accepted = self.rejected = 0
        self.seconds = 0.0
        self.distinct: set[int] = set()
        self.offenders: list[tuple[str, str]] = []  # (input, traceback)

    def check(self, text: str) -> None:
        self.checks += 1
        self.distinct.add(hash(text))
        t0 = time.perf_counter()
        try:
            exp = check_source(text, "fuzz.cot")
            ok = isinstance(exp, spec.Experiment)
            self.accepted += ok
            if not ok:
                self.offenders.append((text, f"check_source returned {type(exp).__name__}, not an Experiment"))
        except CotError as e:
            try:
                assert e.diagnostics and e.render()
                self.rejected += 1
            except Exception:  # noqa: BLE001 - a CotError that cannot say what is wrong is a bug too
                self.offenders.append((text, traceback.format_exc()))
        except Exception:  # noqa: BLE001 - what this run looks for
            self.offenders.append((text, traceback.format_exc()))
        finally:
            self.seconds += time.perf_counter() - t0


def run(strategy, n: int, at: int, tally: Tally) -> None:
    """Draw `n` inputs from `strategy` (seed `at`) and check each; never stops on an offender."""
    @seed(at)
    @settings(max_examples=n, deadline=None, database=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(strategy)
    def one(text):
        tally.check(text)

    one()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100_000, help="checks in all (half generated, half mutated)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--show", type=int, default=5, help="offenders to print")
    a = ap.parse_args()
    t0, c0 = time.perf_counter(), time.process_time()
    per = {}
    for i, (name, strategy) in enumerate((("generated", generated), ("mutated", mutated))):
        tally = per[name] = Tally()
        k = a.n // 2 + (a.n % 2 if i == 0 else 0)
        run(strategy, k, a.seed + i, tally)
        print(f"{name}: {tally.checks:,} checks ({len(tally.distinct):,} distinct inputs): {tally.accepted:,} "
              f"accepted, {tally.rejected:,} rejected with a CotError, {len(tally.offenders)} other exceptions; "
              f"{tally.seconds:.1f} s in check_source", flush=True)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    checks = sum(t.checks for t in per.values())
    offenders = [o for t in per.values() for o in t.offenders]
    inside = sum(t.seconds for t in per.values())
    print(f"total: {checks:,} checks in {wall:.1f} s wall, {cpu:.1f} s CPU ({inside:.1f} s wall in check_source, "
          f"{1e3 * inside / max(1, checks):.2f} ms per check), {len(offenders)} exceptions other than CotError")
    for text, tb in offenders[:a.show]:
        print(f"\n--- offender: input {text!r}\n{tb}")
    emit("fuzz_check", [
        figure("checks run (generated + mutated specs)", checks, "checks"),
        figure("distinct inputs", sum(len(t.distinct) for t in per.values()), "inputs"),
        figure("wall time of the run", wall, "s"),
        figure("CPU time of the run", cpu, "s"),
        figure("wall time in check_source per check (mean)", 1e3 * inside / max(1, checks), "ms"),
        figure("exceptions other than CotError", len(offenders), "inputs", goal=("==", 0)),
    ], n=a.n, seed=a.seed)
    sys.exit(1 if offenders else 0)


if __name__ == "__main__":
    main()
