"""Streamed OpenAI replies read event by event: the wire forms servers use, and errors in a stream.

The provider reads the server-sent events of a stream itself (the SDK sends the request); these
tests serve hand-written event streams over real HTTP to the real SDK client.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import openai
import pytest

from rlm_kernel.errors import ModelError
from rlm_kernel.llm.openai import OpenAILLM


def chunk(content: str | None = None, finish: str | None = None, **extra: object) -> dict:
    delta = {} if content is None else {"content": content}
    choice = {"index": 0, "delta": delta, "finish_reason": finish}
    return {"id": "c", "object": "chat.completion.chunk", "choices": [choice], **extra}


USAGE = {"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15}


@pytest.fixture
def sse_server() -> Iterator[dict]:
    """A server answering every chat completion with ``state["body"]`` as an event stream."""
    state: dict = {"body": b""}

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("content-length") or 0))
            body = state["body"]
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    state["url"] = f"http://127.0.0.1:{server.server_address[1]}/v1"
    yield state
    server.shutdown()
    server.server_close()


def complete(state: dict):
    client = openai.AsyncOpenAI(base_url=state["url"], api_key="k", max_retries=0)
    llm = OpenAILLM("m", stream=True, client=client)

    async def go():
        try:
            return await llm.complete([{"role": "user", "content": "q"}], max_tokens=100)
        finally:
            await llm.aclose()

    return asyncio.run(go())


def test_events_in_every_wire_form_servers_use_make_the_reply(sse_server):
    events = [
        b": a comment line, ignored\r\n\r\n",  # CRLF line ends
        b"data: " + json.dumps(chunk("Hel")).encode() + b"\n\n",
        b"data:" + json.dumps(chunk("lo")).encode() + b"\n\n",  # no space after the colon
        b"event: message\ndata: " + json.dumps(chunk(", wor")).encode() + b"\n\n",
        # One event's data over two lines, joined with a newline (JSON allows it).
        b'data: {"id": "c", "object": "chat.completion.chunk",\ndata:  "choices": '
        + json.dumps([{"index": 0, "delta": {"content": "ld"}, "finish_reason": None}]).encode()
        + b"}\n\n",
        b"data: " + json.dumps(chunk(finish="stop")).encode() + b"\n\n",
        b"data: " + json.dumps({"id": "c", "choices": [], "usage": USAGE}).encode() + b"\n\n",
        b"data: [DONE]",  # the last event without its blank line still counts
    ]
    sse_server["body"] = b"".join(events)
    out = complete(sse_server)
    assert out.text == "Hello, world"
    assert out.stop_reason == "stop"
    assert (out.usage.input_tokens, out.usage.output_tokens) == (12, 3)


def test_an_error_event_in_a_stream_is_a_model_error_with_its_message(sse_server):
    error = {"error": {"message": "the model is overloaded", "type": "server_error"}}
    sse_server["body"] = (
        b"data: " + json.dumps(chunk("par")).encode() + b"\n\n"
        b"data: " + json.dumps(error).encode() + b"\n\n"
    )
    with pytest.raises(ModelError, match="the model is overloaded"):
        complete(sse_server)


def test_an_event_that_is_not_an_object_is_an_invalid_reply(sse_server):
    sse_server["body"] = b"data: [1, 2]\n\n"
    with pytest.raises(ModelError, match="not valid"):
        complete(sse_server)
