"""Speaker voice for the CosyVoice2 decoder: a 192-d CAM++ x-vector.

LLaMA-Omni2 always conditions the decoder on the x-vector of a prompt wav (``prompt_en.wav`` in
its demo). We compute it the same way: mono, 16 kHz, Kaldi fbank (80 bins, dither 0, the float
waveform *not* rescaled to int16 range - a quirk of the reference), per-utterance mean
subtraction, then ``campplus.onnx`` on CPU. Results are cached per (wav content, model) so a voice
costs one ONNX run ever. A ready x-vector can also be given directly as ``.npy`` or ``.pt``.

Resampling uses soxr (the reference uses torchaudio's sinc resampler), so x-vectors of non-16 kHz
prompts differ from the reference in the last digits; the flow L2-normalises them anyway.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

import numpy as np

from omni2.errors import AudioError, CheckpointError, Omni2Error

log = logging.getLogger(__name__)

XVECTOR_DIM = 192
SAMPLE_RATE = 16000
MIN_SECONDS = 0.5  # CAM++ needs a few dozen 10 ms frames to say anything about a speaker
SILENCE_RMS = 1e-4
CAMPPLUS_FILE = "campplus.onnx"
# Files load_decoder looks for, in order, when no voice is given, relative to the decoder folder:
# the tiny test decoder ships spk_xvector.npy; `launch.py download` puts the official prompt wavs in
# checkpoints/voices/ next to checkpoints/cosy2_decoder/.
DEFAULT_VOICE_FILES = ("spk_xvector.npy", "prompt_en.wav", "../voices/prompt_en.wav")
AUDIO_SUFFIXES = {".wav", ".flac", ".ogg", ".mp3", ".m4a", ".opus", ".aiff", ".aif"}


def cache_dir() -> Path:
    """Where computed x-vectors are kept (``$OMNI2_CACHE_DIR`` or ~/.cache/omni2)/xvectors."""
    root = os.environ.get("OMNI2_CACHE_DIR")
    base = Path(root).expanduser() if root else Path.home() / ".cache" / "omni2"
    return base / "xvectors"


def read_wav_16k(path: str | Path) -> np.ndarray:
    """Read any soundfile-readable file as mono float32 at 16 kHz; AudioError if unusable.

    Decoding, down-mixing and resampling are omni2.audio's; the voice checks (length, silence)
    are :func:`check_voice_audio`'s, so an empty file reports "too short" rather than failing here.
    """
    from omni2.audio import read_audio, resample, to_mono

    try:
        data, sr = read_audio(Path(path))
    except AudioError as exc:
        raise AudioError(f"cannot read voice file {path}: {exc}") from exc
    wav = to_mono(data)
    if not np.all(np.isfinite(wav)):
        raise AudioError(f"voice file {path} contains NaN or infinite samples")
    return resample(wav, sr) if wav.size else wav


def check_voice_audio(wav: np.ndarray, name: str = "voice") -> None:
    """Reject prompts that cannot give a meaningful speaker embedding."""
    seconds = wav.shape[0] / SAMPLE_RATE
    if seconds < MIN_SECONDS:
        raise AudioError(f"{name} is too short ({seconds:.2f} s); give at least {MIN_SECONDS} s of speech")
    rms = float(np.sqrt(np.mean(np.square(wav, dtype=np.float64))))
    if rms < SILENCE_RMS:
        raise AudioError(f"{name} is silent (RMS {rms:.2e}); record some speech")


def kaldi_fbank(wav: np.ndarray) -> np.ndarray:
    """Kaldi fbank as ``torchaudio.compliance.kaldi.fbank(wav, num_mel_bins=80, dither=0)``: [T, 80]."""
    import kaldi_native_fbank as knf

    opts = knf.FbankOptions()
    opts.frame_opts.samp_freq = SAMPLE_RATE
    opts.frame_opts.dither = 0.0
    opts.frame_opts.snip_edges = True
    opts.frame_opts.window_type = "povey"
    opts.mel_opts.num_bins = 80
    opts.mel_opts.low_freq = 20.0
    opts.mel_opts.high_freq = 0.0
    opts.use_energy = False
    opts.use_log_fbank = True
    opts.use_power = True
    fb = knf.OnlineFbank(opts)
    fb.accept_waveform(SAMPLE_RATE, wav.astype(np.float32).tolist())
    fb.input_finished()
    n = fb.num_frames_ready
    if n == 0:
        return np.zeros((0, 80), dtype=np.float32)
    return np.stack([np.asarray(fb.get_frame(i), dtype=np.float32) for i in range(n)])


def _campplus_session(model: Path):
    import onnxruntime as ort

    if not model.is_file():
        raise CheckpointError(
            f"missing speaker model {model} (needed to turn a voice wav into an x-vector; "
            "or pass a ready .npy x-vector)"
        )
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.log_severity_level = 3
    try:
        return ort.InferenceSession(str(model), sess_options=opts, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception classes
        raise CheckpointError(f"cannot load speaker model {model}: {exc}") from exc


def xvector_from_audio(wav: np.ndarray, campplus: str | Path, name: str = "voice") -> np.ndarray:
    """16 kHz mono float32 -> raw CAM++ x-vector [192] (float32)."""
    check_voice_audio(wav, name)
    feat = kaldi_fbank(wav)
    feat = feat - feat.mean(axis=0, keepdims=True)
    sess = _campplus_session(Path(campplus))
    out = sess.run(None, {sess.get_inputs()[0].name: feat[None].astype(np.float32)})[0]
    vec = np.asarray(out, dtype=np.float32).reshape(-1)
    if vec.shape[0] != XVECTOR_DIM or not np.all(np.isfinite(vec)):
        raise CheckpointError(f"speaker model {campplus} returned {vec.shape[0]} values, expected {XVECTOR_DIM}")
    return vec


def _file_hash(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def xvector_from_wav(path: str | Path, campplus: str | Path, use_cache: bool = True) -> np.ndarray:
    """X-vector of a voice file, cached by (file content, speaker model) hash."""
    path, campplus = Path(path), Path(campplus)
    if not path.is_file():
        raise AudioError(f"voice file not found: {path}")
    key = None
    if use_cache and campplus.is_file():
        key = hashlib.sha256((_file_hash(path) + _file_hash(campplus)).encode()).hexdigest()[:32]
        cached = cache_dir() / f"{key}.npy"
        if cached.is_file():
            try:
                vec = np.load(cached, allow_pickle=False).astype(np.float32).reshape(-1)
                if vec.shape[0] == XVECTOR_DIM:
                    return vec
            except (OSError, ValueError):
                log.warning("ignoring unreadable x-vector cache %s", cached)
    vec = xvector_from_audio(read_wav_16k(path), campplus, name=f"voice file {path}")
    if key is not None:
        try:
            target = cache_dir() / f"{key}.npy"
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_suffix(f".{os.getpid()}.tmp.npy")
            np.save(tmp, vec)
            tmp.replace(target)
        except OSError as exc:
            log.warning("could not cache x-vector for %s: %s", path, exc)
    return vec


def load_xvector_file(path: str | Path) -> np.ndarray:
    """A stored x-vector: ``.npy`` or ``.pt`` holding 192 floats (any [1,192]-like shape)."""
    path = Path(path)
    if not path.is_file():
        raise AudioError(f"voice file not found: {path}")
    try:
        if path.suffix == ".npy":
            arr = np.load(path, allow_pickle=False)
        else:
            import torch

            obj = torch.load(path, map_location="cpu", weights_only=True)
            if isinstance(obj, dict):
                tensors = [v for v in obj.values() if isinstance(v, torch.Tensor)]
                if len(tensors) != 1:
                    raise ValueError("a .pt voice must hold one tensor")
                obj = tensors[0]
            arr = obj.detach().float().numpy() if hasattr(obj, "detach") else np.asarray(obj)
    except Exception as exc:  # numpy / pickle errors vary
        raise AudioError(f"cannot read x-vector file {path}: {exc}") from exc
    vec = np.asarray(arr, dtype=np.float32).reshape(-1)
    if vec.shape[0] != XVECTOR_DIM:
        raise AudioError(f"x-vector file {path} holds {vec.shape[0]} values, expected {XVECTOR_DIM}")
    if not np.all(np.isfinite(vec)) or not np.any(vec):
        raise AudioError(f"x-vector file {path} is all zeros or not finite")
    return vec


def load_voice(voice: str | Path, decoder_dir: str | Path | None = None) -> np.ndarray:
    """Voice file -> x-vector [192]: ``.npy``/``.pt`` directly, audio via ``<decoder_dir>/campplus.onnx``."""
    path = Path(voice)
    if path.suffix in (".npy", ".pt"):
        return load_xvector_file(path)
    if path.suffix.lower() not in AUDIO_SUFFIXES:
        raise Omni2Error(f"unsupported voice file {path}: give a wav (or other audio) or a .npy/.pt x-vector")
    if decoder_dir is None:
        raise Omni2Error("a voice wav needs the decoder folder (for campplus.onnx)")
    return xvector_from_wav(path, Path(decoder_dir) / CAMPPLUS_FILE)


def default_voice(decoder_dir: str | Path) -> Path | None:
    """The voice used when none is given: the first of DEFAULT_VOICE_FILES in the decoder folder."""
    for name in DEFAULT_VOICE_FILES:
        p = Path(decoder_dir) / name
        if p.is_file():
            return p.resolve()
    return None
