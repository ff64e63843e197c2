"""Audio in: read any common file or array, validate it, and bring it to 16 kHz mono float32.

The model was trained on Whisper features of 16 kHz speech, so every input path (files, browser
uploads, microphone blocks, evaluation sets) goes through :func:`prepare_audio`, which either
returns usable samples plus human-readable warnings, or raises :class:`AudioError` saying exactly
what is wrong. Decoding uses libsndfile (wav/flac/ogg/mp3) and resampling uses soxr — no
torchaudio and no ffmpeg needed.
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from omni2.errors import AudioError

log = logging.getLogger(__name__)

SAMPLE_RATE = 16_000
MAX_SECONDS = 30.0  # Whisper's window; the official model silently cuts longer input
SILENCE_PEAK = 1e-4  # about -80 dBFS: below this there is nothing to hear
CLIP_LEVEL = 0.999
CLIP_FRACTION = 0.01  # warn when more than 1 % of samples sit at full scale

AudioSource = str | Path | bytes | np.ndarray | tuple


@dataclass
class PreparedAudio:
    """16 kHz mono float32 samples ready for the speech encoder, plus what was done to them."""

    samples: np.ndarray
    source_rate: int
    warnings: list[str] = field(default_factory=list)

    @property
    def seconds(self) -> float:
        return len(self.samples) / SAMPLE_RATE


def read_audio(source: AudioSource, rate: int | None = None) -> tuple[np.ndarray, int]:
    """Decode ``source`` into (float32 array [frames] or [frames, channels], sample rate).

    ``source`` may be a path, raw file bytes, a ``(rate, array)`` tuple (Gradio's format), or an
    array (then ``rate`` must be given; 16 kHz is assumed when it is None).
    """
    if isinstance(source, tuple):
        if len(source) != 2:
            raise AudioError("audio tuple must be (sample_rate, samples)")
        a, b = source
        rate, data = (a, b) if np.isscalar(a) else (b, a)
        return _to_float(np.asarray(data)), int(rate)
    if isinstance(source, np.ndarray):
        return _to_float(source), int(rate or SAMPLE_RATE)
    import soundfile as sf

    if isinstance(source, bytes):
        if not source:
            raise AudioError("the audio data is empty (0 bytes)")
        handle: object = io.BytesIO(source)
        name = "audio data"
    else:
        path = Path(source)
        if not path.exists():
            raise AudioError(f"audio file not found: {path}")
        if path.is_dir():
            raise AudioError(f"expected an audio file, got a folder: {path}")
        if path.stat().st_size == 0:
            raise AudioError(f"audio file is empty (0 bytes): {path}")
        handle, name = str(path), str(path)
    try:
        data, sr = sf.read(handle, dtype="float32", always_2d=False)
    except (sf.LibsndfileError, RuntimeError, TypeError) as exc:
        raise AudioError(f"cannot decode {name} as audio ({exc}); supported: wav, flac, ogg, mp3") from exc
    return data, int(sr)


def _to_float(data: np.ndarray) -> np.ndarray:
    if data.dtype.kind == "i":
        return data.astype(np.float32) / float(np.iinfo(data.dtype).max + 1)
    if data.dtype.kind == "u":
        info = np.iinfo(data.dtype)
        mid = (info.max + 1) / 2
        return ((data.astype(np.float32) - mid) / mid).astype(np.float32)
    if data.dtype.kind == "f":
        return data.astype(np.float32, copy=False)
    if data.dtype.kind == "b":
        raise AudioError("boolean arrays are not audio")
    raise AudioError(f"unsupported audio sample type {data.dtype}")


def to_mono(data: np.ndarray) -> np.ndarray:
    """Average channels. Accepts [frames], [frames, ch] and (for small ch) [ch, frames]."""
    if data.ndim == 1:
        return data
    if data.ndim != 2:
        raise AudioError(f"audio must be 1-D or 2-D (frames x channels), got shape {data.shape}")
    if data.shape[0] <= 8 < data.shape[1]:  # channels-first layout
        data = data.T
    return data.mean(axis=1, dtype=np.float32)


def resample(samples: np.ndarray, rate: int, target: int = SAMPLE_RATE) -> np.ndarray:
    """High-quality resampling (soxr); a no-op when the rates already match."""
    if rate == target:
        return samples
    if rate <= 0:
        raise AudioError(f"invalid sample rate {rate}")
    import soxr

    return soxr.resample(samples, rate, target, quality="HQ").astype(np.float32, copy=False)


def prepare_audio(
    source: AudioSource,
    rate: int | None = None,
    *,
    max_seconds: float = MAX_SECONDS,
    allow_silence: bool = False,
) -> PreparedAudio:
    """Decode, validate and convert to 16 kHz mono float32.

    Errors (AudioError): unreadable/non-audio data, no samples, NaN/Inf samples, silence (unless
    ``allow_silence``). Silent fallbacks: channels are averaged to mono, any sample rate is
    resampled. Fallbacks reported in ``warnings``: float samples beyond full scale are scaled down,
    clipping is kept as is, audio longer than ``max_seconds`` is cut (the model sees at most 30 s,
    as the official one does).
    """
    data, sr = read_audio(source, rate)
    warnings: list[str] = []
    if data.size == 0:
        raise AudioError("the audio has no samples")
    if data.ndim == 2 and min(data.shape) > 1:
        log.info("multi-channel audio (%d channels) averaged to mono", min(data.shape))
    samples = to_mono(data)
    if not np.all(np.isfinite(samples)):
        bad = int(np.count_nonzero(~np.isfinite(samples)))
        raise AudioError(f"the audio contains {bad} NaN/Inf samples; it is corrupt")
    if sr != SAMPLE_RATE:
        log.debug("resampling from %d Hz to %d Hz", sr, SAMPLE_RATE)
        samples = resample(samples, sr)
    peak = float(np.max(np.abs(samples))) if samples.size else 0.0
    if peak > 1.0:
        warnings.append(f"samples exceed full scale (peak {peak:.2f}); they were scaled down to 1.0")
        samples = samples / peak
    if peak < SILENCE_PEAK and not allow_silence:
        raise AudioError("the audio is silent (peak below -80 dBFS): nothing was said")
    clipped = float(np.mean(np.abs(samples) >= CLIP_LEVEL))
    if clipped > CLIP_FRACTION:
        warnings.append(f"{clipped:.1%} of samples are clipped; recognition may suffer")
    limit = int(max_seconds * SAMPLE_RATE)
    if len(samples) > limit:
        warnings.append(
            f"audio is {len(samples) / SAMPLE_RATE:.1f} s long; only the first {max_seconds:.0f} s are used"
        )
        samples = samples[:limit]
    for w in warnings:
        log.warning(w)
    return PreparedAudio(np.ascontiguousarray(samples, dtype=np.float32), sr, warnings)


def write_wav(path: str | Path, samples: np.ndarray, rate: int) -> Path:
    """Write float32 samples as 16-bit PCM wav (what browsers and players accept everywhere)."""
    import soundfile as sf

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), np.clip(samples, -1.0, 1.0), rate, subtype="PCM_16")
    return path
