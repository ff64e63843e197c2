"""Incremental forward passes over a transformers ``Qwen2ForCausalLM`` with a KV cache.

Both language models (the LLM and the TTS LM) are driven step by step by the streaming engine, so
instead of forking HF ``generate`` we keep one cache object per conversation/turn and feed only new
inputs. ``hidden`` is always the final-layer, post-norm state — what the TTS fusion reads.
"""

from __future__ import annotations

import torch
from transformers.cache_utils import Cache, DynamicLayer


class GrowingLayer(DynamicLayer):
    """A ``DynamicLayer`` whose keys/values live in a preallocated buffer grown 1.5x when full.

    HF's ``DynamicLayer`` concatenates the whole cache with each new token, an O(length) copy per
    token and layer (O(n^2) over a reply). Here a token writes only its own slot; ``keys``/``values``
    are views of the first ``length`` positions, so the rest of transformers sees a normal layer.
    """

    def lazy_initialization(self, key_states: torch.Tensor) -> None:
        super().lazy_initialization(key_states)
        self._k: torch.Tensor | None = None
        self._v: torch.Tensor | None = None
        self._len = 0

    def _reserve(self, need: int, like: torch.Tensor) -> None:
        if self._k is not None and self._k.size(-2) >= need:
            return
        cap = need if self._k is None else max(need, self._k.size(-2) * 3 // 2)
        cap = -(-cap // 64) * 64
        k = like.new_empty(*like.shape[:-2], cap, like.size(-1))
        v = like.new_empty(*like.shape[:-2], cap, like.size(-1))
        if self._k is not None:
            k[..., : self._len, :].copy_(self._k[..., : self._len, :])
            v[..., : self._len, :].copy_(self._v[..., : self._len, :])
        self._k, self._v = k, v

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, cache_kwargs: dict | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states)
        end = self._len + key_states.size(-2)
        self._reserve(end, key_states)
        self._k[..., self._len : end, :].copy_(key_states)
        self._v[..., self._len : end, :].copy_(value_states)
        self._len = end
        self.keys, self.values = self._k[..., :end, :], self._v[..., :end, :]
        return self.keys, self.values

    def crop(self, max_length: int) -> None:
        if not self.is_initialized:
            return
        if max_length < 0:
            max_length = self._len + max_length
        if max_length < self._len:
            self._len = max(max_length, 0)
            self.keys, self.values = self._k[..., : self._len, :], self._v[..., : self._len, :]


class GrowingCache(Cache):
    """transformers ``Cache`` made of :class:`GrowingLayer` (full attention layers, as Qwen2's)."""

    def __init__(self) -> None:
        super().__init__(layer_class_to_replicate=GrowingLayer)


class LMRunner:
    def __init__(self, lm) -> None:  # lm: transformers.Qwen2ForCausalLM
        self.lm = lm
        self._cache_cls = GrowingCache
        self.cache = GrowingCache()
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
