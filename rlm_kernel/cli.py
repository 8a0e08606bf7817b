"""The ``rlm-kernel`` command line: parse, call the library, print; no logic of its own.

The parser (commands, arguments, help texts, exit codes) is :mod:`rlm_kernel.cli_parser`;
the run options (limits and models) come from :mod:`rlm_kernel.options`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import sys
import uuid
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from . import bundle, demo, options, verify, viewer
from .answer import AnswerSchema
from .cli_parser import EXIT_INTERRUPTED, EXIT_NO_ANSWER, EXIT_OK, EXIT_USAGE, build_parser
from .errors import NotebookFormatError, UsageError
from .fork import fork_path
from .live import TerminalApprover, TerminalProgress
from .progress import totals_line
from .run import RLM, default_notebook_path, recorded_models
from .tools import load_tool
from .types import Limits, RunResult

# A polite kill ends a run as Ctrl-C does: the notebook is saved with status 'interrupted'.
STOP_SIGNALS = tuple(
    s for s in (getattr(signal, n, None) for n in ("SIGTERM", "SIGHUP")) if s is not None
)


def _question(args: argparse.Namespace) -> str:
    if args.question_file is None:
        return args.question
    try:
        return args.question_file.read_text(encoding="utf-8")
    except OSError as e:
        raise UsageError(f"cannot read question file {args.question_file}: {e.strerror}") from None
    except UnicodeDecodeError:
        raise UsageError(f"question file {args.question_file} is not UTF-8 text") from None


def _target(args: argparse.Namespace, path: Path) -> Path:
    """The notebook a command writes: refused if it exists, unless ``--force``."""
    if path.exists() and not args.force:
        raise UsageError(f"{path} exists; choose another --out, or add --force to replace it")
    args.writing = path  # named by the message of an interrupted run
    return path


def _execute(
    rlm: RLM, question: str, context: Any, out: Path, answer_schema: Any = None
) -> RunResult:
    return asyncio.run(rlm.arun(question, context, notebook=out, answer_schema=answer_schema))


def _tools(args: argparse.Namespace) -> list[Any]:
    specs = getattr(args, "tool", None) or []
    if specs and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # as `python -m` does: modules beside the user's files
    return [load_tool(spec) for spec in specs]


def _report(result: RunResult, args: argparse.Namespace) -> int:
    if args.json:
        print(json.dumps(result.to_dict(), ensure_ascii=False))
    else:
        if result.answer is not None:
            print(result.answer)
        if not args.quiet:
            print(totals_line(result), file=sys.stderr)
            if result.error:
                print(f"error: {result.error}", file=sys.stderr)
    return EXIT_OK if result.status == "answered" else EXIT_NO_ANSWER


def _system_prompt(args: argparse.Namespace) -> str | None:
    path = getattr(args, "system_prompt", None)
    if path is None:
        return None
    try:
        return path.read_text(encoding="utf-8")
    except OSError as e:
        raise UsageError(f"cannot read system prompt file {path}: {e.strerror}") from None
    except UnicodeDecodeError:
        raise UsageError(f"system prompt file {path} is not UTF-8 text") from None


def _rlm(
    args: argparse.Namespace, model: str, sub_model: str, child_model: str | None = None
) -> RLM:
    options.apply_prices(args)
    hooks = {} if (args.quiet or args.json) else TerminalProgress().hooks()
    embed = getattr(args, "embed_context", False)
    # The prompts go to stderr: stdout carries the answer alone.
    approve = TerminalApprover(stdout=sys.stderr) if getattr(args, "approve", False) else None
    # display=False: the command line prints its own progress (or none, with --quiet / --json).
    rlm = RLM(
        model,
        sub_model,
        child_model=child_model,
        session=_gateway(args),
        embed_context=embed,
        approve=approve,
        display=False,
        system_prompt=_system_prompt(args),
        tools=_tools(args),
        cache=options.cache_path(args),
        **options.limit_overrides(args),
        **options.sampling_overrides(args),
        **hooks,
    )
    return rlm


def cmd_run(args: argparse.Namespace) -> int:
    contexts = args.context
    context = contexts[0] if len(contexts) == 1 else contexts
    models = options.choose_models(args)
    rlm = _rlm(args, models["model"], models["sub_model"], models.get("child_model"))
    schema = AnswerSchema.from_file(args.answer_schema) if args.answer_schema else None
    out = _target(args, args.out or default_notebook_path(uuid.uuid4().hex))
    return _report(_execute(rlm, _question(args), context, out, schema), args)


@contextlib.contextmanager
def _scripted_models() -> Iterator[None]:
    """Serve the demo's scripted models over HTTP and point the Anthropic SDK at them."""
    from .testing import FakeModelServer, ScriptedModel

    server = FakeModelServer(
        {
            demo.SCRIPTED_ROOT_MODEL: ScriptedModel(demo.SCRIPTED_ROOT_REPLIES),
            demo.SCRIPTED_SUB_MODEL: demo.rule_sub_model,
        }
    )
    with server, server.environment():
        yield


def cmd_demo(args: argparse.Namespace) -> int:
    data = demo.generate_tickets(args.dir / "tickets.txt")
    # The demo's own notebook is rewritten by each demo; an --out of the user's is not.
    out = _target(args, args.out) if args.out else args.dir / "demo-run.ipynb"
    args.writing = out
    real = demo.uses_real_model()
    root, sub = demo.models()
    if real and not hasattr(args, "max_cost_usd"):
        args.max_cost_usd = demo.DEFAULT_COST_CAP_USD
    if not args.json:
        who = (
            f"real models, {root} and {sub} (ANTHROPIC_API_KEY is set; "
            f"{demo.cap_text(args.max_cost_usd)}, --max-cost changes it)"
            if real
            else (
                "a SCRIPTED root model and a rule-based sub-model served by rlm-kernel's fake "
                "model API (no API key found; set ANTHROPIC_API_KEY to use real models)"
            )
        )
        print(f"demo: {data} ({data.stat().st_size:,} bytes) answered by {who}", file=sys.stderr)
    rlm = _rlm(args, root, sub)
    with contextlib.nullcontext() if real else _scripted_models():
        result = _execute(rlm, demo.QUESTION, data, out)
    status = _report(result, args)
    if not args.json and not real:
        print(
            "(scripted models answered: run with ANTHROPIC_API_KEY set for a real one)",
            file=sys.stderr,
        )
    return status


def cmd_replay(args: argparse.Namespace) -> int:
    def show(cell: verify.CellReport) -> None:
        if not args.json:
            print(cell.render(), file=sys.stderr)

    out = _target(args, args.out) if args.out else None
    try:
        report = asyncio.run(
            verify.areplay_notebook(args.notebook, out=out, on_cell=show, shallow=args.shallow)
        )
    except NotebookFormatError as e:
        raise UsageError(str(e)) from None
    if args.json:
        print(json.dumps(report.to_dict(), ensure_ascii=False))
    else:
        print(report.summary(), file=sys.stderr)
    return EXIT_OK if report.status == "reproduced" else EXIT_NO_ANSWER


def cmd_resume(args: argparse.Namespace) -> int:
    root, sub = recorded_models(args.notebook)
    models = options.choose_models(args, root=root, sub=sub, sub_follows_model=False)
    rlm = _rlm(args, models["model"], models["sub_model"], models.get("child_model"))
    out = _target(args, args.out or fork_path(args.notebook, args.from_step))
    result = asyncio.run(rlm.aresume(args.notebook, args.from_step, out=out))
    return _report(result, args)


def cmd_view(args: argparse.Namespace) -> int:
    try:
        if args.html is None:
            width = max(shutil.get_terminal_size().columns, 60)
            print(viewer.summarize(args.notebook, width=width), end="")
        else:
            print(viewer.export_html(args.notebook, args.html))
    except NotebookFormatError as e:
        raise UsageError(str(e)) from None
    return EXIT_OK


def cmd_bundle(args: argparse.Namespace) -> int:
    made = bundle.bundle_run(args.notebook, args.dir, repo=args.repo, ref=args.ref)
    print(made.describe(), file=sys.stderr)
    print(made.binder_url or made.dir)
    return EXIT_OK


def _gateway(args: argparse.Namespace) -> Any:
    """The gateway given by ``--gateway`` or ``JUPYTER_GATEWAY_URL``, checked; else ``None``."""
    if not (getattr(args, "gateway", None) or os.environ.get("JUPYTER_GATEWAY_URL")):
        return None
    from .gateway import Gateway, GatewayError

    try:
        gateway = Gateway(args.gateway)
        asyncio.run(gateway.check())
    except GatewayError as e:  # a wrong URL or token, or an unreachable gateway
        raise UsageError(str(e)) from None
    return gateway


def cmd_batch(args: argparse.Namespace) -> int:
    from . import batching as batch

    options.apply_prices(args)
    session = _gateway(args)
    limits = {k: v for k, v in options.limit_overrides(args).items() if k != "max_cost_usd"}
    models = options.choose_models(args)
    progress = batch.Progress(enabled=not (args.quiet or args.json))
    summary = asyncio.run(
        batch.abatch(
            batch.load_tasks(args.tasks),
            out=args.out,
            workers=args.workers,
            model=models["model"],
            sub_model=models["sub_model"],
            limits=Limits(**limits),
            max_cost_usd=getattr(args, "max_cost_usd", None),
            session=session,
            **progress.hooks(),
        )
    )
    progress.close()
    if args.json:
        print(json.dumps(summary.to_dict()))
    else:
        print(summary.table(), file=sys.stderr)
        print(summary.out / batch.RESULTS)
    return EXIT_OK if all(r["status"] == "answered" for r in summary.records) else EXIT_NO_ANSWER


def cmd_mcp(args: argparse.Namespace) -> int:
    try:
        from . import mcp
    except ImportError as e:
        raise UsageError(str(e)) from None
    try:
        limits = Limits(**options.limit_overrides(args))
    except ValueError as e:
        raise UsageError(str(e)) from None
    options.apply_prices(args)
    models = options.choose_models(args)
    server = mcp.build_server(models["model"], models["sub_model"], limits, runs_dir=args.runs_dir)
    transport = "http" if args.http else "stdio"
    mcp.serve(server, transport=transport, host=args.host, port=args.port)
    return EXIT_OK


COMMANDS = {
    "run": cmd_run,
    "resume": cmd_resume,
    "replay": cmd_replay,
    "view": cmd_view,
    "bundle": cmd_bundle,
    "demo": cmd_demo,
    "batch": cmd_batch,
    "mcp": cmd_mcp,
}


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"rlm-kernel: warning: {message}", file=sys.stderr)


def _like_ctrl_c(signum: int, frame: Any) -> None:
    # The same path as Ctrl-C: during asyncio.run its SIGINT handler cancels the run, which
    # saves the notebook as interrupted; elsewhere Python's raises KeyboardInterrupt.
    handler = signal.getsignal(signal.SIGINT)
    if callable(handler):
        handler(signal.SIGINT, frame)
    else:
        raise KeyboardInterrupt


@contextlib.contextmanager
def _stop_signals_like_ctrl_c() -> Iterator[None]:
    previous = {}
    for signum in STOP_SIGNALS:
        with contextlib.suppress(ValueError):  # not in the main thread: leave them alone
            previous[signum] = signal.signal(signum, _like_ctrl_c)
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _interrupted(args: argparse.Namespace) -> str:
    written = getattr(args, "writing", None)
    if written is not None and Path(written).exists():
        return f"rlm-kernel: interrupted; the notebook {written} is kept, with status 'interrupted'"
    return "rlm-kernel: interrupted before a notebook was written"


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``rlm-kernel``; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["bench"]:
        from .bench.cli import main as bench

        return bench(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    try:
        with _stop_signals_like_ctrl_c(), warnings.catch_warnings():
            warnings.showwarning = _one_line_warning
            return COMMANDS[args.command](args)
    except UsageError as e:
        print(f"rlm-kernel: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as e:  # e.g. the disk filled up while the notebook was being written
        print(f"rlm-kernel: error: {e}", file=sys.stderr)
        return EXIT_NO_ANSWER
    except KeyboardInterrupt:
        print(_interrupted(args), file=sys.stderr)
        return EXIT_INTERRUPTED
