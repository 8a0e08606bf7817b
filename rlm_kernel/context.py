"""Turn what the user gives as context into one file the kernel maps, plus its fingerprint.

A text file that is valid UTF-8 is used where it lies (no copy); everything else (Python objects,
JSON that needs normalising, several files, a directory, text with invalid bytes) is written once
next to the run notebook. The kernel reads the file through ``mmap``; the context never travels
as a code literal. :func:`resolve_context` finds a recorded run's context again and checks it
against its fingerprint (replay, forks, bundles).
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import mmap
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from .errors import ContextError

PREVIEW_CHARS = 500
# What the model's first look at the context shows (see prompts.describe_context).
HEAD_CHARS, TAIL_CHARS, SAMPLE_CHARS = 400, 200, 240
LENGTHS_SHOWN, KEYS_SHOWN = 50, 10
Origin = Literal["value", "text_file", "json_file", "directory", "files"]


class ContextWarning(UserWarning):
    """Something about the context the user should know, e.g. bytes that were not UTF-8."""


EMBED_LIMIT_CHARS = 1_000_000  # the largest context a notebook carries inside itself
ContextInput = str | list | dict | os.PathLike | Sequence[os.PathLike]


@dataclass(frozen=True)
class ContextInfo:
    """What the run records about its context (``metadata.rlm.context``).

    Attributes:
        type: the Python type the kernel sees: ``str``, ``list`` or ``dict``.
        kind: how the kernel decodes the file: ``text`` or ``json``.
        path: absolute path of the file the kernel maps.
        chars: characters of the decoded file.
        bytes: size of the file.
        sha256: hex digest of the file's bytes.
        preview: the first characters, for people and for the model's first look.
        items: number of elements of a list or dict, else ``None``.
        lengths: characters of the first elements of a list or dict (values for a dict): a
            str's length, or the length of another value's JSON text.
        warnings: things the user should know, e.g. bytes replaced while decoding.
        origin: where the value came from: a Python ``value``, a ``text_file``, a
            ``json_file``, a ``directory`` (keys are file paths) or several ``files`` (a list).
        content_chars: for a list or dict, the sum of all element lengths (as ``lengths``).
        length_stats: for a list or dict, the (min, median, max) element length.
        element_types: for a list or dict, element type names with their counts, commonest
            first.
        common_keys: for a list of dicts, the keys every sampled element has.
        key_sample: for a dict, its first and last keys.
        samples: short ``(expression, text)`` previews of the head and tail, for the model.
        file_names: for several files, their names, in order.
    """

    type: Literal["str", "list", "dict"]
    kind: Literal["text", "json"]
    path: Path
    chars: int
    bytes: int
    sha256: str
    preview: str
    items: int | None = None
    lengths: tuple[int, ...] = ()
    warnings: tuple[str, ...] = field(default=())
    origin: Origin = "value"
    content_chars: int | None = None
    length_stats: tuple[int, int, int] | None = None
    element_types: tuple[tuple[str, int], ...] = ()
    common_keys: tuple[str, ...] = ()
    key_sample: tuple[str, ...] = ()
    samples: tuple[tuple[str, str], ...] = ()
    file_names: tuple[str, ...] = ()

    @property
    def text_chars(self) -> int:
        """Characters of the content itself: a str's length, or the sum of element lengths."""
        return self.chars if self.content_chars is None else self.content_chars

    def embedded_text(self) -> str:
        """The context file's text, for a notebook that carries its context inside itself.

        Raises:
            ContextError: the context is larger than :data:`EMBED_LIMIT_CHARS`.
        """
        if self.chars > EMBED_LIMIT_CHARS:
            raise ContextError(
                f"the context has {self.chars:,} characters, too many to embed in the notebook "
                f"(the limit is {EMBED_LIMIT_CHARS:,}); keep it as a file beside the notebook"
            )
        # Bytes, then decode: universal-newline reading would turn CRLF into LF and the text
        # would no longer match the file's fingerprint.
        return self.path.read_bytes().decode("utf-8")

    def to_metadata(self, notebook_dir: Path) -> dict[str, Any]:
        """The notebook's ``metadata.rlm.context``, with the path relative to the notebook."""
        try:
            rel = os.path.relpath(self.path, notebook_dir)
        except ValueError:  # another drive on Windows
            rel = str(self.path)
        return {
            "type": self.type,
            "kind": self.kind,
            "chars": self.chars,
            "bytes": self.bytes,
            "sha256": self.sha256,
            "path": Path(rel).as_posix(),
            "preview": self.preview,
            "items": self.items,
            **({"warnings": list(self.warnings)} if self.warnings else {}),
        }


def _read_text(path: Path, warnings: list[str]) -> str:
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ContextError(f"cannot read context file {path}: {e.strerror or e}") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        warnings.append(
            f"{path}: not valid UTF-8 (first bad byte at offset {e.start}); "
            "undecodable bytes were replaced with U+FFFD"
        )
        return data.decode("utf-8", errors="replace")


def _load_json(path: Path, warnings: list[str]) -> list | dict:
    text = _read_text(path, warnings)
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise ContextError(f"context file {path} is not valid JSON: {e}") from None
    if not isinstance(value, (list, dict)):
        raise ContextError(
            f"JSON context {path} must hold a list or an object, not {type(value).__name__}"
        )
    return value


def _load_dir(path: Path, warnings: list[str]) -> dict[str, str]:
    files = {}
    for root, dirs, names in os.walk(path):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(names):
            if name.startswith("."):
                continue
            full = Path(root, name)
            files[full.relative_to(path).as_posix()] = _read_text(full, warnings)
    if not files:
        raise ContextError(f"context directory {path} holds no files")
    return files


def _load_path(path: Path, warnings: list[str]) -> str | list | dict:
    if not path.exists():
        raise ContextError(f"context path {path} does not exist")
    if path.is_dir():
        return _load_dir(path, warnings)
    if path.suffix.lower() == ".json":
        return _load_json(path, warnings)
    return _read_text(path, warnings)


def _emptiness(value: str | list | dict) -> str | None:
    """How a context holds nothing to read, or ``None`` when it holds something."""
    if isinstance(value, str):
        if not value:
            return "is empty (0 bytes): the model has nothing to read"
        return None if value.strip() else "holds only whitespace: the model has nothing to read"
    if not value:
        return f"is an empty {type(value).__name__}: the model has nothing to read"
    items = value.values() if isinstance(value, dict) else value
    if all(isinstance(v, str) and not v.strip() for v in items):
        return "holds only empty texts: the model has nothing to read"
    return None


def _origin_of(path: Path) -> Origin:
    if path.is_dir():
        return "directory"
    return "json_file" if path.suffix.lower() == ".json" else "text_file"


def file_sha256(path: os.PathLike | str) -> str:
    """Hex SHA-256 of a file's bytes (read through ``mmap``: no copy of a large file)."""
    with open(path, "rb") as f:
        if os.fstat(f.fileno()).st_size == 0:
            return hashlib.sha256(b"").hexdigest()
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            return hashlib.sha256(mm).hexdigest()


def _length(value: object) -> int:
    """Characters a value takes as text: a str's length, anything else as JSON text."""
    if isinstance(value, str):
        return len(value)
    try:
        return len(json.dumps(value, ensure_ascii=False))
    except (TypeError, ValueError):
        return len(str(value))


def _bounded(value: object, budget: int, depth: int = 0) -> str:
    """``repr(value)`` in about ``budget`` characters, keeping dict order and both ends of text."""
    if isinstance(value, str):
        if len(value) <= budget:
            return repr(value)
        half = max(8, budget // 2)
        return repr(value[:half]) + " ... " + repr(value[-half // 2 :])
    if isinstance(value, (list, dict)) and depth < 2:
        items = list(value.items()) if isinstance(value, dict) else list(enumerate(value))
        share = max(16, budget // max(1, min(len(items), 6)))
        parts = []
        for key, item in items[:6]:
            text = _bounded(item, share, depth + 1)
            parts.append(f"{key!r}: {text}" if isinstance(value, dict) else text)
        if len(items) > 6:
            parts.append("...")
        open_, close = "{}" if isinstance(value, dict) else "[]"
        return open_ + ", ".join(parts) + close
    if isinstance(value, (list, dict)):
        return "{...}" if isinstance(value, dict) else "[...]"
    return repr(value)


def _sample(value: object) -> str:
    """A short repr of one element for the model's first look, capped at SAMPLE_CHARS."""
    text = _bounded(value, SAMPLE_CHARS)
    return text if len(text) <= SAMPLE_CHARS else text[: SAMPLE_CHARS - 4] + " ..."


def _text_samples(text: str) -> tuple[tuple[str, str], ...]:
    if len(text) <= HEAD_CHARS + TAIL_CHARS:
        return (("context", text),)
    return (
        (f"context[:{HEAD_CHARS}]", text[:HEAD_CHARS]),
        (f"context[-{TAIL_CHARS}:]", text[-TAIL_CHARS:]),
    )


def _describe(value: str | list | dict) -> dict[str, Any]:
    """What the model is told about ``value``'s shape: sizes, element types, samples."""
    if isinstance(value, str):
        return {"samples": _text_samples(value)}
    if isinstance(value, list):
        elements = value
        samples = [(f"context[{i}]", _sample(value[i])) for i in (0, -1)[: len(value)]]
    else:
        elements = list(value.values())
        keys = list(value)
        samples = [(f"context[{k!r}]", _sample(value[k])) for k in (keys[:1] + keys[-1:])]
    lengths = [_length(x) for x in elements]
    types = collections.Counter(type(x).__name__ for x in elements)
    dicts = [x for x in elements[:LENGTHS_SHOWN] if isinstance(x, dict)]
    common: tuple[str, ...] = ()
    if dicts and len(dicts) == min(len(elements), LENGTHS_SHOWN):
        shared = set(dicts[0]).intersection(*dicts[1:])
        common = tuple(str(k) for k in dicts[0] if k in shared)[:KEYS_SHOWN]
    ordered = sorted(lengths)
    return {
        "items": len(value),
        "lengths": tuple(lengths[:LENGTHS_SHOWN]),
        "content_chars": sum(lengths),
        "length_stats": (ordered[0], ordered[len(ordered) // 2], ordered[-1]) if ordered else None,
        "element_types": tuple(types.most_common(4)),
        "common_keys": common,
        "key_sample": _key_sample(value) if isinstance(value, dict) else (),
        "samples": tuple(samples if len(value) > 1 else samples[:1]),
    }


def _key_sample(value: dict) -> tuple[str, ...]:
    keys = [str(k) for k in value]
    if len(keys) <= KEYS_SHOWN:
        return tuple(keys)
    return (*keys[: KEYS_SHOWN - 2], *keys[-2:])


def _write(value: str | list | dict, dest: Path) -> None:
    tmp = dest.with_name(f".{dest.name}.tmp")
    try:
        if isinstance(value, str):
            tmp.write_text(value, encoding="utf-8", newline="")
        else:
            with open(tmp, "w", encoding="utf-8") as f:
                json.dump(value, f, ensure_ascii=False)
        os.replace(tmp, dest)
    except TypeError as e:
        tmp.unlink(missing_ok=True)
        raise ContextError(f"context is not JSON-serialisable: {e}") from None
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise ContextError(f"cannot write the context file {dest}: {e.strerror or e}") from None


def prepare(context: ContextInput, dest_stem: Path) -> ContextInfo:
    """Make ``context`` ready for the kernel and fingerprint it.

    Args:
        context: a ``str`` (the text itself), a ``list`` or ``dict`` (JSON-serialisable), a path
            (``pathlib.Path`` or any ``os.PathLike``: a text file, a ``.json`` file holding a list
            or an object, or a directory, read as ``{relative path: text}``), or a list of paths,
            read as a list of their contents.
        dest_stem: where to write a context file when one is needed, without suffix; the suffix
            ``.context.txt`` or ``.context.json`` is added.

    Raises:
        ContextError: a path is missing or unreadable, JSON is invalid or not a list/object, or
            an object cannot be serialised.
    """
    warnings: list[str] = []
    source: Path | None = None
    origin: Origin = "value"
    file_names: tuple[str, ...] = ()
    if isinstance(context, os.PathLike):
        source = Path(context).expanduser()
        value = _load_path(source, warnings)
        origin = _origin_of(source)
    elif (
        isinstance(context, (list, tuple))
        and context
        and all(isinstance(p, os.PathLike) for p in context)
    ):
        value = [_load_path(Path(p).expanduser(), warnings) for p in context]
        origin, file_names = "files", tuple(Path(p).name for p in context)
    elif isinstance(context, (str, list, dict)):
        value = context
    elif isinstance(context, tuple):
        value = list(context)
    else:
        raise ContextError(
            "context must be a str, a list, a dict, a path or a list of paths, "
            f"not {type(context).__name__}"
        )

    kind: Literal["text", "json"] = "text" if isinstance(value, str) else "json"
    if source is not None and source.is_file() and not warnings:
        target = source.resolve()  # a file the kernel can decode as it is is mapped where it lies
    else:
        target = Path(f"{dest_stem}.context.{'txt' if kind == 'text' else 'json'}").resolve()
        _write(value, target)

    if empty := _emptiness(value):
        # After the choice above: an empty file needs no copy, only a word to the user.
        warnings.append(f"{source if source is not None else 'the context'} {empty}")
    size, digest = target.stat().st_size, file_sha256(target)
    if kind == "text":
        chars, preview = len(value), value[:PREVIEW_CHARS]  # type: ignore[arg-type]
    else:
        with open(target, encoding="utf-8") as f:
            text = f.read()
        chars, preview = len(text), text[:PREVIEW_CHARS]
    return ContextInfo(
        type=type(value).__name__,  # type: ignore[arg-type]
        kind=kind,
        path=target,
        chars=chars,
        bytes=size,
        sha256=digest,
        preview=preview,
        warnings=tuple(warnings),
        origin=origin,
        file_names=file_names,
        **_describe(value),
    )


# --------------------------------------------------------------------------- a recorded context


@dataclasses.dataclass(frozen=True)
class RecordedContext:
    """A recorded run's context, found beside its notebook and verified.

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


def resolve_context(
    meta: Mapping[str, Any], notebook_dir: str | os.PathLike[str]
) -> RecordedContext:
    """Find a run's context file beside its notebook and check it against its fingerprint.

    Args:
        meta: the notebook's ``metadata.rlm.context`` (a mapping with ``sha256``, ``path``,
            ``kind``/``type`` and maybe ``embedded``).
        notebook_dir: the folder of the notebook (``path`` is relative to it).

    A missing or different file falls back to the ``embedded`` text when the notebook carries
    its context.

    Raises:
        ContextError: no usable context: the message names the file and the expected checksum.
    """
    ctx = meta
    expected, rel = ctx.get("sha256"), ctx.get("path")
    if not expected or not rel:
        raise ContextError("the run notebook records no context file (metadata.rlm.context)")
    kind = ctx.get("kind") or ("text" if ctx.get("type") == "str" else "json")
    path = Path(notebook_dir, rel)
    embedded = ctx.get("embedded")
    if (
        isinstance(embedded, str)
        and hashlib.sha256(embedded.encode("utf-8", "surrogatepass")).hexdigest() != expected
    ):
        embedded = None  # an embedded copy that does not match the record cannot stand in
    if path.is_file():
        try:
            actual = file_sha256(path)
        except OSError as e:
            raise ContextError(f"cannot read the run's context file {path}: {e.strerror}") from e
        if actual == expected:
            return RecordedContext(kind=kind, sha256=expected, path=path)
        if embedded is not None:
            return RecordedContext(kind=kind, sha256=expected, embedded=embedded)
        raise ContextError(
            f"the context file {path} differs from the one the run used: its sha256 is "
            f"{actual}, the run recorded {expected}; restore the original file to replay"
        )
    if embedded is not None:
        return RecordedContext(kind=kind, sha256=expected, embedded=embedded)
    raise ContextError(
        f"the run's context file is missing: expected {path} with sha256 {expected}; "
        "put it there (its path is relative to the notebook) to replay"
    )
