"""Parse + check speed on a generated 1,000-line spec (issue #2: < 0.2 s). Prints the figures.

    .venv/bin/python bench/parse_speed.py [--runs N]

Warm figures are medians over N runs in this process (grammar built, registry imported):
parse only (`parse_source`), check only (`_Checker.run_parsed` on the parsed file) and the two
together (`check_source`, what `cotdsl check` does per file). The cold figure runs a fresh Python
process that imports cotdsl, builds (or loads the cached) parser and checks the spec once, and
reports its wall time from interpreter start, also split into its parts; medians over 3 processes.
`lark inline` is the alternative to `cotdsl/lang/parse_fast.py`: lark's own LALR parser with the
same transformer run inline (`Lark(..., transformer=...)`) and comments taken by `lexer_callbacks`.
`--cpu` times the warm figures in this process's CPU time, which other work on a shared machine
disturbs far less than wall time.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from common import emit, figure  # noqa: E402 - bench/common.py (bench/ is on sys.path when a bench runs)
from cotdsl.lang.check import _Checker, check_source  # noqa: E402
from cotdsl.lang.parse import parse_source  # noqa: E402


def make_spec(lines: int = 1000) -> str:
    head = ['experiment big {', '  seeds 0, 1, 2', '  data    toy  = builtin("facts", train: 400, test: 200)',
            '  teacher gold = gold', '  student smol = smollm2']
    tail = ['  train { epochs: 2, lr: 5e-5, batch: 8 }', '  eval  { by: auto }', '  probe { lens: logit, tuned; at: label }', '}']
    kinds = ['  target t{i} = label -> shuffle(mask(rationale, 0.{d}))  # comment {i}',
             '  target m{i}[p in 0.2, 0.4] = label -> mask(rationale, p)',
             '  target k{i} = "The answer is " label ". " keytokens(rationale, {d}, by: ig)',
             '  target u{i} = unk({d}) -> label',
             '  target s{i} = multitask {{ "predict: ": label weight 0.5; "explain: ": rationale weight 0.5 }}']
    body = [kinds[i % len(kinds)].format(i=i, d=i % 9 + 1) for i in range(lines - len(head) - len(tail))]
    return "\n".join(head + body + tail) + "\n"


# Run in a fresh interpreter: time from the start of the process (ns since epoch passed in argv).
_COLD = r"""
import json, sys, time
t_start = int(sys.argv[1]) / 1e9
sys.path.insert(0, sys.argv[2])
t0 = time.time()
from cotdsl.lang import grammar
from cotdsl.lang.check import check_source
t1 = time.time()
grammar.parser(); grammar.fast_parser()
t2 = time.time()
text = open(sys.argv[3], encoding="utf-8").read()
t3 = time.time()
exp = check_source(text, "bench.cot")
t4 = time.time()
print(json.dumps({"startup": t0 - t_start, "import": t1 - t0, "build": t2 - t1, "check": t4 - t3,
                  "total": t4 - t_start - (t3 - t2), "conditions": len(exp.conditions)}))
"""


def _median(xs: list[float]) -> str:
    return f"{statistics.median(xs) * 1e3:6.1f} ms (min {min(xs) * 1e3:.1f})"


def cold(text: str, runs: int = 3) -> dict[str, float]:
    import tempfile
    with tempfile.NamedTemporaryFile("w", suffix=".cot", delete=False, encoding="utf-8") as f:
        f.write(text)
    out = []
    for _ in range(runs):
        r = subprocess.run([sys.executable, "-c", _COLD, str(time.time_ns()), str(ROOT), f.name],
                           capture_output=True, text=True, check=True)
        out.append(json.loads(r.stdout))
    Path(f.name).unlink()
    return {k: statistics.median(o[k] for o in out) for k in out[0]}


def lark_inline(text: str, runs: int, clock=time.perf_counter) -> list[float]:
    """Seconds per parse with lark's own LALR parser and the transformer inline."""
    import lark

    from cotdsl.lang.grammar import grammar_text
    from cotdsl.lang.parse import _ToAst

    conv, comments = _ToAst("bench.cot"), []
    p = lark.Lark(grammar_text(), parser="lalr", maybe_placeholders=True, transformer=conv,
                  lexer_callbacks={"COMMENT": comments.append})
    out = []
    for _ in range(runs):
        t0 = clock()
        conv.errors, comments[:] = [], []
        p.parse(text)
        out.append(clock() - t0)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=15)
    ap.add_argument("--cpu", action="store_true", help="time warm runs in process CPU time")
    args = ap.parse_args()
    runs, clock = args.runs, time.process_time if args.cpu else time.perf_counter
    text = make_spec()
    exp = check_source(text, "bench.cot")  # warm: grammar compiled, registry imported
    parse_t, check_t, total_t = [], [], []
    for _ in range(runs):
        t0 = clock()
        f = parse_source(text, "bench.cot")
        t1 = clock()
        c = _Checker("bench.cot")
        c.col.sources["bench.cot"] = text
        c.run_parsed(f)
        t2 = clock()
        check_source(text, "bench.cot")
        t3 = clock()
        parse_t.append(t1 - t0)
        check_t.append(t2 - t1)
        total_t.append(t3 - t2)
    n = text.count("\n")
    print(f"{n} lines, {len(text):,} chars, {len(exp.conditions)} conditions; medians of {runs} runs"
          f"{' (CPU time)' if args.cpu else ''}")
    print(f"parse only:     {_median(parse_t)}")
    print(f"check only:     {_median(check_t)}")
    print(f"parse + check:  {_median(total_t)}   (target < 200 ms)")
    lark_t = lark_inline(text, runs, clock)
    print(f"lark inline:    {_median(lark_t)}   (parse only; instead of parse_fast)")
    c = cold(text)
    print(f"cold process:   {c['total'] * 1e3:6.1f} ms = interpreter {c['startup'] * 1e3:.0f} + import "
          f"{c['import'] * 1e3:.0f} + parser build/load {c['build'] * 1e3:.0f} + parse+check "
          f"{c['check'] * 1e3:.0f} ms (median of 3 fresh processes)")
    med = {k: statistics.median(v) * 1e3 for k, v in (("parse", parse_t), ("check", check_t), ("total", total_t),
                                                     ("lark", lark_t))}
    emit("parse_speed", [
        figure("parse only, parse_fast (median)", med["parse"], "ms"),
        figure("check only (median)", med["check"], "ms"),
        figure("parse + check, check_source (median)", med["total"], "ms", goal=("<", 200)),
        figure("parse only, lark inline (median)", med["lark"], "ms", ratio=med["lark"] / med["parse"],
               vs="parse_fast"),
        figure("cold process: interpreter start to checked spec (median of 3)", c["total"] * 1e3, "ms"),
    ], runs=runs, clock="process CPU" if args.cpu else "wall", lines=n, conditions=len(exp.conditions))


if __name__ == "__main__":
    main()
