"""The ``rlm-kernel`` command line: parse, call the library, print; no logic of its own.

The run options (limits and models) come from :mod:`rlm_kernel.options`.
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
from typing import Any, NoReturn

from . import __version__, bundle, demo, options, verify, viewer
from .answer import AnswerSchema
from .errors import NotebookFormatError, UsageError
from .fork import fork_path
from .live import TerminalApprover, TerminalProgress
from .progress import totals_line
from .run import RLM, default_notebook_path, recorded_models
from .tools import load_tool
from .types import Limits, RunResult

EXIT_OK, EXIT_NO_ANSWER, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
# A polite kill ends a run as Ctrl-C does: the notebook is saved with status 'interrupted'.
STOP_SIGNALS = tuple(
    s for s in (getattr(signal, n, None) for n in ("SIGTERM", "SIGHUP")) if s is not None
)

DESCRIPTION = """\
Answer a question over an input far larger than a model's window. The root model never reads
the input: it writes Python that runs in a Jupyter kernel holding it as `context`, hands pieces
to a sub-model with llm_query(), and ends with FINAL(answer). Every run is saved as a notebook
that you can read, replay without an API key, and fork from any step."""

EXIT_CODES = """\
exit status:
  0    answered (replay: every cell reproduced)
  1    no answer: a limit was reached or the model failed (replay: a cell differs)
  2    bad usage or input; one line says what to fix and nothing has run
  130  interrupted by Ctrl-C, SIGTERM or SIGHUP; the notebook is kept, status 'interrupted'"""

ENVIRONMENT = """\
environment (read on the host by the model's SDK; never passed to the kernel):
  anthropic:MODEL  ANTHROPIC_API_KEY (or ANTHROPIC_AUTH_TOKEN), ANTHROPIC_BASE_URL; without
                   them, a login saved by the anthropic SDK (ANTHROPIC_PROFILE,
                   ANTHROPIC_CONFIG_DIR)
  openai:MODEL     OPENAI_API_KEY (any value for a local server), OPENAI_BASE_URL, e.g.
                   http://localhost:11434/v1 for Ollama (keep the /v1); needs the [openai] extra"""

FILES = """\
files:
  the run notebook is --out, else rlm-runs/run-<date>-<time>-<id>.ipynb in the current folder.
  A context that is not one UTF-8 file is copied beside it as <notebook>.context.txt or .json.
  An existing --out is refused unless --force is given."""


def _epilog(*parts: str) -> str:
    return "\n\n".join(p.strip("\n") for p in parts)


def _examples(*lines: str) -> str:
    return "examples:\n" + "\n".join(f"  {line}" for line in lines)


class _Parser(argparse.ArgumentParser):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", options.HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        # One line, no usage dump: the message says what to fix.
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _output_args(p: argparse.ArgumentParser, default_out: str) -> None:
    g = p.add_argument_group("output")
    g.add_argument(
        "--out",
        type=Path,
        metavar="RUN.ipynb",
        help=f"the notebook to write (default: {default_out})",
    )
    g.add_argument("--force", action="store_true", help="replace --out if it exists")
    g.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    g.add_argument("--quiet", action="store_true", help="no progress on stderr")


def _approve_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--approve",
        action="store_true",
        help="show each code block on stderr and ask before it runs: [y]es, [n]o (skip), "
        "[e]dit in $EDITOR, [s]top",
    )


def build_parser() -> argparse.ArgumentParser:
    """The parser of ``rlm-kernel`` and its commands."""
    parser = _Parser(
        prog="rlm-kernel",
        description=DESCRIPTION,
        epilog=_epilog(
            "Each command has its own help: rlm-kernel run --help. Docs: docs/cli.md.",
            EXIT_CODES,
        ),
    )
    parser.add_argument("--version", action="version", version=f"rlm-kernel {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    run = sub.add_parser(
        "run",
        help="answer a question over a context; record the run as a notebook",
        description="Answer a question over a context and record the run as a notebook. "
        "The answer alone goes to stdout, progress to stderr.",
        epilog=_epilog(
            _examples(
                'rlm-kernel run --question "Which services time out most?" --context logs/',
                "OPENAI_BASE_URL=http://localhost:11434/v1 OPENAI_API_KEY=any \\",
                "  rlm-kernel run --model openai:llama3.1 --question-file q.txt --context a.txt",
            ),
            FILES,
            ENVIRONMENT,
            EXIT_CODES,
        ),
    )
    q = run.add_mutually_exclusive_group(required=True)
    q.add_argument("--question", help="the question")
    q.add_argument("--question-file", type=Path, metavar="FILE", help="a file holding the question")
    run.add_argument(
        "--context",
        type=Path,
        action="append",
        required=True,
        metavar="PATH",
        help="a text file, a .json file (list or object) or a folder; repeat it for a list",
    )
    options.add_model_options(run, names=("model", "sub_model", "child_model"))
    _gateway_arg(run)
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
    _approve_arg(run)
    run.add_argument(
        "--tool",
        action="append",
        metavar="MODULE:FUNCTION",
        help="a host function the model's code may call by name (repeat it; see docs/tools.md)",
    )
    run.add_argument(
        "--answer-schema",
        type=Path,
        metavar="FILE",
        help="a JSON Schema file the final answer must match (see docs/typed-answers.md)",
    )
    options.add_limit_options(run)
    options.add_cache_options(run)
    options.add_sampling_options(run)
    options.add_price_option(run)
    _output_args(run, "rlm-runs/run-<date>-<time>-<id>.ipynb")

    rs = sub.add_parser(
        "resume",
        help="fork a recorded run at a step and continue it live",
        description="Fork a recorded run: replay its steps before --from-step (no model "
        "calls), then continue live with the given or the recorded models.",
        epilog=_epilog(
            _examples(
                "rlm-kernel resume run.ipynb --from-step 3",
                "rlm-kernel resume run.ipynb --from-step 3 --model anthropic:claude-opus-5-5",
            ),
            "files:\n  the fork is --out, else RUN-from-K.ipynb beside RUN.ipynb; it records its "
            "parent.\n  An existing file is refused unless --force is given.",
            ENVIRONMENT,
            EXIT_CODES,
        ),
    )
    rs.add_argument("notebook", type=Path, metavar="RUN.ipynb", help="the run notebook")
    rs.add_argument(
        "--from-step", type=int, required=True, metavar="K", help="the first step to redo"
    )
    options.add_model_options(
        rs,
        names=("model", "sub_model", "child_model"),
        defaults={"model": "the run's", "sub_model": "the run's, also when --model is given"},
    )
    _gateway_arg(rs)
    _approve_arg(rs)
    options.add_limit_options(rs)
    options.add_cache_options(rs)
    options.add_sampling_options(rs)
    options.add_price_option(rs)
    _output_args(rs, "RUN-from-K.ipynb beside RUN.ipynb")

    rp = sub.add_parser(
        "replay",
        help="run a recorded notebook again and compare its outputs (no API key)",
        description="Run every code cell of a run notebook again in a fresh kernel, answering "
        "each sub-call from the record, and compare the outputs with the recorded ones. A run "
        "tree is replayed notebook by notebook: every child run from its own notebook.",
        epilog=_epilog(
            _examples(
                "rlm-kernel replay run.ipynb", "rlm-kernel replay run.ipynb --out again.ipynb"
            ),
            EXIT_CODES,
        ),
    )
    rp.add_argument("notebook", type=Path, metavar="RUN.ipynb", help="the run notebook")
    rp.add_argument(
        "--out", type=Path, metavar="NEW.ipynb", help="write a copy with the replayed outputs"
    )
    rp.add_argument("--force", action="store_true", help="replace --out if it exists")
    rp.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    rp.add_argument(
        "--shallow",
        action="store_true",
        help="replay this notebook only: its child runs answer from its record",
    )

    vw = sub.add_parser(
        "view",
        help="summarize a run in the terminal, or export offline HTML",
        description="Print a run's summary and one line per step, or write one self-contained "
        "HTML file that steps through it offline.",
        epilog=_epilog(
            _examples("rlm-kernel view run.ipynb", "rlm-kernel view run.ipynb --html run.html"),
            "exit status: 0 shown or written; 2 not a run notebook",
        ),
    )
    vw.add_argument("notebook", type=Path, metavar="RUN.ipynb", help="the run notebook")
    vw.add_argument("--html", type=Path, metavar="OUT.html", help="write a self-contained viewer")

    bd = sub.add_parser(
        "bundle",
        help="write a folder that shares a run (replays on Binder)",
        description="Write a folder holding the run notebook, its verified context, "
        "binder/requirements.txt and a README; pushed to GitHub, it opens on Binder.",
        epilog=_epilog(
            _examples("rlm-kernel bundle run.ipynb shared/ --repo alice/my-runs"),
            "exit status: 0 written; 2 bad input (the folder exists and is not empty, the "
            "context is missing or altered, ...)",
        ),
    )
    bd.add_argument("notebook", type=Path, metavar="RUN.ipynb", help="the run notebook")
    bd.add_argument("dir", type=Path, metavar="DIR", help="the folder to write (new or empty)")
    bd.add_argument(
        "--repo",
        metavar="OWNER/NAME",
        help="the GitHub repository DIR goes to: print its Binder URL",
    )
    bd.add_argument("--ref", help="branch, tag or commit for the Binder URL (default: HEAD)")

    dm = sub.add_parser(
        "demo",
        help="run a real question over a generated file (scripted models without an API key)",
        description="Generate a file of support tickets and answer a question over it. Without "
        "ANTHROPIC_API_KEY the models are scripted (the output says so); with it, real Claude "
        "models answer, named when the demo starts, under a cost cap of "
        f"${demo.DEFAULT_COST_CAP_USD:g} unless --max-cost is given.",
        epilog=_epilog(
            _examples("rlm-kernel demo", "rlm-kernel demo --dir /tmp/demo --json"), EXIT_CODES
        ),
    )
    dm.add_argument(
        "--dir",
        type=Path,
        default=Path("rlm-demo"),
        help="where to write the files (default: rlm-demo)",
    )
    options.add_limit_options(dm)
    options.add_sampling_options(dm)
    options.add_price_option(dm)
    _output_args(dm, "DIR/demo-run.ipynb, rewritten by each demo")
    _batch_parser(sub)
    # Listed for --help; `bench` reads its own arguments (rlm_kernel.bench.cli), see main().
    sub.add_parser("bench", help="compare the RLM with baselines on generated tasks; overhead")
    _add_mcp(sub)
    return parser


def _add_mcp(sub: Any) -> None:
    p = sub.add_parser(
        "mcp",
        help="serve ask and view to MCP clients (Claude Code, ...) on stdio",
        description="An MCP server with the tools ask(question, paths, limits) and "
        "view(notebook); each ask is a run recorded as a notebook. See docs/mcp.md.",
        epilog=_epilog(_examples("rlm-kernel mcp", "rlm-kernel mcp --http --port 8000")),
    )
    p.add_argument(
        "--runs-dir",
        type=Path,
        default=Path("rlm-runs"),
        help="where notebooks go (default: rlm-runs)",
    )
    p.add_argument("--http", action="store_true", help="serve streamable HTTP instead of stdio")
    p.add_argument("--host", default="127.0.0.1", help="the interface for --http")
    p.add_argument("--port", type=int, default=8000, help="the port for --http (default: 8000)")
    options.add_model_options(p)
    options.add_limit_options(p)
    options.add_price_option(p)


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


def _batch_parser(sub: Any) -> None:
    bt = sub.add_parser(
        "batch",
        help="run many questions from a JSON-lines file, N at a time",
        description="Run one question per line of TASKS.jsonl, each with its own kernel and "
        "notebook, N at a time. Started again with the same --out, it skips finished tasks.",
        epilog=_epilog(
            _examples(
                "rlm-kernel batch tasks.jsonl --workers 4 --out results",
                "rlm-kernel batch tasks.jsonl --gateway http://gw:8888 --max-cost 5",
            ),
            EXIT_CODES,
        ),
    )
    bt.add_argument("tasks", type=Path, help="TASKS.jsonl: one {id, question, context} per line")
    bt.add_argument("--workers", type=int, default=4, help="runs at once (default: 4)")
    bt.add_argument(
        "--out", type=Path, default=Path("rlm-batch"), help="results folder (default: rlm-batch)"
    )
    bt.add_argument("--json", action="store_true", help="print the summary as JSON on stdout")
    bt.add_argument("--quiet", action="store_true", help="no progress on stderr")
    options.add_model_options(bt)
    _gateway_arg(bt)
    options.add_limit_options(bt)  # --max-cost is for the whole batch here
    options.add_price_option(bt)


def _gateway_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--gateway",
        metavar="URL",
        help="run the kernels on this Jupyter Kernel/Enterprise Gateway (default: "
        "$JUPYTER_GATEWAY_URL; its token comes from $JUPYTER_GATEWAY_AUTH_TOKEN only)",
    )


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
