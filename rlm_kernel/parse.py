"""Pure parsing of a model reply: fenced code blocks and a final answer written as text."""

from __future__ import annotations

import ast
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

CODE_LANGS = frozenset({"repl", "python", "py", "python3", "ipython"})

_FENCE = re.compile(r"^ {0,3}(?P<fence>`{3,}|~{3,})[ \t]*(?P<info>[^`\n]*?)[ \t]*$")
_FINAL_START = re.compile(r"^[ \t]*(?P<kind>FINAL_VAR|FINAL)\(")


@dataclass(frozen=True)
class CodeBlock:
    """A fenced block to run; ``start``/``end`` are character offsets of the whole fence."""

    code: str
    lang: str
    start: int
    end: int


@dataclass(frozen=True)
class FinalAnswer:
    """``FINAL(value)`` or ``FINAL_VAR(name)`` found on its own line outside code."""

    kind: Literal["FINAL", "FINAL_VAR"]
    value: str


@dataclass(frozen=True)
class _Fence:
    lang: str
    body: str
    start: int
    end: int


# Markdown and Python end lines at \n, \r\n or \r only; str.splitlines() would also break at
# form feeds, U+2028 and other characters that are ordinary text inside a line of code.
_LINE = re.compile(r"[^\r\n]*(?:\r\n|\r|\n)|[^\r\n]+")
_REST = re.compile(r"[^\r\n]*")  # the rest of a line


def _split_lines(text: str) -> list[str]:
    """``text`` cut after each line break, keeping the breaks (``"".join`` gives it back)."""
    return _LINE.findall(text)


def _lines_with_offsets(text: str) -> list[tuple[int, str]]:
    out, pos = [], 0
    for line in _split_lines(text):
        out.append((pos, line))
        pos += len(line)
    return out


def _fences(text: str) -> tuple[list[_Fence], list[tuple[int, str]]]:
    """Split ``text`` into closed fences and the prose lines outside them."""
    fences: list[_Fence] = []
    prose: list[tuple[int, str]] = []
    lines = _lines_with_offsets(text)
    i = 0
    while i < len(lines):
        offset, line = lines[i]
        m = _FENCE.match(line.rstrip("\r\n"))
        if not m:
            prose.append((offset, line))
            i += 1
            continue
        fence = m.group("fence")
        closing = re.compile(rf"^ {{0,3}}{re.escape(fence[0])}{{{len(fence)},}}[ \t]*$")
        for j in range(i + 1, len(lines)):
            if closing.match(lines[j][1].rstrip("\r\n")):
                body = "".join(line for _, line in lines[i + 1 : j])
                info = m.group("info").split()
                end = lines[j][0] + len(lines[j][1])
                fences.append(_Fence(info[0].lower() if info else "", body, offset, end))
                i = j + 1
                break
        else:
            # An unclosed fence (a reply cut off mid-block) is neither run nor read as prose.
            break
    return fences, prose


def code_blocks(text: str) -> list[CodeBlock]:
    """The ```repl / ```python blocks of ``text``, in order; other languages are not run."""
    return [
        CodeBlock(f.body.rstrip("\n"), f.lang, f.start, f.end)
        for f in _fences(text)[0]
        if f.lang in CODE_LANGS and f.body.strip()
    ]


def _balanced(text: str, start: int) -> int | None:
    """Index of the ``)`` closing the ``(`` just before ``start``, skipping string literals."""
    depth, i, quote = 1, start, None
    while i < len(text):
        ch = text[i]
        if quote:
            if ch == "\\":
                i += 2
                continue
            if text.startswith(quote, i):
                i += len(quote)
                quote = None
                continue
        elif ch in "\"'":
            quote = ch * 3 if text.startswith(ch * 3, i) else ch
            i += len(quote)
            continue
        elif ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
            if depth == 0:
                return i
        i += 1
    return None


def _unquote(value: str) -> str:
    value = value.strip()
    try:
        literal = ast.literal_eval(value)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return value
    return literal if isinstance(literal, str) else value


def final_answer(text: str) -> FinalAnswer | None:
    """The last ``FINAL(...)`` / ``FINAL_VAR(...)`` that starts a line outside code fences.

    Mentions inside a sentence, inside inline code or inside a fenced block do not count. The
    argument may span lines; a quoted Python string literal is unquoted.
    """
    _, prose = _fences(text)
    prose_text = "".join(line for _, line in prose)
    found: FinalAnswer | None = None
    pos = 0
    for line in _split_lines(prose_text):
        m = _FINAL_START.match(line)
        if m:
            open_at = pos + m.end()
            close_at = _balanced(prose_text, open_at)
            if close_at is not None and not _REST.match(prose_text, close_at + 1).group().strip():
                kind = m.group("kind")
                value = _unquote(prose_text[open_at:close_at])
                found = FinalAnswer(kind, value)  # type: ignore[arg-type]
        pos += len(line)
    return found


def prose(text: str, code_marker: Callable[[int], str]) -> str:
    """``text`` with each runnable block replaced by ``code_marker(block_number)`` (1-based)."""
    parts, last = [], 0
    for n, block in enumerate(code_blocks(text), start=1):
        parts.append(text[last : block.start])
        parts.append(code_marker(n) + "\n")
        last = block.end
    parts.append(text[last:])
    return "".join(parts).strip()
