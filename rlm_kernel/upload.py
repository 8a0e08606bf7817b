"""In a remote kernel: receive files sent over Jupyter comm messages, checked by SHA-256.

A kernel on a gateway cannot read the host's disk, so the host sends what the kernel needs (the
in-kernel runtime, the context file) through the kernel's own channels, which reach it behind
any gateway. This module runs inside the kernel: the standard library only, nothing from the
host package. The host executes its source silently, then calls :func:`install`.

Protocol
--------

Each file is one comm on the target ``rlm.upload``:

1. ``comm_open`` with data ``{"name": NAME}``: the kernel opens ``<directory>/NAME`` for
   writing (``NAME`` is a plain file name, no path).
2. ``comm_msg`` with data ``{"seq": N}`` and the chunk as the message's one binary buffer: the
   kernel appends it and answers ``{"ack": N}`` on the same comm, so the host can keep a fixed
   number of chunks in flight and never buffers the whole file in the gateway.
3. ``comm_msg`` with data ``{"end": true, "size": BYTES, "sha256": HEX}`` (the host hashes
   while it sends, so it reads the file once): the kernel closes the file, compares what it
   received with these and answers ``{"done": true, "ok": BOOL, "path": ABSOLUTE,
   "sha256": HEX, "size": BYTES}``; a file that does not match is deleted.

Any failure (a bad name, a full disk) answers ``{"error": MESSAGE}`` and drops the file.
"""

from __future__ import annotations

import atexit
import hashlib
import os
import shutil
import tempfile
from typing import Any

TARGET = "rlm.upload"
FILES_DIR = ".rlm"


class _Receiver:
    """One file being received on one comm."""

    def __init__(self, comm: Any, directory: str, data: dict[str, Any]) -> None:
        self.comm = comm
        self.name = str(data.get("name", ""))
        self.path = os.path.join(directory, self.name)
        self.digest = hashlib.sha256()
        self.received = 0
        self.file: Any = None
        if not self.name or os.path.basename(self.name) != self.name or self.name in (".", ".."):
            self.fail(f"an upload needs a plain file name, not {self.name!r}")
            return
        try:
            self.file = open(self.path, "wb")  # noqa: SIM115 (closed by the end message)
        except OSError as exc:
            self.fail(f"cannot write {self.path} in the kernel: {exc}")

    def on_msg(self, msg: dict[str, Any]) -> None:
        if self.file is None:
            return
        data = msg["content"]["data"]
        try:
            if data.get("end"):
                self.finish(int(data.get("size", -1)), str(data.get("sha256", "")))
                return
            for buffer in msg.get("buffers") or ():
                self.file.write(buffer)
                self.digest.update(buffer)
                self.received += len(buffer)
        except OSError as exc:
            self.fail(f"cannot write {self.path} in the kernel: {exc}")
            return
        self.comm.send({"ack": data.get("seq")})

    def finish(self, size: int, sha256: str) -> None:
        self.file.close()
        self.file = None
        got = self.digest.hexdigest()
        ok = got == sha256 and self.received == size
        if not ok:
            os.unlink(self.path)
        self.comm.send(
            {"done": True, "ok": ok, "path": self.path, "sha256": got, "size": self.received}
        )

    def fail(self, message: str) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None
        if os.path.isfile(self.path):
            os.unlink(self.path)
        self.comm.send({"error": message})


def install(shell: Any) -> str:
    """Make a private working directory, move into it and start receiving files there.

    The directory is removed when the kernel exits. Returns its absolute path; files land in
    its ``.rlm`` folder, so the model's code sees an empty working directory.
    """
    directory = tempfile.mkdtemp(prefix="rlm-k-")
    atexit.register(shutil.rmtree, directory, True)
    files = os.path.join(directory, FILES_DIR)
    os.mkdir(files, 0o700)
    os.chdir(directory)

    def opened(comm: Any, msg: dict[str, Any]) -> None:
        receiver = _Receiver(comm, files, msg["content"]["data"])
        comm.on_msg(receiver.on_msg)

    shell.kernel.comm_manager.register_target(TARGET, opened)
    return directory
