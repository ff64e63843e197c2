"""Speaker x-vectors: Kaldi fbank parity, CAM++ (stand-in ONNX) run, caching, bad voice input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from omni2 import voice
from omni2.errors import AudioError, CheckpointError
from omni2.vocoder.tiny import campplus_standin_onnx


def kaldi_fbank_reference(wav: np.ndarray, sr: int = 16000, bins: int = 80) -> np.ndarray:
    """Straight float64 transcription of torchaudio.compliance.kaldi.fbank's default path
    (25/10 ms, snip_edges, remove DC, preemph 0.97, povey window, 512-pt power spectrum,
    HTK-mel triangles 20 Hz..Nyquist, log with float32-eps floor, dither 0)."""
    flen, shift, nfft = 400, 160, 512
    n = 1 + (len(wav) - flen) // shift
    frames = np.stack([wav[i * shift : i * shift + flen] for i in range(n)]).astype(np.float64)
    frames -= frames.mean(axis=1, keepdims=True)
    frames = np.concatenate([frames[:, :1] * (1 - 0.97), frames[:, 1:] - 0.97 * frames[:, :-1]], axis=1)
    window = (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(flen) / (flen - 1))) ** 0.85
    spec = np.abs(np.fft.rfft(frames * window, n=nfft)) ** 2  # [n, 257]

    def mel(f):
        return 1127.0 * np.log(1.0 + f / 700.0)

    lo, hi = mel(20.0), mel(sr / 2)
    delta = (hi - lo) / (bins + 1)
    fft_mel = mel(np.arange(nfft // 2) * sr / nfft)
    banks = np.zeros((bins, nfft // 2 + 1))
    for b in range(bins):
        left, centre, right = lo + b * delta, lo + (b + 1) * delta, lo + (b + 2) * delta
        up = (fft_mel - left) / (centre - left)
        down = (right - fft_mel) / (right - centre)
        banks[b, : nfft // 2] = np.maximum(0.0, np.minimum(up, down))
    energies = spec @ banks.T
    return np.log(np.maximum(energies, np.finfo(np.float32).eps))


@pytest.fixture()
def campplus(tmp_path: Path) -> Path:
    p = tmp_path / "campplus.onnx"
    p.write_bytes(campplus_standin_onnx(seed=1))
    return p


@pytest.fixture(autouse=True)
def _cache_in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMNI2_CACHE_DIR", str(tmp_path / "cache"))


def _speechy(seconds: float, sr: int = 16000, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    wav = 0.3 * np.sin(2 * np.pi * 180 * t) * (1 + 0.5 * np.sin(2 * np.pi * 3 * t)) + 0.02 * rng.standard_normal(t.size)
    return wav.astype(np.float32)


def test_fbank_matches_kaldi_reference() -> None:
    wav = _speechy(1.0)
    ours = voice.kaldi_fbank(wav)
    ref = kaldi_fbank_reference(wav.astype(np.float64))
    assert ours.shape == ref.shape == (98, 80)
    np.testing.assert_allclose(ours, ref, atol=2e-3, rtol=1e-4)


def test_xvector_from_wav_and_cache(tmp_path: Path, campplus: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "me.wav"
    sf.write(path, _speechy(2.0, sr=22050), 22050)  # resampled to 16 kHz on the way
    vec = voice.load_voice(path, tmp_path)
    assert vec.shape == (192,) and vec.dtype == np.float32 and np.all(np.isfinite(vec))
    assert len(list((tmp_path / "cache" / "xvectors").glob("*.npy"))) == 1

    def boom(*a, **k):
        raise AssertionError("CAM++ ran again despite the cache")

    monkeypatch.setattr(voice, "_campplus_session", boom)
    np.testing.assert_array_equal(voice.load_voice(path, tmp_path), vec)
    sf.write(path, _speechy(2.0, sr=22050, seed=5), 22050)  # new content -> new key -> recomputed
    with pytest.raises(AssertionError, match="CAM"):
        voice.load_voice(path, tmp_path)


def test_xvector_mean_normalised_fbank_feeds_model(campplus: Path) -> None:
    """Per-utterance mean subtraction: a constant gain on the wav (log offset) changes nothing."""
    wav = _speechy(1.5)
    a = voice.xvector_from_audio(wav, campplus)
    b = voice.xvector_from_audio(wav * 0.5, campplus)
    np.testing.assert_allclose(a, b, atol=1e-4)


@pytest.mark.parametrize(
    "audio, match",
    [
        (np.zeros(32000, np.float32), "silent"),
        (_speechy(0.2), "too short"),
        (np.zeros(0, np.float32), "too short"),
    ],
)
def test_bad_voice_audio(tmp_path: Path, campplus: Path, audio: np.ndarray, match: str) -> None:
    path = tmp_path / "v.wav"
    sf.write(path, audio, 16000)
    with pytest.raises(AudioError, match=match):
        voice.load_voice(path, tmp_path)


def test_unreadable_or_missing_voice(tmp_path: Path, campplus: Path) -> None:
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"not audio at all")
    with pytest.raises(AudioError, match="cannot read"):
        voice.load_voice(bad, tmp_path)
    with pytest.raises(AudioError, match="not found"):
        voice.load_voice(tmp_path / "nope.wav", tmp_path)


def test_missing_campplus(tmp_path: Path) -> None:
    path = tmp_path / "me.wav"
    sf.write(path, _speechy(1.0), 16000)
    with pytest.raises(CheckpointError, match="campplus.onnx"):
        voice.load_voice(path, tmp_path / "empty")


def test_xvector_files(tmp_path: Path) -> None:
    v = np.random.default_rng(0).standard_normal(192).astype(np.float32)
    np.save(tmp_path / "v.npy", v[None])
    torch.save(torch.from_numpy(v), tmp_path / "v.pt")
    np.testing.assert_array_equal(voice.load_voice(tmp_path / "v.npy"), v)
    np.testing.assert_array_equal(voice.load_voice(tmp_path / "v.pt"), v)
    np.save(tmp_path / "short.npy", v[:10])
    with pytest.raises(AudioError, match="192"):
        voice.load_voice(tmp_path / "short.npy")
    np.save(tmp_path / "zero.npy", np.zeros(192, np.float32))
    with pytest.raises(AudioError, match="zeros"):
        voice.load_voice(tmp_path / "zero.npy")


def test_default_voice_search(tmp_path: Path) -> None:
    dec = tmp_path / "cosy2_decoder"
    dec.mkdir()
    assert voice.default_voice(dec) is None
    (tmp_path / "voices").mkdir()
    sf.write(tmp_path / "voices" / "prompt_en.wav", _speechy(1.0), 16000)
    assert voice.default_voice(dec) == (tmp_path / "voices" / "prompt_en.wav").resolve()
    np.save(dec / "spk_xvector.npy", np.ones(192, np.float32))
    assert voice.default_voice(dec) == (dec / "spk_xvector.npy").resolve()


def test_decoder_voice_from_wav(tmp_path: Path) -> None:
    from omni2.vocoder import load_decoder
    from omni2.vocoder.tiny import write_tiny_decoder

    d = write_tiny_decoder(tmp_path / "dec", vocab_size=100)
    path = tmp_path / "me.wav"
    sf.write(path, _speechy(1.0), 16000)
    dec = load_decoder(d, voice=path)
    np.testing.assert_allclose(dec.xvector[0].numpy(), voice.load_voice(path, d))
