"""The viewer on a run tree: the terminal tree, one offline page for every run, the widget."""

from __future__ import annotations

import json
import shutil

import ipywidgets as w
import pytest
from test_view import _Tags
from trees import tree_notebooks

from rlm_kernel import cli, viewer
from rlm_kernel.record import read
from rlm_kernel.widgets import RunViewer

pytestmark = pytest.mark.slow


def key(root, path) -> str:
    return path.relative_to(root.parent).as_posix()


@pytest.fixture
def broken_tree(recorded_tree, tmp_path):
    """A copy of the tree whose first child (the one with a grandchild) was deleted."""
    shutil.copytree(recorded_tree.parent, tmp_path, dirs_exist_ok=True)
    root = tmp_path / recorded_tree.name
    first = next(p for p in tree_notebooks(root) if read(p).run.question.endswith("chunk 0"))
    first.unlink()
    return root, first


def test_run_tree_holds_every_notebook_linked_both_ways(recorded_tree):
    root = recorded_tree
    tree = viewer.run_tree(read(root))
    paths = tree_notebooks(root)
    assert tree["root"] == "root.ipynb"
    assert sorted(tree["order"]) == sorted(key(root, p) for p in paths)
    for path in paths:
        run = tree["runs"][key(root, path)]
        rec = read(path)
        assert run["missing"] is None
        assert (run["summary"]["question"], run["summary"]["answer"]) == (
            rec.run.question,
            rec.run.answer,
        )
        parent = rec.parent_path()
        assert run["parent_key"] == (None if parent is None else key(root, parent.resolve()))
        linked = [
            sc["child_key"]
            for st in run["steps"]
            for c in st["cells"]
            for sc in c["subcalls"]
            if sc["child"]
        ]
        assert linked == [key(root, p.resolve()) for _c, _s, p in rec.children()]
        for child in linked:
            assert tree["runs"][child]["parent_key"] == run["key"]
    # Depth first: each run comes right before its own subtree.
    order = tree["order"]
    grandchild = next(k for k in order if k.count(".children/") == 2)
    assert order.index(grandchild) == order.index(tree["runs"][grandchild]["parent_key"]) + 1


def test_a_deleted_child_is_shown_as_missing(broken_tree, capsys):
    root, first = broken_tree
    tree = viewer.run_tree(read(root))
    missing = tree["runs"][key(root, first)]
    assert "cannot read run notebook" in missing["missing"]
    assert missing["summary"]["question"] == "count apples in chunk 0"
    assert missing["summary"]["status"] == "answered"  # from the root's summary
    # Its child is still on disk: listed in the root's summary, it hangs under the missing run.
    (grandchild,) = first.parent.rglob("*.children/*.ipynb")
    found = tree["runs"][key(root, grandchild)]
    assert found["missing"] is None and found["parent_key"] == key(root, first)
    assert len(tree["order"]) == 6

    out = root.with_suffix(".html")
    assert cli.main(["view", str(root), "--html", str(out)]) == cli.EXIT_OK
    assert cli.main(["view", str(root)]) == cli.EXIT_OK
    assert "chunk 0" in capsys.readouterr().out


def test_the_page_holds_every_run_escaped(recorded_tree):
    page = viewer.html_page(read(recorded_tree))
    parser = _Tags(page)
    (payload,) = [t for a, t in parser.scripts if a.get("type") == "application/json"]
    assert "<" not in payload and ">" not in payload and "&" not in payload
    data = json.loads(payload)
    assert len(data["runs"]) == len(tree_notebooks(recorded_tree)) == 6
    assert data == json.loads(json.dumps(viewer.run_tree(read(recorded_tree))))
    assert page.count("<script") == 2
    for tag, attrs in parser.tags:
        for name in ("src", "href"):
            assert not attrs.get(name), f"<{tag} {name}=...> would load something"


def test_summary_prints_the_tree_within_the_width(recorded_tree):
    text = viewer.summarize(recorded_tree, width=80)
    lines = text.splitlines()
    assert all(len(line) <= 80 for line in lines), [ln for ln in lines if len(ln) > 80]
    totals = "\n".join(lines[lines.index(next(ln for ln in lines if ln.startswith("totals"))) :])
    cost = viewer.cost_text(read(recorded_tree).run.cost_usd)
    assert cost in totals.split("\n\n")[0]  # wrapped onto a line of its own, not cut off
    children = lines[lines.index("child runs") + 1 :]
    firsts = [ln for ln in children if ln.lstrip().startswith("root.children/")]
    assert [ln.split()[0] for ln in firsts] == [
        "root.children/1.1-1.ipynb",
        "root.children/1.1-1.children/1.1-1.ipynb",
        "root.children/1.1-2.ipynb",
        "root.children/1.1-3.ipynb",
        "root.children/1.1-4.ipynb",
    ]
    assert firsts[1].startswith("    ") and not firsts[0].startswith("    ")
    for width in (30, 45, 60, 100, 200):
        assert max(map(len, viewer.summarize(recorded_tree, width=width).splitlines())) <= width


def test_summary_counts_wide_characters_as_two_columns(recorded_tree):
    data = viewer.trajectory(read(recorded_tree))
    data["summary"]["question"] = "苹果有多少个？" * 12
    data["summary"]["children"][0]["question"] = "梨" * 80
    data["summary"]["tokens"] = {"total": 12_345_678_901, "root": 2_345_678_901, "sub": 10**10}
    data["summary"]["cost_usd"] = 12345.678
    text = viewer.summary_text(data, width=60)
    assert "$12345.6780" in text
    cols = viewer.text._cols
    assert cols("苹果") == 4
    assert max(map(cols, text.splitlines())) <= 60
    question = [ln for ln in text.splitlines() if "苹果" in ln]
    assert len(question) >= 2  # wrapped, not cut


def test_widget_opens_each_child_and_grandchild(recorded_tree):
    v = RunViewer(recorded_tree)
    children = read(recorded_tree).children()
    assert set(v.child_buttons) == {sub.child for _c, sub, _p in children}
    assert v.child_area.children == ()
    for _cell, sub, path in children:
        v.child_buttons[sub.child].click()
        child = v.child
        assert isinstance(child, RunViewer) and child.path == path
        assert v.child_area.children[-1] is child
        header = child.children[0].value
        assert read(path).run.question in header and str(read(path).run.answer) in header
        if child.child_buttons:  # the first child: its grandchild opens below it
            (button,) = child.child_buttons.values()
            button.click()
            assert isinstance(child.child, RunViewer)
            assert "grandchild" in child.child.children[0].value
    close = v.child_area.children[0].children[1]
    close.click()
    assert v.child is None and v.child_area.children == ()


def test_widget_shows_a_missing_child(broken_tree):
    root, first = broken_tree
    v = RunViewer(root)
    assert v.open_child(first.relative_to(root.parent).as_posix()) is None
    note = v.child_area.children[-1]
    assert isinstance(note, w.HTML) and "is missing" in note.value
