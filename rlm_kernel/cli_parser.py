"""The parser of the ``rlm-kernel`` command: its commands, their arguments and help texts.

The help texts name the exit statuses, so the codes are declared here too; the run options
(limits and models) come from :mod:`rlm_kernel.options`. :mod:`rlm_kernel.cli` runs the commands.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, NoReturn

from . import __version__, demo, options

EXIT_OK, EXIT_NO_ANSWER, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130

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
