"""`cotdsl show`: a tokenizer-debug view of rendered training sequences.

Every token is printed as the text it decodes to, on a background that alternates from token to
token so boundaries are visible; supervised tokens are coloured by span kind (label, rationale,
literal, separator, unk, eos) and the unsupervised prompt is dim. Without colour (a pipe, NO_COLOR)
tokens are separated by "|" instead. Spaces stay spaces, a newline token prints as "↵" followed by
a real line break. Given the examples, mentions of a choice's text inside rationale spans are
marked: the gold label's text in the label's colours, another choice's text in orange (without
colour: «gold» and ‹other›), so answer leakage is visible where it is.
"""
from __future__ import annotations

from typing import Mapping, Sequence

from rich.console import Console
from rich.text import Text

from cotdsl.render import Rendered
from cotdsl.schema import Example, choice_mentions

# kind -> (style on even tokens, style on odd tokens); kinds not listed use "other"
STYLES: dict[str, tuple[str, str]] = {
    "prompt": ("dim on grey15", "dim on grey27"),
    "label": ("bold black on green3", "bold black on chartreuse3"),
    "rationale": ("black on deep_sky_blue1", "black on steel_blue1"),
    "literal": ("black on gold1", "black on light_goldenrod2"),
    "sep": ("black on grey62", "black on grey70"),
    "unk": ("bold white on magenta3", "bold white on orchid"),
    "eos": ("bold white on red3", "bold white on indian_red"),
    "other": ("black on plum2", "black on thistle1"),
}
# a choice's text inside a rationale: the gold label's (leaks the answer) or another choice's
MENTION_STYLES: dict[str, tuple[str, str]] = {
    "gold": ("bold underline black on green3", "bold underline black on chartreuse3"),
    "wrong": ("bold underline black on dark_orange", "bold underline black on orange1"),
}
MENTION_MARKS = {"gold": ("«", "»"), "wrong": ("‹", "›")}


def _kinds(item: Rendered) -> list[str]:
    """One span kind per token position. [seq]"""
    kinds = ["other"] * len(item.input_ids)
    for kind, start, end in item.spans:
        for i in range(start, end):
            kinds[i] = kind
    return kinds


def _piece(tok, token_id: int) -> str:
    """What one token decodes to on its own (special tokens by name, never skipped)."""
    text = tok.convert_tokens_to_string([tok.convert_ids_to_tokens(token_id)])
    return text if text != "" else tok.convert_ids_to_tokens(token_id)


def mention_marks(item: Rendered, tok, example: Example) -> dict[int, str]:
    """Token positions inside rationale spans that spell a choice's text -> "gold" (the example's
    label) or "wrong" (another choice); whole words, case and punctuation ignored, the longer
    choice winning an overlap (`schema.choice_mentions`)."""
    marks: dict[int, str] = {}
    for kind, start, end in item.spans:
        if kind != "rationale":
            continue
        text, owner = "", []  # the span's text as its tokens decode, and each character's position
        for pos in range(start, end):
            piece = _piece(tok, item.input_ids[pos])
            text += piece
            owner += [pos] * len(piece)
        for a, b, i in choice_mentions(text, example.choices):
            for pos in set(owner[a:b]):
                marks[pos] = "gold" if i == example.answer else "wrong"
    return marks


def rendered_text(item: Rendered, tok, *, color: bool = True, show_prompt: bool = True,
                  example: Example | None = None) -> Text:
    """The token-by-token view of one sequence as a rich Text; with `example`, its choices'
    mentions inside the rationale are marked (`mention_marks`)."""
    out = Text()
    kinds = _kinds(item)
    marks = mention_marks(item, tok, example) if example is not None else {}
    start = 0 if show_prompt else item.prompt_len
    if not show_prompt and item.prompt_len:
        out.append(f"[{item.prompt_len} prompt tokens] ", style="dim")
    for pos in range(start, len(item.input_ids)):
        kind, mark = kinds[pos], marks.get(pos)
        styles = MENTION_STYLES[mark] if mark else STYLES.get(kind, STYLES["other"])
        piece = _piece(tok, item.input_ids[pos])
        newline = piece.endswith("\n")
        shown = piece.replace("\n", "↵")
        if color:
            out.append(shown, style=styles[pos % 2])
        else:
            opens, closes = MENTION_MARKS[mark] if mark else ("", "")
            out.append((opens if marks.get(pos - 1) != mark else "") + shown
                       + (closes if marks.get(pos + 1) != mark else ""))
            if pos + 1 < len(item.input_ids) and not newline:
                out.append("|", style="dim")
        if newline:
            out.append("\n")
    return out


def summary_line(item: Rendered) -> str:
    """Counts for one sequence: tokens, supervised tokens, prompt length, label slice."""
    label = f"[{item.label_span[0]}, {item.label_span[1]})" if item.label_span else "none"
    return (f"tokens {len(item.input_ids)} · supervised {sum(item.loss_mask)} · prompt {item.prompt_len}"
            f" · label {label} · weight {item.weight:g}")


def legend(color: bool = True, mentions: bool = False) -> Text:
    out = Text("supervised: ")
    for kind in ("label", "rationale", "literal", "sep", "unk", "eos"):
        out.append(f" {kind} ", style=STYLES[kind][0] if color else "")
        out.append(" ")
    out.append(" prompt ", style=STYLES["prompt"][0] if color else "")
    out.append("(not supervised)")
    if mentions:
        out.append("; in the rationale: ")
        for mark, what in (("gold", "the gold label's text"), ("wrong", "another choice's text")):
            opens, closes = ("", "") if color else MENTION_MARKS[mark]
            out.append(f" {opens}{what}{closes} ", style=MENTION_STYLES[mark][0] if color else "")
            out.append(" ")
    return out


def show_rendered(console: Console, items: Sequence[Rendered], tok, *, show_prompt: bool = True,
                  examples: Mapping[str, Example] | Sequence[Example] | None = None) -> None:
    """Print each rendered sequence token by token, coloured by span kind, with a counts line,
    followed by a legend and totals over all items. `examples` (by id, or a list): mark their
    choices' mentions inside rationales."""
    color = console.color_system is not None and not console.no_color
    by_id = examples if isinstance(examples, Mapping) else {e.id: e for e in examples or ()}
    for item in items:
        console.rule(f"example {item.ex_id} · task {item.task}", style="dim")
        console.print(rendered_text(item, tok, color=color, show_prompt=show_prompt, example=by_id.get(item.ex_id)),
                      soft_wrap=False)
        console.print(summary_line(item), style="dim" if color else "", highlight=False)
    if items:
        n = sum(len(i.input_ids) for i in items)
        sup = sum(sum(i.loss_mask) for i in items)
        console.print(legend(color, mentions=bool(by_id)))
        console.print(f"{len(items)} sequences · {n} tokens · {sup} supervised ({sup / max(n, 1):.0%})",
                      highlight=False)
