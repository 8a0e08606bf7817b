"""Preparing contexts: what the kernel maps and what the notebook records."""

from __future__ import annotations

import hashlib
import json

import pytest

from rlm_kernel.context import prepare
from rlm_kernel.errors import ContextError


def test_utf8_text_file_is_used_in_place(tmp_path):
    src = tmp_path / "doc.txt"
    src.write_text("héllo wörld\n", encoding="utf-8")
    info = prepare(src, tmp_path / "run")
    assert info.path == src.resolve()
    assert (info.type, info.kind, info.chars, info.bytes) == ("str", "text", 12, 14)
    assert info.sha256 == hashlib.sha256(src.read_bytes()).hexdigest()
    assert info.to_metadata(tmp_path)["path"] == "doc.txt"
    assert list(tmp_path.iterdir()) == [src]  # nothing copied


def test_invalid_utf8_is_replaced_with_a_warning(tmp_path):
    src = tmp_path / "latin1.txt"
    src.write_bytes("café".encode("latin-1"))
    info = prepare(src, tmp_path / "run")
    assert info.path.name == "run.context.txt"
    assert info.path.read_text(encoding="utf-8") == "caf\ufffd"
    assert len(info.warnings) == 1 and "not valid UTF-8" in info.warnings[0]


def test_json_list_and_object(tmp_path):
    src = tmp_path / "items.json"
    src.write_text(json.dumps(["a", "bb", "ccc"]))
    info = prepare(src, tmp_path / "run")
    assert (info.type, info.kind, info.items, info.lengths) == ("list", "json", 3, (1, 2, 3))
    obj = tmp_path / "obj.json"
    obj.write_text('{"k": "v"}')
    assert prepare(obj, tmp_path / "run").type == "dict"


def test_directory_becomes_a_dict_of_relative_paths(tmp_path):
    root = tmp_path / "docs"
    (root / "sub").mkdir(parents=True)
    (root / "a.md").write_text("A")
    (root / "sub" / "b.md").write_text("B")
    (root / ".hidden").write_text("secret")
    info = prepare(root, tmp_path / "run")
    assert info.type == "dict"
    assert json.loads(info.path.read_text()) == {"a.md": "A", "sub/b.md": "B"}


def test_several_paths_make_a_list(tmp_path):
    (tmp_path / "a.txt").write_text("A")
    (tmp_path / "b.json").write_text("[1]")
    info = prepare([tmp_path / "a.txt", tmp_path / "b.json"], tmp_path / "run")
    assert json.loads(info.path.read_text()) == ["A", [1]]


def test_python_objects_are_written_next_to_the_notebook(tmp_path):
    info = prepare("plain text", tmp_path / "run")
    assert info.path == (tmp_path / "run.context.txt").resolve()
    info = prepare({"x": [1, 2]}, tmp_path / "run")
    assert json.loads(info.path.read_text()) == {"x": [1, 2]}


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: p / "missing.txt", "does not exist"),
        (lambda p: (p / "bad.json").write_text("{oops") and p / "bad.json", "not valid JSON"),
        (
            lambda p: (p / "n.json").write_text("3") and p / "n.json",
            "must hold a list or an object",
        ),
        (lambda p: (p / "empty").mkdir() or p / "empty", "holds no files"),
    ],
)
def test_bad_contexts_say_what_is_wrong(tmp_path, make, message):
    with pytest.raises(ContextError, match=message):
        prepare(make(tmp_path), tmp_path / "run")


def test_unserialisable_object(tmp_path):
    with pytest.raises(ContextError, match="JSON-serialisable"):
        prepare({"x": object()}, tmp_path / "run")
    assert not list(tmp_path.iterdir())


def test_embedding_has_a_limit(tmp_path, monkeypatch):
    from rlm_kernel import context

    info = prepare("small text", tmp_path / "run")
    assert info.embedded_text() == "small text"
    monkeypatch.setattr(context, "EMBED_LIMIT_CHARS", 5)
    with pytest.raises(ContextError, match="too many to embed"):
        info.embedded_text()
