"""Benchmarks: answer quality on the paper's task shapes, and the overhead suite.

``rlm-kernel bench TASK`` generates instances of a task (:mod:`.tasks`), answers each with every
method asked for (:mod:`.methods`: the RLM and its ablations, and the baselines ``direct``,
``summary`` and ``retrieval``), scores the answers (:mod:`.scorers`) and writes a results table
and plots (:mod:`.report`). Every run, baselines included, is saved as a notebook.
``rlm-kernel bench overhead`` (:mod:`.overhead`) measures the engine's own costs against their
floors and, on request, against the reference implementation.
"""

from __future__ import annotations

from .scorers import exact_match, numeric_score, pair_f1, score
from .tasks import TASKS, Instance, generate

__all__ = ["TASKS", "Instance", "exact_match", "generate", "numeric_score", "pair_f1", "score"]
