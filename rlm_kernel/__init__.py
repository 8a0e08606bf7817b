"""Recursive Language Models that drive a real Jupyter kernel; every run is a notebook."""

from .errors import (
    BudgetExceeded,
    ContextError,
    MissingAPIKeyError,
    ModelError,
    NotebookFormatError,
    RLMKernelError,
    UnknownProviderError,
    UsageError,
)
from .llm import LLM, register_provider
from .run import RLM
from .types import Completion, Limits, RunResult, Usage

__version__ = "0.1.0"

__all__ = [
    "LLM",
    "RLM",
    "BudgetExceeded",
    "Completion",
    "ContextError",
    "Limits",
    "MissingAPIKeyError",
    "ModelError",
    "NotebookFormatError",
    "RLMKernelError",
    "RunResult",
    "UnknownProviderError",
    "Usage",
    "UsageError",
    "__version__",
    "register_provider",
]
