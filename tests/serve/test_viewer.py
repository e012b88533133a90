"""The viewer page in a real headless Chromium against a real `hybridcxr serve` process.

Needs /usr/bin/chromium and the ``playwright`` package (a test extra); Playwright never downloads a browser
here: it drives the system Chromium, whose every host but 127.0.0.1 is made unresolvable.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from _services import CHROMIUM_FLAGS, missing_service

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [*CHROMIUM_FLAGS, "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1"]

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def sync_playwright():
    if not CHROMIUM.is_file():
        missing_service(f"no Chromium at {CHROMIUM} (Debian package chromium; .ci/run installs it)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        missing_service("the playwright package is not installed (pip install -e '.[test]')")
    os.environ.setdefault("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1")
    return sync_playwright


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def server(tiny_classifier, tmp_path_factory):
    """`hybridcxr serve` on 127.0.0.1 in its own process; yields its base URL; stopped by its PID."""
    import httpx

    _, run, _ = tiny_classifier
    port = _free_port()
    script = Path(sys.executable).with_name("hybridcxr")
    command = [str(script)] if script.is_file() else [sys.executable, "-m", "hybridcxr.cli"]
    log = tmp_path_factory.mktemp("server") / "server.log"
    env = {k: v for k, v in os.environ.items() if k != "HYBRIDCXR_API_KEY"}
    with log.open("wb") as handle:
        process = subprocess.Popen([*command, "serve", "--model", str(run), "--port", str(port), "--device", "cpu"],
                                   stdout=handle, stderr=subprocess.STDOUT, env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            assert process.poll() is None, f"the server exited:\n{log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"no /healthz within 180 s:\n{log.read_text()[-3000:]}"
            try:
                if httpx.get(f"{base}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.5)
        yield base
    finally:
        os.kill(process.pid, signal.SIGINT)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.kill(process.pid, signal.SIGKILL)
            process.wait()
    assert "Doe" not in log.read_text()


@pytest.fixture
def page(sync_playwright, server):
    """A fresh Chromium page; every request it makes is recorded."""
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            context = browser.new_context(viewport={"width": 1400, "height": 1000})
            tab = context.new_page()
            tab.requests = []  # type: ignore[attr-defined]
            tab.on("request", lambda request: tab.requests.append(request.url))
            yield tab
        finally:
            browser.close()


@pytest.fixture
def dicom(tiny_detector) -> Path:
    """A real DICOM where the samples exist (NIH image, 1024 px), else a phantom DICOM."""
    real = Path(__file__).resolve().parents[3] / "shared" / "data" / "dicom" / "nih-udacity" / "test1.dcm"
    if real.is_file():
        return real
    phantom, _, _ = tiny_detector
    return sorted((phantom / "test").glob("*.dicom"))[0]


def _save_artefact(page, tmp_path: Path, name: str) -> Path:
    shot = tmp_path / name
    page.screenshot(path=str(shot), full_page=True)
    if os.environ.get("HYBRIDCXR_ARTIFACTS"):
        folder = Path(os.environ["HYBRIDCXR_ARTIFACTS"])
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, folder / name)
    return shot


def _upload(page, server: str, dicom: Path) -> None:
    page.goto(f"{server}/")
    page.set_input_files("#file", str(dicom))  # choosing a file starts the analysis
    page.wait_for_selector("#findings tbody tr.finding", timeout=120_000)
    page.wait_for_function("() => { const i = document.getElementById('overlay');"
                           " return i.complete && i.naturalWidth > 0; }", timeout=60_000)


def test_upload_shows_overlay_and_findings_table(page, server, dicom, tmp_path, no_network):
    _upload(page, server, dicom)
    assert page.is_visible("#overlay") and page.is_visible("#findings")
    rows = page.locator("#findings tbody tr.finding")
    assert rows.count() == 15  # VinDr-CXR's 14 findings and "No finding"
    first = rows.nth(0).locator("td").nth(2).inner_text()
    assert 0.0 <= float(first) <= 1.0
    assert "boxes" in page.inner_text("#status") and "error" not in (page.get_attribute("#status", "class") or "")
    assert page.evaluate("document.getElementById('overlay').src").startswith("blob:")
    assert page.get_attribute("#download", "href").startswith("blob:")
    shot = _save_artefact(page, tmp_path, "viewer.png")
    assert shot.stat().st_size > 10_000
    elsewhere = [u for u in page.requests if not u.startswith((server, "blob:", "data:"))]
    assert not elsewhere, f"the page fetched from elsewhere: {elsewhere}"


def test_boxes_are_drawn_from_the_json_and_toggled_per_finding(page, server, dicom, tmp_path):
    """The page is answered with a real analysis (made here, so its overlay exists on the server) plus one
    box, so the test does not hang on what a one-epoch detector happens to find; the page must draw the box
    over the image where the JSON puts it and hide it on request."""
    import httpx

    answer = httpx.post(f"{server}/v1/analyze", files={"file": (dicom.name, dicom.read_bytes())}, timeout=120)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    top = body["findings"][0]
    w, h = body["image"]["width"], body["image"]["height"]
    body["boxes"] = [{"finding": top["finding"], "score": 0.9, "x_min": w * 0.25, "y_min": h * 0.3,
                      "x_max": w * 0.5, "y_max": h * 0.6, "colour": top["colour"]}]

    def add_box(route):  # Playwright cannot forward a file upload (route.fetch sends it empty): answer it
        route.fulfill(status=200, json=body)

    page.route("**/v1/analyze", add_box)
    _upload(page, server, dicom)
    box = page.locator("#boxes g.box")
    assert box.count() == 1 and box.first.is_visible()
    # the box sits over the image panel (top-left of the overlay picture) where the JSON puts it
    image, rect = page.locator("#overlay").bounding_box(), page.locator("#boxes rect").bounding_box()
    natural = page.evaluate("document.getElementById('overlay').naturalWidth")
    shown = image["width"] * body["overlay"]["panel"]["width"] / natural  # the image panel's width on screen
    assert rect["x"] == pytest.approx(image["x"] + 0.25 * shown, abs=3)
    assert rect["width"] == pytest.approx(0.25 * shown, abs=4)
    toggle = page.locator("#findings tbody tr.finding").nth(0).locator("input.toggle")
    assert toggle.is_enabled() and toggle.is_checked()
    _save_artefact(page, tmp_path, "viewer-box.png")
    toggle.uncheck()
    assert not box.first.is_visible()
    page.uncheck("#all-boxes")
    page.check("#all-boxes")
    assert box.first.is_visible() and toggle.is_checked()
    others = page.locator("#findings tbody tr.finding input.toggle:disabled")
    assert others.count() == 14, "findings without boxes (and No finding) have nothing to toggle"
