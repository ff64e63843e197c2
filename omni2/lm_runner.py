"""Incremental forward passes over a transformers ``Qwen2ForCausalLM`` with a KV cache.

Both language models (the LLM and the TTS LM) are driven step by step by the streaming engine, so
instead of forking HF ``generate`` we keep one cache object per conversation/turn and feed only new
inputs. ``hidden`` is always the final-layer, post-norm state — what the TTS fusion reads.
"""

from __future__ import annotations

import torch


class LMRunner:
    def __init__(self, lm) -> None:  # lm: transformers.Qwen2ForCausalLM
        from transformers import DynamicCache

        self.lm = lm
        self._cache_cls = DynamicCache
        self.cache = DynamicCache()
        self.length = 0

    @property
    def device(self) -> torch.device:
        return self.lm.lm_head.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.lm.lm_head.weight.dtype

    def reset(self) -> None:
        self.cache = self._cache_cls()
        self.length = 0

    def crop(self, length: int) -> None:
        """Forget every position from ``length`` on (to reuse a shared prompt prefix)."""
        if length < self.length:
            self.cache.crop(length)
            self.length = length

    @torch.inference_mode()
    def feed(self, embeds: torch.Tensor) -> torch.Tensor:
        """Run (n, d) input embeddings after the cached prefix; return (n, d) post-norm hidden states."""
        n = embeds.shape[0]
        pos = torch.arange(self.length, self.length + n, device=self.device)
        out = self.lm.model(
            inputs_embeds=embeds.to(device=self.device, dtype=self.dtype)[None],
            past_key_values=self.cache,
            use_cache=True,
            cache_position=pos,
            position_ids=pos[None],
        )
        self.cache = out.past_key_values
        self.length += n
        return out.last_hidden_state[0]

    @torch.inference_mode()
    def feed_ids(self, ids: list[int]) -> torch.Tensor:
        emb = self.lm.get_input_embeddings()(torch.tensor(ids, device=self.device))
        return self.feed(emb)

    @torch.inference_mode()
    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.lm.lm_head(hidden)
