"""The trajectory viewer on real runs: terminal summary, offline HTML, ipywidgets stepper."""

from __future__ import annotations

import base64
import hashlib
import json
import re
from html.parser import HTMLParser
from pathlib import Path

import nbformat
import pytest

import rlm_kernel
from rlm_kernel import RLM, cli, viewer
from rlm_kernel.record import read
from rlm_kernel.types import Completion, Usage

QUESTION = "What is <b>b</b>? </script>"
EVIL = "Careful: <script>alert(1)</script> and a stray </script> in my reply."

# Step 1 draws a 4x4 PNG with the standard library, shows HTML that tries to run a script and
# asks the sub-model twice; step 2 fails; step 3 answers.
PNG_CODE = """\
import struct, zlib
from IPython.display import HTML, Image, display

def chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

rows = b"".join(b"\\x00" + bytes([200, 30, 30]) * 4 for _ in range(4))
png = (b"\\x89PNG\\r\\n\\x1a\\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 4, 4, 8, 2, 0, 0, 0))
       + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))
display(Image(data=png, format="png"))
display(HTML("<b>bold</b><script>alert(2)</script>"))
a = llm_query("first question")
b = llm_query("second <question>")
print(a, b)
"""
ROOT_REPLIES = [
    f"{EVIL}\nFirst I draw something.\n```repl\n{PNG_CODE}```",
    "Now a mistake.\n```repl\nprint('before')\n1 / 0\n```",
    "FINAL(done </script> <img src=x onerror=alert(3)>)",
]


def scripted(replies):
    calls = []

    def model(messages):
        calls.append(messages)
        return replies[len(calls) - 1]

    return model


def echo(messages):
    return "echo:" + messages[-1]["content"]


def record_run(folder: Path) -> Path:
    """A real run (real kernel, plain-function models): image, HTML, error, sub-calls."""
    path = folder / "run.ipynb"
    result = RLM(scripted(ROOT_REPLIES), echo).run(QUESTION, "some context", notebook=path)
    assert result.status == "answered", result.error
    return path


class PricedModel:
    """A scripted model that reports tokens and a price, as a provider SDK would."""

    def __init__(self, name: str, replies: list[str] | None, tokens: int, cost: float) -> None:
        self.name, self.replies, self.tokens, self.cost = name, replies, tokens, cost
        self.calls = 0

    async def complete(self, messages, *, max_tokens: int) -> Completion:
        self.calls += 1
        text = self.replies[self.calls - 1] if self.replies else "sub answer"
        usage = Usage(calls=1, input_tokens=self.tokens, output_tokens=1)
        return Completion(text=text, model=self.name, usage=usage, cost_usd=self.cost)


@pytest.fixture(scope="module")
def run_path(tmp_path_factory) -> Path:
    return record_run(tmp_path_factory.mktemp("view"))


@pytest.fixture(scope="module")
def data(run_path):
    return viewer.trajectory(read(run_path))


def test_trajectory_has_steps_outputs_and_subcalls(data):
    s = data["summary"]
    assert (s["status"], s["steps"], s["subcalls"]) == ("answered", 3, 2)
    assert [st["step"] for st in data["steps"]] == [1, 2, 3]

    step1 = data["steps"][0]
    assert step1["text"].startswith(EVIL)
    assert "code cell" not in step1["text"]  # the notebook's placeholder is dropped
    (cell,) = step1["cells"]
    kinds = [o["kind"] for o in cell["outputs"]]
    assert kinds == ["image", "html", "stream"]
    image = cell["outputs"][0]
    assert image["mime"] == "image/png"
    assert base64.b64decode(image["data"]).startswith(b"\x89PNG\r\n\x1a\n")
    assert "<script>alert(2)</script>" in cell["outputs"][1]["html"]
    assert [(c["prompt_preview"], c["response"]) for c in cell["subcalls"]] == [
        ("first question", "echo:first question"),
        ("second <question>", "echo:second <question>"),
    ]

    (cell,) = data["steps"][1]["cells"]
    assert cell["status"] == "error"
    error = cell["outputs"][-1]
    assert error["kind"] == "error" and error["ename"] == "ZeroDivisionError"
    assert "\x1b[" not in error["text"] and "1 / 0" in error["text"]


def test_cumulative_tokens_and_cost_add_up_to_the_run(tmp_path):
    replies = ["```repl\nprint(llm_query('x'), llm_query('y'))\n```", "FINAL(ok)"]
    root = PricedModel("root", replies, tokens=100, cost=0.01)
    sub = PricedModel("sub", None, tokens=10, cost=0.001)
    path = tmp_path / "priced.ipynb"
    RLM(root, sub).run("q", "ctx", notebook=path)
    data = viewer.trajectory(read(path))
    steps = data["steps"]
    assert [s["tokens"] for s in steps] == [101 + 2 * 11, 101]
    assert [s["cum_tokens"] for s in steps] == [123, 224]
    assert steps[0]["cum_cost_usd"] == pytest.approx(0.012)
    assert steps[1]["cum_cost_usd"] == pytest.approx(0.022)
    assert steps[-1]["cum_tokens"] == data["summary"]["tokens"]["total"]
    assert steps[-1]["cum_cost_usd"] == pytest.approx(data["summary"]["cost_usd"])


def test_terminal_summary(run_path):
    text = viewer.summarize(run_path, width=120)
    lines = text.splitlines()
    assert all(len(line) <= 120 for line in lines)
    assert max(map(len, viewer.summarize(run_path, width=60).splitlines())) == 60
    assert lines[0].endswith("answered (final)")
    assert "question  What is <b>b</b>? </script>" in text
    assert "answer    done </script>" in text
    assert "3 steps · 2 sub-calls" in text
    rows = lines[lines.index(next(ln for ln in lines if ln.startswith("step"))) + 1 :]
    assert [r.split()[:4] for r in rows] == [
        ["1", "1", "ok", "2"],
        ["2", "1", "error", "0"],
        ["3", "0", "—", "0"],
    ]
    assert rows[0].endswith("Careful: <script>alert(1)</script> and a stray </script> in my reply.")
    assert rows[1].endswith("Now a mistake.")


def test_cli_view(run_path, tmp_path, capsys):
    assert cli.main(["view", str(run_path)]) == cli.EXIT_OK
    assert "3 steps · 2 sub-calls" in capsys.readouterr().out

    out = tmp_path / "run.html"
    assert cli.main(["view", str(run_path), "--html", str(out)]) == cli.EXIT_OK
    assert capsys.readouterr().out.strip() == str(out)
    assert out.read_text(encoding="utf-8").startswith("<!DOCTYPE html>")


@pytest.mark.parametrize("content", [None, "not json", '{"nbformat": 4, "cells": []}'])
def test_cli_view_bad_input_exits_2_with_one_line(tmp_path, capsys, content):
    path = tmp_path / "bad.ipynb"
    if content is not None:
        path.write_text(content)
    assert cli.main(["view", str(path)]) == cli.EXIT_USAGE
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("rlm-kernel: error: ")


def test_cli_view_unwritable_html_exits_2(run_path, tmp_path, capsys):
    out = tmp_path / "missing-folder" / "x.html"
    assert cli.main(["view", str(run_path), "--html", str(out)]) == cli.EXIT_USAGE
    assert "cannot write" in capsys.readouterr().err


class _Tags(HTMLParser):
    """Every start tag with its attributes, and each script element's attributes and text."""

    def __init__(self, page: str) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.scripts: list[tuple[dict[str, str | None], str]] = []
        self._script: dict[str, str | None] | None = None
        self.feed(page)

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        if tag == "script":
            self._script = dict(attrs)
            self.scripts.append((self._script, ""))

    def handle_endtag(self, tag):
        self._script = None

    def handle_data(self, data):
        if self._script is not None:
            attrs, text = self.scripts[-1]
            self.scripts[-1] = (attrs, text + data)


@pytest.fixture(scope="module")
def page(run_path) -> str:
    return viewer.html_page(read(run_path))


def test_html_escapes_model_output(page, data):
    # Exactly our two script elements: nothing from the run opened or closed one.
    assert page.count("<script") == 2 and page.count("</script>") == 2
    for raw in ("<script>alert(1)", "<img src=x", "<b>b</b>", "<question>"):
        assert raw not in page
    assert "What is &lt;b&gt;b&lt;/b&gt;? &lt;/script&gt;" in page  # the summary, escaped
    (payload,) = [t for a, t in _Tags(page).scripts if a.get("type") == "application/json"]
    tree = json.loads(payload)  # the escapes are JSON: the data is intact
    assert (tree["root"], tree["order"]) == ("run.ipynb", ["run.ipynb"])
    (run,) = tree["runs"].values()
    assert {k: run[k] for k in data} == data
    assert (run["key"], run["parent_key"], run["missing"]) == ("run.ipynb", None, None)


def test_html_is_self_contained(page):
    parser = _Tags(page)
    for tag, attrs in parser.tags:
        assert tag not in ("link", "base", "object", "embed")
        for name in ("src", "href", "srcset", "action"):
            assert not attrs.get(name), f"<{tag} {name}=...> would load something"
    assert not re.search(r"\b(src|href)\s*=\s*[\"']?https?:", page)
    assert "@import" not in page and "url(" not in page
    # The Content-Security-Policy allows no request and only our own script, by its hash.
    csp = next(
        a["content"] for t, a in parser.tags if a.get("http-equiv") == "Content-Security-Policy"
    )
    assert "default-src 'none'" in csp
    (script,) = [text for attrs, text in parser.scripts if "type" not in attrs]
    digest = base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()
    assert f"'sha256-{digest}'" in csp
    assert len(script.encode()) < 16_000  # small and hand-written


def test_widget_steps_with_front_end_links(run_path):
    import ipywidgets as w

    v = rlm_kernel.view(run_path)
    assert isinstance(v, w.VBox)
    assert len(v.pages.children) == 3 + 1  # the start, then one page per step
    assert (v.slider.min, v.slider.max, v.play.min, v.play.max) == (0, 3, 0, 3)
    from ipywidgets.widgets.widget_link import Link

    links = {(lk.source[0].model_id, lk.source[1], lk.target[0].model_id, lk.target[1])
             for lk in v.links if isinstance(lk, Link)}  # fmt: skip
    assert links == {
        (v.play.model_id, "value", v.slider.model_id, "value"),
        (v.slider.model_id, "value", v.pages.model_id, "selected_index"),
    }
    assert v.pages.selected_index == v.slider.value == 1

    step1 = v.pages.children[1].value
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in step1 and "<script" not in step1
    assert "src='data:image/png;base64,iVBOR" in step1
    assert "<iframe sandbox=''" in step1 and "&lt;script&gt;alert(2)" in step1
    assert "ZeroDivisionError" in v.pages.children[2].value
    assert "so far" in step1


def test_widget_opens_child_runs(run_path, tmp_path):
    nb = nbformat.read(run_path, as_version=4)
    cell = next(c for c in nb.cells if c.metadata.get("rlm", {}).get("subcalls"))
    cell.metadata.rlm.subcalls[0]["child"] = "child.ipynb"
    parent = tmp_path / "parent.ipynb"
    nbformat.write(nb, parent)
    (tmp_path / "child.ipynb").write_bytes(run_path.read_bytes())

    v = rlm_kernel.view(parent)
    import ipywidgets as w

    page = v.pages.children[1]
    assert isinstance(page, w.VBox)
    (button,) = [c for c in page.children if isinstance(c, w.Button)]
    assert "child.ipynb" in button.description
    assert button.tooltip == str(tmp_path / "child.ipynb")
    assert "child run: child.ipynb" in page.children[0].value  # also in saved widget state
    button.click()  # the child's viewer opens below the parent's
    assert isinstance(v.child, type(v)) and v.child.path == tmp_path / "child.ipynb"
    assert v.child_area.children[-1] is v.child
    assert len(v.child.pages.children) == len(v.pages.children)


def test_view_stays_the_function_after_the_modules_load():
    import rlm_kernel.viewer
    import rlm_kernel.widgets

    assert callable(rlm_kernel.view) and rlm_kernel.view.__module__ == "rlm_kernel"
