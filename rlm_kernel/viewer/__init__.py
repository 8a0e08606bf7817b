"""Read a run notebook as a trajectory: a terminal summary and a self-contained offline HTML page.

Everything comes from the notebook through :mod:`rlm_kernel.record`. :func:`trajectory` turns a
run into plain data (the run's summary, what the model started from, and per step the model's
text, code, outputs, sub-calls and running totals), and :func:`run_tree` does so for every run of
a tree of child runs. The terminal summary (:mod:`.text`), the HTML page (:mod:`.page`) and the
widgets in :mod:`rlm_kernel.widgets` are all drawn from that data.

The HTML page needs no network: its script and style are inlined from ``assets/``, the runs go in
as JSON, images are the notebook's own base64 data, and a Content-Security-Policy forbids every
request. The script builds the page with DOM text nodes, so model output is never parsed as HTML;
HTML outputs are shown in sandboxed frames.
"""

from .data import IMAGE_MIMES, MAX_TREE_RUNS, PREVIEW_CHARS, run_tree, trajectory
from .page import export_html, html_page, summary_html
from .text import MIN_WIDTH, cost_text, summarize, summary_text

__all__ = [
    "IMAGE_MIMES",
    "MAX_TREE_RUNS",
    "MIN_WIDTH",
    "PREVIEW_CHARS",
    "cost_text",
    "export_html",
    "html_page",
    "run_tree",
    "summarize",
    "summary_html",
    "summary_text",
    "trajectory",
]
