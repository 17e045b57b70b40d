"""The one user-facing error type: `CotError`, a list of `Diagnostic`s, each at a `Pos`.

Every failure caused by what a user wrote (syntax, semantics, missing files, bad plugins) is a
`CotError`; the CLI prints `err.render()` to stderr and exits 1, so users never see a traceback.
A diagnostic renders like a compiler error:

    specs/x.cot:7:34: error: unknown perturbation `shufle`
      target s = label -> shufle(rationale)
                          ^
      hint: did you mean `shuffle`?
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Iterable, Sequence


@dataclass(frozen=True)
class Pos:
    """A place in a spec file: 1-based line and column."""

    file: str
    line: int
    col: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.col}"


@dataclass(frozen=True)
class Diagnostic:
    """One problem. `pos` is None for problems without a place (e.g. a failing plugin import);
    `expected` lists what the parser could have accepted; `hint` suggests a fix."""

    pos: Pos | None
    message: str
    expected: list[str] | None = None
    hint: str | None = None

    def render(self, source: str | None = None) -> str:
        """`file:line:col: error: message`, the source line with a caret, then expected/hint.
        `source` is the file's text; when omitted the file is read from disk if it exists."""
        head = f"{self.pos}: error: {self.message}" if self.pos else f"error: {self.message}"
        lines = [head]
        line = _source_line(self.pos, source)
        if line is not None:
            shown = line.rstrip("\n").expandtabs(1)
            lines.append("  " + shown)
            lines.append("  " + " " * max(0, min(self.pos.col - 1, len(shown))) + "^")
        if self.expected:
            lines.append("  expected: " + ", ".join(self.expected))
        if self.hint:
            lines.append("  hint: " + self.hint)
        return "\n".join(lines)

    def __str__(self) -> str:  # pragma: no cover - convenience
        return self.render()


def _source_line(pos: Pos | None, source: str | None) -> str | None:
    if pos is None or pos.line < 1:
        return None
    if source is None:
        try:
            with open(pos.file, "rb") as f:
                source = f.read(6_000_000).decode("utf-8", errors="replace")
        except OSError:
            return None
    lines = source.splitlines()
    return lines[pos.line - 1] if pos.line <= len(lines) else None


class CotError(Exception):
    """Raised for any bad user input; carries every diagnostic found (all semantic errors of a
    file together; syntax errors as far as the parser could recover)."""

    def __init__(self, diagnostics: Sequence[Diagnostic] | str, sources: dict[str, str] | None = None):
        if isinstance(diagnostics, str):
            diagnostics = [Diagnostic(None, diagnostics)]
        self.diagnostics: list[Diagnostic] = list(diagnostics)
        # file -> text, so rendering shows the exact text that was checked (not a newer file)
        self.sources: dict[str, str] = dict(sources or {})
        super().__init__(self.render())

    @classmethod
    def one(cls, message: str, pos: Pos | None = None, *, hint: str | None = None,
            expected: list[str] | None = None) -> "CotError":
        """The error for a single problem (most run-time user errors: a missing file, an offline model)."""
        return cls([Diagnostic(pos, message, expected=expected, hint=hint)])

    def render(self) -> str:
        out = [d.render(self.sources.get(d.pos.file) if d.pos else None) for d in self.diagnostics]
        n = len(self.diagnostics)
        if n > 1:
            out.append(f"{n} errors")
        return "\n".join(out)

    def __str__(self) -> str:
        return self.render()


def did_you_mean(word: str, candidates: Iterable[str]) -> str | None:
    """`did you mean `x`?` for the closest candidate (difflib), or None."""
    close = difflib.get_close_matches(word, sorted(set(candidates)), n=1, cutoff=0.6)
    return f"did you mean `{close[0]}`?" if close else None


class Collector:
    """Accumulates diagnostics during a check; `raise_if_any()` raises them together."""

    def __init__(self) -> None:
        self.diagnostics: list[Diagnostic] = []
        self.sources: dict[str, str] = {}
        self._seen: set[tuple] = set()

    def error(self, pos: Pos | None, message: str, *, expected: list[str] | None = None,
              hint: str | None = None) -> None:
        key = (pos, message)
        if key in self._seen:  # sweeps re-check the same call once per point
            return
        self._seen.add(key)
        self.diagnostics.append(Diagnostic(pos, message, expected, hint))

    def extend(self, err: CotError) -> None:
        for d in err.diagnostics:
            self.error(d.pos, d.message, expected=d.expected, hint=d.hint)
        self.sources.update(err.sources)

    def raise_if_any(self) -> None:
        if self.diagnostics:
            raise CotError(self.diagnostics, self.sources)
