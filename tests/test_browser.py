"""The offline HTML viewer in a real browser (the system chromium, driven by playwright)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from test_view import record_run

from rlm_kernel import viewer

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


@pytest.fixture
def page(browser, html_file):
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
    pg.goto(page_url)
    pg.seen = seen
    yield pg
    # Nothing left the page: no network request, no script from the run, no CSP violation.
    others = [u for u in seen["requests"] if u != page_url and not u.startswith("data:")]
    assert others == [] and seen["blocked"] == []
    assert seen["dialogs"] == []
    sandboxed += [e for e in seen["errors"] if "frame is sandboxed" in e]
    assert [e for e in seen["errors"] if e not in sandboxed] == []
    context.close()


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
