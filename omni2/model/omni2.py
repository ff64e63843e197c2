"""The LLaMA-Omni2 network: Whisper encoder -> adapter -> Qwen2 LLM (+ optional TTS branch).

Model code only: it builds empty modules from dims and computes; files, devices and UI live
elsewhere (omni2.checkpoint loads weights into it).
"""

from __future__ import annotations

import torch
from torch import nn

from omni2.config import Omni2Config
from omni2.model.adapter import SpeechAdapter
from omni2.model.speech_encoder import WhisperEncoderDims, build_speech_encoder
from omni2.model.speech_generator import SpeechGenerator


class Omni2Model(nn.Module):
    def __init__(self, config: Omni2Config, encoder_dims: WhisperEncoderDims, adapter_hidden: int = 2048,
                 attn_implementation: str = "sdpa") -> None:
        super().__init__()
        from transformers import Qwen2ForCausalLM

        if encoder_dims.n_state != config.speech_encoder_hidden_size:
            from omni2.errors import ConfigError

            raise ConfigError(
                f"speech_encoder_hidden_size {config.speech_encoder_hidden_size} in config.json does not "
                f"match the Whisper encoder width {encoder_dims.n_state}"
            )
        self.config = config
        self.encoder_dims = encoder_dims
        self.speech_encoder = build_speech_encoder(encoder_dims)
        self.adapter = SpeechAdapter(config.speech_encoder_ds_rate, encoder_dims.n_state,
                                     config.llm.hidden_size, adapter_hidden)
        llm_cfg = config.llm.to_hf()
        llm_cfg._attn_implementation = attn_implementation
        self.llm = Qwen2ForCausalLM(llm_cfg)
        self.speech_generator: SpeechGenerator | None = None
        if config.speech_generator is not None:
            tts_cfg = config.speech_generator.to_hf()
            tts_cfg._attn_implementation = attn_implementation
            self.speech_generator = SpeechGenerator(config.llm.hidden_size, tts_cfg)

    @property
    def n_mels(self) -> int:
        return self.encoder_dims.n_mels

    def encode(self, mel: torch.Tensor) -> torch.Tensor:
        """(B, n_mels, 3000) log-mel -> (B, 1500, C) final Whisper encoder output."""
        p = self.speech_encoder.conv1.weight
        return self.speech_encoder(mel.to(device=p.device, dtype=p.dtype))

    def embed_speech(self, mel: torch.Tensor) -> torch.Tensor:
        """(B, n_mels, 3000) -> (B, 300, H): the vectors spliced in place of ``<speech>``."""
        return self.adapter(self.encode(mel))

    def embed_text(self, ids: torch.Tensor) -> torch.Tensor:
        table = self.llm.get_input_embeddings()
        return table(ids.to(table.weight.device))
