"""Exceptions raised by rlm-kernel on the host side.

The class tree::

    RLMKernelError
    ├── UsageError (ValueError)            bad input from the user: CLI exit code 2
    │   ├── ContextError                   a context that cannot be read
    │   ├── UnknownProviderError (LookupError)
    │   ├── MissingAPIKeyError             names the environment variable to set
    │   └── OutputPathError                the notebook cannot be written there
    ├── ModelError (RuntimeError)          a model API call failed after the SDK's retries
    │   └── ModelRefused                   ... in a way every later call would too (401/403/404)
    ├── KernelError (RuntimeError)
    │   └── KernelStartError
    ├── BudgetExceeded (RuntimeError)      carries the limit, what was spent and the budget
    ├── ReplayMiss (LookupError)           replay met a prompt the record never answered
    ├── SubcallCancelled                   a sub-call cut short by its cell's timeout
    ├── SubcallFailed (RuntimeError)       a recorded sub-call failure, replayed as recorded
    ├── ToolError (RuntimeError)           a host tool raised; carries the tool and its class
    ├── BridgeError (ConnectionError)
    ├── NotebookFormatError (ValueError)   not a valid rlm-kernel run notebook
    ├── ReplayDiverged (RuntimeError)      re-running recorded code did not give what was recorded
    └── RunStopped                         the human in the loop stopped the run

Code running inside the kernel sees the kernel-side twins defined in ``runtime.py``
(``SubcallError``, ``BudgetExceeded``, ``ReplayMiss``), which import nothing from here. Errors
cross the kernel/host line, and are kept in the notebook, as one structured record
``{type, message, retries}``; :data:`WIRE_TYPES` is the one table from host exceptions to those
types, and each type is the name of the exception class the kernel's code sees.
This module imports nothing from the package.
"""

from __future__ import annotations


class RLMKernelError(Exception):
    """Base class of every error rlm-kernel raises on purpose."""


class UsageError(RLMKernelError, ValueError):
    """The user asked for something that cannot be done; the message says what to change."""


class ContextError(UsageError):
    """The context could not be read or has an unsupported shape."""


class UnknownProviderError(UsageError, LookupError):
    """A ``provider:model`` name whose provider is not registered."""

    def __init__(self, provider: str, known: list[str]) -> None:
        self.provider = provider
        self.known = known
        super().__init__(
            f"no model provider named {provider!r}; known providers: {', '.join(known)} "
            "(write models as PROVIDER:MODEL, e.g. anthropic:claude-sonnet-5-5)"
        )


class MissingAPIKeyError(UsageError):
    """The provider needs a key that is not set."""

    def __init__(self, provider: str, env_var: str, hint: str = "") -> None:
        self.provider = provider
        self.env_var = env_var
        message = f"no API key for {provider}: set the {env_var} environment variable"
        super().__init__(message + (f" ({hint})" if hint else ""))


class OutputPathError(UsageError):
    """The run notebook cannot be written where it was asked to go."""


class ModelError(RLMKernelError, RuntimeError):
    """A model call failed after the SDK's retries.

    ``transient`` says the failure was in the transport of a reply (a connection lost mid-way,
    a stream cut, empty or not valid), which the same call made again may well not meet; an
    HTTP error status (a bad key, an unknown model) is not transient.
    """

    def __init__(
        self,
        model: str,
        message: str,
        *,
        retries: int = 0,
        status: int | None = None,
        transient: bool = False,
    ) -> None:
        self.model = model
        self.reason = message
        self.retries = retries
        self.status = status
        self.transient = transient
        super().__init__(f"{model}: {message}")


class ModelRefused(ModelError):
    """The API refused the model or the key (HTTP 401, 403, 404): every call would fail alike.

    A run meeting it stops at once (stop reason ``model_error``) rather than going on without
    the model.
    """

    stop_reason = "model_error"
    STATUSES = frozenset({401, 403, 404})


class KernelError(RLMKernelError, RuntimeError):
    """The Jupyter kernel could not do what was asked."""


class KernelStartError(KernelError):
    """The kernel did not start or did not become ready in time."""


class BudgetExceeded(RLMKernelError, RuntimeError):
    """A limit of the run (sub-calls, cost, time, depth) was reached."""

    def __init__(
        self, limit: str, spent: float, budget: float, *, message: str | None = None
    ) -> None:
        self.limit = limit
        self.spent = spent
        self.budget = budget
        super().__init__(message or f"{limit} budget exhausted: {spent:g} used of {budget:g}")


class ReplayMiss(RLMKernelError, LookupError):
    """Replay met a prompt that the recorded run never sent (or sent fewer times)."""


class SubcallCancelled(RLMKernelError):
    """A sub-call was cut short: its cell timed out or the run stopped while it ran."""


class SubcallFailed(RLMKernelError, RuntimeError):
    """A sub-call failure carried as it was recorded: it reaches the kernel as ``wire_type``.

    Replay and forks raise it for a recorded failure, so the kernel's code meets the same
    exception (a ``BudgetExceeded`` stays a ``BudgetExceeded``) with the same message.
    """

    def __init__(
        self,
        message: str,
        *,
        wire_type: str = "SubcallError",
        retries: int = 0,
        cause: str | None = None,
    ) -> None:
        self.wire_type = wire_type
        self.retries = retries
        self.cause = cause
        super().__init__(message)


class ToolError(RLMKernelError, RuntimeError):
    """A host tool called from the kernel raised, or its call could not be made.

    It reaches the kernel's code as the runtime's ``ToolError``, with the same message.

    Attributes:
        tool: the tool's name.
        cause: the class name of the exception the tool raised (``ValueError``, ...).
    """

    def __init__(self, message: str, *, tool: str, cause: str) -> None:
        self.tool = tool
        self.cause = cause
        super().__init__(message)


class BridgeError(RLMKernelError, ConnectionError):
    """The kernel-to-host bridge failed."""


class NotebookFormatError(RLMKernelError, ValueError):
    """A notebook that is not a valid rlm-kernel run record."""


class ReplayDiverged(RLMKernelError, RuntimeError):
    """Re-running a recorded run's code did not reproduce what the record says."""


class RunStopped(RLMKernelError):
    """The human in the loop stopped the run; the notebook is saved as ``interrupted``."""


# Host exception → wire type, first match wins. A wire type is also the name of the exception
# class that code in the kernel sees (``runtime.py`` has one class per type; a test checks the
# two sides agree). Anything else a sub-call raises reaches the kernel as ``SubcallError``.
WIRE_TYPES: tuple[tuple[type[BaseException], str], ...] = (
    (BudgetExceeded, "BudgetExceeded"),
    (ReplayMiss, "ReplayMiss"),
    (SubcallCancelled, "SubcallCancelled"),
    (BridgeError, "BridgeError"),
    (ToolError, "ToolError"),
    (Exception, "SubcallError"),
)
HOST_CLASSES: dict[str, type[RLMKernelError]] = {
    "BudgetExceeded": BudgetExceeded,
    "ReplayMiss": ReplayMiss,
    "SubcallCancelled": SubcallCancelled,
    "BridgeError": BridgeError,
    "ToolError": ToolError,
}


def wire_type(exc: BaseException) -> str:
    """The wire type an exception travels as (see :data:`WIRE_TYPES`)."""
    if isinstance(exc, SubcallFailed):
        return exc.wire_type
    return next(name for cls, name in WIRE_TYPES if isinstance(exc, cls))
