"""``rlm-kernel bench``: parse the arguments, run the benchmark, print the table.

``rlm-kernel bench overhead ...`` is the overhead suite, a module of its own
(``rlm_kernel.bench.overhead``) that reads its own arguments.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from .. import options
from ..errors import UsageError
from ..types import Limits
from . import tasks
from .methods import METHODS
from .runner import DEFAULT_JOB_TIMEOUT, BenchConfig, abench

__all__ = ["build_parser", "main"]

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
PROG = "rlm-kernel bench"
DEFAULT_METHODS = "rlm,direct,summary,retrieval"

EPILOG = f"""\
tasks:
{chr(10).join(f"  {name:<13} {t.about}" for name, t in tasks.TASKS.items())}
  overhead      the overhead suite: rlm-kernel bench overhead --help

methods: {", ".join(METHODS)}

sizes are tokens at {tasks.CHARS_PER_TOKEN} characters a token: 8000, 32K, 1M.
A run without --timeout gets {DEFAULT_JOB_TIMEOUT:g} s before it is stopped and counted as an error.

examples:
  OPENAI_BASE_URL=http://localhost:8000/v1 OPENAI_API_KEY=any \\
    rlm-kernel bench sniah --model openai:qwen3 --n 3 --sizes 8K,32K --out bench-sniah
  rlm-kernel bench oolong --methods rlm,rlm-no-subcalls,direct --max-steps 15

exit status:
  0    every run finished (answered or not); the table is written
  1    some runs failed (errors are counted in the table)
  2    bad usage or input; one line says what to fix
  130  interrupted; finished runs are kept, and the same --out resumes"""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _list(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def _sizes(text: str) -> list[int]:
    try:
        return [tasks.parse_size(part) for part in _list(text)]
    except UsageError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def build_parser() -> argparse.ArgumentParser:
    """The parser of ``rlm-kernel bench TASK``."""
    p = _Parser(
        prog=PROG,
        description="Answer generated questions with several methods (the RLM and the paper's "
        "baselines) and compare their scores, costs and times. Every run is saved as a "
        "notebook; the table goes to OUT/results.md and .json, the plots to OUT/*.png.",
        epilog=EPILOG,
        formatter_class=options.HelpFormatter,
    )
    p.add_argument("task", choices=list(tasks.TASKS), metavar="TASK", help="the task to run")
    options.add_model_options(p)
    g = p.add_argument_group("benchmark")
    g.add_argument("--n", type=_positive, default=5, help="instances per size (default: 5)")
    g.add_argument("--seed", type=int, default=0, help="the generators' seed (default: 0)")
    g.add_argument(
        "--methods",
        type=_list,
        default=_list(DEFAULT_METHODS),
        metavar="M,M",
        help=f"comma-separated methods (default: {DEFAULT_METHODS})",
    )
    g.add_argument(
        "--sizes",
        type=_sizes,
        metavar="TOKENS,...",
        help="context sizes, e.g. 8K,32K,128K (default: the task's)",
    )
    g.add_argument("--workers", type=_positive, default=2, help="runs at once (default: 2)")
    g.add_argument(
        "--window",
        type=_positive,
        metavar="TOKENS",
        help="the input window the baselines cut and chunk to (default: the root model's)",
    )
    g.add_argument(
        "--out", type=Path, help="the output folder (default: rlm-bench/TASK); reused to resume"
    )
    g.add_argument(
        "--no-cache",
        dest="cache",
        action="store_false",
        help="call the models again instead of answering repeated calls from OUT/.rlm-cache.sqlite",
    )
    g.add_argument("--json", action="store_true", help="print the results as JSON on stdout")
    g.add_argument("--quiet", action="store_true", help="no progress on stderr")
    options.add_limit_options(p)
    return p


def _overhead(argv: list[str]) -> int:
    try:
        module = importlib.import_module(".overhead", __package__)
    except ModuleNotFoundError as e:
        if e.name != f"{__package__}.overhead":
            raise
        print(
            f"{PROG}: error: the overhead suite is not part of this installation", file=sys.stderr
        )
        return EXIT_USAGE
    return module.main(argv)


def _config(args: argparse.Namespace) -> BenchConfig:
    models = options.choose_models(args)
    try:
        limits = Limits(**options.limit_overrides(args))
    except ValueError as e:
        raise UsageError(str(e)) from None
    return BenchConfig(
        task=args.task,
        model=models["model"],
        sub_model=models["sub_model"],
        methods=args.methods,
        sizes=args.sizes,
        n=args.n,
        seed=args.seed,
        workers=args.workers,
        out=args.out or Path("rlm-bench") / args.task,
        limits=limits,
        window=args.window,
        cache=args.cache,
    )


def _one_line_warning(message: Any, *args: Any, **kwargs: Any) -> None:
    print(f"rlm-kernel: warning: {message}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``rlm-kernel bench``; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["overhead"]:
        return _overhead(argv[1:])
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # --help, or a usage error already printed in one line
        return e.code if isinstance(e.code, int) else EXIT_USAGE
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _one_line_warning
            config = _config(args)
            hooks = {"on_result": None} if (args.quiet or args.json) else {}
            made = asyncio.run(abench(config, **hooks))
    except UsageError as e:
        print(f"rlm-kernel: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as e:  # e.g. the disk filled up while a result was being written
        print(f"rlm-kernel: error: {e}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print(
            f"rlm-kernel: interrupted; finished runs are kept in {args.out or 'the output folder'}"
            " and the same --out resumes",
            file=sys.stderr,
        )
        return EXIT_INTERRUPTED
    if args.json:
        print(json.dumps(made.to_dict(), ensure_ascii=False))
    else:
        print(made.markdown(), end="")
        if not args.quiet:
            print("written: " + ", ".join(str(f) for f in made.files), file=sys.stderr)
    failed = any(r.errors for r in made.rows)
    return EXIT_FAILED if failed else EXIT_OK
