"""Cell output capture: iopub messages to capped nbformat outputs, and the text a model is shown.

The notebook keeps a cell's full output up to a byte cap (with a marker saying how much was not
recorded); the model is shown a plain-text rendering of it, cut to a character limit by keeping
its head and tail.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from typing import Any

import nbformat
from nbformat.v4 import new_output, output_from_msg

_OUTPUT_TYPES = frozenset({"stream", "display_data", "execute_result", "error"})

# CSI sequences (colours, cursor moves), OSC sequences (titles, hyperlinks) and two-byte escapes.
_ANSI_RE = re.compile(
    r"\x1b\[[0-?]*[ -/]*[@-~]"
    r"|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)"
    r"|\x1b[@-Z\\-_]"
)


def strip_ansi(text: str) -> str:
    """Remove ANSI escape sequences (colours, cursor movement, terminal titles) from text."""
    return _ANSI_RE.sub("", text)


def _text_bytes(text: str) -> int:
    return len(text.encode("utf-8", "surrogatepass"))


def _value_bytes(value: Any) -> int:
    if isinstance(value, str):
        return _text_bytes(value)
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return sum(_text_bytes(v) for v in value)
    return _text_bytes(json.dumps(value, default=str))


def _output_bytes(output: Any) -> int:
    """Size of one output's payload: stream text, mime bundle values, or error text."""
    kind = output["output_type"]
    if kind == "stream":
        return _text_bytes(output["text"])
    if kind == "error":
        return (
            _text_bytes(output["ename"])
            + _text_bytes(output["evalue"])
            + sum(_text_bytes(line) for line in output["traceback"])
        )
    return sum(_value_bytes(v) for v in output.get("data", {}).values())


def _cut_utf8(text: str, max_bytes: int) -> str:
    """The longest prefix of ``text`` whose UTF-8 encoding fits in ``max_bytes``."""
    return text.encode("utf-8", "surrogatepass")[:max_bytes].decode("utf-8", "ignore")


class OutputCollector:
    """Turns a cell's iopub messages into nbformat outputs, keeping at most ``max_bytes``.

    Consecutive stream outputs of the same name are merged into one. Once the kept outputs reach
    ``max_bytes`` further output is dropped (stream text is cut at the limit) and a final stderr
    output says how much was not recorded, so memory stays bounded however much a cell prints.
    ``clear_output`` frees what it clears, so a cell that redraws its output keeps showing the
    latest state.

    Error outputs are what a reader needs most, so they have an allowance of their own (also
    ``max_bytes``): an oversized traceback keeps its last lines rather than being dropped.

    Args:
        max_bytes: output kept for the notebook.
        tail_chars: how much of the dropped stream text to keep in :attr:`dropped_tail`, so a
            reader of a huge output still sees how it ended.

    Attributes:
        total_bytes: size of all output seen, including what was dropped.
        truncated: whether some output was dropped because of the cap.
        dropped_chars: characters of stream text dropped because of the cap.
        dropped_tail: the last ``tail_chars`` characters of that dropped text.
    """

    def __init__(self, max_bytes: int = 1_000_000, *, tail_chars: int = 0) -> None:
        if max_bytes <= 0:
            raise ValueError(f"max_bytes must be positive, not {max_bytes!r}")
        self.max_bytes = max_bytes
        self.tail_chars = tail_chars
        self.total_bytes = 0
        self.truncated = False
        self.dropped_chars = 0
        self.dropped_tail = ""
        self._outputs: list[Any] = []
        self._kept_bytes = 0
        self._error_bytes = 0
        self._dropped_bytes = 0
        self._clear_on_next_output = False
        self._display_ids: dict[str, list[int]] = {}

    @property
    def outputs(self) -> list[Any]:
        """The kept outputs, followed by the truncation marker when output was dropped."""
        if not self.truncated:
            return list(self._outputs)
        marker = (
            f"[rlm-kernel: output truncated at {self.max_bytes} bytes; "
            f"{self._dropped_bytes} more bytes not recorded]\n"
        )
        return [*self._outputs, new_output("stream", name="stderr", text=marker)]

    def add(self, msg: dict[str, Any]) -> None:
        """Take one iopub message; messages that carry no output are ignored."""
        msg_type = msg["header"]["msg_type"]
        if msg_type == "clear_output":
            if msg["content"].get("wait", False):
                self._clear_on_next_output = True
            else:
                self._clear()
        elif msg_type == "update_display_data":
            self._update_display(msg)
        elif msg_type in _OUTPUT_TYPES:
            if self._clear_on_next_output:
                self._clear()
            output = output_from_msg(msg)
            self._append(output, msg["content"].get("transient", {}).get("display_id"))

    def _clear(self) -> None:
        self._clear_on_next_output = False
        self._outputs.clear()
        self._display_ids.clear()
        self._kept_bytes = 0
        self._error_bytes = 0

    def _drop(self, size: int) -> None:
        self._dropped_bytes += size
        self.truncated = True

    def _drop_text(self, text: str) -> None:
        self.dropped_chars += len(text)
        if self.tail_chars:
            self.dropped_tail = (self.dropped_tail + text)[-self.tail_chars :]

    def _append(self, output: Any, display_id: str | None) -> None:
        size = _output_bytes(output)
        self.total_bytes += size
        if output["output_type"] == "error":
            self._append_error(output, size)
            return
        room = self.max_bytes - self._kept_bytes
        if size > room:
            if output["output_type"] != "stream" or room <= 0:
                if output["output_type"] == "stream":
                    self._drop_text(output["text"])
                self._drop(size)
                return
            text = output["text"]
            output["text"] = _cut_utf8(text, room)
            self._drop_text(text[len(output["text"]) :])
            self._drop(size - _text_bytes(output["text"]))
            size = room  # the cap is reached: a character cut short leaves no room for more
        self._kept_bytes += size
        last = self._outputs[-1] if self._outputs else None
        if (
            output["output_type"] == "stream"
            and last is not None
            and last["output_type"] == "stream"
            and last["name"] == output["name"]
        ):
            last["text"] += output["text"]
            return
        if display_id:
            self._display_ids.setdefault(display_id, []).append(len(self._outputs))
        self._outputs.append(output)

    def _append_error(self, output: Any, size: int) -> None:
        room = self.max_bytes - self._error_bytes
        if size > room:
            if room <= 0:
                self._drop(size)
                return
            # Keep the exception line and the innermost frames: the end of a traceback says most.
            output["evalue"] = _cut_utf8(output["evalue"], room // 4)
            budget = room - _text_bytes(output["ename"]) - _text_bytes(output["evalue"])
            kept: list[str] = []
            for line in reversed(output["traceback"]):
                budget -= _text_bytes(line)
                if budget < 0:
                    break
                kept.append(line)
            output["traceback"] = kept[::-1]
            new_size = _output_bytes(output)
            self._drop(size - new_size)
            size = new_size
        self._error_bytes += size
        self._outputs.append(output)

    def _update_display(self, msg: dict[str, Any]) -> None:
        content = msg["content"]
        display_id = content.get("transient", {}).get("display_id")
        # A display shown by an earlier cell is the notebook's business, not this cell's.
        indices = self._display_ids.get(display_id or "", [])
        size = sum(_value_bytes(v) for v in content["data"].values())
        self.total_bytes += size
        if not indices:
            return
        for index in indices:
            output = self._outputs[index]
            delta = size - _output_bytes(output)
            if self._kept_bytes + delta > self.max_bytes:
                self._drop(size)
                continue
            self._kept_bytes += delta
            output["data"] = nbformat.from_dict(content["data"])
            output["metadata"] = nbformat.from_dict(content.get("metadata", {}))


def _collapse_carriage_returns(text: str) -> str:
    """Keep what a terminal would show of lines redrawn with ``\\r`` (progress bars)."""
    if "\r" not in text:
        return text
    lines = []
    for line in text.split("\n"):
        parts = [p for p in line.split("\r") if p]
        lines.append(parts[-1] if parts else "")
    return "\n".join(lines)


def _format_size(n: int) -> str:
    if n < 1000:
        return f"{n} bytes"
    if n < 1_000_000:
        return f"{n / 1000:.1f} KB"
    return f"{n / 1_000_000:.1f} MB"


def _placeholder(data: dict[str, Any]) -> str:
    parts = []
    for mime, value in data.items():
        size = _value_bytes(value)
        binary = mime.startswith(("image/", "audio/", "video/")) and mime != "image/svg+xml"
        if binary and isinstance(value, str):  # base64: the decoded size is what people know
            encoded = "".join(value.split())
            size = len(encoded) * 3 // 4 - encoded[-2:].count("=")
        parts.append(f"[{mime}, {_format_size(size)}]")
    return " ".join(parts)


def render_text(outputs: Iterable[Any]) -> str:
    """The text a model is shown for a cell's outputs.

    Stream text as printed (``\\r`` redraws collapsed), ``text/plain`` of results and displays,
    a placeholder such as ``[image/png, 12.3 KB]`` for rich outputs without ``text/plain``, and
    errors as their traceback without ANSI colours (or ``ename: evalue`` without a traceback).
    """
    pieces: list[str] = []
    for output in outputs:
        kind = output["output_type"]
        if kind == "stream":
            pieces.append(_collapse_carriage_returns(output["text"]))
            continue
        if pieces and not pieces[-1].endswith("\n"):
            pieces.append("\n")
        if kind == "error":
            if output.get("traceback"):
                text = strip_ansi("\n".join(output["traceback"]))
            else:
                text = f"{output['ename']}: {output['evalue']}"
        else:
            data = output.get("data", {})
            plain = data.get("text/plain")
            if plain is None:
                text = _placeholder(data)
            else:
                text = "".join(plain) if isinstance(plain, list) else plain
        pieces.append(text if text.endswith("\n") else text + "\n")
    return "".join(pieces)


def truncate(text: str, limit: int) -> str:
    """Cut ``text`` to about ``limit`` characters, keeping its head and tail.

    The cut middle becomes a line saying how many characters were omitted and how long the
    full text is; the result is at most ``limit`` characters plus that line.
    """
    if limit < 0:
        raise ValueError(f"limit must not be negative, not {limit!r}")
    if len(text) <= limit:
        return text
    omitted = len(text) - limit
    marker = (
        f"\n... [{omitted} characters omitted; the full output is {len(text)} characters] ...\n"
    )
    head = limit - limit // 2
    tail = limit - head
    return text[:head] + marker + (text[-tail:] if tail else "")
