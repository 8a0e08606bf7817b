"""``RLM``: the configuration of a run and its entry points.

``RLM.arun`` is the code; ``RLM.run`` is its one-line sync twin (``aresume`` / ``resume`` fork a
recorded run). ``RLM`` checks its options and the input, picks the display, and hands the run to
a :class:`~rlm_kernel.compose.RunTree`, which composes it (and any child runs ``rlm_query``
starts, below it, sharing the tree's models, budget, concurrency cap and warm kernels).

The run core shows nothing itself: callers pass hooks (``on_step``, ``on_output``,
``on_subcall``, ``on_child``), and the user interface registers the display that Jupyter runs
get by default (:func:`set_default_display`).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import tempfile
import uuid
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import prompts
from .answer import AnswerSchema, SchemaInput
from .budget import Budget
from .compose import RunSpec, RunTree
from .compose import close_models as close_models  # the bench runner imports it from here
from .context import ContextInput, ContextWarning, prepare
from .errors import NotebookFormatError, OutputPathError, UsageError
from .fork import Fork
from .hooks import Hook, run_hook, run_sync
from .llm import DEFAULT_ROOT_MODEL, DEFAULT_SUB_MODEL, LLM
from .llm.cache import CallCache
from .record import read
from .session import SessionFactory
from .tools import ToolBox, ToolsInput
from .types import Limits, RunResult, Sampling

__all__ = ["RLM", "check_notebook_path", "recorded_models", "run_sync", "set_default_display"]

RUNS_DIR = "rlm-runs"
# What shows a run when the caller asked for nothing in particular: registered by the user
# interface (rlm_kernel.live), called as attach(display=, hooks=, approve=, notebook=,
# max_steps=, question=) and returning (hooks, approve, display_or_None); a display has
# ``run(coro)``, which runs the run under it (e.g. with a Stop button).
_default_display: Callable[..., tuple[dict[str, Any], Any, Any]] | None = None


def set_default_display(attach: Callable[..., tuple[dict[str, Any], Any, Any]] | None) -> None:
    """Register how runs are shown by default (the user interface does this; ``None`` clears)."""
    global _default_display
    _default_display = attach


def default_notebook_path(run_id: str) -> Path:
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path(RUNS_DIR) / f"run-{stamp}-{run_id[:6]}.ipynb"


def check_notebook_path(path: Path) -> Path:
    """Make sure a notebook can be written at ``path``; raise :class:`OutputPathError` if not."""
    if path.suffix != ".ipynb":
        raise OutputPathError(f"the run notebook must end in .ipynb: {path}")
    if path.is_dir():
        raise OutputPathError(f"{path} is a directory; give a notebook file name")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, prefix=".rlm-probe-"):
            pass
    except OSError as e:
        raise OutputPathError(f"cannot write the notebook {path}: {e.strerror or e}") from None
    if path.exists() and not os.access(path, os.W_OK):
        raise OutputPathError(f"cannot write the notebook {path}: permission denied")
    return path.resolve()


class RLM:
    """A Recursive Language Model whose REPL is a Jupyter kernel.

    Args:
        model: the root model: ``"provider:model"``, an :class:`~rlm_kernel.llm.LLM`, or a
            callable ``(messages) -> str``.
        sub_model: the model answering ``llm_query`` and friends, given the same ways
            (default: the same as ``model`` when ``model`` is given, else the default
            sub-model).
        child_model: the root model of child runs started by ``rlm_query`` (default: ``model``).
        limits: a :class:`~rlm_kernel.types.Limits`; keyword arguments named like its fields
            (``max_steps=10``) override single fields.
        sampling: a :class:`~rlm_kernel.types.Sampling` (temperature and seed per role);
            keyword arguments named like its fields (``temperature=0``, ``sub_seed=7``)
            override single fields. Only the values set are sent; a model whose ``complete``
            does not take one that is set is a :class:`~rlm_kernel.errors.UsageError`.
        on_step: hook called after each model reply as ``on_step(step=, max_steps=, text=,
            blocks=, usage=, subcalls=, cost_usd=, elapsed_s=)``.
        on_output: hook called as ``on_output(step=, block=, status=, shown=)`` after each block.
        on_start: hook called once the input is checked and the run begins, as
            ``on_start(models=, limits=, notebook=)``: the root and sub-model names, the
            :class:`~rlm_kernel.types.Limits` and the notebook's path.
        on_step_end: hook called once a step's code has run, as ``on_step_end(step=,
            max_steps=, blocks=, step_subcalls=, usage=, subcalls=, cost_usd=, elapsed_s=,
            last_call=)``: ``blocks`` the blocks that ran, ``step_subcalls`` the sub-calls they
            made, the other figures the run's totals so far.
        on_subcall: hook called as ``on_subcall(record=)`` after each sub-call.
        on_child: hook called as ``on_child(event=, notebook=, depth=, question=, result=)``
            when a child run starts (``event="start"``, ``result=None``), after each of its
            steps (``"step"``, with the keywords of ``on_step`` too) and when it ends (``"end"``,
            ``result`` its :class:`~rlm_kernel.types.RunResult`). Grandchildren report to the
            same hook, with their depth.
        kernel_name: the Jupyter kernelspec to run the code in.
        embed_context: also store the context's text in the notebook (up to
            ``context.EMBED_LIMIT_CHARS``), so the notebook replays without its context file.
        approve: a human in the loop, called before each code block runs as
            ``approve(step=, block=, code=)`` (sync or async). It returns the code to run (the
            model's, or an edited version), ``None`` to skip the block, or ``False`` to stop the
            run (status ``interrupted``, stop reason ``stopped``). An edited block runs as
            edited; the cell's ``metadata.rlm.approval`` keeps the model's original.
            ``approve=True`` asks a person through the registered display (buttons in Jupyter,
            a prompt in a terminal).
        display: ``None`` uses the registered default display (in Jupyter, a live widget when
            no hook is given), ``True`` always shows it, ``False`` never.
        session: where the root's code runs (a :class:`~rlm_kernel.session.SessionFactory`):
            by default a fresh :class:`~rlm_kernel.kernel.KernelSession` per run;
            :class:`rlm_kernel.here.HereSession` runs it in the current IPython kernel.
            Child runs always get kernels of their own.
        warm_kernels: kernels started ahead of time for child runs (when ``max_depth > 1``).
        system_prompt: a template for the system prompt, with the placeholders of
            ``rlm_kernel.prompts.PLACEHOLDERS`` (see docs/prompt.md); ``None`` uses the default.
            The rendered prompt is recorded in the notebook's ``metadata.rlm.system_prompt``.
        kernel: ``"local"`` (default) or ``"gateway"``: the root's kernel on a Jupyter Kernel
            or Enterprise Gateway (``rlm-kernel[gateway]``), at ``gateway_url`` with
            ``gateway_token`` (default: ``JUPYTER_GATEWAY_URL``, ``JUPYTER_GATEWAY_AUTH_TOKEN``).
        gateway_url: the gateway's URL; implies ``kernel="gateway"``.
        gateway_token: the gateway's token (kept on the host, never recorded).
        tools: host tools the model's code may call by name: a dict name → function or a
            list of functions (named by ``__name__``), sync or async, taking and returning
            JSON values. Child runs get the same tools. See docs/tools.md.
        cache: a model-call cache (a :class:`~rlm_kernel.llm.cache.CallCache`, or the path of
            its SQLite file): a call made before with the same model, ``max_tokens``, sampling
            and messages is answered from it at no cost, and recorded as ``cached``; ``None``
            (the default) calls the models every time. See docs/cache.md.

    Raises:
        UsageError: an unknown option or a bad limit; ``CacheError`` (a ``UsageError``) when
            the cache file is corrupt, not a cache, or cannot be written.
    """

    def __init__(
        self,
        model: str | LLM | Callable[..., object] = DEFAULT_ROOT_MODEL,
        sub_model: str | LLM | Callable[..., object] | None = None,
        *,
        child_model: str | LLM | Callable[..., object] | None = None,
        limits: Limits | None = None,
        sampling: Sampling | None = None,
        on_step: Hook | None = None,
        on_output: Hook | None = None,
        on_start: Hook | None = None,
        on_step_end: Hook | None = None,
        on_subcall: Hook | None = None,
        on_child: Hook | None = None,
        kernel_name: str = "python3",
        embed_context: bool = False,
        approve: Hook | bool | None = None,
        display: bool | None = None,
        session: SessionFactory | None = None,
        warm_kernels: int = 2,
        system_prompt: str | None = None,
        kernel: str = "local",
        gateway_url: str | None = None,
        gateway_token: str | None = None,
        tools: ToolsInput = None,
        cache: CallCache | str | os.PathLike | None = None,
        **limit_overrides: Any,
    ) -> None:
        sampling_names = {f.name for f in dataclasses.fields(Sampling)}
        sampling_overrides = {
            k: limit_overrides.pop(k) for k in list(limit_overrides) if k in sampling_names
        }
        try:
            self.limits = dataclasses.replace(limits or Limits(), **limit_overrides)
            self.sampling = dataclasses.replace(sampling or Sampling(), **sampling_overrides)
        except TypeError:
            known = ", ".join(f.name for f in dataclasses.fields(Limits))
            unknown = ", ".join(sorted(set(limit_overrides) - set(known.split(", "))))
            raise UsageError(
                f"unknown RLM option(s): {unknown}; limits are: {known}; sampling: "
                f"{', '.join(sorted(sampling_names))}"
            ) from None
        except ValueError as e:
            raise UsageError(str(e)) from None
        try:
            self.system_prompt = (
                None if system_prompt is None else prompts.check_template(system_prompt)
            )
        except ValueError as e:
            raise UsageError(str(e)) from None
        self.model = model
        if sub_model is None:
            sub_model = DEFAULT_SUB_MODEL if model == DEFAULT_ROOT_MODEL else model
        self.sub_model = sub_model
        self.child_model = child_model
        self.hooks = {
            "on_step": on_step,
            "on_output": on_output,
            "on_start": on_start,
            "on_step_end": on_step_end,
            "on_subcall": on_subcall,
            "on_child": on_child,
        }
        self.kernel_name = kernel_name
        self.embed_context = embed_context
        self.approve = approve
        self.display = display
        if kernel not in ("local", "gateway"):
            raise UsageError(f"kernel must be 'local' or 'gateway', not {kernel!r}")
        if kernel == "gateway" or gateway_url is not None:
            if session is not None:
                raise UsageError("give either session= or a gateway, not both")
            from .gateway import Gateway  # the [gateway] extra

            # The URL and token default to JUPYTER_GATEWAY_URL / JUPYTER_GATEWAY_AUTH_TOKEN.
            session = Gateway(gateway_url, gateway_token, kernel_name=kernel_name)
        self.session = session
        self.warm_kernels = warm_kernels
        self.tools = tools
        ToolBox(tools)  # a bad tool is a usage error now, not in the middle of a run
        self.cache = cache if isinstance(cache, CallCache) or cache is None else CallCache(cache)

    async def arun(
        self,
        question: str,
        context: ContextInput,
        notebook: str | os.PathLike | None = None,
        *,
        answer_schema: SchemaInput | AnswerSchema = None,
    ) -> RunResult:
        """Answer ``question`` over ``context``, recording the run as a notebook.

        Args:
            question: what to answer.
            context: the input (text, a list, a dict, or a path; see docs/cli.md).
            notebook: where to write the run notebook (default: under ``rlm-runs/``).
            answer_schema: a JSON Schema (dict) or a pydantic model class that the final
                value must match (see docs/typed-answers.md); the parsed object is
                ``RunResult.value``.

        Raises:
            UsageError: bad input (empty question, unreadable context, unknown provider, missing
                API key, unwritable notebook path); nothing has run yet.
        """
        if not isinstance(question, str) or not question.strip():
            raise UsageError("the question is empty; ask something about the context")
        schema = AnswerSchema.of(answer_schema)
        return await self._start(question.strip(), context, notebook, fork=None, schema=schema)

    async def aresume(
        self,
        notebook: str | os.PathLike,
        from_step: int,
        out: str | os.PathLike | None = None,
    ) -> RunResult:
        """Fork a recorded run at ``from_step``: replay the steps before it, then go on live.

        The kernel's state is rebuilt by running the recorded code of steps ``1 .. from_step - 1``
        with their sub-calls answered from the record; the root model's conversation is rebuilt
        from the recorded replies and what the model was shown. From ``from_step`` on, this
        RLM's models answer. The new notebook (``out``, by default ``<name>-from-<K>.ipynb``
        beside the parent) starts with copies of the parent's earlier steps, keeps the links to
        the child runs they made, and records ``parent {notebook, run_id, step}``.

        Raises:
            UsageError: the notebook is not a run notebook, its context is missing or altered,
                or ``from_step`` is not one of its steps.
        """
        fork = Fork.load(Path(notebook), from_step)
        target = Path(out) if out else fork.default_out()
        recorded = fork.run.run.extra.get("answer_schema")
        schema = (
            AnswerSchema(recorded["json_schema"])
            if isinstance(recorded, dict) and isinstance(recorded.get("json_schema"), dict)
            else None
        )
        return await self._start(fork.question, fork.context, target, fork=fork, schema=schema)

    run = run_sync(arun)
    resume = run_sync(aresume)

    async def _start(
        self,
        question: str,
        context: ContextInput,
        notebook: str | os.PathLike | None,
        fork: Fork | None,
        schema: AnswerSchema | None = None,
    ) -> RunResult:
        run_id = uuid.uuid4().hex[:12]
        tree = RunTree(self)
        try:
            tree.resolve_models()
            nb_path = check_notebook_path(
                Path(notebook) if notebook else default_notebook_path(run_id)
            )
            info = prepare(context, nb_path.with_suffix(""))
            for message in info.warnings:
                warnings.warn(message, ContextWarning, stacklevel=3)
            hooks, approve, display = dict(self.hooks), self.approve, None
            if _default_display is not None and (self.display is not False or approve is True):
                hooks, approve, display = _default_display(
                    display=self.display,
                    hooks=hooks,
                    approve=approve,
                    notebook=nb_path,
                    max_steps=self.limits.max_steps,
                    question=question,
                )
            elif approve is True:
                raise UsageError("approve=True needs a display to ask in; pass approve=a function")
        except BaseException:
            await tree.aclose()
            raise
        spec = RunSpec(
            question=question,
            context=info,
            notebook=nb_path,
            run_id=run_id,
            depth=1,
            budget=Budget(self.limits),
            parent=fork.parent_link(nb_path) if fork else None,
            hooks=hooks,
            approve=approve,
            fork=fork,
            answer_schema=schema,
        )
        try:
            await run_hook(
                hooks.get("on_start"),
                models={"root": tree.root.name, "sub": tree.sub.name},
                limits=self.limits,
                notebook=nb_path,
            )
            coro = tree.execute(spec)
            return await (display.run(coro) if display is not None else coro)
        finally:
            await tree.aclose()


def recorded_models(notebook: str | os.PathLike) -> tuple[str, str]:
    """The root and sub-model names a run notebook records.

    Raises:
        UsageError: the file is not a run notebook.
    """
    try:
        models = read(notebook).run.models
    except NotebookFormatError as e:
        raise UsageError(str(e)) from None
    return str(models.get("root") or DEFAULT_ROOT_MODEL), str(
        models.get("sub") or DEFAULT_SUB_MODEL
    )
