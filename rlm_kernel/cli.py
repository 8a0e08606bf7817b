"""The ``rlm-kernel`` command line: parse, call the library, print; no logic of its own."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import shutil
import signal
import sys
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, NoReturn

from . import __version__, bundle, demo, replay, viewer
from .errors import NotebookFormatError, UsageError
from .live import TerminalProgress
from .llm import DEFAULT_ROOT_MODEL, DEFAULT_SUB_MODEL
from .run import RLM, recorded_models
from .types import Limits, RunResult

EXIT_OK, EXIT_NO_ANSWER, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # One line, no usage dump: the message says what to fix.
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see --help)\n")


def _limit_args(p: argparse.ArgumentParser) -> None:
    d = Limits()
    p.add_argument("--max-steps", type=int, default=d.max_steps, help="root-model turns")
    p.add_argument("--max-subcalls", type=int, help="sub-model calls in the whole run")
    p.add_argument("--max-cost", type=float, dest="max_cost_usd", help="dollars for the run")
    p.add_argument("--max-depth", type=int, default=d.max_depth, help="rlm_query recursion depth")
    p.add_argument("--cell-timeout", type=float, default=d.cell_timeout, help="seconds per block")
    p.add_argument("--timeout", type=float, help="seconds for the whole run")
    p.add_argument(
        "--max-output-chars",
        type=int,
        default=d.max_output_chars,
        help="characters of each block's output shown to the model",
    )


def _output_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", type=Path, help="the run notebook to write (.ipynb)")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="rlm-kernel", description=__doc__)
    parser.add_argument("--version", action="version", version=f"rlm-kernel {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    run = sub.add_parser("run", help="answer a question over a context; record a notebook")
    q = run.add_mutually_exclusive_group(required=True)
    q.add_argument("--question", help="the question")
    q.add_argument("--question-file", type=Path, help="a file holding the question")
    run.add_argument(
        "--context",
        type=Path,
        action="append",
        required=True,
        help="a text file, a .json file or a directory; repeat for a list",
    )
    run.add_argument("--model", default=DEFAULT_ROOT_MODEL, help="root model, PROVIDER:MODEL")
    run.add_argument("--sub-model", default=DEFAULT_SUB_MODEL, help="sub-model, PROVIDER:MODEL")
    run.add_argument(
        "--system-prompt",
        type=Path,
        metavar="FILE",
        help="a system prompt template to use instead of the default (see docs/prompt.md)",
    )
    run.add_argument(
        "--embed-context",
        action="store_true",
        help="store the context's text in the notebook too (up to 1,000,000 characters)",
    )
    _limit_args(run)
    _output_args(run)

    dm = sub.add_parser(
        "demo",
        help="run a real question over a generated file (scripted models without an API key)",
    )
    dm.add_argument("--dir", type=Path, default=Path("rlm-demo"), help="where to write the files")
    _limit_args(dm)
    _output_args(dm)

    rs = sub.add_parser("resume", help="fork a recorded run at a step and continue it live")
    rs.add_argument("notebook", type=Path, help="the run notebook (.ipynb)")
    rs.add_argument("--from-step", type=int, required=True, help="the first step to redo")
    rs.add_argument("--model", help="root model, PROVIDER:MODEL (default: the run's)")
    rs.add_argument("--sub-model", help="sub-model, PROVIDER:MODEL (default: the run's)")
    _limit_args(rs)
    _output_args(rs)

    rp = sub.add_parser("replay", help="run a recorded notebook again and compare (no API key)")
    rp.add_argument("notebook", type=Path, help="the run notebook (.ipynb)")
    rp.add_argument("--out", type=Path, help="write a copy with the replayed outputs")
    rp.add_argument("--json", action="store_true", help="print one JSON object on stdout")

    vw = sub.add_parser("view", help="summarize a run in the terminal, or export offline HTML")
    vw.add_argument("notebook", type=Path, help="the run notebook (.ipynb)")
    vw.add_argument("--html", type=Path, metavar="OUT.html", help="write a self-contained viewer")

    bd = sub.add_parser("bundle", help="write a folder that shares a run (replays on Binder)")
    bd.add_argument("notebook", type=Path, help="the run notebook (.ipynb)")
    bd.add_argument("dir", type=Path, help="the folder to write (new or empty)")
    bd.add_argument("--repo", help="GitHub OWNER/NAME the folder goes to: print its Binder URL")
    bd.add_argument("--ref", help="branch, tag or commit for the Binder URL (default HEAD)")
    return parser


def _limits(args: argparse.Namespace) -> dict[str, Any]:
    names = ("max_steps", "max_subcalls", "max_cost_usd", "max_depth", "cell_timeout", "timeout")
    return {n: getattr(args, n) for n in (*names, "max_output_chars")}


def _question(args: argparse.Namespace) -> str:
    if args.question_file is None:
        return args.question
    try:
        return args.question_file.read_text(encoding="utf-8")
    except OSError as e:
        raise UsageError(f"cannot read question file {args.question_file}: {e.strerror}") from None
    except UnicodeDecodeError:
        raise UsageError(f"question file {args.question_file} is not UTF-8 text") from None


def _execute(rlm: RLM, question: str, context: Any, out: Path | None) -> RunResult:
    return asyncio.run(rlm.arun(question, context, notebook=out))


def _report(result: RunResult, args: argparse.Namespace) -> int:
    if args.json:
        print(json.dumps(result.to_dict(), ensure_ascii=False))
    else:
        if result.answer is not None:
            print(result.answer)
        if not args.quiet:
            where = f"notebook: {result.notebook}"
            extra = f" ({result.stop_reason})" if result.stop_reason else ""
            print(f"{result.status}{extra} · {where}", file=sys.stderr)
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


def _rlm(args: argparse.Namespace, model: str, sub_model: str) -> RLM:
    hooks = {} if (args.quiet or args.json) else TerminalProgress().hooks()
    embed = getattr(args, "embed_context", False)
    # display=False: the command line prints its own progress (or none, with --quiet / --json).
    return RLM(
        model,
        sub_model,
        embed_context=embed,
        display=False,
        system_prompt=_system_prompt(args),
        **_limits(args),
        **hooks,
    )


def cmd_run(args: argparse.Namespace) -> int:
    contexts = args.context
    context = contexts[0] if len(contexts) == 1 else contexts
    rlm = _rlm(args, args.model, args.sub_model)
    return _report(_execute(rlm, _question(args), context, args.out), args)


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
    out = args.out or args.dir / "demo-run.ipynb"
    real = demo.uses_real_model()
    if not args.json:
        who = (
            "real models (ANTHROPIC_API_KEY is set)"
            if real
            else (
                "a SCRIPTED root model and a rule-based sub-model served by rlm-kernel's fake "
                "model API (no API key found; set ANTHROPIC_API_KEY to use real models)"
            )
        )
        print(f"demo: {data} ({data.stat().st_size:,} bytes) answered by {who}", file=sys.stderr)
    root, sub = demo.models()
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
    def show(cell: replay.CellReport) -> None:
        if not args.json:
            print(cell.render(), file=sys.stderr)

    try:
        report = asyncio.run(replay.areplay_notebook(args.notebook, out=args.out, on_cell=show))
    except NotebookFormatError as e:
        raise UsageError(str(e)) from None
    if args.json:
        print(json.dumps(report.to_dict(), ensure_ascii=False))
    else:
        print(report.summary(), file=sys.stderr)
    return EXIT_OK if report.status == "reproduced" else EXIT_NO_ANSWER


def cmd_resume(args: argparse.Namespace) -> int:
    root, sub = recorded_models(args.notebook)
    rlm = _rlm(args, args.model or root, args.sub_model or sub)
    result = asyncio.run(rlm.aresume(args.notebook, args.from_step, out=args.out))
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


COMMANDS = {
    "run": cmd_run,
    "demo": cmd_demo,
    "replay": cmd_replay,
    "resume": cmd_resume,
    "bundle": cmd_bundle,
    "view": cmd_view,
}


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"rlm-kernel: warning: {message}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``rlm-kernel``; returns the exit status."""
    args = build_parser().parse_args(argv)
    # A polite kill (SIGTERM) ends the run like Ctrl-C: the notebook is saved as interrupted.
    with contextlib.suppress(ValueError):  # not in the main thread
        signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _one_line_warning
            return COMMANDS[args.command](args)
    except UsageError as e:
        print(f"rlm-kernel: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as e:  # e.g. the disk filled up while the notebook was being written
        print(f"rlm-kernel: error: {e}", file=sys.stderr)
        return EXIT_NO_ANSWER
    except KeyboardInterrupt:
        print(
            "rlm-kernel: interrupted (a run's notebook is kept, with status 'interrupted')",
            file=sys.stderr,
        )
        return EXIT_INTERRUPTED
