"""Whisper front end: log-mel features and openai-whisper's ``AudioEncoder``.

LLaMA-Omni2 feeds exactly 30 s of 16 kHz audio (zero-padded or cut) as a 128-bin log-mel to the
Whisper-large-v3 encoder and keeps its final output (after ``ln_post``). The official code swaps
Whisper's fp32-upcasting LayerNorms for plain ``nn.LayerNorm`` so they run in the model dtype;
we do the same so bf16 runs stay close to the official numbers.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

N_SAMPLES = 480_000  # 30 s at 16 kHz: Whisper's fixed window
N_FRAMES = 3000


@dataclass(frozen=True)
class WhisperEncoderDims:
    n_mels: int = 128
    n_ctx: int = 1500
    n_state: int = 1280
    n_head: int = 20
    n_layer: int = 32

    @classmethod
    def from_whisper_dims(cls, dims: dict) -> WhisperEncoderDims:
        return cls(dims["n_mels"], dims["n_audio_ctx"], dims["n_audio_state"], dims["n_audio_head"],
                   dims["n_audio_layer"])


LARGE_V3 = WhisperEncoderDims()


def log_mel(samples: np.ndarray | torch.Tensor, n_mels: int) -> torch.Tensor:
    """(n_mels, 3000) float32 log-mel of 16 kHz audio, padded/cut to 30 s as the official code does."""
    import whisper

    audio = torch.as_tensor(samples, dtype=torch.float32)
    audio = whisper.pad_or_trim(audio, N_SAMPLES)
    return whisper.log_mel_spectrogram(audio, n_mels=n_mels)


def _plain_layer_norms(module: nn.Module) -> None:
    """Replace whisper.model.LayerNorm (upcasts to fp32) by nn.LayerNorm, like the official loader."""
    from whisper.model import LayerNorm as WhisperLayerNorm

    for name, child in module.named_children():
        if isinstance(child, WhisperLayerNorm):
            plain = nn.LayerNorm(child.normalized_shape, eps=child.eps,
                                 elementwise_affine=child.elementwise_affine)
            setattr(module, name, plain)
        else:
            _plain_layer_norms(child)


def build_speech_encoder(dims: WhisperEncoderDims) -> nn.Module:
    """An empty openai-whisper AudioEncoder of the given size, LayerNorms in model dtype."""
    from whisper.model import AudioEncoder

    encoder = AudioEncoder(dims.n_mels, dims.n_ctx, dims.n_state, dims.n_head, dims.n_layer)
    _plain_layer_norms(encoder)
    return encoder
