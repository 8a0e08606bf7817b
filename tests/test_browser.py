"""The offline HTML viewer in a real browser (the system chromium, driven by playwright)."""

from __future__ import annotations

import contextlib
import shutil
from pathlib import Path

import pytest
from test_view import record_run

from rlm_kernel import viewer
from rlm_kernel.record import read

pytestmark = pytest.mark.slow

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# The machine's network may be closed: keep chromium from reaching out on its own.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"

sync_api = pytest.importorskip(
    "playwright.sync_api", reason="the browser tests need playwright: pip install playwright"
)
if not Path(CHROMIUM).exists():
    pytest.skip(
        "the browser tests need the system chromium (apt-get install chromium)",
        allow_module_level=True,
    )


@pytest.fixture(scope="module")
def html_file(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("browser")
    return viewer.export_html(record_run(folder), folder / "run.html")


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


@contextlib.contextmanager
def offline_page(browser, html_file: Path, fragment: str = ""):
    """The exported page with networking off; records requests, dialogs and console errors."""
    context = browser.new_context(viewport={"width": 1100, "height": 900})
    context.set_offline(True)
    seen = {"requests": [], "blocked": [], "dialogs": [], "errors": []}
    page_url = html_file.as_uri()

    def route(r):
        if r.request.url == page_url:
            r.continue_()
        else:
            seen["blocked"].append(r.request.url)
            r.abort()

    context.route("**/*", route)
    pg = context.new_page()
    pg.on("request", lambda req: seen["requests"].append(req.url))
    pg.on("dialog", lambda d: (seen["dialogs"].append(d.message), d.dismiss()))
    pg.on("pageerror", lambda e: seen["errors"].append(str(e)))
    pg.on("console", lambda m: m.type == "error" and seen["errors"].append(m.text))
    seen["sandboxed"] = sandboxed = []  # scripts of HTML outputs, stopped by the frame sandbox
    pg.goto(page_url + fragment)
    pg.seen = seen
    yield pg
    # Nothing left the page: no network request, no script from the run, no CSP violation.
    others = [u for u in seen["requests"] if u.split("#")[0] != page_url]
    assert [u for u in others if not u.startswith("data:")] == [] and seen["blocked"] == []
    assert seen["dialogs"] == []
    sandboxed += [e for e in seen["errors"] if "frame is sandboxed" in e]
    assert [e for e in seen["errors"] if e not in sandboxed] == []
    context.close()


@pytest.fixture
def page(browser, html_file):
    with offline_page(browser, html_file) as pg:
        yield pg


def shown(pg) -> str:
    return pg.locator("#step").get_attribute("data-step")


def test_next_prev_slider_keys_and_play(page):
    ARTIFACTS.mkdir(exist_ok=True)
    assert shown(page) == "1"
    assert page.locator("#position").text_content() == "step 1 / 3"
    # Model text is text: the <script> of the reply is shown, not run.
    assert "<script>alert(1)</script>" in page.locator("#step .text").text_content()
    image = page.locator("#step img.out")
    assert image.evaluate("img => img.complete && img.naturalWidth") == 4
    frame = page.locator("#step iframe.out")
    assert frame.get_attribute("sandbox") == ""
    assert "<script>alert(2)</script>" in frame.get_attribute("srcdoc")
    assert any("about:srcdoc" in e and "sandboxed" in e for e in page.seen["errors"])
    assert page.locator("#step .sub").count() == 2
    assert "echo:second <question>" in page.locator("#step .sub .response").nth(1).text_content()
    assert page.locator("#prev").is_enabled()
    page.screenshot(path=ARTIFACTS / "viewer-step1.png", full_page=True)

    page.click("#next")
    assert shown(page) == "2"
    assert "ZeroDivisionError" in page.locator("#step pre.out.error").text_content()
    page.screenshot(path=ARTIFACTS / "viewer-step2.png", full_page=True)

    page.locator("#slider").fill("3")
    assert shown(page) == "3"
    assert page.locator("#next").is_disabled()

    page.locator("body").press("ArrowLeft")
    assert shown(page) == "2"
    page.locator("body").press("Home")
    assert shown(page) == "0"
    assert page.locator("#step h2").text_content() == "Start"

    page.click("#play")
    assert page.locator("#play").text_content() == "❚❚ Pause"
    # Polled from here: the page's CSP forbids the string evaluation wait_for_function uses.
    sync_api.expect(page.locator("#step")).to_have_attribute("data-step", "2", timeout=5000)
    page.click("#play")
    assert page.locator("#play").text_content() == "▶ Play"
    stopped = shown(page)
    page.wait_for_timeout(1500)
    assert shown(page) == stopped


def test_cumulative_totals_follow_the_step(page):
    assert page.locator("#totals").text_content().startswith("so far: ")
    page.locator("body").press("End")
    assert shown(page) == "3"
    assert page.locator("#position").text_content() == "step 3 / 3"


def test_deep_link_opens_a_step(browser, html_file):
    context = browser.new_context()
    context.set_offline(True)
    pg = context.new_page()
    pg.goto(html_file.as_uri() + "#step=2")
    assert shown(pg) == "2"
    context.close()


# -- run trees -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tree_html(recorded_tree) -> Path:
    return viewer.export_html(recorded_tree, recorded_tree.with_suffix(".html"))


def on_run(pg, key: str, step: str) -> None:
    sync_api.expect(pg.locator("#step")).to_have_attribute("data-run", key, timeout=5000)
    assert shown(pg) == step


def shows_run(pg, path: Path) -> None:
    run = read(path).run
    assert pg.locator("#summary .question").text_content() == run.question
    assert pg.locator("#summary .answer").text_content() == str(run.answer)


def test_the_page_of_a_root_opens_every_child_and_goes_back(browser, tree_html, recorded_tree):
    root = recorded_tree
    key = lambda p: p.resolve().relative_to(root.parent.resolve()).as_posix()  # noqa: E731
    children = read(root).children()
    assert len(children) == 4
    with offline_page(browser, tree_html) as pg:
        on_run(pg, "root.ipynb", "1")
        shows_run(pg, root)
        assert pg.locator("#runs .tree button.run").count() == 6
        assert pg.locator("#runs .parent").count() == 0
        for i, (cell, _sub, path) in enumerate(children):
            pg.locator("#step .open-child").nth(i).click()
            on_run(pg, key(path), "1")
            shows_run(pg, path)
            assert pg.locator("#runs .tree button.current").get_attribute("data-key") == key(path)
            grandchildren = read(path).children()
            for j, (_c, _s, deeper) in enumerate(grandchildren):
                pg.locator("#step .open-child").nth(j).click()
                on_run(pg, key(deeper), "1")
                shows_run(pg, deeper)
                assert "grandchild" in pg.locator("#summary .question").text_content()
                assert pg.locator("#runs .trail button").count() == 2  # root › child › here
                pg.screenshot(path=ARTIFACTS / "viewer-grandchild.png", full_page=True)
                pg.click("#runs .parent")
                on_run(pg, key(path), "1")
            # Back to the root, at the step whose code started this child.
            pg.click("#runs .parent")
            on_run(pg, "root.ipynb", str(cell.step))
            shows_run(pg, root)
        assert sum(len(read(p).children()) for _c, _s, p in children) == 1

        # The tree's list opens any run; a link opens a run of the tree at a step.
        for button in pg.locator("#runs .tree button.run").all():
            target = button.get_attribute("data-key")
            button.click()
            on_run(pg, target, "1")
            shows_run(pg, root.parent / target)
    (_c, _s, first), *_ = children
    (_c, _s, deeper), *_ = read(first).children()
    with offline_page(browser, tree_html, f"#run={key(deeper)}&step=1") as pg:
        on_run(pg, key(deeper), "1")
        shows_run(pg, deeper)


def test_a_missing_child_is_shown_as_missing(browser, recorded_tree, tmp_path):
    shutil.copytree(recorded_tree.parent, tmp_path, dirs_exist_ok=True)
    root = tmp_path / recorded_tree.name
    _cell, sub, gone = read(root).children()[2]
    gone.unlink()
    out = viewer.export_html(root, tmp_path / "tree.html")
    with offline_page(browser, out) as pg:
        button = pg.locator("#step .open-child").nth(2)
        assert button.text_content() == f"child run missing: {sub.child}"
        button.click()
        on_run(pg, gone.relative_to(tmp_path).as_posix(), "0")
        assert pg.locator("#step h2").text_content() == "Missing child run"
        assert "cannot read run notebook" in pg.locator("#step").text_content()
        listed = {c.notebook: c for c in read(root).run.children}
        question = listed[gone.relative_to(tmp_path).as_posix()].question
        assert pg.locator("#summary .question").text_content() == question
        assert pg.locator("#runs .tree button.missing").count() == 1
        pg.click("#runs .parent")
        on_run(pg, "root.ipynb", "1")
