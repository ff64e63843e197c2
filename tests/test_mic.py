"""Microphone CLI and the silero VAD, driven by arrays through fake sounddevice streams."""

from __future__ import annotations

import io
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from tests.conftest import REPO_ROOT

SPEED = 2.0  # fake devices run this much faster than real time (VAD timing is in audio time)


@pytest.fixture(scope="module")
def speech_engine(tiny_dir):
    from omni2.runtime import load_engine

    return load_engine(tiny_dir, device="cpu", dtype="float32")


@pytest.fixture(scope="module")
def question16k(question_wav) -> np.ndarray:
    from omni2.audio import prepare_audio

    return prepare_audio(question_wav).samples


def silence(seconds: float) -> np.ndarray:
    return np.zeros(int(seconds * 16000), np.float32)


# -- VAD ------------------------------------------------------------------------------------------
def test_vad_finds_turns_in_speech_and_silence(question16k):
    from app.vad import SpeechStarted, TurnComplete, TurnConfig, detect_turns

    q = question16k
    audio = np.concatenate([silence(0.5), q, silence(1.5), q, silence(1.0)])
    events = detect_turns(audio, TurnConfig(silence=0.7))
    kinds = [type(e).__name__ for e in events]
    assert kinds == ["SpeechStarted", "TurnComplete", "SpeechStarted", "TurnComplete"], kinds
    starts = [e.at for e in events if isinstance(e, SpeechStarted)]
    assert abs(starts[0] - 0.5) < 0.3
    assert abs(starts[1] - (0.5 + len(q) / 16000 + 1.5)) < 0.3
    for turn in (e for e in events if isinstance(e, TurnComplete)):
        # the utterance, plus a little pre-roll and trailing silence, not the whole pause
        assert len(q) / 16000 - 0.4 < turn.seconds < len(q) / 16000 + 0.8
        assert not turn.truncated


def test_vad_ignores_silence_and_noise():
    from app.vad import detect_turns

    assert detect_turns(silence(3.0)) == []
    noise = np.random.default_rng(0).normal(0, 0.01, 48000).astype(np.float32)
    assert detect_turns(noise) == []


def test_vad_silence_length_is_configurable(question16k):
    from app.vad import TurnComplete, TurnConfig, detect_turns

    q = question16k
    audio = np.concatenate([silence(0.3), q, silence(0.5), q, silence(1.5)])
    long_pause = [e for e in detect_turns(audio, TurnConfig(silence=1.0)) if isinstance(e, TurnComplete)]
    short_pause = [e for e in detect_turns(audio, TurnConfig(silence=0.3)) if isinstance(e, TurnComplete)]
    assert len(long_pause) == 1 and long_pause[0].seconds > 2 * len(q) / 16000
    assert len(short_pause) == 2


def test_vad_cuts_long_turns_and_keeps_state_per_stream(question16k):
    from app.vad import TurnComplete, TurnConfig, TurnDetector, detect_turns

    long_talk = np.concatenate([question16k] * 4)
    cut = [e for e in detect_turns(long_talk, TurnConfig(max_turn=3.0)) if isinstance(e, TurnComplete)]
    assert cut[0].truncated and abs(cut[0].seconds - 3.0) < 0.5

    # two interleaved streams give the same events as each alone (explicit per-stream state)
    a = np.concatenate([silence(0.4), question16k, silence(1.0)])
    b = np.concatenate([silence(1.2), question16k, silence(1.0)])[:len(a)]
    da, db = TurnDetector(), TurnDetector()
    ev_a, ev_b = [], []
    for i in range(0, len(a), 1600):
        ev_a += da.push(a[i:i + 1600])
        ev_b += db.push(b[i:i + 1600])
    alone_a = detect_turns(a, block=1600)
    assert [type(e) for e in ev_a] == [type(e) for e in alone_a]
    assert [round(e.at, 2) for e in ev_b if hasattr(e, "at")] != [round(e.at, 2) for e in ev_a if hasattr(e, "at")]


# -- fake sounddevice ------------------------------------------------------------------------------
class FakeInputStream:
    """Calls the callback with blocks of ``script`` at SPEED x real time, then silence."""

    script: np.ndarray = np.zeros(0, np.float32)

    def __init__(self, samplerate, channels, dtype, blocksize, device, callback, **_):
        assert samplerate == 16000 and channels == 1 and dtype == "float32"
        self.rate, self.block, self.callback = samplerate, blocksize, callback
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._feed, daemon=True)

    def _feed(self) -> None:
        pos = 0
        while not self._stop.is_set():
            chunk = self.script[pos:pos + self.block]
            chunk = np.pad(chunk, (0, self.block - len(chunk)))
            pos += self.block
            self.callback(chunk.reshape(-1, 1).copy(), self.block, None, None)
            time.sleep(self.block / self.rate / SPEED)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


class FakeOutputStream:
    """Pulls audio from the callback at SPEED x real time and keeps what it got."""

    written: list[np.ndarray] = []

    def __init__(self, samplerate, channels, dtype, device, callback, **_):
        assert samplerate == 24000 and channels == 1
        self.rate, self.callback = samplerate, callback
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._pull, daemon=True)

    def _pull(self) -> None:
        frames = 1200
        while not self._stop.is_set():
            out = np.full((frames, 1), np.nan, np.float32)
            self.callback(out, frames, None, None)
            assert np.isfinite(out).all()  # the callback must fill every frame
            FakeOutputStream.written.append(out[:, 0].copy())
            time.sleep(frames / self.rate / SPEED)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


@pytest.fixture
def fake_sd(monkeypatch):
    import sounddevice as sd

    monkeypatch.setattr(sd, "InputStream", FakeInputStream)
    monkeypatch.setattr(sd, "OutputStream", FakeOutputStream)
    FakeOutputStream.written = []
    return sd


def test_mic_loop_turn_text_audio_and_barge_in(speech_engine, question16k, fake_sd):
    from app.mic import MicChat
    from omni2.engine import ReplyOptions
    from omni2.session import AssistantTurn

    q = question16k
    # question, a pause that ends the turn, then the user talks again while the reply plays
    FakeInputStream.script = np.concatenate([silence(0.5), q, silence(1.4), q, silence(1.5)])
    out = io.StringIO()
    chat = MicChat(speech_engine, ReplyOptions(max_new_tokens=24), out=out)
    stop = threading.Event()
    timer = threading.Timer(60, stop.set)
    timer.start()
    t0 = time.monotonic()
    try:
        assert chat.run(stop=stop, max_turns=2) == 0
    finally:
        timer.cancel()
    assert time.monotonic() - t0 < 60, "the loop did not finish its two turns"
    text = out.getvalue()
    assert chat.turns == 2 and len(chat.results) == 2
    assert "you: (spoke" in text and "omni2: " in text
    assert chat.interruptions == 1 and "[interrupted" in text
    played = np.concatenate(FakeOutputStream.written)
    assert np.abs(played).max() > 0, "no reply audio reached the output stream"
    first, second = chat.results
    assert not second.cancelled and second.error is None and second.units
    # history: user, heard part of reply 1, user, reply 2
    turns = chat.conv.session.turns
    assert len(turns) == 4
    assert isinstance(turns[1], AssistantTurn) and isinstance(turns[3], AssistantTurn)
    assert turns[3].text == second.text
    full_first = first.text
    assert len(turns[1].text) <= len(full_first)
    if first.cancelled:  # barged in while generating: the engine kept the heard part
        assert first.units and len(first.units) < 24 * 10


def test_mic_ctrl_c_exits_cleanly(speech_engine, fake_sd, monkeypatch):
    from app.mic import MicChat

    FakeInputStream.script = silence(1.0)
    out = io.StringIO()
    chat = MicChat(speech_engine, out=out)
    calls = {"n": 0}
    real_get = chat._blocks.get

    def get(timeout=None):
        calls["n"] += 1
        if calls["n"] > 5:
            raise KeyboardInterrupt
        return real_get(timeout=timeout)

    monkeypatch.setattr(chat._blocks, "get", get)
    assert chat.run() == 0
    assert "bye" in out.getvalue()


def test_mic_without_input_device_is_a_clear_message(monkeypatch, capsys):
    import sounddevice as sd

    from omni2.cli import main

    def no_device(*a, **k):
        raise sd.PortAudioError("Error querying device -1")

    monkeypatch.setattr(sd, "query_devices", no_device)
    assert main(["mic", "--model", "/nonexistent"]) == 2
    err = capsys.readouterr().err
    assert "no microphone" in err and "--list-devices" in err and "Traceback" not in err


def test_launch_mic_on_this_machine():
    """The real command, real PortAudio: no sound card here -> a clear message, no traceback."""
    import sounddevice as sd

    try:
        sd.query_devices(kind="input")
        has_input = True
    except (ValueError, sd.PortAudioError):
        has_input = False
    p = subprocess.run([sys.executable, "launch.py", "mic", "--model", "/nonexistent/model"], cwd=REPO_ROOT,
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 2, p.stderr
    assert "Traceback" not in p.stderr
    if not has_input:
        assert "no microphone (audio input device) found" in p.stderr
    else:
        assert "model folder not found" in p.stderr
    listed = subprocess.run([sys.executable, "launch.py", "mic", "--list-devices"], cwd=REPO_ROOT,
                            capture_output=True, text=True, timeout=120)
    assert listed.returncode == 0 and listed.stdout.strip() and "Traceback" not in listed.stderr
