"""TTS language model M_TTS and the gate fusion that feeds it (LLaMA-Omni2 §1.6–1.7).

M_TTS is a plain Qwen2 causal LM whose vocabulary is the text vocabulary plus ``<sep>`` and the
CosyVoice2 units. Its input for generated text token i is the gate-fused vector
``c = g·proj(h) + (1−g)·emb(y)``, where h is the LLM's final hidden state that produced token y,
proj is ``input_proj`` (H -> 2H -> ReLU -> d), emb is M_TTS's own embedding of the text id, and
``g = sigmoid(gate([proj; emb]))``. Attribute names follow the official ``speech_generator.*`` keys.
"""

from __future__ import annotations

import torch
from torch import nn

from omni2.model.row_gemv import RowGemvLinear, linear_rows


class SpeechGenerator(nn.Module):
    def __init__(self, llm_hidden_size: int, tts_config) -> None:  # tts_config: transformers.Qwen2Config
        super().__init__()
        from transformers import Qwen2ForCausalLM

        self.model = Qwen2ForCausalLM(tts_config)
        d = tts_config.hidden_size
        self.input_proj = nn.Sequential(
            nn.Linear(llm_hidden_size, 2 * llm_hidden_size), nn.ReLU(), nn.Linear(2 * llm_hidden_size, d)
        )
        self.gate = nn.Sequential(nn.Linear(2 * d, d), nn.Sigmoid())
        self._head_rows: tuple[tuple, torch.Tensor, torch.Tensor | None] | None = None

    @property
    def hidden_size(self) -> int:
        return self.model.config.hidden_size

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        """M_TTS input embedding of token ids (text ids, ``<sep>`` or unit tokens)."""
        return self.model.get_input_embeddings()(ids)

    def fuse(self, hidden: torch.Tensor, text_ids: torch.Tensor) -> torch.Tensor:
        """Gate-fuse LLM hidden states [..., H] with M_TTS embeddings of their tokens -> [..., d]."""
        proj = self.input_proj(hidden.to(self.input_proj[0].weight.dtype))
        emb = self.embed(text_ids)
        g = self.gate(torch.cat([proj, emb], dim=-1))
        return proj * g + emb * (1 - g)

    def logits_over(self, hidden: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """Full-vocabulary logits [V] of one hidden state [d] where only rows ``ids`` are computed
        (the rest are -inf).

        Speech generation may only emit units or eos (6,562 of ~158k rows), so the other rows of
        ``lm_head`` never matter: skipping them removes over a quarter of each step's weight reads
        at 0.5B. The vector keeps full size so sampling, and its random draws, stay the same.
        """
        head = self.model.lm_head
        weight = head.weight
        # the copied rows are valid while the ids object, the weight tensor and its contents are
        key = (id(ids), weight.data_ptr(), weight._version, weight.dtype, weight.device)
        cached = self._head_rows
        if cached is None or cached[0] != key:
            idx = ids.to(weight.device)
            w = weight.detach().index_select(0, idx)
            b = None if head.bias is None else head.bias.detach().index_select(0, idx)
            cached = self._head_rows = (key, w, b)
        _, w, b = cached
        linear = linear_rows if isinstance(head, RowGemvLinear) else torch.nn.functional.linear
        part = linear(hidden.to(w.dtype), w, b)
        out = torch.full((head.out_features,), float("-inf"), dtype=part.dtype, device=part.device)
        return out.index_copy_(0, ids.to(part.device), part)
