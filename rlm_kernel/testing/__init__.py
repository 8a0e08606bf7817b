"""Test models without a network: a local server that speaks the Anthropic and OpenAI APIs.

:class:`FakeModelServer` plays :class:`ScriptedModel` scripts (or rule functions) behind the real
HTTP APIs, so code under test uses the real ``anthropic`` and ``openai`` SDKs unchanged. The
pytest plugin ``rlm_kernel.testing.pytest_plugin`` provides a ready ``fake_model_server`` fixture.
See ``docs/testing.md``.
"""

from ._requests import Fault, RecordedRequest
from ._wire import estimate_tokens
from .scripted import Reply, ScriptedModel, ScriptExhausted
from .server import FakeModelServer, Model

__all__ = [
    "FakeModelServer",
    "Fault",
    "Model",
    "RecordedRequest",
    "Reply",
    "ScriptExhausted",
    "ScriptedModel",
    "estimate_tokens",
]
