"""Output capped at the source: what a cell prints reaches the host only up to a budget.

This file runs inside the Jupyter kernel (standard library only, like ``runtime.py``); the host
loads it by path with :func:`setup_code`. It caps each cell's output where it is made, so the
kernel's iopub traffic and the host's memory stay the same however much a cell prints:

- ``sys.stdout`` and ``sys.stderr`` stay ipykernel's own ``OutStream`` objects (``fileno``,
  ``isatty``, ``encoding``, ``flush`` unchanged, still instances of ``OutStream``); only their
  ``write`` goes through the cap. ipykernel's thread that forwards what subprocesses write to
  file descriptors 1 and 2 calls that same ``write``, so their output is capped too. IPython's
  per-cell copy of the output (its history of outputs) sits below the cap and keeps only what
  passed.
- Each cell may publish ``head_bytes`` of stream text and display data. Past that, stream text
  is counted and only its last ``tail_chars`` characters are kept, and further displays are
  counted and dropped.
- A cell's result (``execute_result``) larger than what is left of the budget is cut to the
  start of its ``text/plain`` with a line saying how much was not sent.
- When the cell ends (IPython's ``post_run_cell``), each stream that went over the budget
  publishes one ``display_data`` of type :data:`ELISION_MIME`: ``{"name", "elided_chars",
  "elided_bytes", "elided_displays", "tail"}``. The host's collector turns it into a note and
  the real tail of the output.

The budget starts again at every cell (``pre_run_cell``).
"""

from __future__ import annotations

import json
import sys
import threading
from typing import Any

__all__ = ["ELISION_MIME", "OutputCap", "install", "setup_code"]

ELISION_MIME = "application/vnd.rlm-kernel.elision+json"
MODULE_NAME = "rlm_kernel_capture"


def _utf8_len(text: str) -> int:
    # isascii is a fast scan; encoding a megabyte just to count it is not.
    return len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))


class _Elided:
    """What one stream let through and dropped in the current cell."""

    __slots__ = ("bytes", "chars", "tail")

    def __init__(self) -> None:
        self.chars = 0
        self.bytes = 0
        self.tail = ""


class OutputCap:
    """A per-cell budget shared by ``sys.stdout``, ``sys.stderr`` and the display publisher.

    Args:
        head_bytes: output of one cell passed on as it is made.
        tail_chars: characters of the dropped stream text kept to show how it ended.
    """

    def __init__(self, head_bytes: int, tail_chars: int) -> None:
        if head_bytes <= 0 or tail_chars < 0:
            raise ValueError("head_bytes must be positive and tail_chars not negative")
        self.head_bytes = head_bytes
        self.tail_chars = tail_chars
        self._lock = threading.Lock()
        self._streams: dict[str, Any] = {}
        self._publish: Any = None
        self._publisher: Any = None
        self.reset()

    def reset(self, *args: object) -> None:
        """Start the budget of a new cell."""
        with self._lock:
            self.used = 0
            self.displays_dropped = 0
            self.display_bytes_dropped = 0
            self.elided: dict[str, _Elided] = {}

    # -- streams -------------------------------------------------------------------------------

    def wrap_stream(self, name: str, stream: Any) -> None:
        """Route the writes of ``stream`` (an ipykernel ``OutStream``) through the budget."""
        if name in self._streams:
            return
        self._streams[name] = stream
        base_write = type(stream).write
        inside = threading.local()

        def capped(text: str) -> int | None:
            if getattr(inside, "on", False) or not isinstance(text, str):
                return base_write(stream, text)  # our own forwarding call, or the stream's error
            passed = self._admit(name, text)
            if passed:
                outer = stream.__dict__.get("_rlm_outer")
                if outer is None:
                    base_write(stream, passed)
                else:
                    inside.on = True
                    try:
                        outer(passed)
                    finally:
                        inside.on = False
            return len(text)

        def get_write(self: Any) -> Any:
            return capped

        def set_write(self: Any, value: Any) -> None:
            # IPython wraps ``write`` for each cell (to keep the output in its history) and puts
            # back what it found: its wrapper goes below the cap, so it only sees what passed.
            own = value is capped or getattr(value, "__func__", None) is base_write
            self.__dict__["_rlm_outer"] = None if own else value

        # A subclass made here, so the stream stays the same object (and an OutStream) for code
        # that checks it; ``write`` is a property, so assigning to it cannot step around the cap.
        capped_type = type(
            type(stream).__name__,
            (type(stream),),
            {"write": property(get_write, set_write), "__module__": type(stream).__module__},
        )
        outer = stream.__dict__.pop("write", None)  # IPython's wrapper of the running cell
        stream.__class__ = capped_type
        stream.__dict__["_rlm_outer"] = None
        if outer is not None:
            stream.write = outer

    def _admit(self, name: str, text: str) -> str:
        """The part of ``text`` that fits in the budget; the rest is counted and its end kept."""
        with self._lock:
            room = self.head_bytes - self.used
            if room <= 0:
                self._elide(name, text)
                return ""
            size = _utf8_len(text)
            if size <= room:
                self.used += size
                return text
            passed = text.encode("utf-8", "surrogatepass")[:room].decode("utf-8", "ignore")
            self.used = self.head_bytes
            self._elide(name, text[len(passed) :])
            return passed

    def _elide(self, name: str, text: str) -> None:
        record = self.elided.get(name)
        if record is None:
            record = self.elided[name] = _Elided()
        record.chars += len(text)
        record.bytes += _utf8_len(text)
        if self.tail_chars:
            if len(text) >= self.tail_chars:
                record.tail = text[-self.tail_chars :]
            else:
                record.tail = (record.tail + text)[-self.tail_chars :]

    # -- displays ------------------------------------------------------------------------------

    def wrap_publisher(self, publisher: Any) -> None:
        """Drop displays past the budget (``display_pub.publish`` of the shell)."""
        if self._publisher is publisher:
            return
        original = publisher.publish
        self._publisher, self._publish = publisher, original

        def publish(data: Any, *args: Any, **kwargs: Any) -> Any:
            # Counted even when it carries ELISION_MIME: code imitating a note is capped too.
            if isinstance(data, dict):
                size = sum(_value_size(v) for v in data.values())
                with self._lock:
                    if self.used >= self.head_bytes:
                        self.displays_dropped += 1
                        self.display_bytes_dropped += size
                        return None
                    self.used += size
            return original(data, *args, **kwargs)

        publisher.publish = publish

    def wrap_displayhook(self, hook: Any) -> None:
        """Cut a cell's result (``execute_result``) to what is left of the budget."""
        if getattr(hook, "_rlm_capped", False) or not hasattr(hook, "write_format_data"):
            return
        original = hook.write_format_data

        def write_format_data(format_dict: Any, md_dict: Any = None) -> Any:
            if isinstance(format_dict, dict):
                size = sum(_value_size(v) for v in format_dict.values())
                with self._lock:
                    room = max(0, self.head_bytes - self.used)
                    self.used += min(size, room)
                if size > room:
                    format_dict = _cut_result(format_dict, room)
            return original(format_dict, md_dict)

        hook.write_format_data = write_format_data
        hook._rlm_capped = True

    # -- the end of a cell ---------------------------------------------------------------------

    def report(self, *args: object) -> None:
        """Publish what each stream dropped in this cell, after the text it did pass on."""
        with self._lock:
            elided, self.elided = self.elided, {}
            displays, display_bytes = self.displays_dropped, self.display_bytes_dropped
            self.displays_dropped = self.display_bytes_dropped = 0
        if not elided and not displays:
            return
        for stream in self._streams.values():
            stream.flush()  # the head must reach iopub before the note that follows it
        if displays and not elided:
            elided = {"stdout": _Elided()}
        for i, (name, record) in enumerate(elided.items()):
            extra = (displays, display_bytes) if i == 0 else (0, 0)
            note = {
                "name": name,
                "elided_chars": record.chars,
                "elided_bytes": record.bytes + extra[1],
                "elided_displays": extra[0],
                "tail": record.tail,
            }
            text = f"[{record.chars} characters of {name} not sent]"
            if self._publish is not None:
                # The original publish: the note is not counted against the budget it reports.
                self._publish({"text/plain": text, ELISION_MIME: note}, metadata={})


def _cut_result(format_dict: dict[str, Any], room: int) -> dict[str, Any]:
    """A result over the budget: the start of its ``text/plain`` and a line saying so."""
    plain = format_dict.get("text/plain")
    text = plain if isinstance(plain, str) else ""
    # Room for the note too: the host keeps a result whole or not at all.
    kept = text.encode("utf-8", "surrogatepass")[: max(0, room - 200)].decode("utf-8", "ignore")
    dropped = len(text) - len(kept)
    note = f"\n[rlm-kernel: {dropped} more characters of this result were not sent]"
    if len(format_dict) > 1:
        note += f"; also not sent: {', '.join(m for m in format_dict if m != 'text/plain')}"
    return {"text/plain": kept + note}


def _value_size(value: Any) -> int:
    if isinstance(value, str):
        return _utf8_len(value)
    if isinstance(value, (bytes, bytearray)):
        return len(value)
    try:
        return len(json.dumps(value, default=str))
    except (TypeError, ValueError):
        return 0


_installed: OutputCap | None = None


def install(shell: Any, head_bytes: int, tail_chars: int) -> OutputCap:
    """Cap the output of every cell of ``shell`` (an IPython kernel shell); idempotent.

    Installing again (a restarted setup) only changes the sizes.
    """
    global _installed
    cap = _installed
    if cap is None:
        cap = _installed = OutputCap(head_bytes, tail_chars)
        shell.events.register("pre_run_cell", cap.reset)
        shell.events.register("post_run_cell", cap.report)
    else:
        cap.head_bytes, cap.tail_chars = head_bytes, tail_chars
    for name in ("stdout", "stderr"):
        stream = getattr(sys, name)
        if hasattr(stream, "parent_header"):  # ipykernel's OutStream; a terminal needs no cap
            cap.wrap_stream(name, stream)
    cap.wrap_publisher(shell.display_pub)
    cap.wrap_displayhook(shell.displayhook)
    return cap


def setup_code(head_bytes: int, tail_chars: int, capture_file: str | None = None) -> str:
    """Python source that loads this file into a kernel and caps its cells' output.

    Args:
        head_bytes: output of one cell sent as it is made.
        tail_chars: characters of the dropped text kept for the end of the cell.
        capture_file: this file's path as the kernel sees it (default: where it lies here).
    """
    settings = json.dumps(
        {"file": capture_file or __file__, "head": int(head_bytes), "tail": int(tail_chars)}
    )
    return (
        "def _rlm_capture(settings):\n"
        "    import importlib.util, json, sys\n"
        "    s = json.loads(settings)\n"
        f"    module = sys.modules.get({MODULE_NAME!r})\n"
        "    if module is None:\n"
        f"        spec = importlib.util.spec_from_file_location({MODULE_NAME!r}, s['file'])\n"
        "        module = importlib.util.module_from_spec(spec)\n"
        "        sys.modules[spec.name] = module\n"
        "        spec.loader.exec_module(module)\n"
        "    module.install(get_ipython(), s['head'], s['tail'])\n"
        f"_rlm_capture({json.dumps(settings)})\n"
        "del _rlm_capture\n"
    )
