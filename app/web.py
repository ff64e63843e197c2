"""Browser voice chat (Gradio Blocks) on top of :mod:`omni2.engine`.

Hands-free mode streams the microphone to the server in 250 ms pieces; silero-vad
(:mod:`app.vad`) finds where the user's turn ends and a reply starts at once. Reply audio goes
to the page chunk by chunk through a hidden textbox and is played back to back by a small Web
Audio player (``app/player.js``): Gradio's own streaming audio output needs ffmpeg and an HLS
buffer of several seconds, which defeats real-time replies. When the user speaks during
playback the reply is cancelled (barge-in) and the history keeps only what was heard, estimated
from a model of the player's clock (:class:`app.conversation.PlaybackClock`).

Each browser tab has its own :class:`WebChat` (a ``gr.State``), so its own engine session; the
model runs under one queue concurrency group (``--concurrency``).
"""

from __future__ import annotations

import atexit
import base64
import json
import logging
import threading
import time
import weakref
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from app.conversation import Conversation, PlaybackClock, Reply
from app.vad import RATE as VAD_RATE
from app.vad import SileroVAD, SpeechStarted, TurnComplete, TurnConfig, TurnDetector, shared_vad
from omni2.engine import Engine, ReplyOptions
from omni2.errors import Omni2Error
from omni2.events import AudioChunk, Notice, TurnEnd
from omni2.sampling import SamplingConfig

log = logging.getLogger(__name__)

PLAYER_JS = (Path(__file__).parent / "player.js").read_text(encoding="utf-8")
MIN_TURN_SECONDS = 0.3  # shorter "turns" are noise the VAD let through
DEFAULT_VOICE = "default"

CSS = """
#omni2-speaking { min-height: 1.5em; font-weight: 600; }
.omni2-warning { border-left: 4px solid #d97706; padding-left: .6em; }
"""


@dataclass
class Settings:
    """What the settings panel controls, as the queue API receives it."""

    temperature: float = 0.0
    max_new_tokens: int = 256
    read: int = 3
    write: int = 10
    voice: str = DEFAULT_VOICE


@dataclass
class PendingTurn:
    samples: np.ndarray  # 16 kHz float32
    detected: float  # monotonic time the end of the turn was detected
    truncated: bool = False


class VoiceBank:
    """Named voices for the settings dropdown -> x-vectors (loaded once, shared by all tabs)."""

    def __init__(self, engine: Engine, decoder_dir: Path | None, extra: list[Path] | None = None,
                 search: list[Path] | None = None) -> None:
        self.decoder_dir = decoder_dir
        self.paths: dict[str, Path] = {}
        suffixes = {".wav", ".flac", ".ogg", ".mp3", ".npy", ".pt"}
        for folder in search or []:
            if folder.is_dir():
                for p in sorted(folder.iterdir()):
                    if p.suffix.lower() in suffixes:
                        self.paths.setdefault(p.stem, p)
        for p in extra or []:
            self.paths[Path(p).stem] = Path(p)
        self._cache: dict[str, Any] = {}
        self._lock = threading.Lock()
        self.can_choose = engine.vocoder is not None

    @property
    def names(self) -> list[str]:
        return [DEFAULT_VOICE, *self.paths]

    def xvector(self, name: str | None):
        if not name or name == DEFAULT_VOICE or name not in self.paths:
            return None
        with self._lock:
            if name not in self._cache:
                from omni2.voice import load_voice

                self._cache[name] = load_voice(self.paths[name], self.decoder_dir)
            return self._cache[name]


# Chats still holding a soxr stream at exit: soxr's nanobind extension reports any instance that
# outlives the interpreter as a "leak" on stderr, so the streams are dropped first.
_RESAMPLING_CHATS: weakref.WeakSet = weakref.WeakSet()


@atexit.register
def _drop_resamplers() -> None:
    for chat in list(_RESAMPLING_CHATS):
        chat._resampler = None


class WebChat:
    """One browser tab: conversation, VAD state, chat messages and the player channel."""

    def __init__(self, engine: Engine, vad: SileroVAD | None = None) -> None:
        self.conv = Conversation(engine)
        self.detector = TurnDetector(vad or shared_vad(), TurnConfig())
        self.clock = PlaybackClock()
        self.messages: list[dict] = []
        self.pending: deque[PendingTurn] = deque()
        self.lock = threading.RLock()
        self._seq = 0
        self._turns = 0
        self._resampler = None
        self._in_rate: int | None = None
        self.barge_in = True

    # -- player channel -------------------------------------------------------------------------
    def message(self, cmd: str, **fields: Any) -> str:
        with self.lock:
            self._seq += 1
            return json.dumps({"seq": self._seq, "cmd": cmd, **fields})

    def chunk_message(self, chunk: AudioChunk) -> str:
        pcm = (np.clip(chunk.samples, -1.0, 1.0) * 32767.0).astype("<i2").tobytes()
        return self.message("chunk", rate=int(chunk.sample_rate), pcm=base64.b64encode(pcm).decode("ascii"))

    def chat_view(self) -> list[dict]:
        """The messages as the Chatbot takes them (internal ``_`` keys dropped)."""
        with self.lock:
            return [{k: v for k, v in m.items() if not k.startswith("_")} for m in self.messages]

    # -- microphone -----------------------------------------------------------------------------
    def _to_16k(self, rate: int, data: np.ndarray) -> np.ndarray:
        from omni2.audio import _to_float, to_mono

        x = to_mono(_to_float(np.asarray(data)))
        if rate == VAD_RATE:
            return x.astype(np.float32, copy=False)
        if self._resampler is None or self._in_rate != rate:
            import soxr

            self._resampler = soxr.ResampleStream(rate, VAD_RATE, 1, dtype="float32")
            self._in_rate = rate
            _RESAMPLING_CHATS.add(self)
        return self._resampler.resample_chunk(x.astype(np.float32, copy=False))

    def hear(self, rate: int, data: np.ndarray, silence: float | None = None) -> tuple[bool, bool, str | None]:
        """Feed one microphone piece. Returns (turn ready, barge-in happened, player message)."""
        if silence:
            self.detector.config.silence = float(silence)
        ready = barged = False
        player = None
        for ev in self.detector.push(self._to_16k(rate, data)):
            if isinstance(ev, SpeechStarted):
                if self.barge_in and self._busy():
                    player = self.stop_reply(note="interrupted")
                    barged = True
            elif isinstance(ev, TurnComplete):
                ready |= self._queue(ev)
        return ready, barged, player

    def end_of_stream(self) -> bool:
        tail = self.detector.flush()
        return self._queue(tail) if tail is not None else False

    def _queue(self, ev: TurnComplete) -> bool:
        if ev.seconds < MIN_TURN_SECONDS:
            return False
        samples = np.clip(ev.samples, -1.0, 1.0)  # resampling may overshoot full scale a little
        self.pending.append(PendingTurn(samples, time.monotonic(), ev.truncated))
        return True

    def _busy(self) -> bool:
        reply = self.conv.reply
        if reply is None or reply.interrupted:
            return False
        return reply.generating or self.clock.remaining() > 0.05

    def stop_reply(self, note: str) -> str:
        """Barge-in or Clear: stop the reply, mark the chat, and tell the player to stop."""
        reply = self.conv.reply
        if reply is not None and not reply.interrupted:
            heard = reply.heard_units_from_clock(self.clock)
            kept = self.conv.interrupt(heard)
            if not reply.generating:  # the reply generator is gone: update its message here
                self._mark_interrupted(reply, kept or "", note)
        self.clock.reset()
        return self.message("stop")

    def _mark_interrupted(self, reply: Reply, kept: str, note: str) -> None:
        with self.lock:
            for m in reversed(self.messages):
                if m.get("role") == "assistant" and m.get("_reply") == id(reply):
                    m["content"] = (kept + " " if kept else "") + f"*({note})*" + m.get("_latency", "")
                    break

    # -- replies --------------------------------------------------------------------------------
    def run(self, audio: Any, label: str, options: ReplyOptions, detected: float | None = None,
            rate: int | None = None) -> Iterator[tuple[list[dict] | None, str | None, str | None]]:
        """One reply: yields (chat messages or None, player message or None, status or None)."""
        skip_chat = None
        self._turns += 1
        with self.lock:
            self.messages.append({"role": "user", "content": label})
            answer: dict[str, Any] = {"role": "assistant", "content": "…"}
            self.messages.append(answer)
        yield self.chat_view(), None, "*thinking…*"
        t0 = time.monotonic() if detected is None else detected
        reply: Reply | None = None
        result: TurnEnd | None = None
        error: str | None = None
        last_push = 0.0
        try:
            reply = self.conv.start(audio, rate, options)
            answer["_reply"] = id(reply)
            self.clock.reset()
            for ev in reply.events():
                if isinstance(ev, Notice):
                    with self.lock:
                        self.messages.insert(self.messages.index(answer),
                                             {"role": "assistant", "content": f"ℹ️ {ev.message}",
                                              "metadata": {"title": "note"}})
                    yield self.chat_view(), None, None
                elif isinstance(ev, AudioChunk):
                    if reply.interrupted:
                        continue  # barge-in already stopped the player
                    self.clock.add(ev.samples.size / ev.sample_rate)
                    with self.lock:
                        answer["content"] = reply.text or "…"
                    yield self.chat_view(), self.chunk_message(ev), None
                    last_push = time.monotonic()
                elif isinstance(ev, TurnEnd):
                    result = ev
                elif reply.text and time.monotonic() - last_push > 0.1 and not reply.interrupted:
                    with self.lock:
                        answer["content"] = reply.text
                    yield self.chat_view(), None, skip_chat
                    last_push = time.monotonic()
        except Omni2Error as exc:
            error = str(exc)
        except Exception as exc:  # a bug or a device failure: show it, keep the tab usable
            log.exception("reply failed")
            error = f"internal error ({type(exc).__name__}: {exc}); the conversation continues"
        if result is not None and result.error:
            error = result.error
        with self.lock:
            if error:
                answer["content"] = f"⚠️ {error}"
                answer["metadata"] = {"title": "error"}
            elif reply is not None and reply.interrupted:
                kept = reply.heard_text or ""
                answer["content"] = (kept + " " if kept else "") + "*(interrupted)*"
            elif result is not None:
                answer["content"] = result.text or reply.text or "*(no text)*"
        status = self._status(reply, result, t0, error)
        if not error and reply is not None and reply.first_audio is not None:
            with self.lock:  # per-turn latency stays visible next to its reply
                answer["_latency"] = f"\n\n<sub>first audio {reply.first_audio - t0:.2f} s</sub>"
                answer["content"] += answer["_latency"]
        end = None if (reply is not None and reply.interrupted) else self.message("end")
        yield self.chat_view(), end, status

    def _status(self, reply: Reply | None, result: TurnEnd | None, t0: float, error: str | None) -> str:
        if error or reply is None or result is None:
            return "⚠️ the last turn failed (see the chat); you can keep talking."
        parts = []
        if reply.first_audio is not None:
            parts.append(f"first audio **{reply.first_audio - t0:.2f} s** after your turn ended")
        if result.first_audio_latency is not None:
            parts.append(f"model {result.first_audio_latency:.2f} s")
        parts.append(f"{result.audio_seconds:.1f} s of speech")
        parts.append(f"generated in {result.timings.get('total', 0.0):.1f} s")
        if reply.interrupted:
            parts.append("interrupted")
        return "⏱ " + " · ".join(parts)

    def clear(self) -> str:
        msg = self.stop_reply(note="cleared")
        self.conv.clear()
        self.detector.reset()
        with self.lock:
            self.messages.clear()
            self.pending.clear()
        return msg

    def close(self) -> None:
        """The tab went away: stop anything still generating."""
        reply = self.conv.reply
        if reply is not None and reply.generating:
            reply.interrupt(0)


def _options(settings: Settings, voices: VoiceBank) -> ReplyOptions:
    r, w = int(settings.read), int(settings.write)
    if r < 1 or w < 1:
        raise Omni2Error(f"(R, W) must be positive integers, got ({r}, {w})")
    return ReplyOptions(
        max_new_tokens=max(1, int(settings.max_new_tokens)),
        llm_sampling=SamplingConfig(temperature=float(settings.temperature)),
        stream_params=(r, w),
        voice=voices.xvector(settings.voice),
    )


def build_app(engine: Engine, *, decoder_dir: str | Path | None = None, voices: list[Path] | None = None,
              concurrency: int = 1, defaults: Settings | None = None, title: str = "omni2 voice chat"):
    """The Blocks app. ``launch`` it, or mount it; tests drive it in-process."""
    import gradio as gr

    from omni2.checkpoint import DEFAULT_CHECKPOINTS, find_decoder

    defaults = defaults or Settings()
    vad = shared_vad()
    dec = Path(decoder_dir) if decoder_dir else find_decoder(engine.loaded.path, None, None)
    bank = VoiceBank(engine, dec, voices, [Path(DEFAULT_CHECKPOINTS) / "voices"])
    cfg_rw = engine.loaded.config.stream_params

    def new_chat() -> WebChat:
        return WebChat(engine, vad)

    def chat_of(state: WebChat | None) -> WebChat:
        return state if isinstance(state, WebChat) else new_chat()

    def settings_of(temperature, max_tokens, r, w, voice) -> Settings:
        return Settings(temperature or 0.0, int(max_tokens or defaults.max_new_tokens),
                        int(r or cfg_rw[0]), int(w or cfg_rw[1]), voice or DEFAULT_VOICE)

    def reply_stream(chat: WebChat, audio, label, settings: Settings, detected=None, rate=None):
        try:
            options = _options(settings, bank)
        except Omni2Error as exc:
            with chat.lock:
                chat.messages.append({"role": "assistant", "content": f"⚠️ {exc}",
                                      "metadata": {"title": "error"}})
            yield chat, chat.chat_view(), gr.skip(), "⚠️ bad settings"
            return
        for view, player, status in chat.run(audio, label, options, detected, rate):
            yield (chat, view if view is not None else gr.skip(), player if player is not None else gr.skip(),
                   status if status is not None else gr.skip())

    # -- event handlers -------------------------------------------------------------------------
    def on_mic(chunk, state, silence, barge_in):
        chat = chat_of(state)
        chat.barge_in = bool(barge_in)
        if chunk is None:
            return chat, gr.skip(), gr.skip(), gr.skip()
        rate, data = chunk
        if data is None or np.asarray(data).size == 0:
            return chat, gr.skip(), gr.skip(), gr.skip()
        ready, barged, player = chat.hear(int(rate), data, silence)
        trigger = f"turn-{time.monotonic():.6f}" if ready else gr.skip()
        view = chat.chat_view() if barged else gr.skip()
        return chat, view, player if player is not None else gr.skip(), trigger

    def on_mic_stop(state):
        chat = chat_of(state)
        ready = chat.end_of_stream()
        return chat, (f"turn-{time.monotonic():.6f}" if ready else gr.skip())

    def on_turn(state, _trigger, temperature, max_tokens, r, w, voice):
        chat = chat_of(state)
        while chat.pending:
            turn = chat.pending.popleft()
            if chat.pending:
                continue  # the user already spoke again: answer the latest turn
            label = f"*spoken question · {len(turn.samples) / VAD_RATE:.1f} s*"
            if turn.truncated:
                label += " *(cut at 30 s)*"
            yield from reply_stream(chat, turn.samples, label,
                                    settings_of(temperature, max_tokens, r, w, voice),
                                    detected=turn.detected, rate=VAD_RATE)

    def on_send(state, audio_path, temperature, max_tokens, r, w, voice):
        chat = chat_of(state)
        if not audio_path:
            with chat.lock:
                chat.messages.append({"role": "assistant", "content": "⚠️ record or upload a question first",
                                      "metadata": {"title": "error"}})
            yield chat, chat.chat_view(), gr.skip(), gr.skip()
            return
        if chat._busy():
            player = chat.stop_reply(note="interrupted")
            yield chat, chat.chat_view(), player, gr.skip()
        label = f"📎 *{Path(str(audio_path)).name}*"
        yield from reply_stream(chat, str(audio_path), label, settings_of(temperature, max_tokens, r, w, voice))

    def on_clear(state):
        chat = chat_of(state)
        msg = chat.clear()
        return chat, [], msg, "*cleared*"

    # -- layout ---------------------------------------------------------------------------------
    # System fonts: the default theme would make every browser fetch Google Fonts.
    theme = gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"],
                              font_mono=["ui-monospace", "monospace"])
    with gr.Blocks(title=title, css=CSS, head=f"<script>{PLAYER_JS}</script>", theme=theme,
                   analytics_enabled=False) as demo:
        state = gr.State(None, delete_callback=lambda chat: chat.close() if isinstance(chat, WebChat) else None)
        gr.Markdown(f"## {title}\nTalk hands-free: press **Record**, speak, and pause — the reply starts "
                    "while it is still being written. Speak again to interrupt it.")
        if engine.loaded.random_weights:
            gr.Markdown("⚠️ **This checkpoint has random weights** (a test model): its replies are noise. "
                        "Download a real one with `python launch.py download`.", elem_classes=["omni2-warning"])
        if engine.vocoder is None:
            gr.Markdown("⚠️ No CosyVoice2 decoder found: replies are text only. "
                        "Get it with `python launch.py download --only decoder`.", elem_classes=["omni2-warning"])
        with gr.Row():
            with gr.Column(scale=3):
                chatbot = gr.Chatbot(type="messages", label="conversation", height=460, elem_id="omni2-chat")
                status = gr.Markdown("", elem_id="omni2-status")
                gr.HTML('<div id="omni2-speaking"></div>')
            with gr.Column(scale=2):
                mic = gr.Audio(sources=["microphone"], streaming=True, type="numpy", label="hands-free microphone",
                               elem_id="omni2-mic")
                with gr.Accordion("record or upload, then send", open=True):
                    upload = gr.Audio(sources=["upload", "microphone"], type="filepath", label="question",
                                      elem_id="omni2-upload")
                    with gr.Row():
                        send = gr.Button("Send", variant="primary", elem_id="omni2-send")
                        clear = gr.Button("Clear", elem_id="omni2-clear")
                with gr.Accordion("settings", open=False):
                    temperature = gr.Slider(0.0, 1.5, value=defaults.temperature, step=0.05,
                                            label="temperature (0 = greedy)")
                    max_tokens = gr.Slider(8, 1024, value=defaults.max_new_tokens, step=8,
                                           label="max new tokens", elem_id="omni2-max-tokens")
                    with gr.Row():
                        read = gr.Number(value=cfg_rw[0], precision=0, minimum=1, label="R (text tokens read)")
                        write = gr.Number(value=cfg_rw[1], precision=0, minimum=1, label="W (units written)")
                    voice = gr.Dropdown(bank.names, value=DEFAULT_VOICE, label="voice",
                                        interactive=bank.can_choose and len(bank.names) > 1)
                    silence = gr.Slider(0.2, 2.0, value=TurnConfig().silence, step=0.1,
                                        label="pause that ends your turn (s)")
                    barge_in = gr.Checkbox(value=True, label="interrupt the reply when I speak (use headphones)")
        player = gr.Textbox(visible=False, elem_id="omni2-player")
        trigger = gr.Textbox(visible=False, elem_id="omni2-trigger")

        settings = [temperature, max_tokens, read, write, voice]
        outputs = [state, chatbot, player, status]
        demo.load(lambda s: chat_of(s), inputs=[state], outputs=[state], queue=False)
        mic.stream(on_mic, inputs=[mic, state, silence, barge_in], outputs=[state, chatbot, player, trigger],
                   stream_every=0.25, time_limit=None, concurrency_limit=None, show_progress="hidden",
                   api_name="mic")
        mic.stop_recording(on_mic_stop, inputs=[state], outputs=[state, trigger], queue=False,
                           show_progress="hidden", api_name=False)
        trigger.change(on_turn, inputs=[state, trigger, *settings], outputs=outputs,
                       concurrency_limit=concurrency, concurrency_id="model", show_progress="hidden",
                       api_name="turn")
        send.click(on_send, inputs=[state, upload, *settings], outputs=outputs, concurrency_limit=concurrency,
                   concurrency_id="model", show_progress="hidden", api_name="send")
        clear.click(on_clear, inputs=[state], outputs=outputs, queue=False, api_name="clear")
        chatbot.clear(on_clear, inputs=[state], outputs=outputs, queue=False, api_name=False)
        player.change(None, inputs=[player], outputs=None, js="(m) => { window.omni2Player.handle(m); }")
    demo.queue(default_concurrency_limit=concurrency)
    return demo


def launch(engine: Engine, *, host: str = "127.0.0.1", port: int = 7860, share: bool = False,
           auth: tuple[str, str] | None = None, concurrency: int = 1, decoder_dir: str | Path | None = None,
           voices: list[Path] | None = None, block: bool = True, quiet: bool = False):
    """Serve the UI; returns the Blocks (with ``block=False`` the server runs in a thread)."""
    demo = build_app(engine, decoder_dir=decoder_dir, voices=voices, concurrency=concurrency)
    demo.launch(server_name=host, server_port=port, share=share, auth=auth, prevent_thread_lock=not block,
                show_error=False, quiet=quiet, inbrowser=False, show_api=True)
    return demo
