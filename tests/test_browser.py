"""A real browser (Debian's Chromium, driven by Playwright) against the running app."""

import shutil

import pytest
from gradio_client import Client

from tests.conftest import ROOT
from tests.server import running_app

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
SHOTS = ROOT / "out" / "screenshots"
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed")


@pytest.fixture(scope="module")
def browser_page(tiny_zoo):
    from playwright.sync_api import sync_playwright

    SHOTS.mkdir(parents=True, exist_ok=True)
    with running_app({"SSAVIZ_BUNDLED": "0", "SSAVIZ_CHECKPOINTS": str(tiny_zoo)}) as (url, proc):
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=[
                "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                "--disable-sync", "--no-first-run"])
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(60_000)
            page.goto(url)
            page.wait_for_selector("#compare-button")
            yield page, Client(url, verbose=False), proc
            browser.close()


def gallery_sources(page, elem_id):
    return page.locator(f"#{elem_id} .thumbnail-item img").evaluate_all("els => els.map(e => e.src)")


def wait_for_gallery(page, elem_id, count, old=None):
    page.wait_for_function(
        """([sel, n, old]) => {
            const srcs = [...document.querySelectorAll(sel)].map(e => e.src);
            return srcs.length === n && (old === null || srcs.some((s, i) => s !== old[i]));
        }""", arg=[f"#{elem_id} .thumbnail-item img", count, old])
    return gallery_sources(page, elem_id)


def upload(page, path):
    page.set_input_files("#photo input[type=file]", str(path))
    page.wait_for_timeout(500)


def test_the_whole_journey_in_a_browser(browser_page, photo_path, tmp_path):
    page, client, proc = browser_page
    # Upload a photo, pick one stage, compare: one overlay per selected model.
    upload(page, photo_path)
    page.locator("#stage label", has_text="layer4").click()
    page.click("#compare-button")
    first = wait_for_gallery(page, "overlays", 5)
    page.wait_for_selector("#cam-grid img")
    assert "5 models on CPU" in page.inner_text("#status")
    page.screenshot(path=str(SHOTS / "compare.png"), full_page=True)

    # Change the stage: new overlays, and no model ran.
    calls = client.predict(api_name="/stats")["model_calls"]
    page.locator("#stage label", has_text="layer2").click()
    second = wait_for_gallery(page, "overlays", 5, old=first)
    assert second != first
    assert client.predict(api_name="/stats")["model_calls"] == calls

    # Switch the CAM method and compare again.
    page.locator("#cam input").click()
    page.get_by_role("option", name="LayerCAM").click()
    page.click("#compare-button")
    page.wait_for_function("() => document.querySelector('#status').innerText.includes('LayerCAM')")
    assert client.predict(api_name="/stats")["model_calls"] > calls

    # Stage-by-stage view: every block of one model.
    page.get_by_role("tab", name="Stage by stage").click()
    page.locator("#stage-model input").click()
    page.get_by_role("option", name="tiny_ssa").click()
    page.click("#stage-button")
    wait_for_gallery(page, "blocks", 8)
    page.wait_for_function("() => document.querySelector('#block-table').innerText.includes('seW = GAP(X)')")
    assert "layer4.1" in page.inner_text("#block-table")
    page.screenshot(path=str(SHOTS / "stage_by_stage.png"), full_page=True)

    # Zoo view.
    page.get_by_role("tab", name="Model zoo").click()
    zoo = page.inner_text("#zoo")
    assert "tiny_ssa" in zoo and "resnet50" in zoo
    page.screenshot(path=str(SHOTS / "zoo.png"), full_page=True)

    # A broken upload: a clear message, and the page keeps working.
    page.get_by_role("tab", name="Compare").click()
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0" + b"\0" * 100)
    upload(page, broken)
    page.click("#compare-button")
    toast = page.locator(".toast-body", has_text="damaged")
    toast.first.wait_for()
    assert "Traceback" not in page.content()
    page.screenshot(path=str(SHOTS / "broken_upload.png"), full_page=True)
    upload(page, photo_path)
    page.click("#compare-button")
    page.wait_for_function("() => document.querySelector('#status').innerText.includes('5 models')")
    assert proc.poll() is None
