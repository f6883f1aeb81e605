"""The demo page in a real (headless) Chromium: typed and spoken turns, widget buttons; and
a client that behaves as an unchanged xRx app (tests/xrx_app/index.html).

The microphone is Chromium's fake capture device playing a piper-made WAV, so the whole voice
path runs from a browser's getUserMedia to its speakers.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import wave
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import TextSystem
from tests.speech_fixtures import silence, synthesize_pcm16k

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
if not (CHROMIUM and CHROMEDRIVER):
    if os.environ.get("CI") == "true":
        raise RuntimeError("CI must install chromium and chromium-driver (.ci/run does)")
    pytest.skip("needs Debian's chromium and chromium-driver", allow_module_level=True)

from selenium import webdriver  # noqa: E402  (only once the browser is known to exist)
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.remote.webdriver import WebDriver  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

pytestmark = pytest.mark.voice

XRX_APP = Path(__file__).parent / "xrx_app" / "index.html"


def write_wav(path: Path, pcm: bytes) -> None:
    with wave.open(str(path), "wb") as f:
        f.setnchannels(1)
        f.setsampwidth(2)
        f.setframerate(16000)
        f.writeframes(pcm)


@pytest.fixture(scope="module")
def mic_file() -> Iterator[Path]:
    folder = Path(tempfile.mkdtemp(prefix="xrx-mic-"))
    path = folder / "speech.wav"
    # Silence first: the page needs a moment between granting the mic and streaming it.
    write_wav(path, silence(1500) + synthesize_pcm16k("What is on the menu") + silence(3000))
    yield path
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def browser(mic_file: Path) -> Iterator[WebDriver]:
    profile = tempfile.mkdtemp(prefix="xrx-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--no-first-run", "--disable-background-networking", "--disable-component-update",
                "--disable-sync", "--disable-quic", f"--user-data-dir={profile}",
                "--autoplay-policy=no-user-gesture-required",
                "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
                f"--use-file-for-fake-audio-capture={mic_file}%noloop"):
        options.add_argument(arg)
    driver = webdriver.Chrome(options=options, service=Service(str(CHROMEDRIVER)))
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def messages(driver: WebDriver, user: str, type_: str | None = None) -> list[str]:
    selector = f'.msg[data-user="{user}"]' + (f'[data-type="{type_}"]' if type_ else "")
    return [e.text for e in driver.find_elements(By.CSS_SELECTOR, selector)]


def wait_for(driver: WebDriver, condition: object, timeout: float = 60) -> None:
    WebDriverWait(driver, timeout, poll_frequency=0.2).until(
        lambda d: condition(d))  # type: ignore[operator]


def open_page(driver: WebDriver, system: TextSystem) -> None:
    driver.get(f"http://127.0.0.1:{system.gateway_port}/")
    driver.find_element(By.ID, "connect").click()
    wait_for(driver, lambda d: d.find_element(By.ID, "status").text == "connected", 20)


def audio_bytes(driver: WebDriver) -> int:
    return int(driver.find_element(By.ID, "audio-bytes").text)


def test_typed_question_gets_a_shown_and_spoken_answer(
        voice_system: TextSystem, browser: WebDriver) -> None:
    open_page(browser, voice_system)
    browser.find_element(By.ID, "text").send_keys("What is on the menu?\n")
    wait_for(browser, lambda d: any("Pepperoni" in t for t in messages(d, "agent", "audio")))
    wait_for(browser, lambda d: "audio_generation_done" in messages(d, "system", "action"))
    assert audio_bytes(browser) > 32000  # more than a second of speech reached the page


def test_widget_button_sends_an_action(voice_system: TextSystem, browser: WebDriver) -> None:
    open_page(browser, voice_system)
    browser.find_element(By.ID, "speak-replies").click()  # text replies only: quicker
    box = browser.find_element(By.ID, "text")
    box.send_keys("I'd like a large pepperoni\n")
    wait_for(browser, lambda d: len(messages(d, "agent", "audio")) >= 1)
    box.send_keys("what's my order\n")
    wait_for(browser, lambda d: d.find_elements(By.CSS_SELECTOR, ".widget-action"))
    confirm = next(b for b in browser.find_elements(By.CSS_SELECTOR, ".widget-action")
                   if "Confirm" in b.text)
    before = len(messages(browser, "agent", "audio"))
    confirm.click()
    wait_for(browser, lambda d: len(messages(d, "agent", "audio")) > before)
    assert any("order" in t.lower() for t in messages(browser, "agent", "audio")[before:])


def test_spoken_question_from_the_microphone(
        voice_system: TextSystem, browser: WebDriver) -> None:
    open_page(browser, voice_system)
    browser.find_element(By.ID, "mic").click()
    wait_for(browser, lambda d: any("menu" in t.lower() for t in messages(d, "user", "audio")))
    wait_for(browser, lambda d: any("Pepperoni" in t for t in messages(d, "agent", "audio")))
    wait_for(browser, lambda d: audio_bytes(d) > 0)
    errors = messages(browser, "system", "error")
    assert not errors, errors


def test_an_xrx_app_reads_widgets_and_sends_bare_strings(
        voice_system: TextSystem, browser: WebDriver) -> None:
    browser.get(f"{XRX_APP.as_uri()}?port={voice_system.gateway_port}&api_key=123456")
    wait_for(browser, lambda d: d.find_element(By.ID, "status").text == "connected", 20)
    box = browser.find_element(By.ID, "text")

    def agent_lines(d: WebDriver) -> list[str]:
        return [e.text for e in d.find_elements(By.CSS_SELECTOR, ".agent")]

    box.send_keys("I'd like a large pepperoni\n")  # sent as the bare string
    wait_for(browser, lambda d: any("pepperoni" in t.lower() for t in agent_lines(d)))
    box.send_keys("what's my order\n")
    # content.type and JSON.parse(content.details) worked: the widget is on the page.
    wait_for(browser, lambda d: d.find_elements(
        By.CSS_SELECTOR, '.widget[data-widget-type="order-summary"] .tool'))
    widget = browser.find_element(By.CSS_SELECTOR, ".widget")
    assert "pepperoni" in widget.text.lower()
    before = len(agent_lines(browser))
    widget.find_element(By.CSS_SELECTOR, '.tool[data-tool="confirm_order"]').click()
    wait_for(browser, lambda d: any("placed" in t.lower() for t in agent_lines(d)[before:]))
    errors = [e.text for e in browser.find_elements(By.CSS_SELECTOR, ".error")]
    assert not errors, errors
