"""The tokenizer-debug view: every token visible, kinds coloured, counts right."""
from rich.console import Console

from cotdsl.lang import call
from cotdsl.render import render
from cotdsl.schema import Example, format_prompt
from cotdsl.show import MENTION_STYLES, STYLES, mention_marks, rendered_text, show_rendered, summary_line
from cotdsl.spec import Condition, Ref, Task
from cotdsl.tiny import train_tokenizer

EX = Example("s1", "Where is the cat?", ("on the mat", "in the box"), 0, "The cat sleeps on the mat.")
COND = Condition("c", "c", (), (Task((call("unk", 2), Ref("label"), Ref("rationale"))),), "rank")


def setup_module(_):
    global TOK, ITEM
    TOK = train_tokenizer([format_prompt(EX) + " " + EX.rationale] * 10, vocab_size=350)
    (ITEM,) = render(EX, COND, TOK, seed=0)


def test_plain_view_shows_every_token_boundary():
    con = Console(width=200, no_color=True, record=True)
    show_rendered(con, [ITEM], TOK)
    out = con.export_text()
    body = "\n".join(ln for ln in out.splitlines() if "|" in ln)
    pieces = [TOK.decode([i]) for i in ITEM.input_ids]
    # one boundary mark between consecutive tokens; a newline token shows as "↵" and breaks the line
    expected = "".join(p.replace("\n", "↵\n") if p.endswith("\n") else p + "|" for p in pieces)[:-1]
    assert body == expected
    assert "<mask>|<mask>" in out and "<eos>" in out
    n, sup = len(ITEM.input_ids), sum(ITEM.loss_mask)
    assert f"tokens {n} · supervised {sup} · prompt {ITEM.prompt_len}" in out
    assert f"label [{ITEM.label_span[0]}, {ITEM.label_span[1]})" in out
    assert f"1 sequences · {n} tokens · {sup} supervised" in out
    assert "example s1 · task 0" in out


def test_colour_view_styles_tokens_by_kind():
    text = rendered_text(ITEM, TOK, color=True)
    kinds = {}
    for kind, s, e in ITEM.spans:
        for i in range(s, e):
            kinds[i] = kind
    # one styled run per token, in order, with its kind's style alternating token by token
    runs = [str(s.style) for s in text.spans]
    assert len(runs) == len(ITEM.input_ids)
    for i, style in enumerate(runs):
        assert style == STYLES[kinds[i]][i % 2]
    assert {kinds[i] for i in range(len(runs))} == {"prompt", "unk", "sep", "label", "rationale", "eos"}
    assert STYLES["label"][0] != STYLES["rationale"][0] and "dim" in STYLES["prompt"][0]


def test_prompt_can_be_hidden_and_summary_handles_no_label():
    text = rendered_text(ITEM, TOK, color=False, show_prompt=False).plain
    assert text.startswith(f"[{ITEM.prompt_len} prompt tokens]") and "Question" not in text
    c = Condition("r", "r", (), (Task((Ref("rationale"),)),), "rank")
    (r,) = render(EX, c, TOK, seed=0)
    assert "label none" in summary_line(r)
    con = Console(width=120, record=True, force_terminal=True, color_system="truecolor")
    show_rendered(con, [ITEM, r], TOK)
    assert "2 sequences" in con.export_text()


EXL = Example("s2", "Where is the cat?", ("on the mat", "in the box"), 0, "Not in the box: the cat sleeps on the mat.")


def test_choice_mentions_in_the_rationale_are_marked():
    tok = train_tokenizer([format_prompt(EXL) + " " + EXL.rationale] * 10, vocab_size=350)
    (item,) = render(EXL, Condition("a", "a", (), (Task((Ref("label"), Ref("rationale"))),), "rank"), tok, seed=0)
    marks = mention_marks(item, tok, EXL)
    rat = next((s, e) for k, s, e in item.spans if k == "rationale")
    assert marks and all(rat[0] <= p < rat[1] for p in marks)  # the label span itself is not marked
    spelled = {m: tok.decode([item.input_ids[p] for p in sorted(marks) if marks[p] == m]).strip() for m in ("gold", "wrong")}
    assert spelled == {"gold": "on the mat", "wrong": "in the box"}
    plain = rendered_text(item, tok, color=False, example=EXL).plain.split("\n")[-1]
    assert plain.replace("|", "").startswith("Not‹ in the box›: the cat sleeps« on the mat».")
    runs = [str(s.style) for s in rendered_text(item, tok, color=True, example=EXL).spans]
    assert all(runs[p] == MENTION_STYLES[m][p % 2] for p, m in marks.items())
    assert rendered_text(item, tok, color=True).spans != rendered_text(item, tok, color=True, example=EXL).spans
    con = Console(width=200, no_color=True, record=True)
    show_rendered(con, [item], tok, examples=[EXL])
    assert "«the gold label's text»" in con.export_text()
