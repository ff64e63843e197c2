"""Units -> 24 kHz audio, offline and streaming, from an official CosyVoice2 decoder folder.

:func:`load_decoder` reads ``cosyvoice.yaml``, ``flow.pt`` and ``hift.pt`` unchanged and returns a
:class:`Decoder`. ``decoder.vocode(units)`` decodes a whole utterance in one call;
``decoder.stream()`` returns a :class:`DecoderStream` holding all per-utterance state (tokens, HiFT
caches), so concurrent sessions never share anything mutable.

Streaming follows LLaMA-Omni2's ``SpeechDecoder.token2wav`` (Dec-2024 CosyVoice semantics):
every call re-runs the flow over all tokens so far (non-final calls drop the 3 lookahead tokens'
frames), keeps the frames from ``2*offset`` on, prepends the 8 cached mel frames, vocodes with the
cached 3840 source samples written over the start of the new source, cross-fades the first 3840
samples with the cached tail (Hamming 7680, float64 maths) and holds back the last 3840 samples
(160 ms) until the next call. Where the official driver breaks we apply two rules:

* **hold rule** - no call is made until the first call can fill the 8-frame cache, i.e. until
  ``pre_lookahead_len + ceil(8 / token_mel_ratio)`` = 7 units have arrived (official: a first
  window of 5-6 units crashes in the cross-fade, <= 3 yields an empty mel and crashes HiFT);
* **no empty calls** - a push that brings no new unit makes no call and returns no audio
  (official: the 8 cached frames are re-vocoded and cross-faded a second time).

Everything else matches the official driver call for call, so the total length is always
``960 * units`` samples (24 kHz, 2 mel frames of 480 samples per unit).

Two flow modes per stream: the default re-runs the flow over the whole prefix every call (the
official behaviour, O(N^2) over an utterance; the goldens use it); ``incremental=True`` freezes
finished 100-frame estimator chunks (see :meth:`FlowModel.inference_incremental`) and gives the
same frames up to float rounding at O(chunk) per call, for memory (~4.6 MB per frozen frame at
CosyVoice2 size, fp32). HiFT is incremental in both modes (new frames + 8 cached ones).

Engine hook-up: one ``DecoderStream`` per spoken reply; feed it each batch of units the TTS
writes (``push``), call ``finalize`` once at the end of the reply, and forward every non-empty
returned array as a 24 kHz float32 ``AudioChunk``.
"""

from __future__ import annotations

import logging
import math
import pickle
import weakref
import zipfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from omni2.errors import CheckpointError, Omni2Error
from omni2.vocoder.config import DecoderConfig, load_config
from omni2.vocoder.flow import FlowModel, FlowOutput, FlowState
from omni2.vocoder.hift import HiFTGenerator, HiFTOutput, SourceNoise, fold_weight_norm

log = logging.getLogger(__name__)

MEL_CACHE_FRAMES = 8  # official mel_cache_len


class UnitsError(Omni2Error):
    """Speech units that the decoder cannot take (out of range, not integers, empty)."""


def hamming(n: int) -> np.ndarray:
    """Symmetric Hamming window (numpy.hamming), float64."""
    return np.hamming(n)


def crossfade(new: torch.Tensor, old_tail: torch.Tensor, window: np.ndarray) -> torch.Tensor:
    """Official ``fade_in_out``: new[:, :n] = new[:, :n]*w[:n] + old[:, -n:]*w[n:] in float64."""
    n = window.shape[0] // 2
    w = torch.from_numpy(window)
    out = new.detach().cpu().clone()
    head = out[..., :n].double() * w[:n] + old_tail.detach().cpu()[..., -n:].double() * w[n:]
    out[..., :n] = head.to(out.dtype)
    return out


def as_units(units: Iterable[int] | np.ndarray | torch.Tensor, vocab_size: int) -> list[int]:
    """Validate unit ids (integers in [0, vocab_size)) and return them as a list of ints."""
    if isinstance(units, torch.Tensor):
        units = units.detach().cpu().numpy()
    arr = np.asarray(list(units) if not isinstance(units, np.ndarray) else units)
    if arr.size == 0:
        return []
    arr = arr.reshape(-1)
    if arr.dtype.kind not in "iu":
        if arr.dtype.kind == "f" and np.all(np.isfinite(arr)) and np.all(arr == np.round(arr)):
            arr = arr.astype(np.int64)
        else:
            raise UnitsError(f"speech units must be integers, got dtype {arr.dtype}")
    bad = (arr < 0) | (arr >= vocab_size)
    if bad.any():
        i = int(np.argmax(bad))
        raise UnitsError(
            f"speech unit {int(arr[i])} at position {i} is out of range: this decoder takes 0..{vocab_size - 1}"
        )
    return [int(u) for u in arr]


@dataclass
class StreamCall:
    """What one token2wav call did (mirrors the goldens' ``calls`` row + captured tensors)."""

    n_tokens: int
    offset: int
    finalize: bool
    mel: torch.Tensor | None = None  # the flow's new frames (before the cached 8 are prepended)


@dataclass
class StreamState:
    """Per-utterance streaming state; owned by exactly one :class:`DecoderStream`."""

    tokens: list[int] = field(default_factory=list)
    offset: int = 0  # tokens whose mel frames have been emitted (official token_offset)
    mel_cache: torch.Tensor | None = None  # [1, 80, 8]
    source_cache: torch.Tensor | None = None  # [1, 1, 3840]
    speech_cache: torch.Tensor | None = None  # [1, 3840] (already cross-faded)
    finished: bool = False
    samples_out: int = 0


class Decoder:
    """Flow + HiFT + default speaker; stateless between calls except for :class:`DecoderStream`."""

    def __init__(
        self,
        cfg: DecoderConfig,
        flow: FlowModel,
        hift: HiFTGenerator,
        device: torch.device | str = "cpu",
        xvector: torch.Tensor | None = None,
    ) -> None:
        self.cfg = cfg
        self.flow = flow.eval()
        self.hift = hift.eval()
        self.device = torch.device(device)
        self.xvector = None if xvector is None else self._check_xvector(xvector)
        self.mel_cache_frames = MEL_CACHE_FRAMES
        self.source_cache_len = MEL_CACHE_FRAMES * hift.upsample_factor
        self.window = hamming(2 * self.source_cache_len)
        # Frozen-flow state of all live incremental streams together (~4.6 MB per mel frame at
        # CosyVoice2 size in fp32, i.e. ~230 MB per second of speech); a stream that would take the
        # total past it falls back to full recompute. See :func:`flow_cache_budget`.
        self.max_flow_cache_bytes = flow_cache_budget(self.device)
        self._live_streams: weakref.WeakSet[DecoderStream] = weakref.WeakSet()
        # HiFT randomness: official = random phases/noise per call; goldens switch it off.
        self.hift_noise = SourceNoise()

    # ---- properties -----------------------------------------------------------------------
    @property
    def sample_rate(self) -> int:
        return self.cfg.sample_rate

    @property
    def vocab_size(self) -> int:
        return self.cfg.flow.vocab_size

    @property
    def samples_per_unit(self) -> int:
        return self.cfg.flow.token_mel_ratio * self.hift.upsample_factor

    @property
    def min_first_units(self) -> int:
        """Units the first streaming call needs so that its mel fills the 8-frame cache (7)."""
        f = self.cfg.flow
        return f.pre_lookahead_len + math.ceil(self.mel_cache_frames / f.token_mel_ratio)

    # ---- configuration ----------------------------------------------------------------------
    def _check_xvector(self, xvector: torch.Tensor | np.ndarray) -> torch.Tensor:
        x = torch.as_tensor(np.asarray(xvector) if not isinstance(xvector, torch.Tensor) else xvector)
        x = x.detach().to(torch.float32).reshape(1, -1)
        if x.size(1) != self.cfg.flow.spk_embed_dim:
            raise Omni2Error(
                f"speaker x-vector has {x.size(1)} values, this decoder needs {self.cfg.flow.spk_embed_dim}"
            )
        if not torch.isfinite(x).all() or float(x.norm()) == 0.0:
            raise Omni2Error("speaker x-vector is all zeros or not finite")
        return x

    def set_voice(self, xvector: torch.Tensor | np.ndarray) -> None:
        """Default speaker x-vector (raw CAM++ output, [192] or [1, 192])."""
        self.xvector = self._check_xvector(xvector)

    def set_noise(self, noise: torch.Tensor) -> None:
        """Replace the flow's fixed start-noise buffer ([1, 80, L])."""
        self.flow.set_noise(noise)

    def set_deterministic(self, on: bool = True, generator: torch.Generator | None = None) -> None:
        """Zero HiFT's random phases and noise (goldens) or draw them from ``generator``."""
        self.hift_noise = SourceNoise(deterministic=on, generator=generator)

    def _speaker(self, xvector: torch.Tensor | np.ndarray | None) -> torch.Tensor:
        if xvector is not None:
            return self._check_xvector(xvector)
        if self.xvector is None:
            raise Omni2Error("no speaker voice: pass an x-vector or a voice file (--voice)")
        return self.xvector

    # ---- building blocks ------------------------------------------------------------------
    def units_to_mel(
        self, units: Sequence[int] | torch.Tensor, xvector: torch.Tensor | None = None, finalize: bool = True
    ) -> FlowOutput:
        """Flow over all ``units`` (one official ``flow.inference`` call)."""
        ids = as_units(units, self.vocab_size)
        tokens = torch.tensor([ids], dtype=torch.long, device=self.device)
        spk = self._speaker(xvector).to(self.device)
        return self.flow.inference(tokens, spk, finalize=finalize)

    def mel_to_wav(self, mel: torch.Tensor, cache_source: torch.Tensor | None = None) -> HiFTOutput:
        """HiFT on a mel [1, 80, T] (one official ``hift.inference`` call)."""
        return self.hift.inference(mel.to(self.device), cache_source=cache_source, noise=self.hift_noise)

    # ---- offline ----------------------------------------------------------------------------
    def vocode(self, units: Sequence[int] | torch.Tensor, xvector: torch.Tensor | None = None) -> np.ndarray:
        """Whole utterance in one call (official non-stream mode) -> float32 [960 * len(units)]."""
        ids = as_units(units, self.vocab_size)
        if not ids:
            raise UnitsError("empty unit list: nothing to vocode")
        mel = self.units_to_mel(ids, xvector, finalize=True).mel
        return self.mel_to_wav(mel).wav[0].detach().cpu().numpy().astype(np.float32)

    # ---- streaming --------------------------------------------------------------------------
    def stream(
        self,
        xvector: torch.Tensor | np.ndarray | None = None,
        record: bool = False,
        incremental: bool = False,
    ) -> DecoderStream:
        """A new per-utterance streaming session (see :class:`DecoderStream`).

        ``incremental=True`` keeps the estimator's state for finished 100-frame chunks instead of
        recomputing the whole prefix each call (same frames up to float rounding; costs memory:
        about 4.6 MB per frozen mel frame at CosyVoice2 size in float32).
        """
        return DecoderStream(self, self._speaker(xvector), record=record, incremental=incremental)


class DecoderStream:
    """One utterance's streaming decode: ``push(units)`` as they arrive, then ``finalize()``.

    Each returns the newly playable float32 samples (24 kHz; possibly empty). The concatenation
    of all returned pieces is exactly ``960 * total_units`` samples long.
    """

    def __init__(
        self, decoder: Decoder, xvector: torch.Tensor, record: bool = False, incremental: bool = False
    ) -> None:
        self.decoder = decoder
        self.xvector = xvector.to(decoder.device)
        self.state = StreamState()
        self.flow_state = FlowState() if incremental and decoder.flow.can_freeze() else None
        if self.flow_state is not None:
            decoder._live_streams.add(self)
        self.record = record
        self.calls: list[StreamCall] = []

    @property
    def finished(self) -> bool:
        return self.state.finished

    def push(self, units: Iterable[int] | np.ndarray | torch.Tensor) -> np.ndarray:
        """Add units; run a non-final call if it can emit audio, else hold them (see module doc)."""
        st = self.state
        if st.finished:
            raise RuntimeError("stream already finalized")
        ids = as_units(units, self.decoder.vocab_size)
        st.tokens.extend(ids)
        n = len(st.tokens)
        lookahead = self.decoder.cfg.flow.pre_lookahead_len
        if st.mel_cache is None and n < self.decoder.min_first_units:
            return _empty()  # hold rule
        if n - lookahead <= st.offset:
            return _empty()  # nothing new to emit
        piece = self._call(finalize=False)
        st.offset = n - lookahead
        return piece

    def finalize(self, units: Iterable[int] | np.ndarray | torch.Tensor = ()) -> np.ndarray:
        """Add the last units (optional) and flush everything, including the held-back tail."""
        st = self.state
        if st.finished:
            raise RuntimeError("stream already finalized")
        st.tokens.extend(as_units(units, self.decoder.vocab_size))
        st.finished = True
        if not st.tokens:
            return _empty()
        piece = self._call(finalize=True)
        st.offset = len(st.tokens)
        return piece

    def _call(self, finalize: bool) -> np.ndarray:
        """One official token2wav call on all tokens so far."""
        dec, st = self.decoder, self.state
        tokens = torch.tensor([st.tokens], dtype=torch.long, device=dec.device)
        first = st.offset * dec.cfg.flow.token_mel_ratio
        if self.flow_state is not None:
            out_flow = dec.flow.inference_incremental(tokens, self.xvector, finalize, self.flow_state)
            mel = out_flow.mel[:, :, first - out_flow.start :]
            in_use = sum(s.flow_state.nbytes() for s in list(dec._live_streams) if s.flow_state is not None)
            if in_use > dec.max_flow_cache_bytes:
                log.info("frozen flow state of live streams reached %.1f GiB (budget %.1f GiB): this stream "
                         "recomputes the flow prefix from now on", in_use / 2**30, dec.max_flow_cache_bytes / 2**30)
                self.flow_state = None
        else:
            mel = dec.flow.inference(tokens, self.xvector, finalize=finalize).mel[:, :, first:]
        if self.record:
            self.calls.append(StreamCall(len(st.tokens), st.offset, finalize, mel.detach().cpu().clone()))
        else:
            self.calls.append(StreamCall(len(st.tokens), st.offset, finalize))
        if st.mel_cache is not None:
            mel = torch.cat([st.mel_cache, mel], dim=2)
        out = dec.mel_to_wav(mel, cache_source=st.source_cache)
        speech = out.wav.detach().cpu()
        if st.speech_cache is not None:
            speech = crossfade(speech, st.speech_cache, dec.window)
        if not finalize:
            n = dec.source_cache_len
            st.mel_cache = mel[:, :, -dec.mel_cache_frames :]
            st.source_cache = out.source[:, :, -n:]
            st.speech_cache = speech[:, -n:]
            speech = speech[:, :-n]
        piece = speech[0].numpy().astype(np.float32, copy=False)
        st.samples_out += piece.shape[0]
        if finalize:
            self.flow_state = None  # the utterance is complete: free its share of the budget
        return piece


MIN_FLOW_CACHE_BYTES = 4 << 30


def flow_cache_budget(device: torch.device, fraction: float = 0.5) -> int:
    """Default memory budget for frozen incremental-flow state: ``fraction`` of the memory available
    now (CPU: /proc/meminfo MemAvailable; CUDA: free device memory), never below 4 GiB (≈18 s of
    fp32 speech). Unknown platforms get the 4 GiB floor."""
    avail = 0
    try:
        if device.type == "cuda":
            avail = torch.cuda.mem_get_info(device)[0]
        elif device.type == "cpu":
            for line in Path("/proc/meminfo").read_text().splitlines():
                if line.startswith("MemAvailable:"):
                    avail = int(line.split()[1]) * 1024
                    break
    except (OSError, ValueError, RuntimeError):
        avail = 0
    return max(MIN_FLOW_CACHE_BYTES, int(avail * fraction))


def _empty() -> np.ndarray:
    return np.zeros(0, dtype=np.float32)


# --------------------------------------------------------------------------------------------
# Loading


def _load_state(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise CheckpointError(f"missing decoder file: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, pickle.UnpicklingError, zipfile.BadZipFile, EOFError, OSError, ValueError) as exc:
        raise CheckpointError(f"cannot read {path} (corrupt or not a torch state dict): {exc}") from exc
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path} is not a flat state dict of tensors")
    return state


def _load_strict(module: torch.nn.Module, state: dict[str, torch.Tensor], path: Path) -> None:
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise CheckpointError(
            f"{path} does not match cosyvoice.yaml: {len(missing)} missing key(s) {missing[:3]}, "
            f"{len(unexpected)} unexpected key(s) {unexpected[:3]}"
        )
    for key, value in state.items():
        if tuple(value.shape) != tuple(expected[key].shape):
            raise CheckpointError(
                f"{path}: {key} has shape {tuple(value.shape)}, cosyvoice.yaml implies {tuple(expected[key].shape)}"
            )
    module.load_state_dict(state, strict=True)


def load_decoder(
    model_dir: str | Path,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    voice: str | Path | torch.Tensor | np.ndarray | None = None,
) -> Decoder:
    """Load an official CosyVoice2 decoder folder (cosyvoice.yaml, flow.pt, hift.pt).

    ``dtype`` applies to the flow only; HiFT always runs in float32 (its phase is a long float
    cumulative sum). ``voice`` = x-vector (tensor/array) or a file (.wav via CAM++, .npy, .pt);
    when omitted, :func:`omni2.voice.default_voice` looks for one in the folder.
    """
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise CheckpointError(f"decoder folder not found: {model_dir}")
    cfg_path = model_dir / "cosyvoice.yaml"
    if not cfg_path.is_file():
        raise CheckpointError(f"missing decoder file: {cfg_path}")
    cfg = load_config(cfg_path)
    device = torch.device(device)

    flow = FlowModel(cfg.flow)
    _load_strict(flow, _load_state(model_dir / "flow.pt"), model_dir / "flow.pt")
    hift = HiFTGenerator(cfg.hift)
    hift_path = model_dir / "hift.pt"
    try:
        hift_state = fold_weight_norm(_load_state(hift_path))
    except KeyError as exc:
        raise CheckpointError(f"{hift_path}: {exc}") from exc
    _load_strict(hift, hift_state, hift_path)
    flow.to(device=device, dtype=dtype)
    flow.noise = flow.noise.float()
    hift.to(device=device, dtype=torch.float32)

    from omni2.voice import default_voice, load_voice

    xvector = None
    if voice is not None:
        xvector = voice if isinstance(voice, (torch.Tensor, np.ndarray)) else load_voice(voice, model_dir)
    else:
        found = default_voice(model_dir)
        if found is not None:
            xvector = load_voice(found, model_dir)
    dec = Decoder(cfg, flow, hift, device=device, xvector=None if xvector is None else torch.as_tensor(xvector))
    log.info(
        "loaded CosyVoice2 decoder from %s (flow %.1fM, HiFT %.1fM params, %s, %s)",
        model_dir,
        sum(p.numel() for p in flow.parameters()) / 1e6,
        sum(p.numel() for p in hift.parameters()) / 1e6,
        device,
        dtype,
    )
    return dec
