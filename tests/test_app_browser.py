"""The web page in a real browser: `talking-head app` with a tiny pipeline, driven by headless Chromium.

Needs Debian's `chromium` and `chromium-driver` (`make test` installs them when it can) and selenium (the app
extra); skips otherwise. Selenium is pointed at /usr/bin/chromedriver, so it never downloads a browser or driver.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from conftest import REPO

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
if not (CHROMIUM.is_file() and CHROMEDRIVER.is_file()):
    pytest.skip(f"no browser: {CHROMIUM} and {CHROMEDRIVER} are needed (apt-get install chromium chromium-driver)",
                allow_module_level=True)
pytest.importorskip("gradio", reason="the app extra (gradio) is not installed: pip install -e '.[app]'")
webdriver = pytest.importorskip("selenium.webdriver", reason="the app extra (selenium) is not installed")

from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.common.selenium_manager import SeleniumManager  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

PHOTO, SPEECH = REPO / "assets" / "demo_identity.jpg", REPO / "assets" / "demo_speech.wav"
SPEECH_SECONDS = 3.0
TALKING_HEAD = Path(sys.executable).with_name("talking-head")
# The <video> of the result once it holds a loaded MP4: [src, duration, readyState, width, height].
RESULT_VIDEO = """const v = document.querySelector('#result video');
    return v && v.src && v.readyState >= 1 ? [v.src, v.duration, v.readyState, v.videoWidth, v.videoHeight] : null;"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for_page(url: str, proc: subprocess.Popen, log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"talking-head app exited with {proc.returncode}: {log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as page:
                if page.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise AssertionError(f"talking-head app did not answer {url} within {timeout:.0f} s")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """`talking-head app` on a free port with a tiny random pipeline (dlib finds the bundled photo's face)."""
    from talking_head.presets import build_pipeline
    from talking_head.utils import save_pipeline_atomic

    folder = tmp_path_factory.mktemp("app")
    pipeline = save_pipeline_atomic(build_pipeline("tiny", sample_size=32, seed=0, with_emotion_classifier=False),
                                    folder / "tiny")
    log = folder / "app.log"
    url = f"http://127.0.0.1:{_free_port()}"
    env = dict(os.environ, OMP_NUM_THREADS="1", GRADIO_ANALYTICS_ENABLED="False")
    with open(log, "w") as out:  # run from another folder: the bundled examples must still be served
        proc = subprocess.Popen([str(TALKING_HEAD), "app", "--pipeline", str(pipeline), "--port",
                                 url.rsplit(":", 1)[1], "--max-size", "256", "--max-seconds", "10"],
                                env=env, cwd=folder, stdout=out, stderr=subprocess.STDOUT)
    try:
        _wait_for_page(url, proc, log, timeout=180)
        yield url
    finally:
        proc.terminate()  # SIGTERM: the CLI closes the server and exits
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise AssertionError("talking-head app did not stop on SIGTERM") from None


@pytest.fixture(scope="module")
def browser():
    def no_download(*args, **kwargs):
        raise AssertionError("selenium-manager was asked for a browser or driver")

    manager, SeleniumManager.binary_paths = SeleniumManager.binary_paths, no_download
    os.environ["SE_OFFLINE"] = "true"
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1000",
                "--mute-audio", "--disable-gpu"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    try:
        yield driver
    finally:
        driver.quit()
        SeleniumManager.binary_paths = manager


def _open(driver, url: str) -> None:
    driver.get(url)
    WebDriverWait(driver, 60).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#photo input[type=file]"))


def _set_steps(driver, steps: int) -> None:
    box = driver.find_element(By.CSS_SELECTOR, "#steps input[type=number]")
    box.send_keys(Keys.CONTROL, "a")
    box.send_keys(str(steps), Keys.TAB)


def _generate(driver, timeout: float = 120):
    driver.find_element(By.CSS_SELECTOR, "#generate").click()
    return WebDriverWait(driver, timeout, poll_frequency=0.3).until(lambda d: d.execute_script(RESULT_VIDEO))


def _error_text(driver, timeout: float = 60) -> str:
    toast = '[data-testid="toast-body"]'
    return WebDriverWait(driver, timeout).until(
        lambda d: " ".join(t.text for t in d.find_elements(By.CSS_SELECTOR, toast)).strip())


def test_upload_photo_and_speech_then_watch_the_mp4(server, browser):
    _open(browser, server)
    offsite = browser.execute_script("return performance.getEntriesByType('resource').map(e => e.name)"
                                     ".filter(u => !u.startsWith(location.origin) && !u.startsWith('data:'))")
    assert offsite == [], f"the page loaded resources from elsewhere: {offsite}"
    browser.find_element(By.CSS_SELECTOR, "#photo input[type=file]").send_keys(str(PHOTO))
    browser.find_element(By.CSS_SELECTOR, "#speech input[type=file]").send_keys(str(SPEECH))
    WebDriverWait(browser, 60).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#photo img")
                                     and "0:03" in d.find_element(By.CSS_SELECTOR, "#speech").text)
    _set_steps(browser, 2)
    src, duration, _, width, height = _generate(browser)
    assert src.endswith(".mp4")
    assert duration == pytest.approx(SPEECH_SECONDS, abs=0.1)
    assert (width, height) == (456, 256)  # the 256-pixel output (--max-size 256), scaled up to --min-size 256
    info = browser.find_element(By.CSS_SELECTOR, "#info").text
    assert "Emotion: none (auto; no classifier: neutral/null class)" in info
    assert "Duration: 3.00 s (75 frames" in info and "Generated in:" in info
    assert browser.find_elements(By.CSS_SELECTOR, "#result button[aria-label='Download'], #result a[download]")


def test_a_text_file_as_the_photo_is_a_message_and_the_page_still_works(server, browser, tmp_path):
    _open(browser, server)
    text = tmp_path / "notes.jpg"  # a text file with a photo's name: the browser sends it, the server refuses it
    text.write_text("this is not a photo\n")
    browser.find_element(By.CSS_SELECTOR, "#photo input[type=file]").send_keys(str(text))
    browser.find_element(By.CSS_SELECTOR, "#speech input[type=file]").send_keys(str(SPEECH))
    WebDriverWait(browser, 60).until(lambda d: "0:03" in d.find_element(By.CSS_SELECTOR, "#speech").text)
    browser.find_element(By.CSS_SELECTOR, "#generate").click()
    message = _error_text(browser)
    assert "the photo notes.jpg is not an image the app can read" in message
    assert "Traceback" not in browser.find_element(By.TAG_NAME, "body").text
    # The bundled photo and speech, one click away, then a valid generation on the same page.
    browser.find_element(By.CSS_SELECTOR, '[data-testid="toast-close"]').click()
    example = browser.find_element(By.XPATH, "//*[contains(@class, 'example') or self::tr][contains(., "
                                             "'demo_speech.wav')]")
    example.click()
    WebDriverWait(browser, 60).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#photo img"))
    _set_steps(browser, 1)
    _, duration, *_ = _generate(browser)
    assert duration == pytest.approx(SPEECH_SECONDS, abs=0.1)
