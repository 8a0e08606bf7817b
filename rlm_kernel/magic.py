"""The IPython extension: ``%load_ext rlm_kernel`` and ``%rlm_replay RUN.ipynb [--live]``.

The setup cell of every run notebook is::

    %load_ext rlm_kernel
    %rlm_replay run.ipynb

so *Run All* in Jupyter (or ``jupyter nbconvert --execute``) replays the run without an API key:
``context`` is loaded from the fingerprinted file and ``llm_query`` & co. answer from the
recorded responses. See ``docs/replay.md``.
"""

from __future__ import annotations

import json
from typing import Any

from IPython.core.error import UsageError as IPythonUsageError
from IPython.core.magic import Magics, line_magic, magics_class
from IPython.display import publish_display_data

from . import replay
from .errors import RLMKernelError

__all__ = ["ReplayMagics", "load_ipython_extension", "parse_replay_line"]

_USAGE = "usage: %rlm_replay RUN.ipynb [--live]"


def parse_replay_line(line: str) -> tuple[str, bool]:
    """Split the magic's argument into the notebook name and the ``--live`` flag.

    The name is taken as written, or as a JSON string when it starts with a double quote (the
    recorder quotes names with spaces that way).

    Raises:
        ValueError: no name, several names or an unknown option.
    """
    names: list[str] = []
    live = False
    rest = line.strip()
    while rest:
        if rest.startswith('"'):
            try:
                token, end = json.JSONDecoder().raw_decode(rest)
            except json.JSONDecodeError:
                raise ValueError(f"unbalanced quotes in {line.strip()!r}; {_USAGE}") from None
            names.append(str(token))
            rest = rest[end:].lstrip()
            continue
        token, _, rest = rest.partition(" ")
        rest = rest.lstrip()
        if token == "--live":
            live = True
        elif token.startswith("--"):
            raise ValueError(f"unknown option {token}; {_USAGE}")
        else:
            names.append(token)
    if len(names) != 1:
        raise ValueError(f"give exactly one run notebook; {_USAGE}")
    return names[0], live


def _announce(value: str, via: str, recorded: str | None) -> None:
    data, metadata = replay.final_output(value, via, recorded)
    publish_display_data(data, metadata=metadata)


@magics_class
class ReplayMagics(Magics):
    """``%rlm_replay``: make this kernel replay a recorded run."""

    @line_magic
    def rlm_replay(self, line: str) -> None:
        """Load a run's context and answer ``llm_query`` & co. from its recorded responses.

        ``%rlm_replay RUN.ipynb`` (relative to the kernel's working directory, which in Jupyter
        is the notebook's folder). With ``--live``, prompts the run never sent go to the
        recorded sub-model (an API key must be set in the kernel's environment).
        """
        try:
            name, live = parse_replay_line(line)
            session = replay.install(
                self.shell.user_ns, name, shell=self.shell, live=live, on_final=_announce
            )
        except (ValueError, RLMKernelError) as e:
            # IPython shows a UsageError as one line, without a traceback.
            raise IPythonUsageError(str(e)) from None
        self.shell.user_ns["_rlm_replay"] = session
        print(session.describe())


def load_ipython_extension(ipython: Any) -> None:
    """Register the ``%rlm_replay`` magic (``%load_ext rlm_kernel``)."""
    ipython.register_magics(ReplayMagics)
