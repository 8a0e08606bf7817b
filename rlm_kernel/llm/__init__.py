"""Model providers behind one small protocol.

A provider is a module with a class implementing :class:`LLM` and one registry entry mapping its
name to a factory ``(model_id) -> LLM``. ``resolve("anthropic:claude-sonnet-5-5")`` looks the
provider up; built-ins register through the same door as third-party packages, which declare an
entry point in the ``rlm_kernel.providers`` group (loaded on the first ``resolve``, not at import).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from importlib import import_module, metadata
from typing import Protocol, runtime_checkable

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
    """

    name: str

    async def complete(self, messages: Sequence[Message], *, max_tokens: int) -> Completion: ...


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


__all__ = [
    "DEFAULT_ROOT_MODEL",
    "DEFAULT_SUB_MODEL",
    "LLM",
    "STREAM_ABOVE_TOKENS",
    "ProviderFactory",
    "providers",
    "register_provider",
    "resolve",
    "unregister_provider",
    "wants_stream",
]
