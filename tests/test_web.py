"""Web UI server on the tiny checkpoint: HTTP, the queue API round trip, bad inputs, barge-in history."""

from __future__ import annotations

import base64
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import soundfile as sf

from tests.conftest import REPO_ROOT


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def speech_engine(tiny_dir):
    from omni2.runtime import load_engine

    return load_engine(tiny_dir, device="cpu", dtype="float32")


@pytest.fixture(scope="module")
def server(speech_engine):
    from app.web import launch

    port = free_port()
    demo = launch(speech_engine, port=port, block=False, quiet=True, concurrency=1)
    yield f"http://127.0.0.1:{port}/"
    demo.close()


def client(url):
    from gradio_client import Client

    return Client(url, verbose=False, download_files=False)


def send(url, path, max_tokens=12, c=None):
    """Submit a file through the queue; returns (outputs with arrival times, final outputs)."""
    from gradio_client import handle_file

    c = c or client(url)
    t0 = time.monotonic()
    job = c.submit(handle_file(str(path)), 0.0, max_tokens, 3, 10, "default", api_name="/send")
    seen = []
    for out in job:
        seen.append((time.monotonic() - t0, out))
    job.result(timeout=120)
    return seen, job.outputs()[-1]


def player_messages(seen):
    msgs = []
    for t, (_chat, player, _status) in seen:
        if isinstance(player, str) and player:
            msgs.append((t, json.loads(player)))
    return msgs


def chat_text(final) -> str:
    return "\n".join(str(m["content"]) for m in final[0])


def test_root_page_and_random_weights_notice(server):
    r = httpx.get(server, timeout=30)
    assert r.status_code == 200 and "<html" in r.text.lower()
    config = httpx.get(server + "config", timeout=30).json()
    texts = json.dumps(config)
    assert "random weights" in texts  # the UI says the tiny checkpoint talks noise
    assert "omni2Player" in r.text or "omni2Player" in texts  # the chunk player is on the page


def test_send_streams_audio_chunks_before_the_turn_ends(server, question_wav):
    seen, final = send(server, question_wav, max_tokens=15)
    msgs = player_messages(seen)
    chunks = [(t, m) for t, m in msgs if m["cmd"] == "chunk"]
    ends = [t for t, m in msgs if m["cmd"] == "end"]
    assert len(chunks) >= 3 and len(ends) == 1
    # real streaming: the first chunk arrives well before generation finishes
    first, end = chunks[0][0], ends[0]
    assert first < chunks[-1][0] < end + 1e-6
    assert end - first > 0.05, f"first chunk at {first:.3f}s, end at {end:.3f}s"
    # each message carries only its own chunk, not a re-sent growing file: the samples sent add
    # up to the reply's length (checked against the status below)
    pcm = np.concatenate([np.frombuffer(base64.b64decode(m["pcm"]), "<i2") for _, m in chunks])
    assert chunks[0][1]["rate"] == 24000 and np.abs(pcm).max() > 0
    seqs = [m["seq"] for _, m in msgs]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    status = final[2]
    assert "first audio" in status and "model" in status
    spoken = float(status.split(" s of speech")[0].split("·")[-1])
    assert abs(spoken - len(pcm) / 24000) < 0.15
    assert final[0][0]["role"] == "user" and final[0][-1]["role"] == "assistant"


def test_bad_inputs_are_chat_messages(server, tmp_path, question_wav):
    c = client(server)
    silent = tmp_path / "silent.wav"
    sf.write(silent, np.zeros(16000 * 2, np.float32), 16000, subtype="PCM_16")
    _, final = send(server, silent, c=c)
    assert "⚠️" in final[0][-1]["content"] and "silent" in final[0][-1]["content"]

    bogus = tmp_path / "notes.wav"
    bogus.write_text("this is not audio at all\n" * 20)
    _, final = send(server, bogus, c=c)
    assert "⚠️" in final[0][-1]["content"] and "cannot decode" in final[0][-1]["content"]

    q, sr = sf.read(question_wav, dtype="float32")
    long_rec = tmp_path / "two_minutes.wav"
    reps = int(120 * sr / len(q)) + 1
    sf.write(long_rec, np.tile(q, reps)[: 120 * sr], sr, subtype="PCM_16")
    seen, final = send(server, long_rec, c=c)
    text = chat_text(final)
    assert "only the first 30 s are used" in text
    assert any(m["cmd"] == "chunk" for _, m in player_messages(seen))  # it still answered

    # after all that, the same tab still works and kept only the successful exchange
    seen, final = send(server, question_wav, c=c)
    assert any(m["cmd"] == "chunk" for _, m in player_messages(seen))
    assert "Traceback" not in chat_text(final)


def test_error_mid_reply_then_the_session_continues(server, speech_engine, question_wav, monkeypatch):
    voc = speech_engine.vocoder
    real_stream = voc.stream
    broken = {"left": 1}

    class Exploding:
        def __init__(self, inner):
            self.inner, self.pushes = inner, 0

        def push(self, units):
            self.pushes += 1
            if self.pushes == 2:
                raise RuntimeError("simulated device failure")
            return self.inner.push(units)

        def finalize(self):
            return self.inner.finalize()

    def stream(*a, **k):
        inner = real_stream(*a, **k)
        if broken["left"]:
            broken["left"] -= 1
            return Exploding(inner)
        return inner

    monkeypatch.setattr(voc, "stream", stream)
    c = client(server)
    seen, final = send(server, question_wav, max_tokens=15, c=c)
    last = final[0][-1]["content"]
    assert "⚠️" in last and "simulated device failure" in last and "continues" in last
    assert sum(m["cmd"] == "chunk" for _, m in player_messages(seen)) <= 1  # it failed at the 2nd push
    seen, final = send(server, question_wav, max_tokens=9, c=c)
    assert any(m["cmd"] == "chunk" for _, m in player_messages(seen))
    assert "⚠️" not in final[0][-1]["content"]
    assert [m["role"] for m in final[0]] == ["user", "assistant", "user", "assistant"]


def test_two_tabs_at_once_have_separate_sessions(server, question_wav, question2_wav):
    results: dict[str, tuple] = {}

    def tab(name, wav):
        results[name] = send(server, wav, max_tokens=9)

    threads = [threading.Thread(target=tab, args=(n, w)) for n, w in (("a", question_wav), ("b", question2_wav))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=180)
    assert set(results) == {"a", "b"}
    for name, wav in (("a", question_wav), ("b", question2_wav)):
        seen, final = results[name]
        assert any(m["cmd"] == "chunk" for _, m in player_messages(seen))
        assert [m["role"] for m in final[0]] == ["user", "assistant"]  # nothing from the other tab
        assert Path(wav).name in final[0][0]["content"]


def test_barge_in_keeps_only_heard_text(speech_engine, question_wav):
    from app.conversation import Conversation, PlaybackClock
    from omni2.engine import ReplyOptions
    from omni2.events import AudioChunk, TurnEnd
    from omni2.session import AssistantTurn

    # after generation finished (playback still going): the history is shortened afterwards
    conv = Conversation(speech_engine)
    reply = conv.start(str(question_wav), options=ReplyOptions(max_new_tokens=12))
    events = list(reply.events())
    assert isinstance(events[-1], TurnEnd) and len(reply.windows) >= 2
    first_window_text, first_window_units = reply.windows[0]
    kept = conv.interrupt(first_window_units + 1)
    assert kept == first_window_text.strip()
    assert conv.session.turns[-1] == AssistantTurn(kept)

    # while generating: the engine stops and keeps only the heard windows
    conv2 = Conversation(speech_engine)
    reply2 = conv2.start(str(question_wav), options=ReplyOptions(max_new_tokens=60))
    for ev in reply2.events():
        if isinstance(ev, AudioChunk):
            conv2.interrupt(0)  # nothing heard yet
    assert reply2.result.cancelled
    assert conv2.session.turns[-1] == AssistantTurn("")

    # the playback clock: gaps when generation is slower than real time do not count as heard
    clock = PlaybackClock()
    clock.add(1.0, now=0.0)
    clock.add(1.0, now=0.5)  # queued behind the first: plays 1.0..2.0
    clock.add(1.0, now=5.0)  # after a gap: plays 5.0..6.0
    assert clock.heard(now=1.5) == pytest.approx(1.5)
    assert clock.heard(now=4.0) == pytest.approx(2.0)
    assert clock.heard(now=5.25) == pytest.approx(2.25)
    assert clock.remaining(now=5.25) == pytest.approx(0.75)


def test_web_chat_barge_in_from_the_microphone_stream(speech_engine, question_wav):
    """The handler path the browser uses: VAD on mic pieces, a turn, then speech during playback."""
    from app.web import Settings, VoiceBank, WebChat, _options
    from omni2.audio import prepare_audio

    chat = WebChat(speech_engine)
    q = prepare_audio(question_wav).samples
    pieces = np.concatenate([np.zeros(8000, np.float32), q, np.zeros(16000, np.float32)])
    ready = False
    for i in range(0, len(pieces), 4000):  # 250 ms pieces at 16 kHz
        r, barged, _ = chat.hear(16000, (pieces[i:i + 4000] * 32767).astype(np.int16))
        ready |= r
        assert not barged
    assert ready and len(chat.pending) == 1
    turn = chat.pending.popleft()
    opts = _options(Settings(max_new_tokens=30), VoiceBank(speech_engine, None))
    gen = chat.run(turn.samples, "🎤", opts, detected=turn.detected, rate=16000)
    got_chunk = False
    for _view, player, _status in gen:
        if player and json.loads(player)["cmd"] == "chunk":
            got_chunk = True
            break
    assert got_chunk and chat._busy()
    # the user speaks again (48 kHz browser audio): barge-in stops the player at once
    speech48 = np.repeat(q, 3)
    stop_msgs = []
    for i in range(0, 48000, 12000):
        _, barged, player = chat.hear(48000, (speech48[i:i + 12000] * 32767).astype(np.int16))
        if barged:
            stop_msgs.append(json.loads(player))
    assert len(stop_msgs) == 1 and stop_msgs[0]["cmd"] == "stop"
    rest = list(gen)
    assert all(p is None or json.loads(p)["cmd"] != "chunk" for _, p, _ in rest)  # nothing more played
    assert "interrupted" in rest[-1][0][-1]["content"]
    reply = chat.conv.reply
    assert reply.interrupted and chat.conv.session.turns[-1].text == reply.heard_text


def test_launch_py_serves_the_tiny_checkpoint(tiny_dir):
    port = free_port()
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1"}
    p = subprocess.Popen([sys.executable, "launch.py", "--model", str(tiny_dir), "--port", str(port),
                          "--device", "cpu"], cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        status = None
        while time.monotonic() < deadline and p.poll() is None:
            try:
                status = httpx.get(f"http://127.0.0.1:{port}/", timeout=5).status_code
                break
            except httpx.HTTPError:
                time.sleep(0.5)
        assert status == 200, f"server did not come up (exit {p.poll()})"
    finally:
        p.terminate()
        out, _ = p.communicate(timeout=30)
    assert "Traceback" not in out
    assert f"http://127.0.0.1:{port}" in out


def test_web_cli_options_and_missing_checkpoint(tmp_path, capsys):
    from omni2.cli import build_parser, main

    args = build_parser().parse_args(["web", "--auth", "me:pw", "--port", "9999", "--concurrency", "2"])
    assert args.auth == ("me", "pw") and args.port == 9999 and args.host == "127.0.0.1" and not args.share
    assert main(["--model", str(tmp_path / "missing")]) == 2  # `launch.py` alone means `web`
    err = capsys.readouterr().err
    assert "python launch.py download" in err and "Traceback" not in err
    with pytest.raises(SystemExit):
        build_parser().parse_args(["web", "--auth", "nocolon"])
