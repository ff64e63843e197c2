"""The voice chat in a real headless Chromium with a fake microphone playing an espeak-ng question.

Chromium loops the fake-microphone file, so the question comes again while the reply is still
playing: that second question is the barge-in.
"""

from __future__ import annotations

import socket
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from tests.conftest import REPO_ROOT

pytestmark = pytest.mark.browser

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = REPO_ROOT / "test-artifacts"
BASE_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--use-fake-device-for-media-stream"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def fake_mic_wav(question_wav, tmp_path_factory) -> Path:
    """Question, then a pause long enough to end the turn, 16-bit PCM (what Chromium reads)."""
    q, sr = sf.read(question_wav, dtype="float32")
    audio = np.concatenate([np.zeros(sr // 2, np.float32), 0.7 * q, np.zeros(int(sr * 6.0), np.float32)])
    path = tmp_path_factory.mktemp("mic") / "fake_mic.wav"
    sf.write(path, audio, sr, subtype="PCM_16")
    return path


@pytest.fixture(scope="module")
def server(tiny_dir):
    from app.web import Settings, build_app
    from omni2.runtime import load_engine

    engine = load_engine(tiny_dir, device="cpu", dtype="float32")
    demo = build_app(engine, defaults=Settings(max_new_tokens=96))
    port = free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True,
                share=False, inbrowser=False)
    yield f"http://127.0.0.1:{port}/"
    demo.close()


@pytest.fixture(scope="module")
def playwright():
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing (apt-get install chromium): the browser tests need it")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        yield pw


def open_page(browser, url, errors: list[str]):
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(url)
    settle(page)
    return page


def settle(page) -> None:
    """Wait for the UI and for Gradio's wav recorder modules (loaded lazily after the page)."""
    page.wait_for_selector("#omni2-mic")
    page.wait_for_function("() => !!window.omni2Player")
    page.wait_for_function("() => performance.getEntriesByType('resource')"
                           ".filter(r => r.name.includes('/assets/module-')).length >= 2", timeout=30_000)
    time.sleep(1.5)  # the encoder registers itself after its module loaded


def stats(page) -> dict:
    return page.evaluate("() => window.omni2Player.stats")


def wait_until(page, condition, timeout: float, what: str) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        s = stats(page)
        if condition(s, page):
            return s
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}; player stats {stats(page)}; chat: "
                         f"{page.locator('#omni2-chat').inner_text()[:400]!r}")


def chat(page) -> str:
    return page.locator("#omni2-chat").inner_text()


def test_spoken_question_streams_reply_and_barge_in_stops_it(playwright, server, fake_mic_wav):
    browser = playwright.chromium.launch(
        executable_path=CHROMIUM, headless=True,
        args=[*BASE_ARGS, "--use-fake-ui-for-media-stream", f"--use-file-for-fake-audio-capture={fake_mic_wav}"])
    errors: list[str] = []
    try:
        page = open_page(browser, server, errors)
        assert "random weights" in page.content()
        page.locator("#omni2-mic button", has_text="Record").first.click()
        t_click = page.evaluate("() => performance.now()")

        # the spoken question becomes a user turn, and the reply starts playing while it is generated
        s = wait_until(page, lambda s, p: s["firstPlayAt"] is not None, 60, "reply audio to play")
        assert "spoken question" in chat(page)
        page.wait_for_function("() => { const m = document.querySelectorAll('#omni2-chat .message');"
                               " return m.length >= 2 && !m[m.length-1].innerText.trim().endsWith('…'); }",
                               timeout=30_000)
        first_play = s["firstPlayAt"]
        # the reply ends either by finishing generation or by the barge-in; audio played before both
        s = wait_until(page, lambda s, p: s["ends"] >= 1 or s["stops"] >= 1, 60, "the first turn to end")
        turn_end = min(t for t in (s["lastEndAt"], s["lastStopAt"]) if t is not None)
        assert first_play < turn_end, f"audio started at {first_play}, turn ended at {turn_end}"
        assert first_play - t_click < 45_000

        # the looping microphone asks again during playback: barge-in silences the reply
        s = wait_until(page, lambda s, p: s["stops"] >= 1, 60, "barge-in")
        stop_at = s["lastStopAt"]
        time.sleep(0.3)
        assert not stats(page)["playing"]
        page.wait_for_function("() => document.querySelector('#omni2-chat').innerText.includes('(interrupted)')",
                               timeout=30_000)
        page.wait_for_function("() => (document.querySelector('#omni2-chat').innerText.match(/spoken question/g)"
                               " || [])"
                               ".length >= 2", timeout=60_000)
        status = page.locator("#omni2-status").inner_text()
        latency = [line for line in chat(page).splitlines() if "first audio" in line]
        assert latency, "the per-turn first-audio latency is shown in the chat"
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "browser-voice-chat.png"), full_page=True)
        print(f"\nbrowser: first audio played {first_play - t_click:.0f} ms after Record; "
              f"barge-in stop at {stop_at - t_click:.0f} ms; "
              f"chat latency: {latency}; status: {status}")
        assert "Traceback" not in page.content()
        assert not [e for e in errors if "omni2" in e.lower()], errors
    finally:
        browser.close()


def test_denied_microphone_shows_a_message_and_upload_still_works(playwright, server, question_wav):
    browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=BASE_ARGS)
    errors: list[str] = []
    try:
        context = browser.new_context(viewport={"width": 1280, "height": 900})
        context.clear_permissions()
        page = context.new_page()
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(server)
        settle(page)
        page.locator("#omni2-mic button", has_text="Record").first.click()
        page.get_by_text("allow access to the microphone", exact=False).first.wait_for(timeout=40_000)
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "browser-mic-denied.png"))

        # the upload path needs no permission
        page.locator("#omni2-upload input[type=file]").set_input_files(str(question_wav))
        page.wait_for_function("() => !!document.querySelector('#omni2-upload audio, #omni2-upload canvas, "
                               "#omni2-upload [data-testid=\"waveform-Audio\"], #omni2-upload .waveform-container')",
                               timeout=20_000)
        page.locator("#omni2-send").click()
        s = wait_until(page, lambda s, p: s["chunks"] >= 1, 60, "reply audio after an upload")
        assert s["chunks"] >= 1
        assert "question.wav" in chat(page)
        assert "Traceback" not in page.content()
    finally:
        browser.close()
