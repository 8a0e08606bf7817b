"""The run options of the command line and the ``%%rlm`` magic, derived from one declaration.

A limit is declared once, as a field of :class:`~rlm_kernel.types.Limits` (type, default, help
text); this module turns every field into an option (``max_steps`` becomes ``--max-steps``), so
a new limit is one line there and appears in ``rlm-kernel run --help``, ``resume``, ``demo`` and
``%%rlm`` at once. The only names that differ between Python and the command line are declared
on the field itself (``max_cost_usd`` is ``--max-cost``); :func:`flag` gives them.

The sampling options (``--temperature``, ``--seed``, ``--sub-temperature``, ``--sub-seed``) come
the same way from :class:`~rlm_kernel.types.Sampling`, and ``--price MODEL=IN,OUT`` prices a
model for the process (:func:`~rlm_kernel.llm.pricing.set_price`).

The model options (``--model``, ``--sub-model``, ``--child-model``) are declared here, with the
one rule that chooses the models (:func:`choose_models`): in a new run a sub-model not given
follows ``--model`` when that is given, so one local server serves the whole run; a child model
not given is the root model.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import textwrap
import typing
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from .llm import DEFAULT_ROOT_MODEL, DEFAULT_SUB_MODEL, pricing
from .types import Limits, Sampling

__all__ = [
    "LIMIT_OPTIONS",
    "MODEL_OPTIONS",
    "SAMPLING_OPTIONS",
    "HelpFormatter",
    "Option",
    "add_cache_options",
    "add_limit_options",
    "add_model_options",
    "add_price_option",
    "add_sampling_options",
    "apply_prices",
    "cache_path",
    "choose_models",
    "flag",
    "limit_overrides",
    "parse_price",
    "sampling_overrides",
]

NO_LIMIT = "none"  # the value that removes a limit that has a default, e.g. --cell-timeout none


@dataclass(frozen=True)
class Option:
    """One command-line option: where its value goes and how it is read and described.

    Attributes:
        name: the keyword it fills (a :class:`Limits` field, or ``model`` / ``sub_model`` /
            ``child_model``), also the attribute of the parsed namespace.
        flag: the option as typed, e.g. ``--max-cost``.
        kind: ``int``, ``float`` or ``str``.
        default: the value used when the option is not given (``None``: unbounded, or chosen
            by :func:`choose_models` for models).
        help: what it does, for ``--help``.
        metavar: the name of its value in ``--help``.
        optional: ``none`` is accepted and means no limit.
    """

    name: str
    flag: str
    kind: type
    default: Any
    help: str
    metavar: str
    optional: bool = False

    def describe(self) -> str:
        """The help text with its default, as ``--help`` shows it."""
        # A limit whose flag is not its Python name says the Python name too.
        python = (
            "" if self.flag == "--" + self.name.replace("_", "-") else f"; in Python: {self.name}"
        )
        return f"{self.help} (default: {_shown(self.default)}){python}"


def _shown(value: Any) -> str:
    if value is None:
        return NO_LIMIT
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _field_options(cls: type) -> tuple[Option, ...]:
    hints = typing.get_type_hints(cls)
    options = []
    for f in dataclasses.fields(cls):
        args = typing.get_args(hints[f.name])
        kind = next(a for a in args if a is not type(None)) if args else hints[f.name]
        meta = f.metadata
        options.append(
            Option(
                name=f.name,
                flag=meta.get("flag") or "--" + f.name.replace("_", "-"),
                kind=kind,
                default=f.default,
                help=meta["help"],
                metavar=meta.get("metavar") or ("USD" if kind is float else "N"),
                optional=type(None) in args,
            )
        )
    return tuple(options)


LIMIT_OPTIONS: tuple[Option, ...] = _field_options(Limits)
SAMPLING_OPTIONS: tuple[Option, ...] = _field_options(Sampling)
_BY_NAME = {o.name: o for o in LIMIT_OPTIONS}

MODEL_OPTIONS: tuple[Option, ...] = (
    Option("model", "--model", str, DEFAULT_ROOT_MODEL, "the root model", "PROVIDER:MODEL"),
    Option(
        "sub_model",
        "--sub-model",
        str,
        DEFAULT_SUB_MODEL,
        "the model answering llm_query",
        "PROVIDER:MODEL",
    ),
    Option(
        "child_model",
        "--child-model",
        str,
        None,
        "the root model of each child run of rlm_query",
        "PROVIDER:MODEL",
    ),
)


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Wraps one-line descriptions, keeps multi-line text as written, never breaks at hyphens."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        if "\n" in text:
            return super()._fill_text(text, width, indent)
        return textwrap.fill(text, width, initial_indent=indent, subsequent_indent=indent)

    def _split_lines(self, text: str, width: int) -> list[str]:
        return textwrap.wrap(" ".join(text.split()), width, break_on_hyphens=False)


def flag(name: str) -> str:
    """The command-line option of a :class:`Limits` field, e.g. ``flag("max_cost_usd")``.

    Raises:
        KeyError: ``name`` is not a field of :class:`Limits`.
    """
    return _BY_NAME[name].flag


def _reader(option: Option) -> Callable[[str], Any]:
    def read(text: str) -> Any:
        if option.optional and text.strip().lower() == NO_LIMIT:
            return None
        try:
            value = option.kind(text)
        except ValueError:
            extra = f" (or {NO_LIMIT!r} for no limit)" if option.optional else ""
            raise argparse.ArgumentTypeError(
                f"invalid {option.kind.__name__} value: {text!r}{extra}"
            ) from None
        if not value > 0 or math.isinf(value):
            raise argparse.ArgumentTypeError(f"must be a positive number, not {text}")
        return value

    return read


def add_limit_options(parser: argparse.ArgumentParser, *, title: str = "limits") -> None:
    """Add one option per :class:`Limits` field to ``parser``.

    An option that is not given leaves no attribute on the namespace (so the library's default
    applies); :func:`limit_overrides` collects the ones that were given.
    """
    group = parser.add_argument_group(
        title, f"a limit given as {NO_LIMIT!r} is removed (unbounded)"
    )
    for o in LIMIT_OPTIONS:
        group.add_argument(
            o.flag,
            dest=o.name,
            type=_reader(o),
            default=argparse.SUPPRESS,
            metavar=o.metavar,
            help=o.describe(),
        )


def limit_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The limits given on the command line, as keyword arguments of ``RLM(...)``."""
    return {o.name: getattr(args, o.name) for o in LIMIT_OPTIONS if hasattr(args, o.name)}


def _sampling_reader(option: Option) -> Callable[[str], Any]:
    def read(text: str) -> Any:
        try:
            value = option.kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"invalid {option.kind.__name__} value: {text!r}"
            ) from None
        try:
            Sampling(**{option.name: value})
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
        return value

    return read


def add_sampling_options(parser: argparse.ArgumentParser, *, title: str = "sampling") -> None:
    """Add one option per :class:`Sampling` field to ``parser`` (not given: the server's own)."""
    group = parser.add_argument_group(title, "a value not given is left to the model's server")
    for o in SAMPLING_OPTIONS:
        group.add_argument(
            o.flag,
            dest=o.name,
            type=_sampling_reader(o),
            default=argparse.SUPPRESS,
            metavar=o.metavar,
            help=f"{o.help} (default: not sent, the server's own)",
        )


def sampling_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The sampling values given on the command line, as keyword arguments of ``RLM(...)``."""
    return {o.name: getattr(args, o.name) for o in SAMPLING_OPTIONS if hasattr(args, o.name)}


def parse_price(text: str) -> tuple[str, float, float]:
    """Read ``MODEL=IN,OUT`` (USD per million input and output tokens).

    Raises:
        ValueError: ``text`` is not of that form, or a price is not a number >= 0.
    """
    model, sep, rates = text.rpartition("=")
    parts = rates.split(",")
    if not sep or not model.strip() or len(parts) != 2:
        raise ValueError(
            f"a price is MODEL=IN,OUT in USD per million tokens, e.g. "
            f"openai:llama3.1=0.1,0.4; not {text!r}"
        )
    try:
        input_rate, output_rate = (float(part) for part in parts)
    except ValueError:
        message = f"the prices in {text!r} must be numbers (USD per million tokens)"
        raise ValueError(message) from None
    for rate in (input_rate, output_rate):
        if not math.isfinite(rate) or rate < 0:
            raise ValueError(f"the prices in {text!r} must be numbers >= 0")
    return model.strip(), input_rate, output_rate


def _price_reader(text: str) -> tuple[str, float, float]:
    try:
        return parse_price(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def add_price_option(parser: argparse.ArgumentParser) -> None:
    """Add ``--price MODEL=IN,OUT`` (repeatable) to ``parser``; :func:`apply_prices` sets them."""
    parser.add_argument(
        "--price",
        dest="prices",
        type=_price_reader,
        action="append",
        default=argparse.SUPPRESS,
        metavar="MODEL=IN,OUT",
        help="price a model in USD per million input and output tokens, e.g. "
        "openai:llama3.1=0,0 (repeatable; ahead of the prices file; off the providers' "
        "official endpoints a model has no price unless it is given one; default: none given)",
    )


def apply_prices(args: argparse.Namespace) -> None:
    """Set the prices given with ``--price`` for this process."""
    for model, input_rate, output_rate in getattr(args, "prices", None) or ():
        pricing.set_price(model, input_rate, output_rate)


def add_model_options(
    parser: argparse.ArgumentParser,
    *,
    names: Iterable[str] = ("model", "sub_model"),
    defaults: dict[str, str] | None = None,
    metavar: str = "PROVIDER:MODEL",
    title: str = "models",
) -> None:
    """Add the model options named in ``names`` to ``parser``, in a group of their own.

    Args:
        parser: the parser to add them to.
        names: which of ``model``, ``sub_model``, ``child_model``.
        defaults: the default as ``--help`` should state it, per name, when it is not the
            library's (e.g. ``"the run's"`` for ``resume``).
        metavar: the name of the value in ``--help``.
        title: the heading of the group in ``--help``.
    """
    group = parser.add_argument_group(title)
    stated = {
        "model": DEFAULT_ROOT_MODEL,
        "sub_model": f"--model when it is given, else {DEFAULT_SUB_MODEL}",
        "child_model": "--model",
        **(defaults or {}),
    }
    wanted = set(names)
    for o in MODEL_OPTIONS:
        if o.name in wanted:
            group.add_argument(
                o.flag,
                dest=o.name,
                default=None,
                metavar=metavar,
                help=f"{o.help} (default: {stated[o.name]})",
            )


def choose_models(
    args: argparse.Namespace,
    *,
    root: Any = DEFAULT_ROOT_MODEL,
    sub: Any = DEFAULT_SUB_MODEL,
    sub_follows_model: bool = True,
) -> dict[str, Any]:
    """The models of a run: the ones given, the rest following ``--model`` or the defaults.

    Args:
        args: a namespace with ``model`` and ``sub_model`` (and ``child_model`` if it was
            declared), ``None`` when not given.
        root: the root model when ``--model`` is not given.
        sub: the sub-model when ``--sub-model`` is not given and does not follow ``--model``.
        sub_follows_model: a ``--model`` given alone is the sub-model too (a new run); ``False``
            keeps ``sub`` (a fork keeps its run's sub-model when only the root changes).

    Returns:
        ``{"model": ..., "sub_model": ...}``, plus ``child_model`` when the namespace has it.
    """
    model = getattr(args, "model", None)
    follow = sub_follows_model and model is not None
    chosen = {
        "model": root if model is None else model,
        "sub_model": getattr(args, "sub_model", None) or (model if follow else sub),
    }
    if hasattr(args, "child_model"):
        chosen["child_model"] = args.child_model or chosen["model"]
    return chosen


def add_cache_options(parser: argparse.ArgumentParser, *, default: str | None = None) -> None:
    """Add ``--cache PATH`` and ``--no-cache`` (the model-call cache) to ``parser``.

    Args:
        parser: the parser to add them to.
        default: what ``--help`` states as the default when neither is given (``None``: no
            cache); :func:`cache_path` takes the actual default path.
    """
    group = parser.add_argument_group(
        "model-call cache",
        "answers kept in a SQLite file: a call made before (same model, max tokens, sampling "
        "and messages) is answered from it at no cost and recorded as cached (docs/cache.md)",
    )
    either = group.add_mutually_exclusive_group()
    either.add_argument(
        "--cache",
        type=str,
        metavar="PATH",
        help=f"use (or make) this cache file (default: {default or 'no cache'})",
    )
    either.add_argument(
        "--no-cache", action="store_true", help="call the models every time, with no cache"
    )


def cache_path(args: argparse.Namespace, default: str | None = None) -> str | None:
    """The cache file chosen by :func:`add_cache_options`' options, or ``None`` for none."""
    if getattr(args, "no_cache", False):
        return None
    return getattr(args, "cache", None) or default
