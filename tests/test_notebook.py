"""The run notebook: cells, metadata, byte-exact atomic writes, loading and cheap saves."""

from __future__ import annotations

import json
import os
import re

import nbformat
import pytest
from nbformat.v4 import new_output

from rlm_kernel.errors import NotebookFormatError, OutputPathError
from rlm_kernel.record import FORMAT, Recorder, SubcallRecord, load, read
from rlm_kernel.record import writer as notebook
from rlm_kernel.types import Limits, Usage

META_KEYS = {
    "format",
    "run_id",
    "status",
    "stop_reason",
    "question",
    "answer",
    "models",
    "limits",
    "system_prompt",
    "context",
    "usage",
    "cost_usd",
    "steps",
    "subcalls",
    "started",
    "finished",
    "duration_s",
    "versions",
    "parent",
    "error",
    "depth",
    "children",
}
USAGE_KEYS = {
    "calls",
    "input_tokens",
    "output_tokens",
    "cache_read_input_tokens",
    "cache_creation_input_tokens",
}
PNG = (
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR4nGNgYGD4DwABBAEAwS2OUAAAAABJRU5ErkJg"
    "gg=="
)


def _meta(**overrides):
    meta = {
        "run_id": "run-1",
        "question": "How many?",
        "models": {"root": "anthropic:big", "sub": "anthropic:small"},
        "limits": {"max_steps": 30},
    }
    meta.update(overrides)
    return meta


def _exec(status="ok", shown="4\n"):
    return {"status": status, "duration_s": 0.01, "output_chars": len(shown), "shown": shown}


def _add_step(rec, k, *, outputs=None, subcalls=(), status="ok"):
    rec.add_step(
        step=k,
        markdown=f"Looking at part {k}.",
        raw=f"Looking at part {k}.\n```python\nprint({k})\n```",
        usage={"calls": 1, "input_tokens": 100 * k, "output_tokens": 10},
        latency_s=0.25 * k,
    )
    rec.add_code(
        step=k,
        block=1,
        source=f"print({k})",
        outputs=[new_output("stream", name="stdout", text=f"{k}\n")]
        if outputs is None
        else outputs,
        execution_count=k,
        exec=_exec(status),
        subcalls=list(subcalls),
    )


def _subcall(i, prompt="Summarise this", response="A summary"):
    return {
        "id": i,
        "kind": "llm",
        "model": "anthropic:small",
        "prompt_sha256": "ab" * 32,
        "prompt_chars": len(prompt),
        "prompt_preview": prompt,
        "response": response,
        "latency_s": 0.5,
        "usage": Usage(calls=1, input_tokens=5, output_tokens=3).to_dict(),
        "error": None,
        "child": None,
    }


def _assert_written_like_nbformat(rec):
    """The file on disk is exactly what nbformat writes for the notebook it holds."""
    data = rec.path.read_bytes()
    nbformat.validate(nbformat.reads(data.decode("utf-8"), as_version=4))
    assert data == (nbformat.writes(load(rec.path)) + "\n").encode("utf-8")
    assert data == (nbformat.writes(rec.nb) + "\n").encode("utf-8")


def _files(folder):
    return sorted(p.name for p in folder.iterdir())


# -- structure -------------------------------------------------------------------------------


def test_a_new_recorder_writes_summary_and_setup_cells(tmp_path):
    rec = Recorder(tmp_path / "run.ipynb", _meta())

    nb = load(tmp_path / "run.ipynb")
    assert [c.cell_type for c in nb.cells] == ["markdown", "code"]
    summary, setup = nb.cells
    assert (summary.id, summary.metadata.tags) == ("rlm-summary", ["rlm-summary"])
    assert (setup.id, setup.metadata.tags) == ("rlm-setup", ["rlm-setup"])
    assert setup.outputs == [] and setup.execution_count is None
    assert setup.source.splitlines()[-2:] == ["%load_ext rlm_kernel", "%rlm_replay run.ipynb"]
    assert nb.metadata.kernelspec.name == "python3"
    assert nb.metadata.language_info.name == "python"
    assert nb.metadata.rlm == rec.meta
    _assert_written_like_nbformat(rec)


def test_missing_metadata_gets_defaults_and_format_is_forced(tmp_path):
    rec = Recorder(
        tmp_path / "run.ipynb",
        _meta(
            format=99,
            usage={"root": {"calls": 2}},
            models={"root": "openai:x"},
            limits=Limits(max_steps=5),
        ),
    )

    meta = load(rec.path).metadata.rlm
    assert set(meta) == META_KEYS
    assert meta.format == FORMAT
    assert (meta.status, meta.answer, meta.finished, meta.parent) == ("running", None, None, None)
    assert meta.models == {"root": "openai:x", "sub": None}
    assert meta.usage.root == {**dict.fromkeys(USAGE_KEYS, 0), "calls": 2}
    assert set(meta.usage.sub) == USAGE_KEYS
    assert set(meta.context) == {"type", "chars", "bytes", "sha256", "path", "preview"}
    assert {"rlm_kernel", "python", "ipykernel", "jupyter_client", "nbformat"} <= set(meta.versions)
    assert meta.limits == Limits(max_steps=5).to_dict()
    assert meta.started.endswith("+00:00")


def test_steps_become_markdown_and_code_cells_with_their_metadata(tmp_path):
    rec = Recorder(tmp_path / "run.ipynb", _meta())
    rec.add_step(
        step=1,
        markdown="I will count.",
        raw="I will count.\n```python\nlen(context)\n```",
        usage=Usage(calls=1, input_tokens=12, output_tokens=7),
        latency_s=1.5,
        extra={"messages_sha256": "00" * 32},
    )
    record = SubcallRecord(
        id=1, kind="llm", model="m", prompt_sha256="cd" * 32, prompt_chars=3, prompt_preview="abc"
    )
    rec.add_code(
        step=1,
        block=1,
        source="len(context)",
        outputs=[new_output("execute_result", data={"text/plain": "4"}, execution_count=3)],
        execution_count=3,
        exec=_exec(),
        subcalls=[record, _subcall(2)],
        tags=["rlm-code", "slow"],
        extra={"final": True},
    )
    rec.add_code(
        step=1,
        block=2,
        source="1/0",
        outputs=[new_output("error", ename="ZeroDivisionError", evalue="division by zero")],
        execution_count=4,
        exec=_exec("error", "ZeroDivisionError"),
        subcalls=[],
    )
    rec.save()

    nb = load(rec.path)
    md, code1, code2 = nb.cells[2:]
    assert (md.id, md.cell_type, md.metadata.tags) == ("step-1", "markdown", ["rlm-step"])
    assert md.source == "### Step 1\n\nI will count."
    assert md.metadata.rlm == {
        "step": 1,
        "role": "model",
        "raw": "I will count.\n```python\nlen(context)\n```",
        "usage": Usage(calls=1, input_tokens=12, output_tokens=7).to_dict(),
        "latency_s": 1.5,
        "messages_sha256": "00" * 32,
    }
    assert (code1.id, code1.cell_type, code1.execution_count) == ("step-1-code-1", "code", 3)
    assert code1.metadata.tags == ["rlm-code", "slow"]
    assert code1.metadata.rlm == {
        "step": 1,
        "block": 1,
        "exec": _exec(),
        "subcalls": [record.to_dict(), _subcall(2)],
        "final": True,
    }
    assert code1.outputs[0].data["text/plain"] == "4"
    assert code2.id == "step-1-code-2" and code2.metadata.tags == ["rlm-code"]
    assert code2.metadata.rlm.exec.status == "error"
    _assert_written_like_nbformat(rec)


def test_cell_ids_are_deterministic_and_valid(tmp_path):
    rec = Recorder(tmp_path / "run.ipynb", _meta())
    for k in (1, 2, 10):
        _add_step(rec, k)
    rec.finish(status="answered", stop_reason="final", answer="3")

    ids = [c.id for c in load(rec.path).cells]
    assert ids == [
        "rlm-summary",
        "rlm-setup",
        "step-1",
        "step-1-code-1",
        "step-2",
        "step-2-code-1",
        "step-10",
        "step-10-code-1",
        "rlm-answer",
    ]
    assert all(re.fullmatch(r"[a-zA-Z0-9-_]{1,64}", i) for i in ids)


def test_steps_groups_cells_by_step(tmp_path):
    rec = Recorder(tmp_path / "run.ipynb", _meta())
    _add_step(rec, 1)
    rec.add_code(
        step=1, block=2, source="x", outputs=[], execution_count=2, exec=_exec(), subcalls=[]
    )
    rec.add_step(step=2, markdown="FINAL(4)", raw="FINAL(4)", usage={}, latency_s=0.1)
    rec.finish(status="answered", stop_reason="final", answer="4")

    grouped = read(rec.path).steps
    assert [s.step for s in grouped] == [1, 2]
    assert grouped[0].has_reply
    assert [c.cell_id for c in grouped[0].code] == ["step-1-code-1", "step-1-code-2"]
    assert grouped[1].prose.endswith("FINAL(4)")
    assert grouped[1].code == []


def test_the_setup_cell_quotes_a_file_name_with_spaces(tmp_path):
    Recorder(tmp_path / "my run.ipynb", _meta())

    setup = load(tmp_path / "my run.ipynb").cells[1]
    assert setup.source.splitlines()[-1] == '%rlm_replay "my run.ipynb"'


# -- the summary -------------------------------------------------------------------------------


def test_summary_shows_the_run_at_a_glance(tmp_path):
    rec = Recorder(tmp_path / "run.ipynb", _meta(question="Which | one?\nSecond line"))
    _add_step(rec, 1, subcalls=[_subcall(1), _subcall(2)])
    rec.add_code(
        step=1,
        block=2,
        source="x",
        outputs=[],
        execution_count=2,
        exec=_exec("odd|status\nsplit"),
        subcalls=[],
    )
    rec.add_code(
        step=1, block=3, source="y", outputs=[], execution_count=3, exec=_exec(), subcalls=[]
    )
    rec.meta.update(steps=1, subcalls=2, cost_usd=None)
    rec.meta["usage"]["root"] = Usage(calls=1, input_tokens=1234, cache_read_input_tokens=99)
    rec.save()

    source = load(rec.path).cells[0].source
    assert "> Which | one?\n> Second line" in source
    assert "No answer yet" in source
    assert "| Status | running |" in source
    assert "root anthropic:big · sub anthropic:small" in source
    assert "| Steps | 1 |" in source and "| Sub-calls | 2 |" in source
    assert "1,234 in · 0 out · 99 cache read · 0 cache write (1 call)" in source
    assert "| Cost | unknown |" in source
    assert "| 1 | 3 | ok ×2, odd\\|status split | 2 | 0.2 s |" in source
    assert load(rec.path).metadata.rlm.usage.root.input_tokens == 1234

    rec.meta["cost_usd"] = 0.0123
    rec.finish(status="answered", stop_reason="final", answer="The <b>first</b> one")
    source = load(rec.path).cells[0].source
    assert "> The &lt;b>first&lt;/b> one" in source
    assert "| Status | answered (final) |" in source
    assert "| Cost | $0.0123 |" in source


def test_summary_lists_steps_in_order_and_updates_a_step_in_place(tmp_path):
    rec = Recorder(tmp_path / "run.ipynb", _meta())
    assert "No steps recorded yet" in load(rec.path).cells[0].source
    _add_step(rec, 2)
    rec.save()
    _add_step(rec, 1)
    rec.add_code(
        step=2, block=2, source="z", outputs=[], execution_count=9, exec=_exec(), subcalls=[]
    )
    rec.save()

    rows = [
        line for line in load(rec.path).cells[0].source.splitlines() if line[:3] in {"| 1", "| 2"}
    ]
    assert rows == ["| 1 | 1 | ok | 0 | 0.2 s |", "| 2 | 2 | ok ×2 | 0 | 0.5 s |"]
    _assert_written_like_nbformat(rec)


# -- byte-exact writes ---------------------------------------------------------------------------


def test_bytes_match_nbformat_for_unicode_and_rich_outputs(tmp_path):
    question = 'Combien d\'élèves? 数えて 🎉 "quoted" \\ back\\slash\ttab'
    rec = Recorder(tmp_path / "run.ipynb", _meta(question=question, system_prompt="Sys 🤖\n" * 3))
    outputs = [
        new_output("stream", name="stdout", text="naïve 🐍\nsecond\r\nthird\u2028fourth"),
        new_output("stream", name="stderr", text="warning\n"),
        new_output(
            "display_data",
            data={
                "image/png": PNG,
                "image/svg+xml": "<svg>\n<rect/>\n</svg>",
                "text/html": "<b>bold</b>\n<i>é</i>",
                "application/json": {"a": [1, 2], "é": "🎉"},
                "text/plain": "<Figure>",
            },
            metadata={"image/png": {"width": 1}},
        ),
        new_output("execute_result", data={"text/plain": "42\n43"}, execution_count=1),
        new_output(
            "error",
            ename="KeyError",
            evalue="'ключ'",
            traceback=["\x1b[31mKeyError\x1b[0m", "line 🎉"],
        ),
    ]
    _assert_written_like_nbformat(rec)
    rec.add_step(
        step=1,
        markdown="Plan:\n\n- one\n- two ✓\n",
        raw="Plan 🧠\r\nwith CRLF",
        usage={"calls": 1},
        latency_s=0.123456789,
    )
    rec.add_code(
        step=1,
        block=1,
        source="x = 'é'\nprint(x)\n",
        outputs=outputs,
        execution_count=1,
        exec=_exec("error", "naïve 🐍"),
        subcalls=[_subcall(1, prompt="Résumé 🎉", response="Réponse\nligne 2")],
    )
    rec.save()
    _assert_written_like_nbformat(rec)
    assert "🎉".encode() in rec.path.read_bytes()  # UTF-8, not \u escapes

    rec.finish(status="answered", stop_reason="final", answer="Réponse: 42 🎉\nfin")
    _assert_written_like_nbformat(rec)

    nb = load(rec.path)
    assert nb.metadata.rlm.question == question
    assert nb.metadata.rlm.answer == "Réponse: 42 🎉\nfin"
    code = nb.cells[3]
    assert code.outputs == outputs
    assert code.outputs[2].data["image/png"] == PNG
    assert code.outputs[4].output_type == "error" and code.outputs[4].ename == "KeyError"
    assert code.metadata.rlm.subcalls[0]["response"] == "Réponse\nligne 2"
    assert nb.cells[2].metadata.rlm.raw == "Plan 🧠\r\nwith CRLF"
    assert nb.cells[-1].source == "## Answer\n\nRéponse: 42 🎉\nfin"


def test_later_changes_to_caller_data_do_not_leak_into_the_record(tmp_path):
    rec = Recorder(tmp_path / "run.ipynb", _meta())
    outputs = [new_output("stream", name="stdout", text="before\n")]
    usage = {"calls": 1}
    rec.add_step(step=1, markdown="m", raw="r", usage=usage, latency_s=0.1)
    rec.add_code(
        step=1, block=1, source="s", outputs=outputs, execution_count=1, exec=_exec(), subcalls=[]
    )
    outputs[0]["text"] = "after\n"
    usage["calls"] = 7
    rec.save()

    _assert_written_like_nbformat(rec)
    nb = load(rec.path)
    assert nb.cells[3].outputs[0].text == "before\n"
    assert nb.cells[2].metadata.rlm.usage == {"calls": 1}


# -- atomic writes -------------------------------------------------------------------------------


def test_saves_leave_no_temporary_files(tmp_path):
    rec = Recorder(tmp_path / "run.ipynb", _meta())
    for k in range(1, 4):
        _add_step(rec, k)
        rec.save()
        assert _files(tmp_path) == ["run.ipynb"]
    rec.finish(status="answered", stop_reason="final", answer="x")
    assert _files(tmp_path) == ["run.ipynb"]


def test_a_failed_save_keeps_the_last_complete_step_on_disk(tmp_path, monkeypatch):
    rec = Recorder(tmp_path / "run.ipynb", _meta())  # save 1
    _add_step(rec, 1)
    rec.save()  # save 2
    second = rec.path.read_bytes()

    real_replace = os.replace

    def crash(src, dst):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "replace", crash)
    _add_step(rec, 2)
    with pytest.raises(OSError, match="Input/output error"):
        rec.save()  # save 3
    assert rec.path.read_bytes() == second
    assert [c.id for c in load(rec.path).cells][-2:] == ["step-1", "step-1-code-1"]
    assert _files(tmp_path) == ["run.ipynb"]

    # Once the disk works again, the next save writes every step.
    monkeypatch.setattr(os, "replace", real_replace)
    rec.save()
    assert [c.id for c in load(rec.path).cells][-2:] == ["step-2", "step-2-code-1"]
    _assert_written_like_nbformat(rec)


def test_background_saves_land_whole_and_the_newest_version_wins(tmp_path):
    rec = Recorder(tmp_path / "run.ipynb", _meta())
    for k in range(1, 21):
        _add_step(rec, k)
        rec.save(wait=False)  # returns before the disk write; a newer one replaces a queued one
    rec.flush()
    assert [c.id for c in load(rec.path).cells][-2:] == ["step-20", "step-20-code-1"]
    _assert_written_like_nbformat(rec)
    assert _files(tmp_path) == ["run.ipynb"]
    rec.finish(status="answered", stop_reason="final", answer="x")
    assert load(rec.path).metadata.rlm.status == "answered"
    assert _files(tmp_path) == ["run.ipynb"]


def test_a_failed_background_save_is_raised_later_and_keeps_the_previous_file(
    tmp_path, monkeypatch
):
    rec = Recorder(tmp_path / "run.ipynb", _meta())
    _add_step(rec, 1)
    rec.save()
    before = rec.path.read_bytes()

    def crash(src, dst):
        raise OSError(5, "Input/output error")

    real_replace = os.replace
    monkeypatch.setattr(os, "replace", crash)  # the writer thread looks it up at each write
    _add_step(rec, 2)
    rec.save(wait=False)
    with pytest.raises(OSError, match="Input/output error"):
        rec.flush()
    assert rec.path.read_bytes() == before
    assert _files(tmp_path) == ["run.ipynb"]

    # The error is raised once; once the disk works again, the next save writes every step.
    monkeypatch.setattr(os, "replace", real_replace)
    rec.save(wait=False)
    rec.flush()
    assert [c.id for c in load(rec.path).cells][-2:] == ["step-2", "step-2-code-1"]
    _assert_written_like_nbformat(rec)


def test_finishing_writes_the_last_version_even_after_a_failed_background_save(
    tmp_path, monkeypatch
):
    rec = Recorder(tmp_path / "run.ipynb", _meta())
    real_replace = os.replace
    failed = []

    def fail_once(src, dst):
        if not failed:
            failed.append(src)
            raise OSError(28, "No space left on device")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", fail_once)
    _add_step(rec, 1)
    rec.save(wait=False)
    rec.finish(status="answered", stop_reason="final", answer="x")
    assert failed  # the background write did fail
    nb = load(rec.path)
    assert nb.metadata.rlm.status == "answered"
    assert [c.id for c in nb.cells][-3:] == ["step-1", "step-1-code-1", "rlm-answer"]
    assert _files(tmp_path) == ["run.ipynb"]


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_a_full_disk_during_the_write_keeps_the_previous_file(tmp_path, monkeypatch):
    rec = Recorder(tmp_path / "run.ipynb", _meta())
    _add_step(rec, 1)
    rec.save()
    before = rec.path.read_bytes()

    real_open = os.open

    def open_on_full_disk(path, flags, mode=0o777):
        fd = real_open(path, flags, mode)  # the temporary file really is created
        full = real_open("/dev/full", os.O_WRONLY)
        os.dup2(full, fd)
        os.close(full)
        return fd

    monkeypatch.setattr(os, "open", open_on_full_disk)
    _add_step(rec, 2)
    with pytest.raises(OSError):
        rec.save()
    monkeypatch.undo()
    assert rec.path.read_bytes() == before
    assert _files(tmp_path) == ["run.ipynb"]


def test_an_unwritable_path_is_an_output_path_error(tmp_path):
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(OutputPathError, match="cannot write the run notebook"):
        Recorder(tmp_path / "file" / "run.ipynb", _meta())


def test_missing_folders_are_created(tmp_path):
    rec = Recorder(tmp_path / "a" / "b" / "run.ipynb", _meta())
    assert load(rec.path).metadata.rlm.run_id == "run-1"


# -- bad input ---------------------------------------------------------------------------------


def test_an_invalid_output_is_rejected_and_the_notebook_stays_writable(tmp_path):
    rec = Recorder(tmp_path / "run.ipynb", _meta())
    with pytest.raises(NotebookFormatError, match="step-1-code-1"):
        rec.add_code(
            step=1,
            block=1,
            source="x",
            outputs=[{"output_type": "stream", "name": "stdout"}],  # no text
            execution_count=1,
            exec=_exec(),
            subcalls=[],
        )
    with pytest.raises(NotebookFormatError, match="step-1"):
        rec.add_step(step=1, markdown="m", raw="r", usage={}, latency_s=0.1, extra={"x": object()})
    _add_step(rec, 1)
    rec.save()
    _assert_written_like_nbformat(rec)


def test_a_step_cannot_be_recorded_twice(tmp_path):
    rec = Recorder(tmp_path / "run.ipynb", _meta())
    _add_step(rec, 1)
    with pytest.raises(ValueError, match="step-1"):
        rec.add_step(step=1, markdown="again", raw="again", usage={}, latency_s=0.1)


def test_metadata_that_is_not_json_is_refused_before_writing(tmp_path):
    rec = Recorder(tmp_path / "run.ipynb", _meta())
    before = rec.path.read_bytes()
    rec.meta["context"]["path"] = tmp_path  # a Path, not a string
    with pytest.raises(NotebookFormatError, match=r"metadata\.rlm"):
        rec.save()
    assert rec.path.read_bytes() == before
    rec.meta["context"]["path"] = "context.txt"
    rec.save()
    assert load(rec.path).metadata.rlm.context.path == "context.txt"


# -- finishing --------------------------------------------------------------------------------


def test_finish_with_an_answer(tmp_path):
    rec = Recorder(tmp_path / "run.ipynb", _meta(started="2030-01-01T00:00:00+00:00"))
    _add_step(rec, 1)
    rec.finish(status="answered", stop_reason="final", answer="42")

    nb = load(rec.path)
    meta = nb.metadata.rlm
    assert (meta.status, meta.stop_reason, meta.answer, meta.error) == (
        "answered",
        "final",
        "42",
        None,
    )
    assert meta.finished.endswith("+00:00")
    assert isinstance(meta.duration_s, float)
    answer = nb.cells[-1]
    assert (answer.id, answer.cell_type, answer.metadata.tags) == (
        "rlm-answer",
        "markdown",
        ["rlm-answer"],
    )
    assert answer.source == "## Answer\n\n42"
    _assert_written_like_nbformat(rec)


@pytest.mark.parametrize(
    ("status", "stop_reason", "error"),
    [
        ("error", "model_error", "ModelError: anthropic:big: 529 overloaded\nafter 2 retries"),
        ("interrupted", "interrupted", "KeyboardInterrupt"),
        ("no_answer", "max_steps", None),
    ],
)
def test_finish_without_an_answer(tmp_path, status, stop_reason, error):
    rec = Recorder(tmp_path / "run.ipynb", _meta())
    _add_step(rec, 1, status="timeout")
    rec.finish(status=status, stop_reason=stop_reason, answer=None, error=error)

    nb = load(rec.path)
    nbformat.validate(nb)
    meta = nb.metadata.rlm
    assert (meta.status, meta.stop_reason, meta.answer, meta.error) == (
        status,
        stop_reason,
        None,
        error,
    )
    answer = nb.cells[-1].source
    assert "without an answer" in answer and f"`{status}`" in answer
    assert f"`{stop_reason}`" in answer
    if error:
        assert error in answer
        assert "| Error | " + " ".join(error.split()) in nb.cells[0].source
    assert f"| Status | {status} ({stop_reason}) |" in nb.cells[0].source
    _assert_written_like_nbformat(rec)


def test_nothing_can_be_added_after_finish(tmp_path):
    rec = Recorder(tmp_path / "run.ipynb", _meta())
    rec.finish(status="answered", stop_reason="final", answer="x")
    with pytest.raises(RuntimeError, match="already finished"):
        _add_step(rec, 1)
    with pytest.raises(RuntimeError, match="already finished"):
        rec.finish(status="answered", stop_reason="final", answer="y")
    # Run-level metadata may still change afterwards.
    rec.meta["cost_usd"] = 1.5
    rec.save()
    assert load(rec.path).metadata.rlm.cost_usd == 1.5


def test_finish_refuses_an_unknown_status(tmp_path):
    rec = Recorder(tmp_path / "run.ipynb", _meta())
    with pytest.raises(ValueError, match="status must be one of"):
        rec.finish(status="running", stop_reason=None, answer=None)


# -- loading ---------------------------------------------------------------------------------


def test_load_refuses_a_notebook_that_is_not_a_run(tmp_path):
    path = tmp_path / "plain.ipynb"
    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("1")]), path)
    with pytest.raises(
        NotebookFormatError, match=r"plain\.ipynb is not an rlm-kernel run notebook"
    ):
        load(path)


def test_load_refuses_a_newer_format(tmp_path):
    rec = Recorder(tmp_path / "run.ipynb", _meta())
    data = json.loads(rec.path.read_text(encoding="utf-8"))
    data["metadata"]["rlm"]["format"] = FORMAT + 1
    rec.path.write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(NotebookFormatError, match=r"format 2.*upgrade rlm-kernel"):
        load(rec.path)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"cells": [', "invalid JSON at line 1"),
        ("[1, 2]", "not an nbformat 4 notebook"),
        (
            '{"nbformat": 4, "nbformat_minor": 5, "metadata": {}, "cells": [{"id": "a"}]}',
            "invalid notebook",
        ),
    ],
)
def test_load_explains_a_broken_file(tmp_path, content, message):
    path = tmp_path / "broken.ipynb"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(NotebookFormatError, match=message):
        load(path)


def test_load_explains_a_missing_file(tmp_path):
    with pytest.raises(NotebookFormatError, match="cannot read run notebook"):
        load(tmp_path / "nope.ipynb")


# -- cost of a save --------------------------------------------------------------------------


def test_a_save_serializes_and_validates_only_what_changed(tmp_path, monkeypatch):
    rec = Recorder(tmp_path / "run.ipynb", _meta())
    for k in range(1, 30):
        _add_step(rec, k)
        rec.save()

    serialized, validated = [], []
    real_cell_json, real_validate = notebook._cell_json, nbformat.validate

    def counting_cell_json(cell):
        serialized.append(cell.id)
        return real_cell_json(cell)

    def counting_validate(nb, *args, **kwargs):
        if "cells" in nb:  # a notebook (the test's own outputs are checked as they are made)
            validated.append([c["id"] for c in nb["cells"]])
        return real_validate(nb, *args, **kwargs)

    monkeypatch.setattr(notebook, "_cell_json", counting_cell_json)
    monkeypatch.setattr(nbformat, "validate", counting_validate)
    _add_step(rec, 30)
    assert validated == [["step-30"], ["step-30-code-1"]]  # each new cell as it is made
    rec.save()
    assert serialized == ["step-30", "step-30-code-1"]  # once each, when added
    assert validated[2:] == [["rlm-summary"]]  # then only what changed: summary and metadata

    serialized.clear()
    validated.clear()
    rec.finish(status="answered", stop_reason="final", answer="done")
    assert serialized == ["rlm-answer"]
    assert validated[0] == ["rlm-answer"]  # the new cell as it is made, then the whole notebook
    assert len(validated) == 2 and len(validated[1]) == len(rec.nb.cells)
    _assert_written_like_nbformat(rec)


def test_table_cells_escape_html(tmp_path):
    rec = Recorder(tmp_path / "run.ipynb", _meta())
    rec.meta["models"] = {"root": "function:f.<locals>.root", "sub": "s"}
    rec.save()
    summary = load(tmp_path / "run.ipynb").cells[0].source
    assert "f.&lt;locals>.root" in summary and "<locals>" not in summary
