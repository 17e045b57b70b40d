"""Spec generators shared by the fuzz tests (tests/lang/test_fuzz.py, test_parse_fast.py) and the
robustness run (bench/fuzz_check.py): hypothesis strategies for specs generated from the grammar's
pieces (`generated`), byte-level mutations of the real specs in specs/ (`mutated`), and arbitrary
text or bytes (`arbitrary`)."""
from __future__ import annotations

from pathlib import Path

from hypothesis import strategies as st

SPECS = [p.read_text() for p in sorted((Path(__file__).resolve().parents[2] / "specs").glob("*.cot"))]
HEAD = 'experiment e {\n data toy = builtin("facts", train: 10, test: 10)\n teacher g = gold\n student s = smollm2\n'

names = st.sampled_from(["label", "rationale", "p", "k", "x", "ig", "true", "shuffle", "mask", "unk",
                         "keytokens", "field", "word", "token"])
nums = st.sampled_from(["0", "1", "-1", "0.5", "1.5", "5e-5", "1e999", "3", "100"])
strs = st.sampled_from(['"a"', '""', '"x\\n"', '"\\q"', '"unterminated', '"é"'])
fns = st.sampled_from(["shuffle", "mask", "unk", "keytokens", "drop", "reverse", "truncate", "nope", "field"])
keys = st.sampled_from(["by", "unit", "p", "n", "k", "token", "bogus"])


def values(depth=0):
    base = st.one_of(names, nums, strs)
    if depth > 2:
        return base
    return st.one_of(base, st.builds(lambda f, a, kw: f"{f}({', '.join(a + kw)})", fns,
                                     st.lists(values(depth + 1), max_size=3),
                                     st.lists(st.builds(lambda k, v: f"{k}: {v}", keys, values(depth + 1)), max_size=2)))


segment = st.one_of(names, strs, values(1))
arrow = st.sampled_from([" -> ", " ⟶ ", " ", "->", " , "])
chain = st.builds(lambda segs, a: a.join(segs), st.lists(segment, min_size=1, max_size=4), arrow)
sweep = st.one_of(st.just(""), st.just("[]"), st.builds(lambda v, xs: f"[{v} in {', '.join(xs)}]",
                                                        st.sampled_from(["p", "k", "n", "label"]),
                                                        st.lists(st.one_of(nums, names), max_size=3)))
target = st.builds(lambda n, s, c: f"target {n}{s} = {c}", st.sampled_from(["a", "b", "a"]), sweep, chain)
section = st.builds(lambda k, kv: f"{k} {{ {', '.join(kv)} }}", st.sampled_from(["train", "eval", "probe", "trian"]),
                    st.lists(st.builds(lambda k, v: f"{k}: {v}", st.sampled_from(
                        ["epochs", "lr", "by", "lens", "at", "batch", "precision", "x"]), values(2)), max_size=3))
side = st.one_of(names, st.sampled_from(["a", "b", "a[p=0.2]", "b[k=1; p=x]", "commit(a)", "acc(b)", "nope(a)",
                                         "commit(a[p=1])", "a[]", "a[p=shuffle(x)]"]))
expect = st.builds(lambda left, op, right, tail: f"expect {left} {op} {right}{tail}", side,
                   st.sampled_from([">", "<", "~", "=", ""]), side,
                   st.sampled_from(["", " within 3", " alpha 0.01", " within 0 alpha 2", " within x", " alpha"]))
stmt = st.one_of(target, section, expect,
                 st.builds(lambda xs: "seeds " + ", ".join(xs), st.lists(nums, min_size=1, max_size=3)))
generated = st.builds(lambda ss, close: HEAD + "\n".join(ss) + ("\n}" if close else ""),
                      st.lists(stmt, max_size=6), st.booleans())


def mutate(text: str, edits) -> str:
    s = list(text)
    for pos, kind, ch in edits:
        if not s:
            break
        i = pos % len(s)
        if kind == 0:
            del s[i]
        elif kind == 1:
            s.insert(i, ch)
        else:
            s[i] = ch
    return "".join(s)


mutated = st.builds(mutate, st.sampled_from(SPECS),
                    st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 2),
                                       st.sampled_from(list('(){}[]"#,;:->= \n0.5xé\\\x00'))), max_size=6))
arbitrary = st.one_of(st.text(max_size=200), st.binary(max_size=200))
