"""The overhead suite's model server process: ``python -m rlm_kernel.bench.overhead._serve``.

Serves the suite's root model and one sub-model per latency given on the command line (in
seconds) with the key from the environment, prints ``{"openai_base_url": ...}`` on one line and
serves until its stdin closes.
"""

from __future__ import annotations

import json
import os
import sys

from rlm_kernel.testing import FakeModelServer

from .models import KEY_ENV, ROOT, root, sleeper, sub_name


def serve(latencies: list[float]) -> None:
    """Serve the root and the sub-models until stdin closes; print the address first."""
    models = {ROOT: root, **{sub_name(s): sleeper(s) for s in latencies}}
    with FakeModelServer(models, api_key=os.environ[KEY_ENV]) as server:
        print(json.dumps({"openai_base_url": server.openai_base_url}), flush=True)
        sys.stdin.read()


if __name__ == "__main__":
    serve([float(a) for a in sys.argv[1:]])
