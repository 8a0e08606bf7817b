"""The run notebook format: the only code that reads or writes ``metadata.rlm`` and its cells.

- :mod:`.format`: tags, cell ids, the markdown conventions, the setup cell, the prompt digest;
- :mod:`.records`: typed records of the run, a step, a code cell, a sub-call and an error;
- :mod:`.writer`: the step-by-step :class:`Recorder` and :func:`write_notebook` (one atomic,
  validated way to write a notebook);
- :mod:`.meta`: what a new run's ``metadata.rlm`` starts as (defaults, versions, timestamps);
- :mod:`.paths`: the paths a notebook holds relative to itself, :func:`relocate` for a copy;
- :mod:`.reader`: :func:`load` / :func:`read` (a :class:`RunNotebook` of records);
- :mod:`.book`: replay's recorded-answer book.

Format 2 adds run trees (``depth``, ``children``, ``parent.block/subcall``, sub-call ``child``)
and structured errors (``{type, message, retries}``); format 1 notebooks are still read.
"""

from .book import RecordedCall, ReplayBook
from .format import (
    ANSWER_TAG,
    CODE_TAG,
    FINAL_STATUSES,
    FINAL_TAG,
    FORMAT,
    NOT_RUN_MARKER,
    SETUP_CELL_ID,
    SETUP_TAG,
    STEP_TAG,
    SUMMARY_TAG,
    code_marker,
    magic_arg,
    parse_code_cell_id,
    prompt_sha256,
    setup_source,
)
from .paths import rebase, relocate
from .reader import RunNotebook, from_notebook, load, read
from .records import (
    ChildSummary,
    CodeCellRecord,
    ErrorRecord,
    ExecRecord,
    ParentLink,
    RunRecord,
    StepRecord,
    SubcallRecord,
    code_cell_id,
)
from .writer import Recorder, write_notebook

__all__ = [
    "ANSWER_TAG",
    "CODE_TAG",
    "FINAL_STATUSES",
    "FINAL_TAG",
    "FORMAT",
    "NOT_RUN_MARKER",
    "SETUP_CELL_ID",
    "SETUP_TAG",
    "STEP_TAG",
    "SUMMARY_TAG",
    "ChildSummary",
    "CodeCellRecord",
    "ErrorRecord",
    "ExecRecord",
    "ParentLink",
    "RecordedCall",
    "Recorder",
    "ReplayBook",
    "RunNotebook",
    "RunRecord",
    "StepRecord",
    "SubcallRecord",
    "code_cell_id",
    "code_marker",
    "from_notebook",
    "load",
    "magic_arg",
    "parse_code_cell_id",
    "prompt_sha256",
    "read",
    "rebase",
    "relocate",
    "setup_source",
    "write_notebook",
]
