"""Recursive Language Models that drive a real Jupyter kernel; every run is a notebook."""

import os as _os
import typing as _typing

from .batching import abatch, batch
from .context import ContextWarning
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
from .live import attach as _attach_display
from .llm import LLM, register_provider
from .run import RLM
from .run import set_default_display as _set_default_display
from .types import Completion, Limits, RunResult, Sampling, Usage

if _typing.TYPE_CHECKING:
    from .widgets import RunViewer

__version__ = "0.1.0"

# The run core shows nothing itself; the user interface registers what shows a run by default
# (a live widget in Jupyter, a line per step in a terminal).
_set_default_display(_attach_display)


def load_ipython_extension(ipython: object) -> None:
    """``%load_ext rlm_kernel``: register the ``%rlm_replay`` magic (see ``rlm_kernel.magic``)."""
    # Imported here: IPython and the replay machinery are only needed inside a kernel.
    from .magic import load_ipython_extension as load

    load(ipython)


def view(path: str | _os.PathLike[str]) -> "RunViewer":
    """A widget to step through the run notebook at ``path`` (needs ``rlm-kernel[lab]``).

    Returns:
        A :class:`rlm_kernel.widgets.RunViewer`, an ipywidgets box: display it in Jupyter.
    """
    # Imported here: ipywidgets is an optional extra, needed only to show a run.
    from .widgets import RunViewer

    return RunViewer(path)


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
    "Sampling",
    "UnknownProviderError",
    "Usage",
    "UsageError",
    "__version__",
    "abatch",
    "batch",
    "load_ipython_extension",
    "register_provider",
    "view",
]
