"""Replay a recorded run: answer sub-calls from the notebook and check that the cells reproduce.

Two pieces share one record:

- :class:`ReplayBook` holds every sub-call a run notebook recorded, keyed by the SHA-256 of its
  prompt and its occurrence: the n-th call with a prompt gets the n-th recorded response.
  :class:`ReplayTransport` puts it behind the kernel runtime's one-method ``Transport``, so
  ``llm_query`` & co. answer from the record; :func:`install` does that in a namespace (the
  ``%rlm_replay`` magic calls it in the kernel).
- :func:`areplay_notebook` (sync twin :func:`replay_notebook`) runs a recorded notebook again in a
  fresh kernel, the way *Run All* would, and compares each cell's new outputs with the recorded
  ones after :func:`normalize_text`, and the answer with the recorded answer.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import hashlib
import json
import os
import re
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import nbformat

from . import notebook, parse, runtime
from .context import file_sha256
from .errors import ContextError, ModelError, NotebookFormatError, OutputPathError, UsageError
from .kernel import ExecResult, KernelSession
from .outputs import render_text, strip_ansi

__all__ = [
    "CellReport",
    "LiveModel",
    "RecordedCall",
    "ReplayBook",
    "ReplayContext",
    "ReplayReport",
    "ReplaySession",
    "ReplayTransport",
    "areplay_notebook",
    "final_line",
    "final_output",
    "install",
    "normalize_text",
    "replay_notebook",
    "resolve_context",
    "setup_source",
]

PREVIEW_CHARS = 100
DIFF_LINES = 12
DEFAULT_CELL_TIMEOUT = 300.0
SETUP_TIMEOUT = 120.0
# Marks the lines replay adds to a cell's outputs (the FINAL verdict), so comparisons skip them.
NOTE_KEY = "replay"

CellResult = Literal["same", "differs", "newly_failing"]


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def _preview(text: str, limit: int = PREVIEW_CHARS) -> str:
    flat = " ".join(text.split())
    return repr(flat if len(flat) <= limit else flat[: limit - 1] + "…")


# --------------------------------------------------------------------------- the recorded calls


@dataclasses.dataclass(frozen=True)
class RecordedCall:
    """One recorded sub-call, as found in a code cell's ``metadata.rlm.subcalls``.

    Attributes:
        step: the step of the cell that made the call.
        block: the cell's block number within the step.
        prompt_sha256: hex SHA-256 of the prompt (UTF-8).
        prompt_preview: the first characters of the prompt.
        response: what the sub-model answered, or ``None`` for a failed call.
        error: the recorded failure, or ``None``.
        model: the model that answered.
    """

    step: int
    block: int
    prompt_sha256: str
    prompt_preview: str = ""
    response: str | None = None
    error: str | None = None
    model: str | None = None

    @property
    def where(self) -> str:
        """``step K.B``: the cell that made the call."""
        return f"step {self.step}.{self.block}"

    def kernel_error(self) -> str:
        """The failure message the kernel's code saw when this call was recorded."""
        error = self.error or "the sub-call failed without a message"
        # The bridge prefixes the exception's class name; a ModelError was recorded without it
        # and always starts with its model's name.
        if self.model and error.startswith(f"{self.model}: "):
            return f"{ModelError.__name__}: {error}"
        return error


class ReplayBook:
    """Every recorded sub-call of a run, answered by prompt hash and occurrence.

    Thread-safe: code in the kernel may call ``llm_query`` from several threads.

    Args:
        calls: the recorded calls in the order they were made (notebook order).
    """

    def __init__(self, calls: Iterable[RecordedCall]) -> None:
        self.calls = list(calls)
        self._by_hash: dict[str, list[RecordedCall]] = {}
        self._position: dict[int, int] = {}  # index in self.calls -> occurrence of its hash
        for i, call in enumerate(self.calls):
            same = self._by_hash.setdefault(call.prompt_sha256, [])
            self._position[i] = len(same)
            same.append(call)
        self._used: Counter[str] = Counter()
        self._lock = threading.Lock()
        self.last: RecordedCall | None = None

    @classmethod
    def from_notebook(cls, nb: nbformat.NotebookNode) -> ReplayBook:
        """The sub-calls recorded on the code cells of a run notebook, in notebook order."""
        calls = []
        for entry in notebook.steps(nb):
            for cell in entry["code_cells"]:
                rlm = cell.metadata.rlm
                for sub in rlm.get("subcalls") or []:
                    calls.append(
                        RecordedCall(
                            step=entry["step"],
                            block=int(rlm.get("block") or 0),
                            prompt_sha256=str(sub.get("prompt_sha256")),
                            prompt_preview=str(sub.get("prompt_preview") or ""),
                            response=sub.get("response"),
                            error=sub.get("error"),
                            model=sub.get("model"),
                        )
                    )
        return cls(calls)

    def __len__(self) -> int:
        return len(self.calls)

    @property
    def used(self) -> int:
        """How many recorded calls have been answered so far."""
        return sum(self._used.values())

    def answer(self, prompt: str) -> str:
        """The recorded response to the next occurrence of ``prompt``.

        Raises:
            runtime.ReplayMiss: the run never sent this prompt (this many times).
            runtime.SubcallError: the recorded call failed; the message is the recorded one.
        """
        (call,) = self.take([prompt])
        if call is None:
            raise runtime.ReplayMiss(self.miss_message(prompt))
        if call.error is not None or call.response is None:
            raise runtime.SubcallError(call.kernel_error())
        return call.response

    def take(self, prompts: Sequence[str], *, partial: bool = False) -> list[RecordedCall | None]:
        """Match ``prompts`` (one request, in order) to their recorded calls and use them up.

        A prompt with no recorded call left gets ``None``. Unless ``partial``, a request with
        any ``None`` uses up nothing, so a missed batch leaves the book as it was.
        """
        with self._lock:
            used = Counter(self._used)
            found: list[RecordedCall | None] = []
            for prompt in prompts:
                digest = _sha256(prompt)
                same = self._by_hash.get(digest, [])
                if used[digest] < len(same):
                    found.append(same[used[digest]])
                    used[digest] += 1
                else:
                    found.append(None)
            if partial or None not in found:
                self._used = used
                self.last = next((c for c in reversed(found) if c is not None), self.last)
            return found

    def next_unused(self) -> RecordedCall | None:
        """The first recorded call, in notebook order, that has not been answered yet."""
        with self._lock:
            for i, call in enumerate(self.calls):
                if self._position[i] >= self._used[call.prompt_sha256]:
                    return call
        return None

    def miss_message(self, prompt: str) -> str:
        """Why ``prompt`` has no recorded response, and where the replay stands in the record."""
        digest = _sha256(prompt)
        recorded = self._by_hash.get(digest, [])
        if recorded:
            what = (
                f"the run sent this prompt {len(recorded)} time{'s' * (len(recorded) != 1)} "
                f"(first at {recorded[0].where}) and every recorded response is used up"
            )
        else:
            what = "the run never sent this prompt"
        text = (
            f"no recorded response for a prompt of {len(prompt):,} characters "
            f"(sha256 {digest[:12]}…): {what}. Prompt: {_preview(prompt)}"
        )
        nxt = self.next_unused()
        if nxt is not None:
            text += (
                f". The record's next unused sub-call was made at {nxt.where} with the prompt "
                f"{_preview(nxt.prompt_preview)}"
            )
        elif self.calls:
            text += ". Every recorded sub-call is used up (the last one was made at "
            text += f"{self.calls[-1].where})"
        else:
            text += ". The run recorded no sub-calls"
        if self.last is not None:
            text += f"; the last matched sub-call was made at {self.last.where}"
        return text


# --------------------------------------------------------------------------- the transport


class LiveModel:
    """The sub-model that answers prompts replay cannot (``--live``), resolved on first use.

    Args:
        name: the recorded sub-model, ``provider:model``.
        max_tokens: the run's ``sub_max_tokens``.
    """

    def __init__(self, name: str | None, max_tokens: int = 8000) -> None:
        self.name = name
        self.max_tokens = max_tokens
        self._llm: Any = None

    def complete(self, prompts: Sequence[str]) -> list[dict[str, str]]:
        """Answer ``prompts`` concurrently; one ``ok``/``error`` result per prompt.

        Raises:
            UsageError: the model cannot be used here (no API key, unknown provider).
        """
        from jupyter_core.utils import run_sync  # works with or without a running event loop

        from .llm import resolve

        if self.name is None:
            raise UsageError("the run recorded no sub-model to call")
        if self._llm is None:
            self._llm = resolve(self.name)
        return run_sync(self._complete_all)(list(prompts))

    async def _complete_all(self, prompts: list[str]) -> list[dict[str, str]]:
        import asyncio

        async def one(prompt: str) -> dict[str, str]:
            try:
                completion = await self._llm.complete(
                    [{"role": "user", "content": prompt}], max_tokens=self.max_tokens
                )
            except Exception as e:
                return {"error": f"{type(e).__name__}: {e}", "type": "SubcallError"}
            return {"ok": completion.text}

        return list(await asyncio.gather(*(one(p) for p in prompts)))


def _one_line(text: str, limit: int = 300) -> str:
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def final_line(value: str, recorded: str | None) -> str:
    """One line saying whether a replayed answer matches the recorded one."""
    if value == recorded:
        return f"FINAL: {_one_line(value)} (matches the recorded answer)"
    if recorded is None:
        return f"FINAL: {_one_line(value)} — the recorded run ended without an answer"
    return f"FINAL: {_one_line(value)} — the recorded answer was {_one_line(recorded)}"


def final_output(value: str, via: str, recorded: str | None) -> tuple[dict, dict]:
    """The display data and metadata of the line announcing a replayed final answer.

    The metadata marks the output as replay's own, so comparisons leave it out and
    :func:`areplay_notebook` reads the answer from it.
    """
    note = {"kind": "final", "value": value, "via": via, "matches": value == recorded}
    return {"text/plain": final_line(value, recorded)}, {"rlm": {NOTE_KEY: note}}


FinalHook = Callable[[str, str, "str | None"], None]


def _print_final(value: str, via: str, recorded: str | None) -> None:
    print(final_line(value, recorded))


class ReplayTransport:
    """The kernel runtime's ``Transport``, answering from a :class:`ReplayBook`.

    ``subcall`` requests get the recorded responses (a recorded failure fails again the same
    way); a prompt that was never recorded fails the request with ``ReplayMiss``, or is sent to
    ``live`` when given. ``final`` requests are remembered in :attr:`finals` and announced with
    ``on_final(value, via, recorded_answer)`` (default: print :func:`final_line`).

    Args:
        book: the recorded calls.
        recorded_answer: ``metadata.rlm.answer``, to say whether a final answer matches.
        max_subcalls: the run's sub-call limit: past it, calls fail with ``BudgetExceeded`` as
            they did in the run (those calls were never recorded).
        live: a model for prompts the record cannot answer.
        on_final: called on each final answer.
    """

    def __init__(
        self,
        book: ReplayBook,
        *,
        recorded_answer: str | None = None,
        max_subcalls: int | None = None,
        live: LiveModel | None = None,
        on_final: FinalHook | None = None,
    ) -> None:
        self.book = book
        self.recorded_answer = recorded_answer
        self.max_subcalls = max_subcalls
        self.live = live
        self.on_final = on_final or _print_final
        self.finals: list[str] = []
        self.subcalls = 0
        self.live_calls = 0
        self._lock = threading.Lock()

    def request(self, op: str, payload: dict[str, Any]) -> dict[str, Any]:
        """Answer one request of the kernel runtime."""
        if op == "final":
            value = str(payload.get("value"))
            self.finals.append(value)
            self.on_final(value, str(payload.get("via")), self.recorded_answer)
            return {"ok": True}
        if op != "subcall":
            return {"error": f"replay cannot answer a {op!r} request", "type": "BridgeError"}
        prompts = [str(p) for p in payload.get("prompts") or []]
        with self._lock:
            calls = self.book.take(prompts, partial=self.live is not None)
            results: list[dict[str, str] | None] = []
            for call in calls:
                if call is not None:
                    self.subcalls += 1
                    results.append(_result_of(call))
                elif self.max_subcalls is not None and self.subcalls >= self.max_subcalls:
                    # The run met its limit here, so these calls were refused and not recorded.
                    message = f"sub-call budget exhausted: {self.subcalls} used of "
                    results.append({"error": f"{message}{self.max_subcalls}", "type": _BUDGET})
                else:
                    results.append(None)
            missed = [i for i, r in enumerate(results) if r is None]
            if missed and self.live is None:
                return {"error": self.book.miss_message(prompts[missed[0]]), "type": _MISS}
            self.subcalls += len(missed)
        if missed:
            assert self.live is not None
            try:
                answers = self.live.complete([prompts[i] for i in missed])
            except UsageError as e:
                message = self.book.miss_message(prompts[missed[0]])
                return {
                    "error": f"{message}. --live could not call the recorded sub-model "
                    f"{self.live.name}: {e} (--live needs the provider's API key in the "
                    "kernel's environment)",
                    "type": _MISS,
                }
            self.live_calls += len(missed)
            for i, answer in zip(missed, answers, strict=True):
                results[i] = answer
        return {"results": results}


_MISS = runtime.ReplayMiss.__name__
_BUDGET = runtime.BudgetExceeded.__name__


def _result_of(call: RecordedCall) -> dict[str, str]:
    if call.error is not None or call.response is None:
        error = call.kernel_error()
        refused = f"{_BUDGET}: "
        if error.startswith(refused):  # the run's budget refused this call: refuse it again
            return {"error": error[len(refused) :], "type": _BUDGET}
        return {"error": error, "type": runtime.SubcallError.__name__}
    return {"ok": call.response}


# --------------------------------------------------------------------------- context and install


@dataclasses.dataclass(frozen=True)
class ReplayContext:
    """The recorded run's context, found and verified.

    Attributes:
        kind: ``text`` or ``json``, how the kernel decodes it.
        sha256: the recorded checksum, which the file (or embedded text) matches.
        path: the verified file, or ``None`` when the notebook's embedded text is used.
        embedded: the text embedded in the notebook, when no matching file was found.
    """

    kind: str
    sha256: str
    path: Path | None = None
    embedded: str | None = None

    def value(self) -> Any:
        """The context as the kernel sees it (only for an embedded context)."""
        text = self.embedded or ""
        return json.loads(text) if self.kind == "json" else text


def resolve_context(meta: Mapping[str, Any], notebook_dir: str | os.PathLike[str]) -> ReplayContext:
    """Find the run's context file beside the notebook and check it against its fingerprint.

    A missing or different file falls back to ``metadata.rlm.context.embedded`` when the
    notebook carries its context.

    Raises:
        ContextError: no usable context: the message names the file and the expected checksum.
    """
    ctx = meta.get("context") or {}
    expected, rel = ctx.get("sha256"), ctx.get("path")
    if not expected or not rel:
        raise ContextError("the run notebook records no context file (metadata.rlm.context)")
    kind = ctx.get("kind") or ("text" if ctx.get("type") == "str" else "json")
    path = Path(notebook_dir, rel)
    embedded = ctx.get("embedded")
    if isinstance(embedded, str) and _sha256(embedded) != expected:
        embedded = None  # an embedded copy that does not match the record cannot stand in
    if path.is_file():
        try:
            actual = file_sha256(path)
        except OSError as e:
            raise ContextError(f"cannot read the run's context file {path}: {e.strerror}") from e
        if actual == expected:
            return ReplayContext(kind=kind, sha256=expected, path=path)
        if embedded is not None:
            return ReplayContext(kind=kind, sha256=expected, embedded=embedded)
        raise ContextError(
            f"the context file {path} differs from the one the run used: its sha256 is "
            f"{actual}, the run recorded {expected}; restore the original file to replay"
        )
    if embedded is not None:
        return ReplayContext(kind=kind, sha256=expected, embedded=embedded)
    raise ContextError(
        f"the run's context file is missing: expected {path} with sha256 {expected}; "
        "put it there (its path is relative to the notebook) to replay"
    )


@dataclasses.dataclass
class ReplaySession:
    """What :func:`install` set up: the run being replayed and its transport.

    Attributes:
        notebook: the run notebook.
        run_id: the recorded run's id.
        book: the recorded sub-calls.
        transport: the transport the kernel's functions use (``.finals`` holds the answers).
        context: the verified context.
    """

    notebook: Path
    run_id: str
    book: ReplayBook
    transport: ReplayTransport
    context: ReplayContext

    def describe(self) -> str:
        """One line saying what is replayed."""
        ctx = self.context
        source = f"{ctx.path.name}" if ctx.path is not None else "the text embedded in the notebook"
        live = "; prompts never recorded go to the live sub-model" if self.transport.live else ""
        return (
            f"Replaying run {self.run_id} from {self.notebook.name}: {len(self.book)} recorded "
            f"sub-calls, context from {source} (sha256 {ctx.sha256[:12]}… verified){live}."
        )


def install(
    namespace: dict[str, Any],
    notebook_path: str | os.PathLike[str],
    *,
    shell: Any = None,
    live: bool = False,
    on_final: FinalHook | None = None,
) -> ReplaySession:
    """Load a run notebook's context and recorded sub-calls into ``namespace``.

    After this, ``context`` is the run's input and ``llm_query`` & co. answer from the record,
    so the run's code cells run as they did.

    Args:
        namespace: where the code runs (``get_ipython().user_ns``).
        notebook_path: the run notebook.
        shell: the IPython shell, to watch ``answer`` after each cell.
        live: send prompts that were never recorded to the recorded sub-model.
        on_final: called as ``on_final(value, via, recorded_answer)`` on each final answer.

    Raises:
        NotebookFormatError: not a readable run notebook.
        ContextError: the context is missing or differs from the recorded one.
    """
    path = Path(notebook_path)
    nb = notebook.load(path)
    meta = nb.metadata.rlm
    ctx = resolve_context(meta, path.parent)
    limits = meta.get("limits") or {}
    model = LiveModel((meta.get("models") or {}).get("sub"), limits.get("sub_max_tokens") or 8000)
    book = ReplayBook.from_notebook(nb)
    transport = ReplayTransport(
        book,
        recorded_answer=meta.get("answer"),
        max_subcalls=limits.get("max_subcalls"),
        live=model if live else None,
        on_final=on_final,
    )
    runtime.install(
        namespace,
        transport,
        context_path=str(ctx.path) if ctx.path is not None else None,
        context_kind=ctx.kind,
        shell=shell,
    )
    if ctx.path is None:
        namespace["context"] = ctx.value()
    return ReplaySession(path, str(meta.get("run_id")), book, transport, ctx)


# --------------------------------------------------------------------------- replaying a notebook

_ADDRESS = re.compile(r"\bat 0x[0-9a-fA-F]+\b")
_CELL_REF = re.compile(r"\b(Cell In|Input In) ?\[\d+\]")
_KERNEL_FILE = re.compile(r"ipykernel_\d+[/\\]\d+\.py")
_TIMING_LINE = re.compile(r"^(CPU times:|Wall time:)|per loop \(mean ± std\. dev\. of")
_DURATION = re.compile(r"\d+(?:[.,]\d+)*\s*(?:ns|[µμu]s|ms|s|min|h)\b")


def normalize_text(text: str) -> str:
    """Remove what legitimately changes between two runs of the same cell.

    ANSI escapes; object addresses (``at 0x7f…``); execution counts in traceback headers
    (``Cell In[12]``); the temporary file names ipykernel gives cells (``ipykernel_4242/…py``);
    and the figures of IPython's timing output (``%time``'s ``CPU times:``/``Wall time:`` lines,
    ``%timeit``'s ``… per loop (mean ± std. dev. of …)``).
    """
    text = strip_ansi(text)
    text = _ADDRESS.sub("at 0x…", text)
    text = _CELL_REF.sub(r"\1[…]", text)
    text = _KERNEL_FILE.sub("ipykernel_…/….py", text)
    lines = [
        _DURATION.sub("…", line) if _TIMING_LINE.search(line) else line for line in text.split("\n")
    ]
    return "\n".join(lines)


def _is_note(output: Mapping[str, Any]) -> bool:
    rlm = (output.get("metadata") or {}).get("rlm")
    return isinstance(rlm, dict) and NOTE_KEY in rlm


def _frames_only(output: Mapping[str, Any]) -> Mapping[str, Any]:
    """An error output whose traceback keeps the first line of each entry.

    That is the frame headers (``Cell In[…], line 9``, ``File …:8, in f(x)``) and the exception
    line; the source excerpts IPython prints around each frame vary with its version and
    settings (e.g. how many lines of context a temporary cell file gets).
    """
    if output.get("output_type") != "error":
        return output
    heads = [strip_ansi(str(entry)).split("\n", 1)[0] for entry in output.get("traceback", [])]
    heads = [" ".join(h.split()) for h in heads if h.strip("- ")]
    return {**output, "traceback": heads}


def _compared_text(outputs: Iterable[Mapping[str, Any]]) -> str:
    return normalize_text(render_text([_frames_only(o) for o in outputs if not _is_note(o)]))


def _finals(outputs: Iterable[Mapping[str, Any]]) -> list[str]:
    notes = [o["metadata"]["rlm"][NOTE_KEY] for o in outputs if _is_note(o)]
    return [str(n.get("value")) for n in notes if n.get("kind") == "final"]


@dataclasses.dataclass
class CellReport:
    """How one recorded code cell replayed.

    Attributes:
        step: the cell's step.
        block: the cell's block within the step.
        result: ``same``, ``differs``, or ``newly_failing`` (recorded ok, now not).
        diff: a short unified diff of the normalised output text, unless ``same``.
        error: ``ename: evalue`` of a newly failing cell.
        outputs: the replayed outputs.
        execution_count: the replayed execution count.
    """

    step: int
    block: int
    result: CellResult
    diff: str | None = None
    error: str | None = None
    outputs: list[Any] = dataclasses.field(default_factory=list, repr=False)
    execution_count: int | None = None

    def render(self) -> str:
        """A few lines for a terminal: the verdict, then the error or the diff, indented."""
        head = f"step {self.step}.{self.block}: {self.result.replace('_', ' ')}"
        detail = self.error or self.diff or ""
        return "\n".join([head, *("    " + line for line in detail.splitlines())])

    def to_dict(self) -> dict[str, Any]:
        """The JSON form: ``step, block, result`` and ``diff``/``error`` when present."""
        data: dict[str, Any] = {"step": self.step, "block": self.block, "result": self.result}
        if self.diff is not None:
            data["diff"] = self.diff
        if self.error is not None:
            data["error"] = self.error
        return data


@dataclasses.dataclass
class ReplayReport:
    """What replaying a run notebook found.

    Attributes:
        notebook: the replayed notebook.
        cells: one report per recorded code cell, in order.
        answer: the answer the replay produced (or took from the record, see ``answer_source``).
        recorded_answer: ``metadata.rlm.answer``.
        answer_source: ``replay`` (FINAL/FINAL_VAR/answer ran), ``record`` (the run ended with a
            plain-text ``FINAL(...)`` line, which no code reproduces) or ``None`` (no answer).
        out: the notebook written with the replayed outputs, if any.
    """

    notebook: str
    cells: list[CellReport]
    answer: str | None
    recorded_answer: str | None
    answer_source: Literal["replay", "record"] | None = None
    out: str | None = None

    @property
    def status(self) -> Literal["reproduced", "differs"]:
        """``reproduced`` when every cell is the same and the answer matches."""
        same = all(c.result == "same" for c in self.cells)
        return "reproduced" if same and self.answer == self.recorded_answer else "differs"

    def summary(self) -> str:
        """One line: the status, how many cells are the same, whether the answer matches."""
        same = sum(c.result == "same" for c in self.cells)
        failing = sum(c.result == "newly_failing" for c in self.cells)
        text = f"{self.status}: {same} of {len(self.cells)} cells the same"
        if failing:
            text += f", {failing} newly failing"
        if self.answer == self.recorded_answer:
            text += ", the answer matches" if self.answer is not None else ", no answer as recorded"
            if self.answer_source == "record":
                text += " (the run ended with a plain-text FINAL line: taken from the record)"
        else:
            text += f"; the answer differs: replayed {_preview(str(self.answer))}, recorded "
            text += _preview(str(self.recorded_answer))
        return text + (f"; replayed notebook: {self.out}" if self.out else "")

    def to_dict(self) -> dict[str, Any]:
        """The JSON form printed by ``rlm-kernel replay --json``."""
        return {
            "status": self.status,
            "cells": [c.to_dict() for c in self.cells],
            "answer": self.answer,
            "recorded_answer": self.recorded_answer,
            "answer_source": self.answer_source,
            "notebook": self.notebook,
            "out": self.out,
        }


def _quote_name(name: str) -> str:
    return name if re.fullmatch(r"[\w.+@=-]+", name) else json.dumps(name, ensure_ascii=False)


def setup_source(nb: nbformat.NotebookNode, notebook_name: str) -> str:
    """The notebook's setup cell, naming ``notebook_name`` (the file may have been renamed)."""
    cell = next(
        (c for c in nb.cells if notebook.SETUP_TAG in c.get("metadata", {}).get("tags", [])),
        None,
    )
    lines = cell.source.splitlines() if cell is not None else ["%load_ext rlm_kernel"]
    replay_line = f"%rlm_replay {_quote_name(notebook_name)}"
    lines = [replay_line if ln.lstrip().startswith("%rlm_replay") else ln for ln in lines]
    if replay_line not in lines:
        lines.append(replay_line)
    return "\n".join(lines)


def _diff(recorded: str, replayed: str) -> str:
    lines = list(
        difflib.unified_diff(
            recorded.splitlines(), replayed.splitlines(), "recorded", "replayed", lineterm="", n=1
        )
    )
    if len(lines) > DIFF_LINES:
        lines = [*lines[:DIFF_LINES], f"… ({len(lines) - DIFF_LINES} more diff lines)"]
    return "\n".join(lines)


def _compare(cell: nbformat.NotebookNode, result: ExecResult) -> CellReport:
    rlm = cell.metadata.rlm
    recorded_status = (rlm.get("exec") or {}).get("status", "ok")
    before = _compared_text(cell.get("outputs", []))
    after = _compared_text(result.outputs)
    if recorded_status == "ok" and result.status != "ok":
        kind: CellResult = "newly_failing"
    else:
        kind = "same" if before == after and recorded_status == result.status else "differs"
    error = None
    if kind == "newly_failing":
        ename, evalue = result.error or (result.status, "")
        error = _one_line(f"{ename}: {evalue}", 500)
    return CellReport(
        step=int(rlm["step"]),
        block=int(rlm.get("block") or 0),
        result=kind,
        diff=None if kind == "same" else _diff(before, after),
        error=error,
        outputs=result.outputs,
        execution_count=result.execution_count,
    )


def _answer(
    nb: nbformat.NotebookNode, finals: list[str], recorded: str | None
) -> tuple[str | None, Literal["replay", "record"] | None]:
    if finals:
        return finals[-1], "replay"  # as in the run, the last value sent is the answer
    entries = notebook.steps(nb)
    cell = entries[-1]["markdown_cell"] if entries else None
    raw = cell.metadata.rlm.get("raw") if cell is not None else None
    found = parse.final_answer(raw) if isinstance(raw, str) else None
    if recorded is not None and found is not None and found.kind == "FINAL":
        return recorded, "record"  # a plain-text FINAL(...) line: no code cell reproduces it
    return None, None


def _check_out(out: Path, source: Path) -> Path:
    if out.suffix != ".ipynb":
        raise OutputPathError(f"the replayed notebook must end in .ipynb: {out}")
    if out.resolve() == source.resolve():
        raise OutputPathError(f"--out {out} would overwrite the recorded run; choose another file")
    return out


def _write_copy(
    nb: nbformat.NotebookNode,
    source: Path,
    out: Path,
    setup: ExecResult,
    reports: list[CellReport],
) -> None:
    """Write ``nb`` with the replayed outputs to ``out``, still replayable from its new place."""
    copy_nb = copy.deepcopy(nb)
    ctx = copy_nb.metadata.rlm.get("context") or {}
    if ctx.get("path"):
        target = Path(source.parent, ctx["path"]).resolve()
        ctx["path"] = Path(os.path.relpath(target, out.parent.resolve())).as_posix()
    by_id = {(r.step, r.block): r for r in reports}
    for cell in copy_nb.cells:
        if cell.cell_type != "code":
            continue
        rlm = cell.metadata.get("rlm") or {}
        if notebook.SETUP_TAG in cell.metadata.get("tags", []):
            cell.source = setup_source(copy_nb, out.name)
            cell.outputs, cell.execution_count = setup.outputs, setup.execution_count
        elif (report := by_id.get((rlm.get("step"), rlm.get("block")))) is not None:
            cell.outputs, cell.execution_count = report.outputs, report.execution_count
    try:
        nbformat.validate(copy_nb)
    except nbformat.ValidationError as e:
        raise NotebookFormatError(f"the replayed notebook would not be valid: {e.message}") from e
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    try:
        nbformat.write(copy_nb, str(tmp))
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


async def areplay_notebook(
    path: str | os.PathLike[str],
    *,
    out: str | os.PathLike[str] | None = None,
    kernel_name: str = "python3",
    cell_timeout: float | None = None,
    on_cell: Callable[[CellReport], object] | None = None,
) -> ReplayReport:
    """Run a recorded notebook again in a fresh kernel and compare it with the record.

    The kernel starts in the notebook's folder (as in Jupyter), runs the setup cell (the
    ``%rlm_replay`` magic, so no API key is needed) and then every recorded code cell in order.

    Args:
        path: the run notebook.
        out: where to write a copy with the replayed outputs.
        kernel_name: the kernelspec to run the cells in.
        cell_timeout: seconds per cell (default: the run's own ``cell_timeout``).
        on_cell: called with each :class:`CellReport` as soon as the cell has run.

    Raises:
        NotebookFormatError: not a readable run notebook.
        ContextError: the context file is missing or altered (and none is embedded).
        UsageError: the setup cell failed, or ``out`` is not a usable notebook path.
    """
    path = Path(path)
    nb = notebook.load(path)
    meta = nb.metadata.rlm
    resolve_context(meta, path.parent)  # bad input is reported before a kernel starts
    out_path = _check_out(Path(out), path) if out is not None else None
    limits = meta.get("limits") or {}
    timeout = cell_timeout or limits.get("cell_timeout") or DEFAULT_CELL_TIMEOUT
    cells = [c for entry in notebook.steps(nb) for c in entry["code_cells"]]
    reports: list[CellReport] = []
    finals: list[str] = []
    async with KernelSession(kernel_name=kernel_name, cwd=path.parent.resolve()) as ks:
        setup = await ks.execute(setup_source(nb, path.name), timeout=SETUP_TIMEOUT)
        if setup.status != "ok":
            ename, evalue = setup.error or (setup.status, "")
            raise UsageError(f"the replay setup cell failed: {ename}: {_one_line(evalue, 500)}")
        for cell in cells:
            result = await ks.execute(cell.source, timeout=timeout)
            finals += _finals(result.outputs)
            report = _compare(cell, result)
            reports.append(report)
            if on_cell is not None:
                on_cell(report)
    recorded = meta.get("answer")
    answer, source = _answer(nb, finals, recorded)
    if out_path is not None:
        _write_copy(nb, path, out_path, setup, reports)
    return ReplayReport(
        notebook=str(path),
        cells=reports,
        answer=answer,
        recorded_answer=recorded,
        answer_source=source,
        out=str(out_path) if out_path is not None else None,
    )


def replay_notebook(path: str | os.PathLike[str], **kwargs: Any) -> ReplayReport:
    """The sync twin of :func:`areplay_notebook` (also works where an event loop runs)."""
    from jupyter_core.utils import run_sync

    return run_sync(areplay_notebook)(path, **kwargs)
