"""Rank evaluation: `cotdsl.jobs.evaluate.rank` vs lm-evaluation-harness style loglikelihood.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/eval_speed.py [--n 100] [--batch 16] [--repeats 3]
        [--threads N] [--json out.json]

The base SmolLM2-135M-Instruct (fp32, no fine-tuning) scores the choices of --n embedded-task
test questions (`generate("facts", test=n, seed=0)`) under the label-first condition `none`
of specs/quickstart.cot (`eval_context`: the prompt's ids and each choice's ids exactly as in
training). Methods, all on the same token ids, run back to back in one process:

  rank            `cotdsl.jobs.evaluate.rank(model, items, batch=--batch)`: each question's
                  context runs once; the choices' tokens but the last run on its KV cache
                  (none at all when every choice is one token); the vocab projection only
                  where a choice token is predicted.
  rank-v1         rank before this benchmark's change (kept here as a reference): the choice
                  pass always ran, over every choice token.
  harness         a faithful port of lm-evaluation-harness 0.4 `HFLM._loglikelihood_tokens`
                  with `logits_cache=False`: one request per (context, choice), requests sorted
                  by descending total length, batches of --batch requests right-padded with 0
                  and no attention mask, `inp = (context + continuation)[-(max_length+1):][:-1]`,
                  full logits at every position, `log_softmax` over all of them, the
                  continuation's slice gathered and summed. This is "one forward per choice".
  harness-cache   the same with the harness's default `logits_cache=True`: requests whose
                  `context + continuation[:-1]` are equal (one-token choices of one question)
                  share one row, as its Collator(group_by="contexts") does.

acc = argmax of the summed log-probs, acc_norm = argmax of summed log-prob / len(choice text in
characters) — the harness's `multiple_choice` metrics (`completion_len = len(choice)`, the
choice without the target delimiter) and cotdsl's `scores_norm`. The benchmark reports seconds
per repeat (min / median), the speed ratios, acc and acc_norm per method, and the number of
questions whose pred / pred_norm differ from rank's (must be 0) and the max |score| difference.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from common import emit, figure  # noqa: E402 - bench/common.py (bench/ is on sys.path when a bench runs)


def harness_loglikelihood(model, requests: list[tuple[list[int], list[int]]], *, batch_size: int,
                          max_length: int, logits_cache: bool) -> list[float]:
    """lm-eval 0.4 `HFLM._loglikelihood_tokens` for a causal LM: -> summed log-prob per request."""
    def collate(i):  # Collator(sort_fn=_collate): descending total length, then the tokens
        toks = requests[i][0] + requests[i][1]
        return -len(toks), tuple(toks)

    if logits_cache:  # group_by="contexts", group_fn = context + continuation[:-1]
        by_key: dict[tuple, list[int]] = {}
        for i in range(len(requests)):
            ctx, cont = requests[i]
            by_key.setdefault(tuple(ctx + cont[:-1]), []).append(i)
        groups = list(by_key.values())
    else:
        groups = [[i] for i in range(len(requests))]
    # one row per group: its longest continuation's request (as the Collator picks), sorted
    groups.sort(key=lambda g: collate(max(g, key=lambda i: len(requests[i][1]))))
    res: list[float | None] = [None] * len(requests)
    device = next(model.parameters()).device
    for s in range(0, len(groups), batch_size):
        chunk = groups[s:s + batch_size]
        inps, inplens = [], []
        for g in chunk:
            # the row of a group is its longest continuation's (the Collator keeps that one)
            ctx, cont = requests[max(g, key=lambda i: len(requests[i][1]))]
            inp = torch.tensor((ctx + cont)[-(max_length + 1):][:-1], dtype=torch.long, device=device)
            inps.append(inp)
            inplens.append(inp.shape[0])
        padding_len = max(inplens)
        batched = torch.stack([F.pad(x, (0, padding_len - x.shape[0]), value=0) for x in inps])  # right
        with torch.no_grad():
            multi_logits = F.log_softmax(model(batched).logits, dim=-1)  # [batch, seq, vocab]
        for g, logits, inplen in zip(chunk, multi_logits, inplens):
            for i in g:
                cont = requests[i][1]
                contlen = len(cont)
                sel = logits[inplen - contlen:inplen].unsqueeze(0)  # [1, contlen, vocab]
                # continuations of one group may differ in length: take the trailing slice
                sel = sel[:, -contlen:]
                toks = torch.tensor(cont, dtype=torch.long, device=device).unsqueeze(0)
                res[i] = float(torch.gather(sel, 2, toks.unsqueeze(-1)).squeeze(-1).sum())
    return res  # type: ignore[return-value]


def harness_rank(model, items, *, batch_size: int, max_length: int, logits_cache: bool) -> list[dict]:
    """Per question: scores, pred = argmax(lls), pred_norm = argmax(lls / len(choice))."""
    reqs, owner = [], []
    for q, it in enumerate(items):
        for c in it.choice_ids:
            reqs.append((list(it.context_ids), list(c)))
            owner.append(q)
    lls = harness_loglikelihood(model, reqs, batch_size=batch_size, max_length=max_length,
                                logits_cache=logits_cache)
    out, k = [], 0
    for it in items:
        s = np.array(lls[k:k + len(it.choice_ids)])
        k += len(it.choice_ids)
        completion_len = np.array([float(len(t)) for t in it.choice_texts])
        out.append({"scores": s.tolist(), "pred": int(np.argmax(s)), "pred_norm": int(np.argmax(s / completion_len))})
    return out


@torch.no_grad()
def _rank_group_v1(model, split, items, device):
    """`evaluate._rank_group` before this benchmark's change: the choice pass always ran."""
    from cotdsl.jobs.evaluate import _forward, _pad

    ctx_ids, ctx_att = _pad([it.context_ids for it in items], device)
    ctx_len = ctx_att.sum(1)
    h, cache = _forward(model, split, input_ids=ctx_ids, attention_mask=ctx_att, use_cache=True)
    last = h[torch.arange(len(items), device=device), ctx_len - 1]
    last_logits = split[1](last) if split is not None else last
    rep = torch.tensor([q for q, it in enumerate(items) for _ in it.choice_ids], device=device)
    choices = [c for it in items for c in it.choice_ids]
    x_ids, x_att = _pad(choices, device)
    cache.reorder_cache(rep)
    pos = ctx_len[rep][:, None] + torch.arange(x_ids.shape[1], device=device)[None]
    hx, _ = _forward(model, split, input_ids=x_ids, attention_mask=torch.cat([ctx_att[rep], x_att], 1),
                     position_ids=pos, cache=cache, use_cache=True)
    x_logits = split[1](hx) if split is not None else hx
    pred = torch.cat([last_logits[rep][:, None], x_logits[:, :-1]], 1).float()
    lp = torch.log_softmax(pred, -1).gather(-1, x_ids[..., None])[..., 0]
    sums = (lp * x_att).sum(1).tolist()
    out, k = [], 0
    for it in items:
        out.append(sums[k:k + len(it.choice_ids)])
        k += len(it.choice_ids)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100, help="test questions")
    ap.add_argument("--batch", type=int, default=16, help="rank's choice rows / the harness's requests per forward")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--methods", nargs="+", default=["rank", "rank-v1", "harness", "harness-cache"])
    ap.add_argument("--json", help="write the figures here")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    import cotdsl
    from cotdsl.data.builtin import generate
    from cotdsl.jobs import evaluate as ev
    from cotdsl.models import load_smollm2
    from cotdsl.render import eval_context

    cond = next(c for c in cotdsl.load(ROOT / "specs" / "quickstart.cot").conditions if c.name == "none")
    _, test = generate("facts", train=0, test=args.n, seed=0)
    model, tok = load_smollm2()
    model.eval()
    items = [eval_context(e, cond, tok, seed=0) for e in test]
    n_choice = sum(len(it.choice_ids) for it in items)
    one_tok = sum(len(c) == 1 for it in items for c in it.choice_ids)
    ctx = [len(it.context_ids) for it in items]
    max_length = getattr(model.config, "max_position_embeddings", 2048)

    def run(method):
        if method == "rank":
            return ev.rank(model, items, batch=args.batch)
        if method == "rank-v1":
            orig = ev._rank_group
            ev._rank_group = _rank_group_v1
            try:
                return ev.rank(model, items, batch=args.batch)
            finally:
                ev._rank_group = orig
        return harness_rank(model, items, batch_size=args.batch, max_length=max_length,
                            logits_cache=method == "harness-cache")

    print(f"SmolLM2-135M-Instruct fp32 (base), {torch.get_num_threads()} torch threads, {len(items)} questions, "
          f"{n_choice} choices ({one_tok} one-token), context {min(ctx)}-{max(ctx)} tokens, batch {args.batch}",
          flush=True)
    run("rank")  # warm-up
    times: dict[str, list[float]] = {m: [] for m in args.methods}
    rows: dict[str, list[dict]] = {}
    for r in range(args.repeats):
        for m in args.methods:  # interleaved: load on a shared machine hits every method alike
            t0 = time.perf_counter()
            rows[m] = run(m)
            times[m].append(time.perf_counter() - t0)
        print(f"repeat {r + 1}: " + ", ".join(f"{m} {times[m][-1]:.2f} s" for m in args.methods), flush=True)

    ref = rows["rank"] if "rank" in rows else rows[args.methods[0]]
    gold = [e.answer for e in test]
    report = {"n": len(items), "choices": n_choice, "one_token_choices": one_tok, "batch": args.batch,
              "threads": torch.get_num_threads(), "methods": {}}
    print(f"\n| method | s / {len(items)} questions (min / median) | × vs rank (min / median of per-repeat ratios) "
          f"| acc | acc_norm | pred ≠ rank | pred_norm ≠ rank | max abs score diff |")
    print("|---|---|---|---|---|---|---|---|")
    for m in args.methods:
        res = rows[m]
        acc = float(np.mean([x["pred"] == g for x, g in zip(res, gold)]))
        accn = float(np.mean([x["pred_norm"] == g for x, g in zip(res, gold)]))
        dis = sum(x["pred"] != y["pred"] for x, y in zip(res, ref))
        disn = sum(x["pred_norm"] != y["pred_norm"] for x, y in zip(res, ref))
        diff = max(abs(a - b) for x, y in zip(res, ref) for a, b in zip(x["scores"], y["scores"]))
        ratios = [t / tr for t, tr in zip(times[m], times["rank"])] if "rank" in times else [float("nan")]
        report["methods"][m] = {"seconds": times[m], "ratio_vs_rank": ratios, "acc": acc, "acc_norm": accn,
                                "pred_disagree": dis, "pred_norm_disagree": disn, "max_abs_score_diff": diff}
        print(f"| {m} | {min(times[m]):.2f} / {statistics.median(times[m]):.2f} | "
              f"{min(ratios):.2f} / {statistics.median(ratios):.2f} | {acc:.2f} | {accn:.2f} | {dis} | {disn} | {diff:.1e} |")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))
    figs = []
    for m, r in report["methods"].items():
        figs += [figure(f"{m}: s / {len(items)} questions (median)", statistics.median(r["seconds"]), "s",
                        ratio=statistics.median(r["ratio_vs_rank"]) if m != "rank" else None,
                        vs="rank (time, median of per-repeat ratios)"),
                 figure(f"{m}: acc", r["acc"], ""), figure(f"{m}: acc_norm", r["acc_norm"], "")]
        if m != "rank":
            figs.append(figure(f"{m}: questions whose pred or pred_norm differ from rank's",
                               r["pred_disagree"] + r["pred_norm_disagree"], "", goal=("==", 0)))
    emit("eval_speed", figs, n=len(items), choices=n_choice, batch=args.batch, repeats=args.repeats,
         threads=torch.get_num_threads(), methods=args.methods)


if __name__ == "__main__":
    main()
