"""``rlm-kernel mcp``: the MCP SDK's own client talks to the server over stdio, end to end."""

from __future__ import annotations

import json
import sys

import anyio
import nbformat
import pytest

pytest.importorskip("mcp.server.mcpserver", reason="needs MCP SDK 2: pip install 'rlm-kernel[mcp]'")

from mcp import Client, StdioServerParameters

from rlm_kernel.cli import main
from rlm_kernel.mcp import AskLimits, tighten
from rlm_kernel.testing import ScriptedModel
from rlm_kernel.types import Limits

ROOT_REPLIES = [
    "I will count the lines and ask the sub-model.\n```repl\nlines = context.splitlines()\n"
    "print(len(lines))\nprint(llm_query('Which animal? ' + lines[0]))\n```",
    "FINAL(3 lines about a cat)",
]


def _server(tmp_path, fake_model_server, *extra):
    env = {**fake_model_server.env(), "PYTHONUNBUFFERED": "1"}
    args = ["-m", "rlm_kernel", "mcp", "--model", "anthropic:root", "--sub-model"]
    args += ["anthropic:sub", "--runs-dir", str(tmp_path / "runs"), *extra]
    return StdioServerParameters(command=sys.executable, args=args, env=env, cwd=str(tmp_path))


def test_limits_asked_for_can_only_tighten_the_servers():
    server = Limits(max_steps=10, max_cost_usd=None)
    tight = tighten(server, AskLimits(max_steps=30, max_cost_usd=0.5))
    assert (tight.max_steps, tight.max_cost_usd) == (10, 0.5)
    assert tighten(server, AskLimits(max_steps=3)).max_steps == 3
    assert tighten(server, None) is server


@pytest.mark.slow
def test_a_client_lists_the_tools_asks_about_a_file_and_views_the_run(tmp_path, fake_model_server):
    fake_model_server.add_model("root", ScriptedModel(ROOT_REPLIES))
    fake_model_server.add_model("sub", ScriptedModel(["a cat"]))
    (tmp_path / "notes.txt").write_text("the cat sat\non the mat\nall day\n", encoding="utf-8")

    async def session():
        async with Client(_server(tmp_path, fake_model_server), read_timeout_seconds=120) as c:
            listed = await c.list_tools()
            asked = await c.call_tool(
                "ask", {"question": "What is it about?", "paths": ["notes.txt"]}
            )
            path = (asked.structured_content or {}).get("notebook", "")
            return listed, asked, await c.call_tool("view", {"notebook": path})

    listed, asked, viewed = anyio.run(session)
    names = {t.name: t for t in listed.tools}
    assert set(names) == {"ask", "view"}
    assert {"question", "paths", "limits"} <= set(names["ask"].input_schema["properties"])

    assert not asked.is_error, asked.content
    result = asked.structured_content
    assert result["answer"] == "3 lines about a cat"
    assert result["status"] == "answered" and result["stop_reason"] == "final"
    assert result["subcalls"] == 1 and result["steps"] == 2
    assert "cost_usd" in result
    path = result["notebook"]
    assert path.startswith(str(tmp_path / "runs"))
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    assert nb.metadata.rlm.answer == "3 lines about a cat"
    assert json.loads(asked.content[0].text)["notebook"] == path  # the text form, for any client

    assert not viewed.is_error
    text = viewed.content[0].text
    assert "What is it about?" in text and "3 lines about a cat" in text


@pytest.mark.slow
def test_a_bad_path_is_a_tool_error_naming_it_and_the_server_goes_on(tmp_path, fake_model_server):
    async def session():
        async with Client(_server(tmp_path, fake_model_server), read_timeout_seconds=120) as c:
            gone = await c.call_tool("ask", {"question": "Why?", "paths": ["no/such.txt"]})
            bad_view = await c.call_tool("view", {"notebook": "nope.ipynb"})
            return gone, bad_view, await c.list_tools()

    gone, bad_view, listed = anyio.run(session)
    assert gone.is_error
    assert "no/such.txt" in gone.content[0].text
    assert bad_view.is_error and "nope.ipynb" in bad_view.content[0].text
    assert {t.name for t in listed.tools} == {"ask", "view"}
    assert not (tmp_path / "runs").exists()  # nothing ran


@pytest.mark.parametrize(
    ("argv", "named"),
    [(["--max-steps", "0"], "--max-steps"), (["--model", "nonsense"], "nonsense")],
)
def test_bad_options_exit_2_with_one_line(argv, named, capsys):
    try:
        code = main(["mcp", *argv])
    except SystemExit as e:  # refused while parsing
        code = e.code
    assert code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and named in err
