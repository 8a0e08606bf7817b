"""Replay of recorded runs: the book, the magic in real kernels, and ``rlm-kernel replay``.

The notebooks replayed here are made by real runs (``RLM.run`` with scripted function models and
a real kernel); no API key is set anywhere.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import nbclient
import nbformat
import pytest
from nbrun import execute_notebook

from rlm_kernel import RLM, errors
from rlm_kernel.cli import main
from rlm_kernel.magic import parse_replay_line
from rlm_kernel.record import RecordedCall, ReplayBook, read
from rlm_kernel.replay import ReplayTransport
from rlm_kernel.verify import normalize_text

CONTEXT = "alpha beta gamma\ndelta epsilon\nalpha beta gamma\n"

STEP_1 = """I'll ask for a summary, then count the words of each line.
```repl
first = llm_query("Summarise: " + context[:30])
print(first)
parts = llm_query_batched(["Count words: " + line for line in context.splitlines()])
print(parts)
```"""
STEP_2 = """```repl
total = sum(int(p.split("=")[1]) for p in parts)
result = f"{total} words; {first}"
print(result)
```
FINAL_VAR(result)"""


ERRORS = """Failures and volatile output.
```repl
class Thing:
    pass
print(Thing())
try:
    llm_query("please fail")
except Exception as e:
    print(type(e).__name__, e)
def f(x):
    return 1 / x
f(0)
```"""
TIMED = """```repl
%time total = sum(range(1000))
print(total)
```
FINAL(done)"""


def scripted_root(*replies: str):
    def root(messages):
        return replies[sum(m["role"] == "assistant" for m in messages)]

    return root


def sub(messages):
    prompt = messages[-1]["content"]
    if prompt.startswith("Count words: "):
        return f"words={len(prompt.split()) - 2}"
    if prompt.startswith("What is six"):
        return "42"
    if prompt == "please fail":
        raise ValueError("the sub-model refuses")
    return "a text about " + prompt.split()[1]


def record(folder: Path, root, name: str = "run.ipynb") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    result = RLM(root, sub).run("How many words?", context=CONTEXT, notebook=folder / name)
    assert result.status == "answered", result.error
    return Path(result.notebook)


@pytest.fixture(scope="module")
def recorded(tmp_path_factory) -> dict[str, Path]:
    """Two runs, made once for the module: one ending with FINAL_VAR, one with a FINAL line."""
    base = tmp_path_factory.mktemp("recorded")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("IPYKERNEL_CELL_NAME", "<cell>")  # as every test sees it (conftest)
        words = record(base / "words", scripted_root(STEP_1, STEP_2))
        literal = record(
            base / "literal",
            scripted_root(
                "```repl\nx = llm_query('What is six times seven?')\nprint(x)\n```",
                "The sub-model agrees.\n\nFINAL(42)",
            ),
        )
        errors = record(base / "errors", scripted_root(ERRORS, TIMED))
    return {"words": words, "literal": literal, "errors": errors}


def copy_run(nb_path: Path, dest: Path) -> Path:
    """Copy a run notebook and its context file (same relative layout) into ``dest``."""
    dest.mkdir(parents=True, exist_ok=True)
    rel = json.loads(nb_path.read_text())["metadata"]["rlm"]["context"]["path"]
    shutil.copy(nb_path, dest / nb_path.name)
    shutil.copy(nb_path.parent / rel, dest / rel)
    return dest / nb_path.name


def edit(nb_path: Path, change) -> dict:
    data = json.loads(nb_path.read_text())
    change(data)
    nb_path.write_text(json.dumps(data, indent=1))
    return data


def code_cell(data: dict, step: int, block: int = 1) -> dict:
    return next(
        c
        for c in data["cells"]
        if c["cell_type"] == "code"
        and c["metadata"].get("rlm", {}).get("step") == step
        and c["metadata"]["rlm"]["block"] == block
    )


def replay_json(capsys, *argv: str) -> tuple[int, dict]:
    code = main(["replay", *argv, "--json"])
    return code, json.loads(capsys.readouterr().out)


# -- the book ------------------------------------------------------------------------------------


def book_of(*calls: tuple[str, str | None, str | None]) -> ReplayBook:
    return ReplayBook(
        RecordedCall(
            step=1,
            block=i + 1,
            prompt_sha256=hashlib.sha256(p.encode()).hexdigest(),
            prompt_preview=p,
            response=r,
            error=e,
            model="anthropic:m",
        )
        for i, (p, r, e) in enumerate(calls)
    )


def test_the_nth_call_with_a_prompt_gets_the_nth_response():
    book = book_of(("q", "one", None), ("other", "x", None), ("q", "two", None))
    assert [book.answer("q"), book.answer("q"), book.answer("other")] == ["one", "two", "x"]
    with pytest.raises(errors.ReplayMiss) as miss:
        book.answer("q")
    assert "sent this prompt 2 times (first at step 1.1)" in str(miss.value)
    assert "every recorded sub-call is used up" in str(miss.value).lower()


def test_a_recorded_failure_fails_again_with_its_message():
    book = book_of(("q", None, "anthropic:m: HTTP 500 overloaded"), ("r", None, "ValueError: no"))
    with pytest.raises(errors.SubcallFailed, match=r"^ModelError: anthropic:m: HTTP 500"):
        book.answer("q")
    with pytest.raises(errors.SubcallFailed, match=r"^ValueError: no$"):
        book.answer("r")


def test_a_missed_batch_uses_up_nothing_and_names_the_next_recorded_call():
    book = book_of(("a", "A", None), ("b", "B", None))
    transport = ReplayTransport(book)
    response = transport.request("subcall", {"prompts": ["a", "zzz never sent"], "kind": "llm"})
    assert response["error"]["type"] == "ReplayMiss"
    assert "'zzz never sent'" in response["error"]["message"]
    message = response["error"]["message"]
    assert "next unused sub-call was made at step 1.1 with the prompt 'a'" in message
    assert transport.request("subcall", {"prompts": ["a", "b"]}) == {
        "results": [{"ok": "A"}, {"ok": "B"}]
    }


def test_calls_past_the_recorded_sub_call_limit_fail_as_budget_exceeded():
    transport = ReplayTransport(book_of(("a", "A", None)), max_subcalls=1)
    response = transport.request("subcall", {"prompts": ["a", "b"]})
    assert response["results"][0] == {"ok": "A"}
    assert response["results"][1]["error"]["type"] == "BudgetExceeded"


def test_the_book_of_a_real_run_holds_its_calls_in_order(recorded):
    book = ReplayBook.from_run(read(recorded["words"]))
    assert [c.prompt_preview.split(":")[0] for c in book.calls] == [
        "Summarise",
        *["Count words"] * 3,
    ]
    assert book.answer("Summarise: " + CONTEXT[:30]) == "a text about alpha"
    assert book.answer("Count words: alpha beta gamma") == "words=3"


def test_normalize_text_hides_addresses_counts_and_timings():
    a = "<object at 0x7f3a12bc>\nCell In[3], line 2\nWall time: 1.25 ms\n\x1b[31mred\x1b[0m"
    b = "<object at 0x55aa90>\nCell In[7], line 2\nWall time: 3 s\nred"
    assert normalize_text(a) == normalize_text(b)
    assert normalize_text("0x10 items") == "0x10 items"  # a hex number that is no address stays


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("run.ipynb", ("run.ipynb", False)),
        ('"my run.ipynb" --live', ("my run.ipynb", True)),
        ('--live "a \\"b\\".ipynb"', ('a "b".ipynb', True)),
    ],
)
def test_the_magic_line_names_one_notebook(line, expected):
    assert parse_replay_line(line) == expected


@pytest.mark.parametrize("line", ["", "a.ipynb b.ipynb", "a.ipynb --fast", '"a.ipynb'])
def test_a_bad_magic_line_is_refused(line):
    with pytest.raises(ValueError, match=r"rlm_replay RUN\.ipynb"):
        parse_replay_line(line)


# -- rlm-kernel replay ---------------------------------------------------------------------------


def test_replay_reproduces_every_cell_and_the_answer(recorded, capsys):
    code, report = replay_json(capsys, str(recorded["words"]))
    assert code == 0, report
    assert report["status"] == "reproduced"
    assert [(c["step"], c["block"], c["result"]) for c in report["cells"]] == [
        (1, 1, "same"),
        (2, 1, "same"),
        (2, 2, "same"),  # the FINAL_VAR line, recorded as a cell
    ]
    assert report["answer"] == report["recorded_answer"] == "8 words; a text about alpha"
    assert report["answer_source"] == "replay"


def test_a_plain_text_final_answer_is_taken_from_the_record(recorded, capsys):
    assert main(["replay", str(recorded["literal"])]) == 0
    err = capsys.readouterr().err
    assert "step 1.1: same" in err
    assert "reproduced: 1 of 1 cell the same, the answer matches" in err
    assert "taken from the record" in err


def test_failures_addresses_and_timings_replay_the_same(recorded, capsys):
    recorded_nb = nbformat.read(recorded["errors"], 4)
    printed = code_cell(recorded_nb, 1)["outputs"][0]["text"]
    assert "SubcallError ValueError: the sub-model refuses" in printed
    assert " object at 0x" in printed
    code, report = replay_json(capsys, str(recorded["errors"]))
    assert code == 0, report
    assert [c["result"] for c in report["cells"]] == ["same", "same"]


def test_an_edited_response_makes_its_cell_differ(recorded, tmp_path, capsys):
    nb_path = copy_run(recorded["words"], tmp_path)

    def change(data):
        code_cell(data, 1)["metadata"]["rlm"]["subcalls"][0]["response"] = "an edited answer"

    edit(nb_path, change)
    code, report = replay_json(capsys, str(nb_path))
    assert code == 1
    assert report["status"] == "differs"
    first = report["cells"][0]
    assert first["result"] == "differs"
    assert "-a text about alpha" in first["diff"]
    assert "+an edited answer" in first["diff"]
    assert report["answer"] == "8 words; an edited answer"


def test_a_prompt_never_recorded_raises_replay_miss_naming_the_step(recorded, tmp_path, capsys):
    nb_path = copy_run(recorded["words"], tmp_path)

    def change(data):
        cell = code_cell(data, 1)
        cell["source"] = "".join(cell["source"]).replace("Summarise: ", "Summarize: ")

    edit(nb_path, change)
    out = tmp_path / "replayed.ipynb"
    code, report = replay_json(capsys, str(nb_path), "--out", str(out))
    assert code == 1
    first = report["cells"][0]
    assert first["result"] == "newly_failing"
    assert first["error"].startswith("ReplayMiss: no recorded response")
    assert "Prompt: 'Summarize: alpha beta gamma delta epsilon'" in first["error"]
    assert "next unused sub-call was made at step 1.1" in first["error"]
    # The copy with the replayed outputs is a valid notebook holding the kernel's real error.
    nb = nbformat.read(out, 4)
    nbformat.validate(nb)
    errors = [o for o in code_cell(nb, 1)["outputs"] if o["output_type"] == "error"]
    assert errors[0]["ename"] == "ReplayMiss"


def test_a_moved_notebook_replays_with_its_context_beside_it(recorded, tmp_path, capsys):
    nb_path = copy_run(recorded["words"], tmp_path / "elsewhere" / "deeper")
    code, report = replay_json(capsys, str(nb_path))
    assert code == 0, report


def test_an_embedded_context_stands_in_for_a_missing_file(recorded, tmp_path, capsys):
    nb_path = copy_run(recorded["words"], tmp_path)

    def embed(data):
        ctx = data["metadata"]["rlm"]["context"]
        ctx["embedded"] = (tmp_path / ctx["path"]).read_text()
        (tmp_path / ctx["path"]).unlink()

    edit(nb_path, embed)
    code, report = replay_json(capsys, str(nb_path))
    assert code == 0, report


@pytest.mark.parametrize("damage", ["missing", "altered"])
def test_a_missing_or_altered_context_is_bad_input(recorded, tmp_path, capsys, damage):
    nb_path = copy_run(recorded["words"], tmp_path)
    ctx = json.loads(nb_path.read_text())["metadata"]["rlm"]["context"]
    if damage == "missing":
        (tmp_path / ctx["path"]).unlink()
    else:
        (tmp_path / ctx["path"]).write_text(CONTEXT + "one more line\n")
    assert main(["replay", str(nb_path)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert str(tmp_path / ctx["path"]) in lines[0]
    assert ctx["sha256"] in lines[0]
    assert ("missing" if damage == "missing" else "differs") in lines[0]


def test_a_file_that_is_not_a_run_notebook_is_bad_input(tmp_path, capsys):
    other = tmp_path / "plain.ipynb"
    nbformat.write(nbformat.v4.new_notebook(), str(other))
    assert main(["replay", str(other)]) == 2
    assert "not an rlm-kernel run notebook" in capsys.readouterr().err
    assert main(["replay", str(tmp_path / "absent.ipynb")]) == 2


# -- Run All: the setup cell's magic in a kernel -------------------------------------------------


def execute(nb: nbformat.NotebookNode, folder: Path, allow_errors: bool = False):
    return execute_notebook(nb, folder, allow_errors=allow_errors)


def texts(cell) -> str:
    parts = []
    for o in cell.outputs:
        if o.output_type == "stream":
            parts.append(o.text)
        elif o.output_type == "error":
            parts.append(f"{o.ename}: {o.evalue}")
        else:
            parts.append(o.get("data", {}).get("text/plain", ""))
    return "\n".join(parts)


def test_the_notebook_runs_top_to_bottom_without_an_api_key(recorded, tmp_path):
    nb_path = copy_run(recorded["words"], tmp_path)
    nb = execute(nbformat.read(nb_path, 4), tmp_path)
    setup = next(c for c in nb.cells if "rlm-setup" in c.metadata.get("tags", []))
    assert "4 recorded sub-calls" in texts(setup)
    final = code_cell(nb, 2, 2)
    assert texts(final) == "FINAL: 8 words; a text about alpha (matches the recorded answer)"


def magic_notebook(*cells: str) -> nbformat.NotebookNode:
    return nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells])


def with_real_sub_model(recorded, tmp_path) -> Path:
    """A copy of the run as if its sub-model had been a real Anthropic model."""
    nb_path = copy_run(recorded["words"], tmp_path)

    def rename(data):
        data["metadata"]["rlm"]["models"]["sub"] = "anthropic:claude-haiku-5-5"

    edit(nb_path, rename)
    return nb_path


def test_live_without_a_key_is_a_replay_miss_saying_a_key_is_needed(recorded, tmp_path):
    with_real_sub_model(recorded, tmp_path)
    nb = magic_notebook(
        "%load_ext rlm_kernel\n%rlm_replay run.ipynb --live",
        "llm_query('a prompt the run never sent')",
    )
    execute(nb, tmp_path, allow_errors=True)
    out = texts(nb.cells[1])
    assert out.startswith("ReplayMiss: no recorded response"), out
    assert "--live could not call the recorded sub-model anthropic:claude-haiku-5-5" in out
    assert "ANTHROPIC_API_KEY" in out


def test_live_sends_only_the_misses_to_the_sub_model(recorded, tmp_path, fake_model_server):
    fake_model_server.add_model("claude-haiku-5-5", lambda messages: "a live answer")
    with_real_sub_model(recorded, tmp_path)
    nb = magic_notebook(
        "%load_ext rlm_kernel\n%rlm_replay run.ipynb --live",
        "print(llm_query_batched(['Summarise: ' + context[:30], 'something new']))",
    )
    execute(nb, tmp_path)
    printed = [o.text for o in nb.cells[1].outputs if o.get("name") == "stdout"]
    assert printed == ["['a text about alpha', 'a live answer']\n"]
    assert len(fake_model_server.requests) == 1


def test_the_magic_reports_a_missing_context_in_one_line(recorded, tmp_path):
    nb_path = copy_run(recorded["words"], tmp_path)
    ctx = json.loads(nb_path.read_text())["metadata"]["rlm"]["context"]
    (tmp_path / ctx["path"]).unlink()
    nb = magic_notebook("%load_ext rlm_kernel\n%rlm_replay run.ipynb")
    with pytest.raises(nbclient.exceptions.CellExecutionError) as failure:
        execute(nb, tmp_path)
    assert "the run's context file is missing" in str(failure.value)
    assert ctx["sha256"] in str(failure.value)
