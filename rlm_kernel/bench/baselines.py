"""The paper's baselines, each recorded as a run notebook: ``direct``, ``summary``, ``retrieval``.

- ``direct``: the whole context in one prompt to the root model, cut to its window with a note
  saying how much was left out.
- ``summary``: the sub-model summarises the context chunk by chunk with the question in mind
  (again over the summaries while they do not fit), the root model answers from the summaries.
- ``retrieval``: BM25 (``bm25s``, the ``bench`` extra) ranks chunks against the question; the
  root model answers from the top chunks in one prompt.

They call the models the benchmark resolved (through the model-call cache when it is on). There
is no kernel: each model call is one step of the notebook, its prompt's size, SHA-256 and head in
the step's metadata, its reply as the step's text, written by the one notebook writer.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from ..context import prepare
from ..errors import RLMKernelError, UsageError
from ..record import Recorder
from ..types import Completion, Limits, Usage
from .tasks import CHARS_PER_TOKEN, Instance, context_text

if TYPE_CHECKING:
    from .methods import Models, Outcome

__all__ = ["BaselineRun", "chunk_text", "direct", "retrieval", "summary"]

PROMPT_OVERHEAD_TOKENS = 1_000  # instructions and question, beside the context in a prompt
RETRIEVAL_CHUNK_TOKENS = 500
RETRIEVAL_TOP_K = 10
MAX_SUMMARY_ROUNDS = 4
PREVIEW_CHARS = 300

ANSWER_PROMPT = """\
{intro}

{body}

Question: {question}

Answer the question from the text above, in the format the question asks for, with the answer \
alone and no commentary."""

SUMMARY_PROMPT = """\
Below is part {part} of {parts} of a long text. Someone will answer this question from summaries \
of all the parts:

Question: {question}

Write down everything in this part that may help answer it: every relevant fact, name, number, \
id and date, exactly as written. If nothing is relevant, write NOTHING RELEVANT.

{text}"""


def chunk_text(text: str, chars: int) -> list[str]:
    """``text`` in pieces of at most ``chars`` characters, cut at line ends where possible."""
    chunks, start = [], 0
    while start < len(text):
        end = min(len(text), start + chars)
        if end < len(text):
            cut = text.rfind("\n", start + chars // 2, end)
            end = cut + 1 if cut > 0 else end
        chunks.append(text[start:end])
        start = end
    return chunks


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds")


class BaselineRun:
    """One baseline answering one instance: its model calls, totals and notebook."""

    def __init__(self, method: str, instance: Instance, models: Models, notebook: Path) -> None:
        self.models = models
        self.usage = {"root": Usage(), "sub": Usage()}
        self.cost = 0.0
        self.priced = 0
        self.unpriced = 0
        self.cached = 0
        self.steps = 0
        self.started = time.monotonic()
        info = prepare(instance.context, notebook.with_suffix(""))
        self.recorder = Recorder(
            notebook,
            {
                "run_id": uuid.uuid4().hex[:12],
                "status": "running",
                "question": instance.question,
                "models": {"root": models.root.name, "sub": models.sub.name},
                "context": info.to_metadata(notebook.parent),
                "started": _now(),
                "bench": {"method": method, "instance": instance.id, "task": instance.task},
            },
        )

    async def call(self, role: str, prompt: str, *, max_tokens: int, note: str) -> Completion:
        """One model call, recorded as a step of the notebook."""
        llm = self.models.root if role == "root" else self.models.sub
        messages = [{"role": "user", "content": prompt}]
        completion = await llm.complete(messages, max_tokens=max_tokens)
        self.steps += 1
        self.usage[role].add(completion.usage)
        cached = bool(getattr(completion, "cached", False))
        self.cached += cached
        if completion.cost_usd is None:
            self.unpriced += 1
        else:
            self.priced += 1
            self.cost += completion.cost_usd
        self.recorder.add_step(
            step=self.steps,
            markdown=(
                f"*{note}: {len(prompt):,} characters to `{llm.name}`"
                f"{' (from the cache)' if cached else ''}.*\n\n{completion.text}"
            ),
            raw=completion.text,
            usage=completion.usage,
            latency_s=round(completion.latency_s, 4),
            extra={
                "model": llm.name,
                "role": role,
                "prompt_sha256": hashlib.sha256(prompt.encode("utf-8")).hexdigest(),
                "prompt_chars": len(prompt),
                "prompt_preview": prompt[:PREVIEW_CHARS],
                "cost_usd": completion.cost_usd,
                "cached": cached,
            },
        )
        self._update_meta()
        self.recorder.save()
        return completion

    def _update_meta(self) -> None:
        meta = self.recorder.meta
        meta["usage"] = {k: u.to_dict() for k, u in self.usage.items()}
        meta["cost_usd"] = round(self.cost, 6) if self.priced else (None if self.unpriced else 0.0)
        meta["steps"] = self.steps

    def finish(self, answer: str | None, *, error: BaseException | None = None) -> Outcome:
        """Close the notebook and sum the run up."""
        from .methods import Outcome

        if error is None:
            status, stop = ("answered", "final") if answer else ("no_answer", "empty_answer")
        elif isinstance(error, (asyncio.CancelledError, KeyboardInterrupt)):
            status, stop = "interrupted", "interrupted"
        else:
            status, stop = "error", "error"
        message = None if error is None else (str(error).splitlines() or [type(error).__name__])[0]
        self._update_meta()
        self.recorder.finish(status=status, stop_reason=stop, answer=answer, error=message)
        usages = self.usage.values()
        return Outcome(
            answer=answer,
            status=status,
            notebook=str(self.recorder.path),
            cost_usd=round(self.cost, 6) if self.priced else None,
            unpriced_calls=self.unpriced,
            input_tokens=sum(
                u.input_tokens + u.cache_read_input_tokens + u.cache_creation_input_tokens
                for u in usages
            ),
            output_tokens=sum(u.output_tokens for u in usages),
            calls=self.steps,
            cached_calls=self.cached,
            duration_s=round(time.monotonic() - self.started, 3),
            error=message,
        )


async def _recorded(method: str, instance: Instance, models: Models, notebook: Path, body):
    run = BaselineRun(method, instance, models, notebook)
    try:
        answer = await body(run)
    except (RLMKernelError, OSError) as e:  # a model that failed after retries, a full disk
        return run.finish(None, error=e)
    except BaseException as e:
        run.finish(None, error=e)
        raise
    return run.finish(answer.strip() or None)


def _answer_prompt(intro: str, body: str, question: str) -> str:
    return ANSWER_PROMPT.format(intro=intro, body=body, question=question)


def _room_chars(window: int, max_tokens: int) -> int:
    return max(1_000, (window - max_tokens - PROMPT_OVERHEAD_TOKENS) * CHARS_PER_TOKEN)


async def direct(instance: Instance, models: Models, limits: Limits, notebook: Path) -> Outcome:
    """The whole context in one prompt, cut to the root model's window with a note."""

    async def body(run: BaselineRun) -> str:
        text = context_text(instance.context)
        room = _room_chars(models.window, limits.max_tokens)
        intro = "Here is the context."
        if len(text) > room:
            intro = (
                f"Here is the context, cut to fit the model's window: the first {room:,} of "
                f"{len(text):,} characters; the rest is left out."
            )
            text = text[:room] + "\n[... the rest of the context is left out ...]"
        prompt = _answer_prompt(intro, text, instance.question)
        reply = await run.call("root", prompt, max_tokens=limits.max_tokens, note="Direct prompt")
        return reply.text

    return await _recorded("direct", instance, models, notebook, body)


async def summary(instance: Instance, models: Models, limits: Limits, notebook: Path) -> Outcome:
    """Summarise chunk by chunk (the sub-model), then answer from the summaries (the root)."""

    async def body(run: BaselineRun) -> str:
        room = _room_chars(models.window, limits.max_tokens)
        chunk_chars = max(2_000, _room_chars(models.window, limits.sub_max_tokens) // 2)
        text = context_text(instance.context)
        slots = asyncio.Semaphore(limits.max_concurrency)
        rounds = 0
        while len(text) > room:
            rounds += 1
            if rounds > MAX_SUMMARY_ROUNDS:
                text = text[:room]
                break
            chunks = chunk_text(text, chunk_chars)

            async def summarise(i: int, chunk: str, n: int = len(chunks), r: int = rounds) -> str:
                prompt = SUMMARY_PROMPT.format(
                    part=i + 1, parts=n, question=instance.question, text=chunk
                )
                async with slots:
                    reply = await run.call(
                        "sub",
                        prompt,
                        max_tokens=limits.sub_max_tokens,
                        note=f"Summary of part {i + 1} of {n} (round {r})",
                    )
                return f"Part {i + 1}: {reply.text.strip()}"

            text = "\n\n".join(
                await asyncio.gather(*(summarise(i, c) for i, c in enumerate(chunks)))
            )
        intro = (
            "Here are summaries of the consecutive parts of the context."
            if rounds
            else "Here is the context."
        )
        prompt = _answer_prompt(intro, text, instance.question)
        reply = await run.call("root", prompt, max_tokens=limits.max_tokens, note="Answer")
        return reply.text

    return await _recorded("summary", instance, models, notebook, body)


def top_chunks(chunks: Sequence[str], query: str, k: int) -> list[int]:
    """The indices of the ``k`` chunks BM25 ranks highest for ``query``, in context order.

    Raises:
        UsageError: ``bm25s`` is not installed.
    """
    try:
        import bm25s
    except ImportError:
        raise UsageError(
            "the retrieval method needs bm25s: pip install 'rlm-kernel[bench]'"
        ) from None
    k = min(k, len(chunks))
    retriever = bm25s.BM25()
    retriever.index(
        bm25s.tokenize(list(chunks), stopwords="en", show_progress=False), show_progress=False
    )
    found, _ = retriever.retrieve(
        bm25s.tokenize([query], stopwords="en", show_progress=False), k=k, show_progress=False
    )
    return sorted(int(i) for i in found[0])


async def retrieval(instance: Instance, models: Models, limits: Limits, notebook: Path) -> Outcome:
    """BM25 over chunks of the context, then one prompt with the top chunks."""

    async def body(run: BaselineRun) -> str:
        chunks = chunk_text(
            context_text(instance.context), RETRIEVAL_CHUNK_TOKENS * CHARS_PER_TOKEN
        )
        room = _room_chars(models.window, limits.max_tokens)
        k = max(1, min(RETRIEVAL_TOP_K, room // (RETRIEVAL_CHUNK_TOKENS * CHARS_PER_TOKEN)))
        chosen = await asyncio.to_thread(top_chunks, chunks, instance.question, k)
        run.recorder.meta["bench"]["retrieved"] = chosen
        body_text = "\n\n".join(f"[chunk {i + 1} of {len(chunks)}]\n{chunks[i]}" for i in chosen)
        intro = (
            f"Here are the {len(chosen)} chunks of the context (of {len(chunks)}) that a search "
            "ranked most relevant to the question."
        )
        prompt = _answer_prompt(intro, body_text, instance.question)
        reply = await run.call("root", prompt, max_tokens=limits.max_tokens, note="Answer")
        return reply.text

    return await _recorded("retrieval", instance, models, notebook, body)
