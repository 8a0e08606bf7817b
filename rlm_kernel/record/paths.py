"""The paths a run notebook holds, relative to itself, and how they follow a moved copy.

A run notebook names its context file, its parent run and its child runs by paths relative to
the notebook's own folder; :func:`relocate` rewrites them all for a copy written elsewhere.
"""

from __future__ import annotations

import copy
import os
import pathlib
from collections.abc import Mapping
from typing import Any

import nbformat

from . import format as fmt

__all__ = ["rebase", "relocate"]


def relocate(
    nb: nbformat.NotebookNode,
    source: str | os.PathLike[str],
    target: str | os.PathLike[str],
    *,
    context_path: str | None = None,
    outputs: Mapping[str, tuple[list[Any], int | None]] | None = None,
) -> nbformat.NotebookNode:
    """A copy of the run notebook read from ``source``, with its links valid at ``target``.

    The paths a run notebook holds are relative to the notebook itself: its context file, its
    parent run, its child runs (on their sub-call records and in the summary's tree). Each is
    rewritten to point at the same file from the new place, and the setup cell names the new
    file. Paths that do not resolve against ``source`` are left as they are.

    Args:
        nb: the notebook as read from ``source``.
        source: where it was read.
        target: where the copy goes.
        context_path: the copy's context file, relative to ``target``, when it moves too.
        outputs: new ``(outputs, execution_count)`` by cell id (a replayed copy).
    """
    target = pathlib.Path(target)
    copy_nb = copy.deepcopy(nb)

    def move(rel: Any) -> Any:
        return rebase(rel, source, target)

    meta = copy_nb.metadata.rlm
    ctx = meta.get("context") or {}
    if context_path is not None:
        ctx["path"] = context_path
    elif ctx.get("path"):
        ctx["path"] = move(ctx["path"])
    parent = meta.get("parent")
    if isinstance(parent, dict) and parent.get("notebook"):
        parent["notebook"] = move(parent["notebook"])
    for child in meta.get("children") or []:
        child["notebook"] = move(child.get("notebook"))
    for cell in copy_nb.cells:
        rlm = cell.get("metadata", {}).get("rlm") or {}
        for sub in rlm.get("subcalls") or []:
            if sub.get("child"):
                sub["child"] = move(sub["child"])
        if fmt.SETUP_TAG in cell.get("metadata", {}).get("tags", []):
            cell.source = fmt.setup_source(target.name, previous=cell.source)
        if outputs is not None and cell.get("id") in outputs:
            cell.outputs, cell.execution_count = outputs[cell.id]
    return copy_nb


def rebase(rel: Any, source: str | os.PathLike[str], target: str | os.PathLike[str]) -> Any:
    """A path relative to notebook ``source``, made relative to notebook ``target``.

    Anything that is not a relative path (``None``, an absolute path) is returned as it is.
    """
    if not isinstance(rel, str) or not rel or os.path.isabs(rel):
        return rel
    src_dir = pathlib.Path(source).resolve().parent
    dst_dir = pathlib.Path(target).resolve().parent
    return pathlib.Path(os.path.relpath(src_dir / rel, dst_dir)).as_posix()
