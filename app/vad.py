"""Voice activity detection: silero-vad (ONNX, shipped inside the ``silero_vad`` package) and a
streaming end-of-turn detector shared by the web UI and the microphone CLI.

The silero package's own loader needs torch + torchaudio helpers; we only need the ONNX model,
so it is run with onnxruntime directly. The recurrent state lives in an explicit
:class:`VADState` so that every browser tab / microphone stream keeps its own, and one
:class:`SileroVAD` (one ONNX session, thread-safe ``run``) serves them all.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

RATE = 16_000
FRAME = 512  # samples per VAD step at 16 kHz (32 ms), as the model was trained
CONTEXT = 64  # samples of the previous frame prepended to each step
FRAME_SECONDS = FRAME / RATE


def default_model_path() -> Path:
    """The ONNX model inside the installed silero_vad package (no download)."""
    import importlib.util

    spec = importlib.util.find_spec("silero_vad")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("silero-vad is not installed (pip install --no-deps silero-vad)")
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "silero_vad.onnx"
    if not path.exists():
        raise RuntimeError(f"silero-vad model file missing: {path}")
    return path


@dataclass
class VADState:
    """Per-stream recurrent state of the silero model plus the last CONTEXT samples."""

    rnn: np.ndarray = field(default_factory=lambda: np.zeros((2, 1, 128), np.float32))
    context: np.ndarray = field(default_factory=lambda: np.zeros(CONTEXT, np.float32))

    def reset(self) -> None:
        self.rnn[:] = 0.0
        self.context[:] = 0.0


class SileroVAD:
    """Speech probability per 32 ms frame of 16 kHz audio. One instance may serve many streams."""

    def __init__(self, path: str | Path | None = None) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        self.path = Path(path) if path else default_model_path()
        self.session = ort.InferenceSession(str(self.path), sess_options=opts,
                                            providers=["CPUExecutionProvider"])
        self._sr = np.array(RATE, dtype=np.int64)

    def new_state(self) -> VADState:
        return VADState()

    def frame(self, samples: np.ndarray, state: VADState) -> float:
        """Probability that one FRAME-sample block is speech; advances ``state``."""
        if samples.shape != (FRAME,):
            raise ValueError(f"VAD frames are {FRAME} samples at 16 kHz, got shape {samples.shape}")
        x = np.concatenate([state.context, samples.astype(np.float32, copy=False)])[None]
        out, rnn = self.session.run(None, {"input": x, "state": state.rnn, "sr": self._sr})
        state.rnn = rnn
        state.context = x[0, -CONTEXT:].copy()
        return float(out[0, 0])

    def probabilities(self, samples: np.ndarray, state: VADState | None = None) -> np.ndarray:
        """Per-frame probabilities of a whole array (a trailing partial frame is ignored)."""
        state = state or self.new_state()
        n = len(samples) // FRAME
        return np.array([self.frame(samples[i * FRAME:(i + 1) * FRAME], state) for i in range(n)], np.float32)


_shared: SileroVAD | None = None
_shared_lock = threading.Lock()


def shared_vad() -> SileroVAD:
    """One process-wide model (loading it costs ~50 ms; sessions only differ in their VADState)."""
    global _shared
    with _shared_lock:
        if _shared is None:
            _shared = SileroVAD()
        return _shared


@dataclass
class TurnConfig:
    """When a user turn starts and ends. Times in seconds of audio (not wall clock)."""

    threshold: float = 0.5  # a frame above this is speech
    neg_threshold: float = 0.35  # a frame below this is silence (hysteresis in between)
    min_speech: float = 0.25  # speech this long starts a turn (shorter blips are ignored)
    silence: float = 0.7  # silence this long ends the turn
    pre_roll: float = 0.3  # audio kept from before the detected start
    max_turn: float = 30.0  # a turn is cut here (the model hears at most 30 s)


@dataclass
class SpeechStarted:
    """The user started talking (``at``: seconds of audio since the detector began)."""

    at: float


@dataclass
class TurnComplete:
    """A finished user turn: 16 kHz float32 samples, and whether it hit ``max_turn``."""

    samples: np.ndarray
    truncated: bool = False

    @property
    def seconds(self) -> float:
        return len(self.samples) / RATE


TurnEvent = SpeechStarted | TurnComplete


class TurnDetector:
    """Feed 16 kHz audio in blocks of any size; get :class:`SpeechStarted` / :class:`TurnComplete`.

    A turn starts after ``min_speech`` seconds of speech frames (so clicks and coughs do not
    barge in) and ends after ``silence`` seconds below ``neg_threshold``.
    """

    def __init__(self, vad: SileroVAD | None = None, config: TurnConfig | None = None) -> None:
        self.vad = vad or shared_vad()
        self.config = config or TurnConfig()
        self.state = self.vad.new_state()
        self._pending = np.zeros(0, np.float32)
        self.reset()

    def reset(self) -> None:
        """Forget any partial turn (keeps the recurrent state warm; call ``state.reset`` to drop it)."""
        self._pre: deque[np.ndarray] = deque(maxlen=max(1, round(self.config.pre_roll / FRAME_SECONDS)))
        self._turn: list[np.ndarray] = []
        self._speech_run = 0  # consecutive speech frames before the turn is confirmed
        self._silence_run = 0
        self.in_turn = False
        self.frames = getattr(self, "frames", 0)

    @property
    def seconds(self) -> float:
        """Audio seen so far."""
        return self.frames * FRAME_SECONDS

    def push(self, samples: np.ndarray) -> list[TurnEvent]:
        samples = np.asarray(samples, dtype=np.float32).reshape(-1)
        buf = np.concatenate([self._pending, samples]) if self._pending.size else samples
        n = len(buf) // FRAME
        self._pending = buf[n * FRAME:].copy()
        events: list[TurnEvent] = []
        for i in range(n):
            ev = self._step(buf[i * FRAME:(i + 1) * FRAME])
            if ev is not None:
                events.append(ev)
        return events

    def flush(self) -> TurnComplete | None:
        """End of input: a turn in progress is complete now."""
        if self.in_turn:
            return self._finish(truncated=False, drop_silence=True)
        self.reset()
        return None

    def _step(self, frame: np.ndarray) -> TurnEvent | None:
        cfg = self.config
        p = self.vad.frame(frame, self.state)
        self.frames += 1
        if not self.in_turn:
            self._pre.append(frame)
            self._speech_run = self._speech_run + 1 if p >= cfg.threshold else 0
            if self._speech_run * FRAME_SECONDS >= cfg.min_speech:
                self.in_turn = True
                self._turn = list(self._pre)
                self._pre.clear()
                self._silence_run = 0
                return SpeechStarted(self.seconds - self._speech_run * FRAME_SECONDS)
            return None
        self._turn.append(frame)
        if p < cfg.neg_threshold:
            self._silence_run += 1
        elif p >= cfg.threshold:
            self._silence_run = 0
        if self._silence_run * FRAME_SECONDS >= cfg.silence:
            return self._finish(truncated=False, drop_silence=True)
        if len(self._turn) * FRAME_SECONDS >= cfg.max_turn:
            return self._finish(truncated=True, drop_silence=False)
        return None

    def _finish(self, truncated: bool, drop_silence: bool) -> TurnComplete:
        frames = self._turn
        if drop_silence:  # keep ~0.2 s of the trailing silence, drop the rest
            keep_tail = round(0.2 / FRAME_SECONDS)
            cut = max(0, self._silence_run - keep_tail)
            frames = frames[:len(frames) - cut] if cut else frames
        audio = np.concatenate(frames) if frames else np.zeros(0, np.float32)
        self.reset()
        return TurnComplete(audio, truncated)


def detect_turns(samples: np.ndarray, config: TurnConfig | None = None, block: int = 4000) -> list[TurnEvent]:
    """Run a fresh detector over a whole 16 kHz array in ``block``-sized pieces (tests, offline use)."""
    det = TurnDetector(config=config)
    events: list[TurnEvent] = []
    for i in range(0, len(samples), block):
        events.extend(det.push(samples[i:i + block]))
    tail = det.flush()
    if tail is not None:
        events.append(tail)
    return events
