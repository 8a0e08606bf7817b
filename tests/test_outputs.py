"""Output capture: real kernel messages to nbformat outputs, the byte cap, and model text."""

from __future__ import annotations

import asyncio
import base64
import tracemalloc

import nbformat
import pytest
from jupyter_client.session import Session

from rlm_kernel import _capture
from rlm_kernel.kernel import KernelSession
from rlm_kernel.outputs import ELISION_MIME, OutputCollector, render_text, strip_ansi, truncate

# A valid 1x1 PNG.
PNG_B64 = (
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9"
    "awAAAABJRU5ErkJggg=="
)


@pytest.fixture(scope="module")
def kernel():
    """One real kernel shared by this module's tests; yields a function that runs a cell."""
    loop = asyncio.new_event_loop()
    ks = KernelSession()
    loop.run_until_complete(ks.start())

    def run(code: str, **kwargs):
        return loop.run_until_complete(ks.execute(code, **kwargs))

    run("from IPython.display import display, clear_output, HTML, Image\nimport sys, base64")
    yield run
    loop.run_until_complete(ks.shutdown())
    loop.close()


def validate(outputs) -> None:
    """Every output must be valid nbformat 4 inside a code cell."""
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("", outputs=outputs)])
    nbformat.validate(nb)


# -- real kernel ---------------------------------------------------------------------------


def test_streams_of_the_same_name_are_merged(kernel):
    result = kernel(
        "for i in range(3): print(i, flush=True)\n"
        "print('warn', file=sys.stderr, flush=True)\n"
        "print('end', flush=True)"
    )
    validate(result.outputs)
    streams = [(o["name"], o["text"]) for o in result.outputs]
    assert streams == [("stdout", "0\n1\n2\n"), ("stderr", "warn\n"), ("stdout", "end\n")]
    assert result.output_bytes == len("0\n1\n2\nwarn\nend\n")


def test_execute_result_display_data_and_error(kernel):
    result = kernel(
        f"display(Image(data=base64.b64decode({PNG_B64!r})))\ndisplay(HTML('<b>bold</b>'))\n6 * 7"
    )
    validate(result.outputs)
    image, html, value = result.outputs
    assert image["output_type"] == "display_data"
    assert image["data"]["image/png"].strip() == PNG_B64
    assert html["data"]["text/html"] == "<b>bold</b>"
    assert value["output_type"] == "execute_result"
    assert value["data"]["text/plain"] == "42"
    assert value["execution_count"] == result.execution_count

    failed = kernel("def f():\n    raise ValueError('bad value')\nf()")
    validate(failed.outputs)
    assert failed.status == "error"
    assert failed.error == ("ValueError", "bad value")
    [error] = failed.outputs
    assert error["output_type"] == "error"
    assert any("\x1b[" in line for line in error["traceback"])  # the kernel colours it
    text = render_text(failed.outputs)
    assert "\x1b" not in text
    assert "raise ValueError('bad value')" in text
    assert text.rstrip().endswith("ValueError: bad value")


def test_rich_output_without_text_plain_gets_a_placeholder(kernel):
    result = kernel(f"display({{'image/png': {PNG_B64!r}}}, raw=True)")
    assert render_text(result.outputs) == "[image/png, 70 bytes]\n"
    assert len(base64.b64decode(PNG_B64)) == 70


def test_clear_output_now_and_on_next_output(kernel):
    result = kernel("print('a', flush=True)\nclear_output()\nprint('b', flush=True)")
    assert [o["text"] for o in result.outputs] == ["b\n"]

    result = kernel(
        "for i in range(5):\n"
        "    clear_output(wait=True)\n"
        "    print(f'step {i}', flush=True)\n"
        "clear_output(wait=True)"
    )
    # The last wait=True clear has no output after it, so the last step stays.
    assert [o["text"] for o in result.outputs] == ["step 4\n"]


def test_update_display_data_replaces_the_display(kernel):
    result = kernel("h = display('one', display_id=True)\nprint('x', flush=True)\nh.update('two')")
    validate(result.outputs)
    assert result.outputs[0]["data"]["text/plain"] == "'two'"
    assert render_text(result.outputs) == "'two'\nx\n"


def test_byte_cap_keeps_head_and_marks_the_rest(kernel):
    tracemalloc.start()
    try:
        result = kernel("for _ in range(500): print('x' * 9999)", max_output_bytes=100_000)
        retained, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    validate(result.outputs)
    assert result.status == "ok"
    assert result.output_bytes == 5_000_000
    kept, marker = result.outputs
    assert kept["name"] == "stdout" and len(kept["text"]) == 100_000
    assert marker["name"] == "stderr"
    assert marker["text"] == (
        "[rlm-kernel: output truncated at 100000 bytes; 4900000 more bytes not recorded]\n"
    )
    assert retained < 1_000_000  # 5 MB went by; only the capped outputs remain


# -- collector units (messages built by jupyter_client's Session, as the kernel does) -------

session = Session()


def msg(msg_type: str, **content):
    return session.msg(msg_type, content=content)


def stream(text: str, name: str = "stdout"):
    return msg("stream", name=name, text=text)


def test_stream_cut_on_a_character_boundary():
    collector = OutputCollector(max_bytes=5)
    collector.add(stream("ab"))
    collector.add(stream("cdé€f"))  # é is 2 bytes: "cd" fits, é would straddle the limit
    collector.add(stream("more"))
    assert collector.outputs[0]["text"] == "abcd"
    assert collector.truncated
    assert collector.total_bytes == 2 + 8 + 4
    assert "10 more bytes not recorded" in collector.outputs[-1]["text"]


def test_rich_output_over_the_cap_is_dropped_whole():
    collector = OutputCollector(max_bytes=100)
    collector.add(msg("display_data", data={"image/png": "A" * 500}, metadata={}, transient={}))
    collector.add(stream("still room\n"))
    kinds = [o["output_type"] for o in collector.outputs]
    assert kinds == ["stream", "stream"]
    assert collector.outputs[0]["text"] == "still room\n"
    assert collector.outputs[1]["name"] == "stderr"


def test_error_kept_after_the_cap_with_its_last_frames():
    collector = OutputCollector(max_bytes=1000)
    collector.add(stream("x" * 5000))
    frames = [f"frame {i} " + "." * 90 for i in range(50)]
    collector.add(msg("error", ename="RuntimeError", evalue="boom", traceback=frames))
    outputs = collector.outputs
    assert [o["output_type"] for o in outputs] == ["stream", "error", "stream"]
    error = outputs[1]
    assert error["evalue"] == "boom"
    assert error["traceback"][-1] == frames[-1]
    assert 0 < len(error["traceback"]) < len(frames)
    validate(outputs)


def test_memory_stays_bounded_while_a_cell_prints_on():
    collector = OutputCollector(max_bytes=100_000)
    line = "y" * 9999 + "\n"
    tracemalloc.start()
    try:
        for _ in range(500):
            collector.add(stream(line))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert collector.total_bytes == 5_000_000
    assert peak < 500_000


def test_clear_output_frees_room_under_the_cap():
    collector = OutputCollector(max_bytes=10)
    for i in range(100):
        collector.add(msg("clear_output", wait=True))
        collector.add(stream(f"{i:03d}\n"))
    assert [o["text"] for o in collector.outputs] == ["099\n"]
    assert not collector.truncated
    assert collector.total_bytes == 400


def test_non_output_messages_are_ignored():
    collector = OutputCollector()
    collector.add(msg("status", execution_state="busy"))
    collector.add(msg("execute_input", code="1", execution_count=1))
    collector.add(msg("comm_open", comm_id="c", target_name="t", data={}))
    assert collector.outputs == []
    assert collector.total_bytes == 0


# -- render_text, truncate, strip_ansi -------------------------------------------------------


def test_render_text_mixes_streams_values_and_placeholders():
    outputs = [
        nbformat.v4.new_output("stream", name="stdout", text="no newline"),
        nbformat.v4.new_output("execute_result", data={"text/plain": "42"}, execution_count=1),
        nbformat.v4.new_output("display_data", data={"text/html": "<p>" + "x" * 2000 + "</p>"}),
        nbformat.v4.new_output("stream", name="stdout", text="10%\r50%\r100%\ndone\n"),
        nbformat.v4.new_output("error", ename="KeyError", evalue="'k'", traceback=[]),
    ]
    assert render_text(outputs) == (
        "no newline\n42\n[text/html, 2.0 KB]\n100%\ndone\nKeyError: 'k'\n"
    )


def test_truncate_keeps_head_and_tail_and_states_the_full_size():
    text = "".join(f"line {i:04d}\n" for i in range(1000))  # 10,000 characters
    cut = truncate(text, 1000)
    marker = "\n... [9000 characters omitted; the full output is 10000 characters] ...\n"
    assert marker in cut
    head, tail = cut.split(marker)
    assert text.startswith(head) and text.endswith(tail)
    assert len(head) + len(tail) == 1000
    assert len(cut) <= 1000 + len(marker)
    assert truncate(text, 10_000) == text
    marker = "\n... [3 characters omitted; the full output is 3 characters] ...\n"
    assert truncate("abc", 0) == marker


def test_strip_ansi():
    coloured = "\x1b[0;31mValueError\x1b[0m: bad\x1b]0;title\x07 \x1b[2K\x1b[1Adone"
    assert strip_ansi(coloured) == "ValueError: bad done"


def test_the_end_of_dropped_stream_text_is_kept_for_readers():
    collector = OutputCollector(100, tail_chars=10)
    for i in range(50):
        collector.add(msg("stream", name="stdout", text=f"line {i:03d}\n"))
    assert collector.truncated
    assert collector.dropped_tail == "\nline 049\n"[-10:]
    kept, marker, tail = collector.outputs
    assert len(kept["text"]) + collector.dropped_chars == 50 * len("line 000\n")
    assert collector.output_chars == 50 * len("line 000\n")
    assert marker["name"] == "stderr" and tail["text"] == collector.dropped_tail


# -- output capped at the source, in the kernel ----------------------------------------------

HEAD, TAIL = 100_000, 1_000


@pytest.fixture(scope="module")
def capped():
    """A real kernel whose cells may send ``HEAD`` bytes; yields ``run(code) -> (result, sent)``.

    ``sent`` counts what crossed iopub: stream characters and display messages.
    """
    loop = asyncio.new_event_loop()
    ks = KernelSession(setup_code=_capture.setup_code(HEAD, TAIL))
    loop.run_until_complete(ks.start())

    def run(code: str):
        sent = {"stream": 0, "displays": 0}

        def count(msg):
            if msg["header"]["msg_type"] == "stream":
                sent["stream"] += len(msg["content"]["text"])
            elif msg["header"]["msg_type"] == "display_data":
                sent["displays"] += 1

        collector = OutputCollector(HEAD, tail_chars=TAIL)
        result = loop.run_until_complete(ks.execute(code, collector=collector, on_output=count))
        return result, collector, sent

    yield run
    loop.run_until_complete(ks.shutdown())
    loop.close()


def test_a_flood_is_capped_in_the_kernel_and_its_real_end_is_kept(capped):
    # 200 MB in 1 MB writes: only the head and the tail cross to the host.
    code = (
        "import sys\n"
        "for i in range(200): sys.stdout.write(chr(97 + i % 26) * 1_000_000)\n"
        "print('THE END')"
    )
    result, collector, sent = capped(code)
    validate(result.outputs)
    assert result.status == "ok"
    assert sent["stream"] == HEAD and sent["displays"] == 1  # the head, then the kernel's note
    total = 200_000_000 + len("THE END\n")
    assert collector.total_bytes == result.output_bytes == total
    assert collector.output_chars == total
    head, marker, tail = result.outputs
    assert head["text"] == "a" * HEAD
    assert (
        f"{total - HEAD} more bytes not recorded; its last {TAIL} characters follow"
        in (marker["text"])
    )
    assert tail["name"] == "stdout" and tail["text"] == "r" * (TAIL - 8) + "THE END\n"
    shown = collector.shown(300)
    assert shown.startswith("a" * 150) and shown.endswith("r" * 142 + "THE END\n")
    assert f"[{total - 300} characters omitted; the full output is {total} characters]" in shown
    # The next cell has a budget of its own.
    result, collector, sent = capped("print('small')")
    assert render_text(result.outputs) == "small\n" and not collector.truncated


def test_the_capped_stdout_is_still_ipykernels_stream(capped):
    code = (
        "import ipykernel.iostream as io, sys\n"
        "print(isinstance(sys.stdout, io.OutStream), isinstance(sys.stderr, io.OutStream),\n"
        "      sys.stdout.isatty(), sys.stdout.encoding, sys.stdout.fileno() > 2,\n"
        "      sys.stdout.writable(), sys.stdout.write('ab'), sys.stdout.flush())"
    )
    result, _, _ = capped(code)
    assert render_text(result.outputs) == "abTrue True False UTF-8 True True 2 None\n"


def test_kept_output_in_the_kernels_own_history_is_capped_too(capped):
    capped("import sys\nfor _ in range(20): sys.stdout.write('h' * 1_000_000)")
    code = (
        "hm = get_ipython().history_manager\n"
        "print(max(sum(len(t) for o in v for t in o.bundle.get('stream', []))\n"
        "          for v in hm.outputs.values()))"
    )
    result, _, _ = capped(code)
    assert int(render_text(result.outputs)) <= HEAD


def test_subprocess_output_on_file_descriptors_is_capped(capped):
    code = (
        "import subprocess, sys\n"
        "_ = subprocess.run([sys.executable, '-c', 'print(\"z\" * 5_000_000)'], check=True)"
    )
    result, collector, sent = capped(code)
    validate(result.outputs)
    assert sent["stream"] <= HEAD  # ipykernel's pipe reader goes through the same cap
    # Written before the cell ended; the pipe may still hold its last 64 KB when it does.
    assert collector.truncated and 5_000_001 - 65_536 <= collector.total_bytes <= 5_000_001


def test_a_display_flood_is_capped_in_the_kernel(capped):
    code = (
        "from IPython.display import display, HTML\n"
        "for i in range(2000): display(HTML('<b>' + 'x' * 1000 + '</b>'))"
    )
    result, collector, sent = capped(code)
    validate(result.outputs)
    assert sent["displays"] <= HEAD // 1000 + 2  # what fits, and the kernel's note
    assert collector.total_bytes >= 2000 * 1000
    assert result.outputs[-1]["name"] == "stderr" and "not recorded" in result.outputs[-1]["text"]


def test_code_imitating_the_kernels_note_is_held_to_the_cap(capped):
    code = (
        "from IPython.display import display\n"
        f"note = {{'text/plain': 'x', {ELISION_MIME!r}: {{'name': 'stdout', 'elided_chars': 1,\n"
        "        'elided_bytes': 1, 'elided_displays': 0, 'tail': 'y' * 50_000}}\n"
        "for _ in range(100): display(note, raw=True)"
    )
    _, collector, sent = capped(code)
    assert sent["displays"] <= 4
    assert len(collector.dropped_tail) <= TAIL


def test_a_note_of_elided_output_counts_as_dropped():
    collector = OutputCollector(100, tail_chars=10)
    collector.add(stream("h" * 100))
    note = {"name": "stdout", "elided_chars": 5000, "elided_bytes": 5000, "tail": "t" * 9 + "\n"}
    collector.add(msg("display_data", data={"text/plain": "", ELISION_MIME: note}, metadata={}))
    assert collector.output_chars == 5100 and collector.total_bytes == 5100
    kept, marker, tail = collector.outputs
    assert kept["text"] == "h" * 100 and tail["text"] == "t" * 9 + "\n"
    assert "5000 more bytes not recorded; its last 10 characters follow" in marker["text"]
    assert collector.shown(20) == (
        "h" * 10
        + "\n... [5080 characters omitted; the full output is 5100 characters] ...\n"
        + "t" * 9
        + "\n"
    )
    validate(collector.outputs)


def test_a_huge_result_is_cut_in_the_kernel(capped):
    result, collector, _ = capped("'r' * 50_000_000")
    validate(result.outputs)
    (out,) = result.outputs
    text = out["data"]["text/plain"]
    assert text.startswith("'rrr") and len(text) <= HEAD
    assert "more characters of this result were not sent]" in text
    assert collector.total_bytes <= HEAD and not collector.truncated
