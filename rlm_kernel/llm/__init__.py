"""Model providers behind one small protocol.

A provider is a module with a class implementing :class:`LLM` and one registry entry mapping its
name to a factory ``(model_id) -> LLM``. ``resolve("anthropic:claude-sonnet-5-5")`` looks the
provider up; built-ins register through the same door as third-party packages, which declare an
entry point in the ``rlm_kernel.providers`` group (loaded on the first ``resolve``, not at import).
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable, Sequence
from importlib import import_module, metadata
from typing import Any, Protocol, runtime_checkable

from ..errors import UnknownProviderError, UsageError
from ..types import Completion, Message

DEFAULT_ROOT_MODEL = "anthropic:claude-sonnet-5-5"
DEFAULT_SUB_MODEL = "anthropic:claude-haiku-5-5"
ENTRY_POINT_GROUP = "rlm_kernel.providers"
# With ``stream=None`` providers stream replies allowed more output tokens than this: long root
# turns never hit HTTP read timeouts, while short sub-calls skip the cost of server-sent events.
STREAM_ABOVE_TOKENS = 8_192


def wants_stream(stream: bool | None, max_tokens: int) -> bool:
    """Whether a provider built with ``stream`` should stream a reply of ``max_tokens``."""
    return max_tokens > STREAM_ABOVE_TOKENS if stream is None else stream


@runtime_checkable
class LLM(Protocol):
    """A chat model: the conversation in, one :class:`Completion` out.

    ``messages`` starts with an optional ``{"role": "system"}`` message followed by alternating
    ``user`` / ``assistant`` messages. ``name`` is recorded in the notebook, e.g.
    ``"anthropic:claude-sonnet-5-5"``.

    The sampling keywords (``temperature: float``, ``seed: int``) are passed only when the user
    set them, so a model that takes none of them needs no ``**sampling`` parameter; a wrapper
    forwards ``**sampling`` unchanged. A model may declare ``sampling_keywords`` (the names it
    takes) when its signature does not tell.
    """

    name: str

    async def complete(
        self, messages: Sequence[Message], *, max_tokens: int, **sampling: Any
    ) -> Completion: ...


ProviderFactory = Callable[[str], LLM]


def _lazy(module: str, cls: str) -> ProviderFactory:
    # The SDKs are imported only when their provider is used.
    def factory(model_id: str) -> LLM:
        return getattr(import_module(module, __name__), cls)(model_id)

    factory.__qualname__ = f"{cls}.factory"
    return factory


_BUILTINS: dict[str, ProviderFactory] = {
    "anthropic": _lazy(".anthropic", "AnthropicLLM"),
    "openai": _lazy(".openai", "OpenAILLM"),
}
_providers: dict[str, ProviderFactory] = dict(_BUILTINS)
_entry_points_loaded = False


def register_provider(name: str, factory: ProviderFactory) -> None:
    """Make ``name:MODEL`` resolve to ``factory(MODEL)``; a later registration wins."""
    if not name or ":" in name:
        raise ValueError(f"provider names are non-empty and have no colon, not {name!r}")
    _providers[name] = factory


def unregister_provider(name: str) -> None:
    """Remove a provider registered with :func:`register_provider` (built-ins come back)."""
    _providers.pop(name, None)
    if name in _BUILTINS:
        _providers[name] = _BUILTINS[name]


def providers() -> list[str]:
    """Names of the registered providers, entry points included."""
    _load_entry_points()
    return sorted(_providers)


def _load_entry_points() -> None:
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    _entry_points_loaded = True
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        _providers.setdefault(ep.name, _lazy_entry_point(ep))


def _lazy_entry_point(ep: metadata.EntryPoint) -> ProviderFactory:
    def factory(model_id: str) -> LLM:
        return ep.load()(model_id)

    return factory


def resolve(spec: str | LLM | Callable[..., object]) -> LLM:
    """Turn ``"provider:model"``, an :class:`LLM` or a plain callable into an :class:`LLM`.

    A callable takes ``messages`` (a list of dicts) and returns the reply text, or an awaitable
    of it.
    """
    if isinstance(spec, str):
        provider, sep, model_id = spec.partition(":")
        if not sep or not provider or not model_id:
            raise UsageError(
                f"model {spec!r} is not of the form PROVIDER:MODEL "
                "(e.g. anthropic:claude-sonnet-5-5 or openai:gpt-5-mini)"
            )
        _load_entry_points()
        try:
            factory = _providers[provider]
        except KeyError:
            raise UnknownProviderError(provider, sorted(_providers)) from None
        return factory(model_id)
    if isinstance(spec, LLM) and inspect.iscoroutinefunction(type(spec).complete):
        return spec
    if callable(spec):
        from .function import FunctionLLM

        return FunctionLLM(spec)
    raise UsageError(f"a model is a 'provider:model' string, an LLM or a callable, not {spec!r}")


def accepted_sampling(llm: LLM) -> frozenset[str] | None:
    """The sampling keywords ``llm.complete`` takes; ``None`` when it takes any keyword."""
    declared = getattr(llm, "sampling_keywords", None)
    if declared is not None:
        return frozenset(declared)
    try:
        params = inspect.signature(llm.complete).parameters.values()
    except (TypeError, ValueError):
        return None
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return None
    return frozenset(p.name for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY)


def check_sampling(llm: LLM, sampling: dict[str, Any], *, role: str) -> None:
    """Make sure ``llm`` takes the sampling keywords the user set for it.

    Raises:
        UsageError: a keyword set for ``role`` is not one ``llm.complete`` takes.
    """
    accepted = accepted_sampling(llm)
    refused = sorted(k for k in sampling if accepted is not None and k not in accepted)
    if refused:
        names = ", ".join(refused)
        raise UsageError(
            f"the {role} model {llm.name} takes no {names}: its complete() has no such keyword "
            f"(accept them, or **sampling, to use {names}; or leave {names} unset for it)"
        )


async def complete(
    llm: LLM, messages: Sequence[Message], *, max_tokens: int, **sampling: Any
) -> Completion:
    """Call ``llm.complete`` and check what comes back, whatever the model is.

    The reply's text is made safe for JSON and the notebook: a lone surrogate (which some
    servers send inside a broken multi-byte character) becomes U+FFFD.

    Raises:
        TypeError: ``complete`` returned something other than a :class:`Completion`.
        ModelError: as raised by the model.
    """
    out = await llm.complete(messages, max_tokens=max_tokens, **sampling)
    if not isinstance(out, Completion):
        raise TypeError(
            f"{type(llm).__name__}.complete() of model {getattr(llm, 'name', '?')!r} returned "
            f"{type(out).__name__}, not a rlm_kernel.types.Completion: return "
            "Completion(text=..., model=self.name) (or give RLM a plain function that returns "
            "the text)"
        )
    if not isinstance(out.text, str):
        raise TypeError(
            f"{type(llm).__name__}.complete() returned a Completion whose text is "
            f"{type(out.text).__name__}, not str"
        )
    text = clean_text(out.text)
    return out if text is out.text else dataclasses.replace(out, text=text)


def clean_text(text: str) -> str:
    """``text`` with each lone surrogate replaced by U+FFFD; ``text`` itself when it has none."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        # Through UTF-16 a valid surrogate pair joins up again and only lone halves are lost.
        return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    return text


__all__ = [
    "DEFAULT_ROOT_MODEL",
    "DEFAULT_SUB_MODEL",
    "LLM",
    "STREAM_ABOVE_TOKENS",
    "ProviderFactory",
    "accepted_sampling",
    "check_sampling",
    "clean_text",
    "complete",
    "providers",
    "register_provider",
    "resolve",
    "unregister_provider",
    "wants_stream",
]
