"""Audio input validation: every kind of bad input gets a specific error or a documented fallback."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf

from omni2.audio import SAMPLE_RATE, prepare_audio
from omni2.errors import AudioError


def tone(seconds: float, rate: int, amp: float = 0.3) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (amp * np.sin(2 * np.pi * 220 * t)).astype(np.float32)


def test_question_file_reads(question_wav) -> None:
    out = prepare_audio(question_wav)  # espeak-ng writes 22.05 kHz
    assert out.samples.dtype == np.float32 and out.samples.ndim == 1
    assert out.source_rate == 22050
    assert 1.0 < out.seconds < 4.0
    assert out.warnings == []


@pytest.mark.parametrize("rate", [8000, 22050, 44100, 48000])
def test_any_rate_resampled(tmp_path, rate) -> None:
    path = tmp_path / f"a{rate}.wav"
    sf.write(path, tone(2.0, rate), rate)
    out = prepare_audio(path)
    assert abs(len(out.samples) - 2 * SAMPLE_RATE) <= 2
    # The 220 Hz tone survives resampling.
    spectrum = np.abs(np.fft.rfft(out.samples))
    assert abs(np.argmax(spectrum) * SAMPLE_RATE / len(out.samples) - 220) < 2


@pytest.mark.parametrize("fmt", ["FLAC", "OGG", "MP3"])
def test_common_formats(tmp_path, fmt) -> None:
    path = tmp_path / f"a.{fmt.lower()}"
    sf.write(path, tone(1.0, 16000), 16000, format=fmt)
    out = prepare_audio(path)
    assert abs(out.seconds - 1.0) < 0.1


def test_stereo_is_averaged(tmp_path) -> None:
    left = tone(1.0, 16000)
    stereo = np.stack([left, np.zeros_like(left)], axis=1)
    path = tmp_path / "stereo.wav"
    sf.write(path, stereo, 16000)
    out = prepare_audio(path)
    np.testing.assert_allclose(out.samples, left / 2, atol=1e-4)
    # channels-first arrays too
    np.testing.assert_allclose(prepare_audio(stereo.T.copy(), 16000).samples, left / 2, atol=1e-6)


def test_int16_array_and_gradio_tuple() -> None:
    pcm = (tone(1.0, 16000) * 32767).astype(np.int16)
    out = prepare_audio((16000, pcm))
    assert np.max(np.abs(out.samples)) == pytest.approx(0.3, abs=1e-3)


def test_too_long_is_trimmed_with_visible_warning() -> None:
    out = prepare_audio(tone(45.0, 16000))
    assert len(out.samples) == 30 * SAMPLE_RATE
    assert any("45.0 s" in w and "30 s" in w for w in out.warnings)


def test_clipped_audio_warns() -> None:
    x = np.clip(tone(1.0, 16000, amp=3.0), -1, 1)
    out = prepare_audio(x)
    assert any("clipped" in w for w in out.warnings)


def test_beyond_full_scale_is_scaled() -> None:
    out = prepare_audio(tone(1.0, 16000, amp=2.0))
    assert np.max(np.abs(out.samples)) <= 1.0
    assert any("full scale" in w for w in out.warnings)


@pytest.mark.parametrize("make,match", [
    (lambda p: p.write_bytes(b""), "empty"),
    (lambda p: p.write_bytes(np.random.default_rng(0).bytes(5000)), "cannot decode"),
    (lambda p: p.write_text("this is a text file, not audio\n" * 50), "cannot decode"),
])
def test_unreadable_files(tmp_path, make, match) -> None:
    path = tmp_path / "bad.wav"
    make(path)
    with pytest.raises(AudioError, match=match):
        prepare_audio(path)


def test_missing_file_and_folder(tmp_path) -> None:
    with pytest.raises(AudioError, match="not found"):
        prepare_audio(tmp_path / "nope.wav")
    with pytest.raises(AudioError, match="folder"):
        prepare_audio(tmp_path)


def test_zero_length_and_silence_and_nan(tmp_path) -> None:
    with pytest.raises(AudioError, match="no samples"):
        prepare_audio(np.zeros(0, np.float32))
    with pytest.raises(AudioError, match="silent"):
        prepare_audio(np.zeros(16000, np.float32))
    assert prepare_audio(np.zeros(16000, np.float32), allow_silence=True).seconds == 1.0
    x = tone(1.0, 16000)
    x[100] = np.nan
    with pytest.raises(AudioError, match="NaN"):
        prepare_audio(x)
    x[100] = np.inf
    with pytest.raises(AudioError, match="NaN/Inf"):
        prepare_audio(x)
    path = tmp_path / "empty.wav"
    sf.write(path, np.zeros(0, np.float32), 16000)
    with pytest.raises(AudioError, match="no samples"):
        prepare_audio(path)
