"""One declaration of the run options: every Limits field is an option of each command and of
%%rlm, with its default in --help; the sub-model follows --model."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import pytest

from rlm_kernel import Limits, options
from rlm_kernel.cli import main
from rlm_kernel.llm import DEFAULT_ROOT_MODEL, DEFAULT_SUB_MODEL
from rlm_kernel.magic import parse_rlm_line, rlm_help


def help_text(capsys, *argv: str) -> str:
    with pytest.raises(SystemExit) as e:
        main([*argv, "--help"])
    assert e.value.code == 0
    return " ".join(capsys.readouterr().out.split())  # unwrapped, so phrases can be found


def shown(value) -> str:
    return "none" if value is None else f"{value:g}" if isinstance(value, float) else str(value)


@pytest.mark.parametrize("command", ["run", "resume", "demo"])
def test_every_limit_is_an_option_with_its_default_in_help(capsys, command):
    text = help_text(capsys, command)
    for f in dataclasses.fields(Limits):
        flag = options.flag(f.name)
        assert f"{flag} " in text, flag
        assert f"{' '.join(f.metadata['help'].split())} (default: {shown(f.default)})" in text


def test_the_magic_has_the_same_limits():
    text = " ".join(rlm_help().split())
    for f in dataclasses.fields(Limits):
        assert f"{options.flag(f.name)} " in text
        assert f"(default: {shown(f.default)})" in text
    assert "--model" in text and "--sub-model" in text and "--help" in text


def test_flags_are_the_field_names_except_where_declared():
    renamed = {f.name: options.flag(f.name) for f in dataclasses.fields(Limits)}
    assert renamed["max_cost_usd"] == "--max-cost"
    assert renamed["max_tokens"] == "--max-tokens"
    assert renamed["sub_max_tokens"] == "--sub-max-tokens"
    assert renamed["child_max_steps"] == "--child-max-steps"
    others = {n: f for n, f in renamed.items() if n != "max_cost_usd"}
    assert all(f == "--" + n.replace("_", "-") for n, f in others.items())


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    options.add_model_options(parser, names=("model", "sub_model", "child_model"))
    options.add_limit_options(parser)
    return parser.parse_args(argv)


def test_only_given_limits_are_passed_and_none_removes_one():
    assert options.limit_overrides(parse()) == {}
    given = options.limit_overrides(
        parse("--max-cost", "0.5", "--cell-timeout", "none", "--max-tokens", "900")
    )
    assert given == {"max_cost_usd": 0.5, "cell_timeout": None, "max_tokens": 900}
    limits = Limits(**given)
    assert (limits.max_cost_usd, limits.cell_timeout, limits.max_steps) == (0.5, None, 30)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--max-steps", "none"], "invalid int value: 'none'"),  # max_steps has no 'no limit'
        (["--max-subcalls", "many"], "invalid int value: 'many' (or 'none' for no limit)"),
        (["--max-cost", "-1"], "must be a positive number, not -1"),
        (["--timeout", "nan"], "must be a positive number, not nan"),
    ],
)
def test_bad_limit_values_name_the_option(capsys, argv, message):
    with pytest.raises(SystemExit) as e:
        main(["run", "--question", "q", "--context", "x", *argv])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert f"argument {argv[0]}: {message}" in err and "\n" not in err


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        ([], (DEFAULT_ROOT_MODEL, DEFAULT_SUB_MODEL, DEFAULT_ROOT_MODEL)),
        (["--model", "openai:llama3"], ("openai:llama3",) * 3),
        (["--model", "openai:a", "--sub-model", "openai:b"], ("openai:a", "openai:b", "openai:a")),
        (["--sub-model", "openai:b"], (DEFAULT_ROOT_MODEL, "openai:b", DEFAULT_ROOT_MODEL)),
        (
            ["--model", "openai:a", "--child-model", "openai:c"],
            ("openai:a", "openai:a", "openai:c"),
        ),
    ],
)
def test_models_not_given_follow_the_root_model(argv, expected):
    chosen = options.choose_models(parse(*argv))
    assert (chosen["model"], chosen["sub_model"], chosen["child_model"]) == expected


def test_the_magic_line_takes_every_limit():
    args = parse_rlm_line(
        "--context c --max-tokens 5 --sub-max-tokens 6 --max-concurrency 2 --child-max-steps 3 "
        "--max-cell-output-bytes 1000 --timeout none"
    )
    assert options.limit_overrides(args) == {
        "max_tokens": 5,
        "sub_max_tokens": 6,
        "max_concurrency": 2,
        "child_max_steps": 3,
        "max_cell_output_bytes": 1000,
        "timeout": None,
    }
    assert parse_rlm_line("--help").help is True  # no --context needed to ask for help


def test_the_python_docstring_lists_every_limit():
    for f in dataclasses.fields(Limits):
        assert f"{f.name}: {f.metadata['help']}" in Limits.__doc__


def test_the_docs_table_of_limits_is_the_declaration():
    docs = (Path(__file__).resolve().parents[1] / "docs" / "cli.md").read_text()
    table = docs.split("## Limits", 1)[1].split("\n## ", 1)[0]
    rows = [r for r in table.splitlines() if r.startswith("| `--")]
    documented = [tuple(c.strip().strip("`") for c in r.strip("|").split("|")[:3]) for r in rows]
    declared = [
        (options.flag(f.name), f.name, shown(f.default)) for f in dataclasses.fields(Limits)
    ]
    assert documented == declared
