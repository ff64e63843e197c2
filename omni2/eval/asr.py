"""Speech recognition of the spoken replies (for S2S accuracy and ASR-WER), behind a small interface.

The paper transcribes replies with Whisper-large-v3. The default backend, ``whisper``, loads the
full openai-whisper file the speech encoder already comes from (``checkpoints/speech_encoder/
large-v3.pt``, or wherever the model's ``speech_encoder`` setting resolves to), so no extra
download is needed. Other backends plug in with :func:`register_backend`.

When a backend cannot be made (no weights, package missing, ``--asr none``),
:func:`make_asr` returns a reason instead, and every score that needs ASR says
"not computed: <reason>" rather than showing a number.

UTMOS (naturalness, tarepan/SpeechMOS) is handled the same way: :func:`utmos_unavailable` says why
it cannot be computed here; the package and its weights are not shipped with omni2.
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

log = logging.getLogger(__name__)

WHISPER_RATE = 16_000


class ASR(Protocol):
    """What the evaluation needs of a recogniser."""

    name: str

    def transcribe(self, samples: np.ndarray, sample_rate: int) -> str: ...


@dataclass
class ASRRequest:
    """Everything a backend factory may use to find its weights."""

    model_dir: Path | None = None  # the omni2 checkpoint folder
    weights: Path | None = None  # explicit weights file (--asr-model)
    device: str = "cpu"
    max_tokens: int | None = None  # cap on decoded tokens per 30 s window (quick plumbing runs)
    language: str = "en"


Factory = Callable[[ASRRequest], ASR]
_BACKENDS: dict[str, Factory] = {}


def register_backend(name: str, factory: Factory) -> None:
    """Make ``--asr NAME`` available; the factory raises ASRUnavailable with a reason when it cannot."""
    _BACKENDS[name] = factory


def backends() -> list[str]:
    return ["none", *sorted(_BACKENDS)]


class ASRUnavailable(Exception):
    """The backend cannot run here; the message is the user-facing reason."""


def make_asr(name: str, request: ASRRequest) -> tuple[ASR | None, str | None]:
    """(backend, None), or (None, reason) when ASR is off or cannot run."""
    if name == "none":
        return None, "ASR disabled (--asr none)"
    factory = _BACKENDS.get(name)
    if factory is None:
        return None, f"unknown ASR backend {name!r} (available: {', '.join(backends())})"
    try:
        return factory(request), None
    except ASRUnavailable as exc:
        log.warning("ASR %s unavailable: %s", name, exc)
        return None, str(exc)


# --------------------------------------------------------------------------------------------
# openai-whisper


def find_whisper_file(model_dir: Path | None) -> tuple[Path | None, str]:
    """The Whisper file the model's config points at (or checkpoints/speech_encoder/large-v3.pt)."""
    from omni2.checkpoint import DEFAULT_CHECKPOINTS, resolve_speech_encoder_file
    from omni2.config import Omni2Config

    looked: list[str] = []
    if model_dir is not None and (model_dir / "config.json").is_file():
        try:
            config = Omni2Config.from_file(model_dir / "config.json")
        except Exception as exc:  # noqa: BLE001 - any config problem only means "no file from here"
            log.debug("cannot read %s: %s", model_dir / "config.json", exc)
        else:
            found = resolve_speech_encoder_file(config, model_dir)
            if found is not None:
                return found, ""
            looked.append(f"{config.speech_encoder!r} from {model_dir / 'config.json'}")
    default = Path(DEFAULT_CHECKPOINTS) / "speech_encoder" / "large-v3.pt"
    if default.is_file():
        return default, ""
    looked.append(str(default))
    return None, ("no Whisper weights file (looked for " + " and ".join(looked)
                  + "; get it with: python launch.py download --only whisper)")


class WhisperASR:
    """openai-whisper greedy transcription of 24 kHz replies (resampled to 16 kHz)."""

    def __init__(self, path: Path, device: str = "cpu", max_tokens: int | None = None,
                 language: str = "en") -> None:
        import whisper

        self.path = Path(path)
        self.name = f"whisper:{self.path.name}"
        self.device = device
        self.max_tokens = max_tokens
        self.language = language
        try:
            self.model = whisper.load_model(str(self.path), device=device)
        except Exception as exc:  # noqa: BLE001 - torch/whisper raise many types for bad files
            raise ASRUnavailable(f"cannot load the Whisper file {self.path}: {exc}") from exc
        self.model.eval()

    def transcribe(self, samples: np.ndarray, sample_rate: int) -> str:
        import torch

        from omni2.audio import resample

        audio = resample(np.asarray(samples, dtype=np.float32), sample_rate, WHISPER_RATE)
        if audio.size == 0:
            return ""
        options = {"language": self.language, "task": "transcribe", "without_timestamps": True,
                   "fp16": self.device.startswith("cuda")}
        if self.max_tokens:
            options["sample_len"] = int(self.max_tokens)
        with torch.inference_mode():
            out = self.model.transcribe(audio, temperature=0.0, condition_on_previous_text=False,
                                        verbose=None, **options)
        return str(out.get("text", "")).strip()


def _whisper_factory(req: ASRRequest) -> ASR:
    if importlib.util.find_spec("whisper") is None:
        raise ASRUnavailable("the openai-whisper package is not installed")
    if req.weights is not None:
        path = Path(req.weights).expanduser()
        if not path.is_file():
            raise ASRUnavailable(f"Whisper weights file not found: {path}")
    else:
        found, reason = find_whisper_file(req.model_dir)
        if found is None:
            raise ASRUnavailable(reason)
        path = found
    log.info("ASR: openai-whisper with %s", path)
    return WhisperASR(path, device=req.device, max_tokens=req.max_tokens, language=req.language)


register_backend("whisper", _whisper_factory)


# --------------------------------------------------------------------------------------------
# UTMOS


def utmos_unavailable() -> str:
    """Why UTMOS is not computed here (the paper uses tarepan/SpeechMOS utmos22_strong)."""
    if importlib.util.find_spec("speechmos") is None:
        return ("UTMOS needs the SpeechMOS package (tarepan/SpeechMOS) and its utmos22_strong weights, "
                "which are not installed")
    return ("UTMOS weights are fetched by torch.hub from GitHub on first use; omni2 evaluations run "
            "offline, so UTMOS is not computed")
