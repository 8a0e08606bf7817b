"""The IPython extension: ``%load_ext rlm_kernel``, ``%rlm_replay RUN.ipynb`` and ``%%rlm``.

The setup cell of every run notebook is::

    %load_ext rlm_kernel
    %rlm_replay run.ipynb

so *Run All* in Jupyter (or ``jupyter nbconvert --execute``) replays the run without an API key:
``context`` is loaded from the fingerprinted file and ``llm_query`` & co. answer from the
recorded responses. See ``docs/replay.md``.

``%%rlm [options]`` runs a new RLM over a variable or a file, with the cell's body as the question
and a live widget of the run (see ``docs/interactive.md``).
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import shlex
from pathlib import Path
from typing import Any, NoReturn

from IPython.core.error import UsageError as IPythonUsageError
from IPython.core.magic import Magics, cell_magic, line_magic, magics_class
from IPython.display import publish_display_data

from . import options, replay
from .context import ContextInput
from .errors import RLMKernelError
from .here import HereSession, in_worker_thread
from .run import RLM
from .types import RunResult

__all__ = [
    "RLMMagics",
    "ReplayMagics",
    "await_rlm_cells",
    "load_ipython_extension",
    "parse_replay_line",
    "parse_rlm_line",
    "rlm_help",
]

_USAGE = "usage: %rlm_replay RUN.ipynb [--live]"


def parse_replay_line(line: str) -> tuple[str, bool]:
    """Split the magic's argument into the notebook name and the ``--live`` flag.

    The name is taken as written, or as a JSON string when it starts with a double quote (the
    recorder quotes names with spaces that way).

    Raises:
        ValueError: no name, several names or an unknown option.
    """
    names: list[str] = []
    live = False
    rest = line.strip()
    while rest:
        if rest.startswith('"'):
            try:
                token, end = json.JSONDecoder().raw_decode(rest)
            except json.JSONDecodeError:
                raise ValueError(f"unbalanced quotes in {line.strip()!r}; {_USAGE}") from None
            names.append(str(token))
            rest = rest[end:].lstrip()
            continue
        token, _, rest = rest.partition(" ")
        rest = rest.lstrip()
        if token == "--live":
            live = True
        elif token.startswith("--"):
            raise ValueError(f"unknown option {token}; {_USAGE}")
        else:
            names.append(token)
    if len(names) != 1:
        raise ValueError(f"give exactly one run notebook; {_USAGE}")
    return names[0], live


def _announce(value: str, via: str, recorded: str | None) -> None:
    data, metadata = replay.final_output(value, via, recorded)
    publish_display_data(data, metadata=metadata)


@magics_class
class ReplayMagics(Magics):
    """``%rlm_replay``: make this kernel replay a recorded run."""

    @line_magic
    def rlm_replay(self, line: str) -> None:
        """Load a run's context and answer ``llm_query`` & co. from its recorded responses.

        ``%rlm_replay RUN.ipynb`` (relative to the kernel's working directory, which in Jupyter
        is the notebook's folder). With ``--live``, prompts the run never sent go to the
        recorded sub-model (an API key must be set in the kernel's environment).
        """
        try:
            name, live = parse_replay_line(line)
            session = replay.install(
                self.shell.user_ns, name, shell=self.shell, live=live, on_final=_announce
            )
        except (ValueError, RLMKernelError) as e:
            # IPython shows a UsageError as one line, without a traceback.
            raise IPythonUsageError(str(e)) from None
        self.shell.user_ns["_rlm_replay"] = session
        print(session.describe())


class _LineParser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise ValueError(f"{message} (see %%rlm --help)")


_RLM_DESCRIPTION = """\
Answer the question written in the cell's body over a variable or a file, with a live widget
of the run (Stop ends it as 'interrupted'). The result is stored in _rlm (and in NAME with
--as NAME); the run notebook is --out, else rlm-runs/run-<date>-<time>-<id>.ipynb."""

_RLM_EPILOG = """\
example:
  %%rlm --context tickets --model openai:llama3.1 --max-steps 10 --as billing
  Which customer filed the most billing tickets?

A model may be PROVIDER:MODEL or the name of a variable holding an LLM or a function
(messages) -> str. See docs/interactive.md."""


def _rlm_parser() -> argparse.ArgumentParser:
    p = _LineParser(
        prog="%%rlm",
        add_help=False,
        allow_abbrev=False,
        description=_RLM_DESCRIPTION,
        epilog=_RLM_EPILOG,
        formatter_class=options.HelpFormatter,
    )
    p.add_argument("-h", "--help", action="store_true", help="show this help; nothing runs")
    p.add_argument(
        "--context",
        action="append",
        metavar="NAME_OR_PATH",
        default=[],
        help="a variable of this notebook, else a file or folder; repeat it for a list",
    )
    p.add_argument("--out", metavar="NOTEBOOK", help="the run notebook (default: under rlm-runs/)")
    p.add_argument("--approve", action="store_true", help="ask before each code block runs")
    p.add_argument("--no-display", action="store_true", help="no live widget")
    p.add_argument(
        "--here",
        action="store_true",
        help="run the model's code in this kernel, leaving its variables here",
    )
    p.add_argument("--as", dest="name", metavar="NAME", help="also store the result in NAME")
    options.add_model_options(
        p, names=("model", "sub_model", "child_model"), metavar="PROVIDER:MODEL_OR_NAME"
    )
    options.add_limit_options(p)
    options.add_sampling_options(p)
    options.add_price_option(p)
    return p


def rlm_help() -> str:
    """The text ``%%rlm --help`` prints: every option with its default."""
    return _rlm_parser().format_help()


def parse_rlm_line(line: str) -> argparse.Namespace:
    """The options of a ``%%rlm`` line (``help`` is true for ``--help``, which needs nothing else).

    Raises:
        ValueError: an unknown option, a missing or malformed value, or no ``--context``.
    """
    try:
        args = _rlm_parser().parse_args(shlex.split(line))
    except ValueError as e:
        raise ValueError(f"%%rlm: {e}") from None
    if args.help:
        return args
    if not args.context:
        raise ValueError("%%rlm: give the input with --context NAME_OR_PATH (a variable or a file)")
    if args.name is not None and not args.name.isidentifier():
        raise ValueError(f"%%rlm: --as needs a Python name, not {args.name!r}")
    return args


@magics_class
class RLMMagics(Magics):
    """``%%rlm``: ask a question (the cell's body) over a variable or a file."""

    @cell_magic
    def rlm(self, line: str, cell: str) -> None:
        """Run an RLM with the cell's body as the question; ``%%rlm --help`` lists the options.

        ``--context NAME_OR_PATH`` (repeatable), ``--model`` / ``--sub-model`` (``provider:model``
        or the name of a variable holding an LLM or a function; the sub-model follows
        ``--model`` when only that is given), ``--out NOTEBOOK``, every limit of
        :class:`~rlm_kernel.types.Limits` under its command-line name, ``--approve``,
        ``--no-display``, ``--here`` (run the model's code in this kernel, leaving its variables
        here) and ``--as NAME``. The result is stored in ``_rlm`` (and ``NAME``).
        """
        prepared = self._prepare(line, cell)
        if prepared is None:
            return
        rlm, question, context, args = prepared
        if args.here:
            raise IPythonUsageError(
                "%%rlm --here needs the kernel's autoawait (on by default in Jupyter): "
                "turn it on with %autoawait on"
            )
        try:
            result = rlm.run(question, context, notebook=args.out)
        except RLMKernelError as e:
            raise IPythonUsageError(str(e)) from None
        self._keep(result, args)

    async def arlm(self, line: str, cell: str) -> None:
        """The awaited form of ``%%rlm``, which the cell rewriting of :func:`await_rlm_cells` uses.

        Awaiting keeps the kernel's event loop free, so the widget's buttons work during the run.
        """
        prepared = self._prepare(line, cell)
        if prepared is None:
            return
        rlm, question, context, args = prepared
        try:
            if args.here:
                # The loop goes to a worker thread; this one runs the model's code (here.py).
                rlm.session = functools.partial(
                    HereSession, shell=self.shell, loop=asyncio.get_running_loop()
                )
                run = in_worker_thread(rlm.arun(question, context, notebook=args.out))
                result = await asyncio.wrap_future(run)
            else:
                result = await rlm.arun(question, context, notebook=args.out)
        except RLMKernelError as e:
            raise IPythonUsageError(str(e)) from None
        self._keep(result, args)

    def _prepare(
        self, line: str, cell: str
    ) -> tuple[RLM, str, ContextInput, argparse.Namespace] | None:
        """The run a cell asks for, or ``None`` when it asked for ``--help`` (printed here)."""
        ns = self.shell.user_ns
        try:
            args = parse_rlm_line(line)
            if args.help:
                print(rlm_help(), end="")
                return None
            question = cell.strip()
            if not question:
                raise ValueError("%%rlm: the cell is empty; write the question in the cell")
            contexts = [_context(ns, name) for name in args.context]
            models = {
                role: ns.get(spec, spec) if spec.isidentifier() else spec
                for role, spec in options.choose_models(args).items()
            }
            if args.here and args.approve:
                raise ValueError("%%rlm: --here and --approve cannot be combined yet")
            rlm = RLM(
                **models,
                approve=True if args.approve else None,
                # The live widget lives on the kernel's thread; --here runs the loop elsewhere.
                display=False if args.no_display or args.here else None,
                **options.limit_overrides(args),
                **options.sampling_overrides(args),
            )
            options.apply_prices(args)
        except (ValueError, RLMKernelError) as e:
            raise IPythonUsageError(str(e)) from None
        return rlm, question, contexts[0] if len(contexts) == 1 else contexts, args

    def _keep(self, result: RunResult, args: argparse.Namespace) -> None:
        self.shell.user_ns["_rlm"] = result
        if args.name:
            self.shell.user_ns[args.name] = result
        cost = "cost unknown" if result.cost_usd is None else f"${result.cost_usd:.4f}"
        print(
            f"{result.status} · {_count(result.steps, 'step')} · "
            f"{_count(result.subcalls, 'sub-call')} · {cost} · {result.duration_s:.1f} s · "
            f"{result.notebook}"
        )
        if result.answer is not None:
            print(result.answer)


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'s' * (n != 1)}"


def _context(ns: dict[str, Any], name: str) -> ContextInput:
    if name.isidentifier() and name in ns:
        return ns[name]
    path = Path(os.path.expanduser(name))
    if not path.exists():
        raise ValueError(f"%%rlm: --context {name}: no variable or file of that name")
    return path


def await_rlm_cells(lines: list[str]) -> list[str]:
    """Rewrite a ``%%rlm`` cell as an awaited call, so the kernel stays responsive during it.

    An IPython input transformer (it runs before IPython turns cell magics into calls): the cell
    becomes ``await <the magic's async twin>(line, body)``, which the kernel runs on its event
    loop, where widget clicks are processed while the run goes on.
    """
    first = next((i for i, text in enumerate(lines) if text.strip()), None)
    if first is None or not _awaits_top_level():
        return lines
    head = lines[first].rstrip("\n")
    if not (head == "%%rlm" or head.startswith(("%%rlm ", "%%rlm\t"))):
        return lines
    body = "".join(lines[first + 1 :])
    call = "get_ipython().magics_manager.registry['RLMMagics'].arlm"
    return [f"await {call}({head[len('%%rlm') :].strip()!r}, {body!r})\n"]


def _awaits_top_level() -> bool:
    from IPython import get_ipython

    return bool(getattr(get_ipython(), "autoawait", False))


def load_ipython_extension(ipython: Any) -> None:
    """Register ``%rlm_replay`` and ``%%rlm`` (``%load_ext rlm_kernel``)."""
    ipython.register_magics(ReplayMagics)
    ipython.register_magics(RLMMagics)
    # In a kernel, %%rlm cells are awaited (see await_rlm_cells).
    transforms = ipython.input_transformers_cleanup
    if getattr(ipython, "kernel", None) is not None and await_rlm_cells not in transforms:
        transforms.append(await_rlm_cells)
