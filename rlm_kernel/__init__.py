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
from .context import ContextWarning
from .llm import LLM, register_provider
from .run import RLM
from .types import Completion, Limits, RunResult, Usage

__version__ = "0.1.0"


def load_ipython_extension(ipython: object) -> None:
    """``%load_ext rlm_kernel``: register the ``%rlm_replay`` magic (see ``rlm_kernel.magic``)."""
    # Imported here: IPython and the replay machinery are only needed inside a kernel.
    from .magic import load_ipython_extension as load

    load(ipython)


__all__ = [
    "LLM",
    "RLM",
    "BudgetExceeded",
    "Completion",
    "ContextError",
    "ContextWarning",
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
    "load_ipython_extension",
    "register_provider",
]
