"""A model-call cache: answers kept in a local SQLite file, so a repeated call is not paid twice.

:meth:`CallCache.wrap` puts the cache in front of any :class:`~rlm_kernel.llm.LLM`. A call is
looked up by the SHA-256 of a canonical JSON of what decides its answer: the model's name,
``max_tokens``, the sampling keywords that were given (``temperature``, ``seed``, ...), the
messages, and the call's occurrence (the n-th identical call of a wrapped model gets the n-th
stored answer, so asking the same prompt five times to vote still gets five answers). A hit
comes back as a :class:`~rlm_kernel.types.Completion` with ``cached=True`` and a cost of zero;
its usage is the original call's, kept for information. Only successful calls are stored.

The file is in WAL mode, so runs in several processes can share it: readers never wait for a
writer, and writers wait for each other at most ``timeout`` seconds. Lookups are single-row
reads done on the caller's thread (well under a millisecond); writes go to a worker thread so a
busy file never stalls the event loop. Nothing is kept in memory beyond the counts of identical
calls of the run in progress. Keys and rows hold no credentials: the model's name, the request
and the answer only.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import sqlite3
import threading
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ..errors import UsageError
from ..types import Completion, Message, Usage

__all__ = ["DEFAULT_NAME", "CacheError", "CacheWarning", "CachedLLM", "CallCache"]

DEFAULT_NAME = ".rlm-cache.sqlite"
_SCHEMA_VERSION = 1
# Stamped into SQLite's header (PRAGMA application_id) so a file that is some other database is
# told apart from an rlm-kernel cache; the bytes spell "rlmc".
_APPLICATION_ID = 0x726C6D63
_SCHEMA = """
CREATE TABLE IF NOT EXISTS calls (
    key TEXT PRIMARY KEY,
    model TEXT NOT NULL,
    text TEXT NOT NULL,
    stop_reason TEXT,
    usage TEXT NOT NULL,
    cost_usd REAL,
    created REAL NOT NULL
) WITHOUT ROWID
"""
_INSERT = "INSERT OR IGNORE INTO calls VALUES (?, ?, ?, ?, ?, ?, ?)"


class CacheError(UsageError):
    """The cache file cannot be used: not a cache, corrupt, or not writable."""


class CacheWarning(UserWarning):
    """The cache stopped storing answers during a run (the run itself goes on)."""


class CallCache:
    """Model answers in one SQLite file, shared by runs, threads and processes.

    Args:
        path: the SQLite file; made (with its folder) when missing.
        timeout: seconds a write may wait for another process writing the same file.

    Raises:
        CacheError: the file is not an rlm-kernel cache (another database, a corrupt or
            truncated file) or cannot be written.
    """

    def __init__(self, path: str | os.PathLike, *, timeout: float = 30.0) -> None:
        self.path = Path(path).expanduser()
        self.timeout = timeout
        self.hits = 0
        self.misses = 0
        self.stored = 0
        self._writable = True
        self._read_lock = threading.Lock()
        self._write_lock = threading.Lock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise self._error(f"cannot make its folder: {e.strerror or e}") from None
        if self.path.is_dir():
            raise self._error("it is a directory; give a file name")
        self._writer = self._connect()
        self._setup()
        self._reader = self._connect()

    @classmethod
    def default_for(cls, out_dir: str | os.PathLike) -> CallCache:
        """The cache of an output folder: ``<out_dir>/.rlm-cache.sqlite``."""
        return cls(Path(out_dir) / DEFAULT_NAME)

    def wrap(self, llm: Any, *, normalize: Callable[[str], str] | None = None) -> CachedLLM:
        """``llm`` answering from this cache first; it keeps the same ``name``.

        Args:
            llm: the model to put the cache in front of.
            normalize: applied to each message's content before it is hashed, to leave out
                what changes from run to run without changing the question (a run's clock).
        """
        if isinstance(llm, CachedLLM) and llm.cache is self and llm.normalize is normalize:
            return llm
        return CachedLLM(llm, self, normalize=normalize)

    # -- lookups and stores ---------------------------------------------------------------------

    def get(self, key: str) -> Completion | None:
        """The stored answer for ``key`` as a cached, cost-free completion, or ``None``."""
        start = time.perf_counter()
        try:
            with self._read_lock:
                row = self._reader.execute(
                    "SELECT model, text, stop_reason, usage FROM calls WHERE key = ?", (key,)
                ).fetchone()
        except sqlite3.Error as e:
            raise self._error(_reason(e)) from None
        if row is None:
            self.misses += 1
            return None
        self.hits += 1
        model, text, stop_reason, usage = row
        return Completion(
            text=text,
            model=model,
            usage=Usage.from_dict(json.loads(usage)),
            latency_s=time.perf_counter() - start,
            cost_usd=0.0,
            retries=0,
            stop_reason=stop_reason,
            cached=True,
        )

    def put(self, key: str, completion: Completion) -> None:
        """Store a successful call's answer; the first answer stored for a key stays.

        A file that stops taking writes (disk full, made read-only) warns once with
        :class:`CacheWarning` and the cache goes on answering from what it holds.
        """
        if not self._writable:
            return
        row = (
            key,
            completion.model,
            completion.text,
            completion.stop_reason,
            json.dumps(completion.usage.to_dict()),
            completion.cost_usd,
            time.time(),
        )
        try:
            with self._write_lock:
                self._writer.execute(_INSERT, row)
        except sqlite3.Error as e:
            self._writable = False
            warnings.warn(
                f"the model-call cache {self.path} stopped storing answers: {_reason(e)}",
                CacheWarning,
                stacklevel=2,
            )
            return
        self.stored += 1

    def __len__(self) -> int:
        with self._read_lock:
            return int(self._reader.execute("SELECT count(*) FROM calls").fetchone()[0])

    def close(self) -> None:
        """Close the file (a closed cache cannot be used again)."""
        with self._read_lock, self._write_lock:
            self._reader.close()
            self._writer.close()

    def __repr__(self) -> str:
        return f"CallCache({os.fspath(self.path)!r})"

    # -- internals ------------------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        try:
            # Autocommit (isolation_level=None): one INSERT is its own transaction. Both
            # connections serve worker threads and the event loop's, always under their lock.
            return sqlite3.connect(
                self.path, timeout=self.timeout, check_same_thread=False, isolation_level=None
            )
        except sqlite3.Error as e:
            raise self._error(_reason(e)) from None

    def _setup(self) -> None:
        db = self._writer
        try:
            app_id = db.execute("PRAGMA application_id").fetchone()[0]
            tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            if tables and app_id != _APPLICATION_ID:
                raise self._error("it is a database of something else, not a model-call cache")
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if tables and version != _SCHEMA_VERSION:
                raise self._error(
                    f"it was written by another version of rlm-kernel (cache format {version}); "
                    "delete it to start a new cache"
                )
            db.execute("PRAGMA journal_mode=WAL")
            # A probe write: a read-only file or folder fails now, not after a paid call.
            db.execute("BEGIN IMMEDIATE")
            try:
                db.execute(_SCHEMA)
                db.execute(f"PRAGMA application_id = {_APPLICATION_ID}")
                db.execute(f"PRAGMA user_version = {_SCHEMA_VERSION}")
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        except CacheError:
            db.close()
            raise
        except sqlite3.Error as e:
            db.close()
            raise self._error(_reason(e)) from None

    def _error(self, reason: str) -> CacheError:
        return CacheError(
            f"cannot use the model-call cache {self.path}: {reason} "
            "(give another file with --cache, or --no-cache)"
        )


class CachedLLM:
    """An :class:`~rlm_kernel.llm.LLM` that answers from a :class:`CallCache` when it can.

    It has the wrapped model's ``name``, forwards the sampling keywords unchanged and closes the
    wrapped model's client with its own ``aclose``.
    """

    def __init__(
        self, llm: Any, cache: CallCache, *, normalize: Callable[[str], str] | None = None
    ) -> None:
        self.inner = llm
        self.cache = cache
        self.normalize = normalize
        self.name: str = llm.name
        self._seen: dict[str, int] = {}
        self._seen_lock = threading.Lock()

    async def complete(
        self, messages: Sequence[Message], *, max_tokens: int, **sampling: Any
    ) -> Completion:
        """The stored answer of this call, or the wrapped model's (then stored)."""
        digest = request_digest(self.name, max_tokens, messages, sampling, self.normalize)
        with self._seen_lock:
            occurrence = self._seen.get(digest, 0) + 1
            self._seen[digest] = occurrence
        key = f"{digest}-{occurrence}"
        hit = self.cache.get(key)
        if hit is not None:
            return hit
        completion = await self.inner.complete(messages, max_tokens=max_tokens, **sampling)
        # Stored off the event loop: another process may hold the file's write lock a moment.
        await asyncio.to_thread(self.cache.put, key, completion)
        return completion

    async def aclose(self) -> None:
        """Close the wrapped model's client, when it has one to close."""
        aclose = getattr(self.inner, "aclose", None)
        if aclose is not None:
            result = aclose()
            if asyncio.iscoroutine(result):
                await result

    def __repr__(self) -> str:
        return f"CachedLLM({self.inner!r}, {self.cache!r})"


def request_digest(
    model: str,
    max_tokens: int,
    messages: Sequence[Message],
    sampling: Mapping[str, Any],
    normalize: Callable[[str], str] | None = None,
) -> str:
    """Hex SHA-256 of a canonical JSON of what decides a call's answer.

    Sampling keywords set to ``None`` are left out: they are the same as not giving them. Of
    each message only its role and content count; other keys are hints to providers (such as
    where prompt caching may start) that do not change the answer. ``normalize``, when given,
    rewrites each content first.
    """
    norm = normalize or _same
    canonical = {
        "v": _SCHEMA_VERSION,
        "model": model,
        "max_tokens": max_tokens,
        "sampling": {k: v for k, v in sorted(sampling.items()) if v is not None},
        "messages": [[m.get("role"), norm(m.get("content") or "")] for m in messages],
    }
    text = json.dumps(canonical, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def _same(text: str) -> str:
    return text


def _reason(exc: sqlite3.Error) -> str:
    text = str(exc) or type(exc).__name__
    if "not a database" in text or "malformed" in text:
        return f"the file is corrupt or not a cache ({text}); delete it to start a new cache"
    return text
