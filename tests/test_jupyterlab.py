"""Run notebooks and the run viewer in a real JupyterLab, driven in the system chromium."""

from __future__ import annotations

import importlib.util
import json
import re
import time
from pathlib import Path
from urllib.parse import urlsplit

import nbformat
import pytest

from rlm_kernel import RLM, trust

pytestmark = pytest.mark.slow

if importlib.util.find_spec("jupyterlab") is None:
    pytest.skip(
        "the JupyterLab tests need jupyterlab: pip install jupyterlab", allow_module_level=True
    )
sync_api = pytest.importorskip(
    "playwright.sync_api", reason="the browser tests need playwright: pip install playwright"
)
pytest.importorskip("ipywidgets", reason="the run viewer needs ipywidgets: pip install ipywidgets")

from lab_server import jupyterlab  # noqa: E402
from test_browser import CHROMIUM, CHROMIUM_ARGS  # noqa: E402  (skips when chromium is missing)

expect = sync_api.expect

# Screenshots; docs/images/jupyterlab-viewer.png, run-notebook.png and live-run.png are copies
# of three of them.
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"

QUESTION = "How many times does the letter a appear in the context?"
CONTEXT = "a b a c a d e"
ROOT_REPLIES = [
    "I'll look at the context first.\n```repl\nprint(len(context), repr(context[:20]))\n```",
    "Now I count and ask the sub-model to confirm.\n"
    "```repl\nn = context.count('a')\nprint(n, llm_query(f'is {n} right?'))\n```",
    "The sub-model agrees; one more check.\n```repl\nwords = context.split()\nprint(words)\n```",
    "Done.\n```repl\nFINAL(f'the letter a appears {n} times')\n```",
]
ANSWER = "the letter a appears 3 times"
VIEWER_CELL = 'import rlm_kernel\nrlm_kernel.view("run.ipynb")'
SETTINGS = {
    # Widget state goes into the notebook on every save, so it renders again without a kernel.
    "@jupyter-widgets/jupyterlab-manager:plugin": {"saveState": True},
    # Every cell is rendered, wherever it is scrolled, so outputs further down can be read.
    "@jupyterlab/notebook-extension:tracker": {"windowingMode": "none"},
    # No news and no update check: nothing but the server is contacted.
    "@jupyterlab/apputils-extension:notification": {"fetchNews": "false", "checkForUpdates": False},
}
KERNEL_TIMEOUT_MS = 60_000
WIDGET_STATE = "application/vnd.jupyter.widget-state+json"


def scripted(replies: list[str]):
    """A root model that gives ``replies`` in order."""
    calls: list[object] = []

    def scripted_root(messages):
        calls.append(messages)
        return replies[len(calls) - 1]

    # The name the run records for the model (the summary and the viewer show it).
    scripted_root.__qualname__ = "scripted_root"
    return scripted_root


def sub(messages):
    return "yes, " + messages[-1]["content"].split()[1]


def viewer_notebook(path: Path) -> Path:
    nb = nbformat.v4.new_notebook(
        cells=[nbformat.v4.new_code_cell(VIEWER_CELL)],
        metadata={
            "kernelspec": {"name": "python3", "display_name": "Python 3 (ipykernel)"},
            "language_info": {"name": "python"},
        },
    )
    nbformat.write(nb, path)
    return path


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """A JupyterLab serving a folder with a recorded run and a notebook that views it."""
    base = tmp_path_factory.mktemp("jupyterlab")
    root = base / "root"
    root.mkdir()
    result = RLM(scripted(ROOT_REPLIES), sub).run(QUESTION, CONTEXT, notebook=root / "run.ipynb")
    assert result.status == "answered" and result.answer == ANSWER, result.error
    viewer_notebook(root / "viewer.ipynb")
    with jupyterlab(base / "server", root, settings=SETTINGS) as server:
        yield server


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def page(browser, lab):
    """A page that may reach the JupyterLab server and nothing else."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    blocked: list[str] = []
    errors: list[str] = []

    def route(r):
        url = r.request.url
        if url.startswith(("data:", "blob:")) or urlsplit(url).hostname == "127.0.0.1":
            r.continue_()
        else:
            blocked.append(url)
            r.abort()

    context.route("**/*", route)
    pg = context.new_page()
    pg.on("pageerror", lambda e: errors.append(str(e)))
    yield pg
    context.close()
    assert blocked == []
    assert errors == []


def open_notebook(page, lab, name: str) -> None:
    """Open ``name`` in a fresh workspace and wait until its kernel is idle."""
    page.goto(lab.lab_url(name))
    expect(page.locator(".jp-NotebookPanel")).to_be_visible(timeout=KERNEL_TIMEOUT_MS)
    wait_idle(page)


def open_saved(page, lab, name: str, *, expect_widget: bool = True) -> None:
    """Open a notebook saved with widget state; its kernel is not asked to run anything."""
    page.goto(lab.lab_url(name))
    expect(page.locator(".jp-OutputArea-output").first).to_be_visible(timeout=KERNEL_TIMEOUT_MS)
    if expect_widget:
        expect(slider_handle(page)).to_be_visible(timeout=KERNEL_TIMEOUT_MS)
    wait_idle(page)


def wait_idle(page) -> None:
    # The status bar names the kernel and its state, e.g. "Python 3 (ipykernel) | Idle".
    expect(page.locator("#jp-main-statusbar")).to_contain_text("| Idle", timeout=KERNEL_TIMEOUT_MS)


def step_heading(page):
    """The heading of the page the viewer shows: ``Start`` or ``Step k``."""
    # The Stack shows its selected page alone; the run's summary above it is an <h1>.
    return page.locator(".jp-OutputArea-output .widget-html-content > h3:visible")


def shown_step(page) -> str:
    heading = step_heading(page)
    expect(heading).to_have_count(1)
    return heading.text_content()


def run_viewer_cell(page) -> None:
    """Run the notebook's first cell and wait for the viewer widget and an idle kernel."""
    page.locator(".jp-Cell .jp-InputArea-editor").first.click()
    page.keyboard.press("Shift+Enter")
    expect(slider_handle(page)).to_be_visible(timeout=KERNEL_TIMEOUT_MS)
    wait_idle(page)


def slider_handle(page):
    return page.locator(".jp-OutputArea-output .widget-slider .noUi-handle")


def step_with_keyboard(page, key: str = "ArrowRight") -> None:
    slider_handle(page).focus()
    page.keyboard.press(key)


def menu(page, top: str, item: str) -> None:
    """Choose ``top`` → ``item`` in JupyterLab's menu bar."""
    page.locator(".lm-MenuBar-itemLabel", has_text=top).click()
    page.locator(".lm-Menu-itemLabel").get_by_text(item, exact=True).click()


def shut_down_kernel(page) -> None:
    menu(page, "Kernel", "Shut Down Kernel")
    expect(page.locator("#jp-main-statusbar")).to_contain_text("No Kernel", timeout=20_000)


def wait_for(page, predicate, what: str, timeout: float = 20.0) -> None:
    """Poll ``predicate`` while the page runs: its route handler needs this thread to be free."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        page.wait_for_timeout(100)


def has_widget_state(path: Path) -> bool:
    try:
        saved = json.loads(path.read_text())
    except ValueError:  # caught while the server rewrites the file
        return False
    widgets = saved.get("metadata", {}).get("widgets", {})
    return bool(widgets.get(WIDGET_STATE, {}).get("state"))


def test_viewer_widget_steps_through_a_run(page, lab):
    ARTIFACTS.mkdir(exist_ok=True)
    open_notebook(page, lab, "viewer.ipynb")
    run_viewer_cell(page)
    assert shown_step(page) == "Step 1"
    output = page.locator(".jp-OutputArea-output").first
    assert QUESTION in output.inner_text()
    page.screenshot(path=ARTIFACTS / "jupyterlab-viewer-step1.png")

    step_with_keyboard(page)
    expect(step_heading(page)).to_have_text("Step 2")
    assert "is 3 right?" in output.inner_text()  # the sub-call's prompt
    assert "1 sub-call" in output.inner_text()
    page.keyboard.press("Control+b")  # hide the file browser: more room for the run
    page.screenshot(path=ARTIFACTS / "jupyterlab-viewer.png")

    page.locator(".widget-play button").first.click()  # Play: 2 → 3 → 4, then it stops
    expect(step_heading(page)).to_have_text("Step 4", timeout=10_000)
    assert ANSWER in output.inner_text()
    step_with_keyboard(page, "Home")
    expect(step_heading(page)).to_have_text("Start")


def test_run_notebook_summary_renders(page, lab):
    open_notebook(page, lab, "run.ipynb")
    summary = page.locator(".jp-MarkdownCell").first
    table = summary.locator("table").first
    expect(table).to_be_visible()
    assert "answered (final)" in table.inner_text()
    assert ANSWER in summary.inner_text()
    steps_table = summary.locator("table").nth(1)
    assert steps_table.locator("tbody tr").count() == len(ROOT_REPLIES)
    page.keyboard.press("Control+b")
    page.screenshot(path=ARTIFACTS / "jupyterlab-run-notebook.png")


def test_run_all_replays_the_run_without_a_key(page, lab):
    open_notebook(page, lab, "run.ipynb")
    page.locator(".jp-MarkdownCell").first.click()
    menu(page, "Run", "Run All Cells")
    final = page.locator(".jp-OutputArea-output", has_text="FINAL:")
    expect(final).to_have_count(1, timeout=KERNEL_TIMEOUT_MS)
    wait_idle(page)
    assert final.inner_text().strip() == f"FINAL: {ANSWER} (matches the recorded answer)"
    # The replayed sub-call got its recorded answer; no cell failed.
    expect(page.locator(".jp-OutputArea-output", has_text="3 yes, 3")).to_have_count(1)
    assert page.locator('.jp-OutputArea-output[data-mime-type*="stderr"]').count() == 0
    assert page.locator(".jp-OutputArea-output", has_text="Traceback").count() == 0
    page.screenshot(path=ARTIFACTS / "jupyterlab-run-all.png")


def test_saved_widget_state_steps_without_a_kernel(page, lab):
    path = viewer_notebook(lab.root_dir / "saved-viewer.ipynb")
    open_notebook(page, lab, path.name)
    run_viewer_cell(page)
    menu(page, "File", "Save Notebook")
    wait_for(page, lambda: has_widget_state(path), f"widget state saved in {path.name}")
    # JupyterLab signs what it saves: the notebook is trusted by the server's own secret.
    assert trust.is_trusted(path, data_dir=lab.data_dir)
    shut_down_kernel(page)

    reopened = page.context.new_page()
    open_saved(reopened, lab, path.name)
    shut_down_kernel(reopened)
    assert shown_step(reopened) == "Step 1"
    step_with_keyboard(reopened)
    step_with_keyboard(reopened)
    expect(step_heading(reopened)).to_have_text("Step 3")
    reopened.screenshot(path=ARTIFACTS / "jupyterlab-saved-state-no-kernel.png")


def test_signing_makes_saved_widget_state_render(page, lab):
    """A copy changed outside JupyterLab is untrusted until :func:`sign_notebook` signs it."""
    source = lab.root_dir / "saved-viewer.ipynb"
    if not source.exists() or not has_widget_state(source):
        pytest.skip("needs the notebook saved by test_saved_widget_state_steps_without_a_kernel")
    copy = lab.root_dir / "copied-viewer.ipynb"
    nb = nbformat.read(source, as_version=4)
    nb.metadata["copied"] = True  # any change breaks the signature
    nbformat.write(nb, copy)
    assert not trust.is_trusted(copy, data_dir=lab.data_dir)

    open_saved(page, lab, copy.name, expect_widget=False)
    # Untrusted: the widget is not rendered, its plain-text form is shown instead.
    expect(page.locator(".jp-OutputArea-output").first).to_contain_text("RunViewer")
    assert slider_handle(page).count() == 0

    trust.sign_notebook(copy, data_dir=lab.data_dir)
    assert trust.is_trusted(copy, data_dir=lab.data_dir)
    again = page.context.new_page()
    open_saved(again, lab, copy.name)
    step_with_keyboard(again)
    expect(step_heading(again)).to_have_text("Step 2")


LIVE_SETUP = '''\
%load_ext rlm_kernel
ctx = "a b a c a d e"
calls = []


def root_fn(messages):
    """One block a step: print the step, then wait a second, for as many steps as allowed."""
    calls.append(messages)
    k = len(calls)
    return f"Step {k}: counting.\\n```repl\\nimport time\\nprint('tick {k}')\\ntime.sleep(1)\\n```"


def sub_fn(messages):
    return "unused"
'''
LIVE_CELL = (
    "%%rlm --model root_fn --sub-model sub_fn --context ctx --max-steps 30 --out live-run.ipynb\n"
    "Count the letters a in the context, one step at a time."
)
STDOUT = '.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stdout"]'
SHOWN_STEP = re.compile(r"step (\d+) of 30")


def live_notebook(path: Path) -> Path:
    nb = nbformat.v4.new_notebook(
        cells=[nbformat.v4.new_code_cell(LIVE_SETUP), nbformat.v4.new_code_cell(LIVE_CELL)],
        metadata={
            "kernelspec": {"name": "python3", "display_name": "Python 3 (ipykernel)"},
            "language_info": {"name": "python"},
        },
    )
    nbformat.write(nb, path)
    return path


def test_live_widget_follows_a_run_and_stop_ends_it(page, lab):
    ARTIFACTS.mkdir(exist_ok=True)
    live_notebook(lab.root_dir / "live.ipynb")
    record = lab.root_dir / "live-run.ipynb"
    record.unlink(missing_ok=True)
    open_notebook(page, lab, "live.ipynb")
    page.keyboard.press("Control+b")  # hide the file browser: more room for the widget
    page.locator(".jp-Cell .jp-InputArea-editor").first.click()
    began = time.monotonic()
    menu(page, "Run", "Run All Cells")

    header = page.locator(".jp-OutputArea-output .widget-html-content", has_text="RLM ").first
    seen: list[int] = []

    def shown_step_number() -> int:
        match = SHOWN_STEP.search(header.inner_text()) if header.count() else None
        if match and (not seen or seen[-1] != int(match.group(1))):
            seen.append(int(match.group(1)))
        return seen[-1] if seen else 0

    wait_for(page, lambda: shown_step_number() >= 2, "the live widget to show step 2", 30)
    first_seen = seen[0]
    wait_for(page, lambda: shown_step_number() > max(first_seen, 2), "a later step", 10)
    assert seen == sorted(seen) and seen[-1] > first_seen, seen  # it only counts up
    assert "RLM running" in header.inner_text()
    assert "live-run.ipynb" in header.inner_text()  # the link to the run notebook
    page.screenshot(path=ARTIFACTS / "jupyterlab-live-run.png")

    stop = page.locator(".jp-OutputArea-output button.widget-button", has_text="Stop")
    expect(stop).to_be_enabled()
    stopped_at = seen[-1]
    stop.click()
    # The line the cell prints when the run ends: "interrupted · k steps · …".
    summary = page.locator(STDOUT, has_text="interrupted ·")
    expect(summary).to_have_count(1, timeout=20_000)
    wait_idle(page)
    expect(header).to_contain_text("RLM interrupted")
    expect(stop).to_be_disabled()
    assert page.locator(".jp-OutputArea-output", has_text="Traceback").count() == 0
    page.screenshot(path=ARTIFACTS / "jupyterlab-live-run-stopped.png")

    run = nbformat.read(record, as_version=4)
    nbformat.validate(run)
    assert run.metadata.rlm.status == "interrupted"
    # Stopped soon after the click: at most the step in flight was added, far from all 30.
    assert stopped_at <= run.metadata.rlm.steps <= stopped_at + 1 < 30
    assert time.monotonic() - began < 30
