"""Cell output capture: iopub messages to capped nbformat outputs, and the text a model is shown.

The notebook keeps a cell's full output up to a byte cap, then a marker saying how much was not
recorded and the real end of the output; the model is shown a plain-text rendering of it, cut to
a character limit by keeping its head and tail. A kernel set up with :mod:`rlm_kernel._capture`
caps its output at the source and reports what it did not send as one ``display_data`` per
stream (:data:`ELISION_MIME`), which the collector reads as output dropped at the cap.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from typing import Any

import nbformat
from nbformat.v4 import new_output, output_from_msg

from ._capture import ELISION_MIME

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

    With ``tail_chars``, the end of the dropped stream text follows the marker, so the notebook
    shows how a huge output ended. Text the kernel never sent (capped at the source, see
    :mod:`rlm_kernel._capture`) counts as dropped, and its tail is kept the same way.

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
        self._tail_name = "stdout"
        self._elisions = 0

    @property
    def outputs(self) -> list[Any]:
        """The kept outputs, then the truncation marker and the tail when output was dropped."""
        if not self.truncated:
            return list(self._outputs)
        follows = (
            f"; its last {len(self.dropped_tail)} characters follow" if self.dropped_tail else ""
        )
        marker = (
            f"[rlm-kernel: output truncated at {self.max_bytes} bytes; "
            f"{self._dropped_bytes} more bytes not recorded{follows}]\n"
        )
        outputs = [*self._outputs, new_output("stream", name="stderr", text=marker)]
        if self.dropped_tail:
            outputs.append(new_output("stream", name=self._tail_name, text=self.dropped_tail))
        return outputs

    @property
    def output_chars(self) -> int:
        """Characters of the cell's whole output as the model would read it, dropped text too."""
        return len(render_text(self._outputs)) + self.dropped_chars

    def shown(self, limit: int) -> str:
        """The text the model is shown: about ``limit`` characters of the real head and tail.

        When output was dropped, the line between them states how much was left out and how
        long the whole output was.
        """
        head = render_text(self._outputs)
        if not self.truncated:
            return truncate(head, limit)
        total = len(head) + self.dropped_chars
        tail = _collapse_carriage_returns(self.dropped_tail)
        tail_room = min(len(tail), limit // 2)
        head_part = head[: limit - tail_room]
        tail_part = tail[len(tail) - tail_room :]
        omitted = total - len(head_part) - len(tail_part)
        if omitted <= 0 and self.dropped_chars == 0:
            return head_part + "\n[rich output over the cell's output cap was not recorded]\n"
        return head_part + _omitted_line(omitted, total) + tail_part

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
        elif msg_type == "display_data" and ELISION_MIME in msg["content"].get("data", {}):
            self._take_elision(msg["content"]["data"][ELISION_MIME])
        elif msg_type in _OUTPUT_TYPES:
            if self._clear_on_next_output:
                self._clear()
            output = output_from_msg(msg)
            self._append(output, msg["content"].get("transient", {}).get("display_id"))

    def _take_elision(self, note: Any) -> None:
        """Count what the kernel held back, as if it had been dropped here."""
        # One note per stream and cell is what the kernel sends: more is a cell imitating it.
        self._elisions += 1
        if not isinstance(note, dict) or self._elisions > 2:
            return
        chars, size = note.get("elided_chars"), note.get("elided_bytes")
        tail, name = note.get("tail"), note.get("name")
        if not isinstance(chars, int) or not isinstance(size, int) or chars < 0 or size < 0:
            return
        self.total_bytes += size
        self.dropped_chars += chars
        if size or chars:
            self._drop(size)
        if isinstance(tail, str) and self.tail_chars and tail:
            self.dropped_tail = (self.dropped_tail + tail)[-self.tail_chars :]
            self._tail_name = name if name in ("stdout", "stderr") else "stdout"

    def _clear(self) -> None:
        self._clear_on_next_output = False
        self._outputs.clear()
        self._display_ids.clear()
        self._kept_bytes = 0
        self._error_bytes = 0

    def _drop(self, size: int) -> None:
        self._dropped_bytes += size
        self.truncated = True

    def _drop_text(self, text: str, name: str = "stdout") -> None:
        self.dropped_chars += len(text)
        self._tail_name = name
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
                    self._drop_text(output["text"], output["name"])
                self._drop(size)
                return
            text = output["text"]
            output["text"] = _cut_utf8(text, room)
            self._drop_text(text[len(output["text"]) :], output["name"])
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
    marker = _omitted_line(len(text) - limit, len(text))
    head = limit - limit // 2
    tail = limit - head
    return text[:head] + marker + (text[-tail:] if tail else "")


def _omitted_line(omitted: int, total: int) -> str:
    return f"\n... [{omitted} characters omitted; the full output is {total} characters] ...\n"
