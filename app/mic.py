"""Local microphone voice chat: sounddevice in and out, silero-vad turns, barge-in.

The input callback only queues 16 kHz blocks; the main loop runs the VAD; a worker thread runs
each reply and feeds the output callback's buffer, which counts the frames really played — so on
barge-in the history keeps exactly what came out of the speaker (``turn.delivered_units``).
Stream classes are looked up on the ``sounddevice`` module when the loop starts, which is also
where the tests replace them with fakes.
"""

from __future__ import annotations

import logging
import queue
import sys
import threading
import time
from collections import deque
from typing import Any, TextIO

import numpy as np

from app.conversation import UNIT_SAMPLES, Conversation, Reply
from app.vad import FRAME, RATE, SpeechStarted, TurnComplete, TurnConfig, TurnDetector
from omni2.engine import Engine, ReplyOptions
from omni2.errors import Omni2Error
from omni2.events import AudioChunk, Notice, TextDelta, TurnEnd

log = logging.getLogger(__name__)

OUTPUT_RATE = 24_000


class NoAudioDevice(Omni2Error):
    """No usable input (or output) device: the user needs a microphone, not a traceback."""


def _sounddevice():
    try:
        import sounddevice as sd
    except OSError as exc:  # the PortAudio library itself is missing
        raise NoAudioDevice(f"cannot use audio devices: {exc}. Install PortAudio "
                            "(apt-get install libportaudio2) or use the web UI / `launch.py chat`.") from exc
    return sd


def list_devices() -> str:
    sd = _sounddevice()
    try:
        devices = sd.query_devices()
    except Exception as exc:  # PortAudio errors have no common base we can name without importing it
        return f"no audio devices ({exc})"
    text = str(devices)
    return text if text.strip() else "no audio devices found"


def check_devices(input_device: Any = None, output_device: Any = None) -> None:
    """Raise :class:`NoAudioDevice` with a clear message when the input device is unusable."""
    sd = _sounddevice()
    try:
        info = sd.query_devices(input_device, kind="input")
    except (ValueError, sd.PortAudioError) as exc:
        which = f"input device {input_device!r} is not usable" if input_device is not None \
            else "no microphone (audio input device) found"
        raise NoAudioDevice(
            f"{which} ({exc}). Plug in a microphone, pick one with --input-device "
            "(see --list-devices), or use the browser UI (`python launch.py web`) or "
            "`python launch.py chat --audio question.wav`.") from exc
    if int(info.get("max_input_channels", 0)) < 1:
        raise NoAudioDevice(f"device {info.get('name')!r} has no input channels (see --list-devices)")
    try:
        sd.query_devices(output_device, kind="output")
    except (ValueError, sd.PortAudioError) as exc:
        raise NoAudioDevice(f"no usable output device for the reply audio: {exc} (see --list-devices)") from exc


class MicChat:
    """The microphone conversation loop (see the module docstring)."""

    def __init__(self, engine: Engine, options: ReplyOptions | None = None, *, input_device: Any = None,
                 output_device: Any = None, turn_config: TurnConfig | None = None, barge_in: bool = True,
                 out: TextIO | None = None) -> None:
        self.engine = engine
        self.options = options or ReplyOptions()
        self.input_device = input_device
        self.output_device = output_device
        self.detector = TurnDetector(config=turn_config)
        self.conv = Conversation(engine)
        self.barge_in = barge_in
        self.out = out or sys.stdout
        self._blocks: queue.Queue[np.ndarray] = queue.Queue()
        self._play: deque[np.ndarray] = deque()
        self._play_lock = threading.Lock()
        self._played = 0  # frames of the current reply that went to the device
        self._worker: threading.Thread | None = None
        self.turns = 0
        self.interruptions = 0
        self.results: list[TurnEnd] = []

    # -- sounddevice callbacks (audio threads: no blocking, no printing) -------------------------
    def _on_input(self, indata, frames, time_info, status) -> None:  # noqa: ARG002
        self._blocks.put(np.array(indata, dtype=np.float32).reshape(frames, -1).mean(axis=1))

    def _on_output(self, outdata, frames, time_info, status) -> None:  # noqa: ARG002
        filled = 0
        with self._play_lock:
            while filled < frames and self._play:
                head = self._play[0]
                n = min(frames - filled, len(head))
                outdata[filled:filled + n, 0] = head[:n]
                filled += n
                if n == len(head):
                    self._play.popleft()
                else:
                    self._play[0] = head[n:]
            self._played += filled
        outdata[filled:, 0] = 0.0

    # -- state ------------------------------------------------------------------------------------
    @property
    def queued_frames(self) -> int:
        with self._play_lock:
            return sum(len(a) for a in self._play)

    def _busy(self) -> bool:
        reply = self.conv.reply
        if reply is None or reply.interrupted:
            return False
        return reply.generating or self.queued_frames > 0

    def _write(self, text: str) -> None:
        self.out.write(text)
        self.out.flush()

    # -- loop -------------------------------------------------------------------------------------
    def run(self, stop: threading.Event | None = None, max_turns: int | None = None) -> int:
        """Listen until Ctrl-C (or ``stop`` is set, or ``max_turns`` replies finished)."""
        sd = _sounddevice()
        stop = stop or threading.Event()
        inp = sd.InputStream(samplerate=RATE, channels=1, dtype="float32", blocksize=FRAME,
                             device=self.input_device, callback=self._on_input)
        outp = sd.OutputStream(samplerate=OUTPUT_RATE, channels=1, dtype="float32",
                               device=self.output_device, callback=self._on_output)
        self._write("listening… speak, then pause (Ctrl-C to quit)\n")
        try:
            with inp, outp:
                while not stop.is_set():
                    if max_turns is not None and len(self.results) >= max_turns and not self._busy():
                        break
                    try:
                        block = self._blocks.get(timeout=0.1)
                    except queue.Empty:
                        continue
                    for ev in self.detector.push(block):
                        if isinstance(ev, SpeechStarted) and self.barge_in and self._busy():
                            self.interrupt()
                        elif isinstance(ev, TurnComplete) and ev.seconds >= 0.3:
                            self._start(ev)
        except KeyboardInterrupt:
            self._write("\nbye\n")
        finally:
            reply = self.conv.reply
            if reply is not None and reply.generating:
                reply.interrupt(0)
            if self._worker is not None:
                self._worker.join(timeout=10)
        return 0

    def interrupt(self) -> None:
        """Barge-in: silence the speaker; the history keeps the units that were played."""
        with self._play_lock:
            heard = self._played // UNIT_SAMPLES
            self._play.clear()
        kept = self.conv.interrupt(heard)
        self.interruptions += 1
        self._write(f"\n[interrupted — kept: {kept!r}]\n" if kept is not None else "\n[interrupted]\n")

    def _start(self, turn: TurnComplete) -> None:
        if self._worker is not None:
            self._worker.join(timeout=10)  # a cancelled reply stops within one TTS window
        with self._play_lock:
            self._play.clear()
            self._played = 0
        self.turns += 1
        self._write(f"\nyou: (spoke {turn.seconds:.1f} s{', cut at 30 s' if turn.truncated else ''})\nomni2: ")
        reply = self.conv.start(np.clip(turn.samples, -1.0, 1.0), RATE, self.options)
        self._worker = threading.Thread(target=self._speak, args=(reply, time.monotonic()),
                                        name="omni2-mic-reply", daemon=True)
        self._worker.start()

    def _speak(self, reply: Reply, t0: float) -> None:
        result: TurnEnd | None = None
        try:
            for ev in reply.events():
                if isinstance(ev, TextDelta):
                    if not reply.interrupted:
                        self._write(ev.text)
                elif isinstance(ev, AudioChunk):
                    if reply.interrupted:
                        continue
                    samples = ev.samples.astype(np.float32, copy=False)
                    if ev.sample_rate != OUTPUT_RATE:
                        from omni2.audio import resample

                        samples = resample(samples, ev.sample_rate, OUTPUT_RATE)
                    with self._play_lock:
                        self._play.append(samples)
                elif isinstance(ev, Notice):
                    self._write(f"\n[{ev.message}]\n")
                elif isinstance(ev, TurnEnd):
                    result = ev
        except Exception as exc:  # keep listening after a failed reply
            log.debug("reply failed", exc_info=True)
            self._write(f"\n[error: {type(exc).__name__}: {exc}]\n")
            return
        if result is None:
            return
        self.results.append(result)
        if result.error:
            self._write(f"\n[error: {result.error}]\n")
        elif result.first_audio_latency is not None:
            self._write(f"\n[first audio {result.first_audio_latency:.2f} s, {result.audio_seconds:.1f} s of "
                        f"speech{', interrupted' if reply.interrupted else ''}]\n")
        else:
            self._write("\n")
