"""Assemble a ready :class:`~omni2.engine.Engine` from files: the one place front ends load from.

Chat CLI, web UI, microphone and evaluation all call :func:`load_engine`, so they find
checkpoints, the decoder and the voice the same way and report missing pieces the same way.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from omni2.checkpoint import DEFAULT_CHECKPOINTS, find_decoder, load_omni2, pick_device
from omni2.engine import Engine

log = logging.getLogger(__name__)


def load_engine(
    model: str | Path | None = None,
    *,
    decoder: str | Path | None = None,
    voice: str | Path | None = None,
    device: str = "auto",
    dtype: str = "auto",
    speak: bool = True,
    audio: bool = True,
    checkpoints_root: Path | None = None,
) -> Engine:
    """Model (+ TTS branch when ``speak``) and, when ``audio`` and a decoder folder exists, the vocoder.

    Without a decoder folder the engine still streams text and units; a log line says how to get
    audio. ``voice`` is a wav (through CAM++), or an x-vector file (.npy/.pt).
    """
    loaded = load_omni2(model, dtype=dtype, device=device, load_tts=speak, checkpoints_root=checkpoints_root)
    vocoder = None
    if speak and audio:
        found = find_decoder(loaded.path, decoder, checkpoints_root)
        if found is None:
            log.warning("no CosyVoice2 decoder folder found (looked in %s and %s): replies will have text and "
                        "units but no audio. Get it with: python launch.py download --only decoder",
                        loaded.path / "cosy2_decoder", Path(checkpoints_root or DEFAULT_CHECKPOINTS) / "cosy2_decoder")
        else:
            from omni2.vocoder.token2wav import load_decoder

            dev = pick_device(device)
            flow_dtype = torch.float32 if dev.type == "cpu" else loaded.dtype
            vocoder = load_decoder(found, device=dev, dtype=flow_dtype, voice=voice)
    return Engine(loaded, vocoder)
