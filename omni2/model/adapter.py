"""Speech adapter ("speech_projector", type linear): k-frame concat then a 2-layer ReLU FFN."""

from __future__ import annotations

import torch
from torch import nn


class SpeechAdapter(nn.Module):
    """(B, T, C) encoder frames -> (B, T // k, H) LLM embeddings.

    Trailing frames that do not fill a group of k are dropped; each group of k consecutive frames
    is concatenated on the feature axis in time order (k·C features), then linear1 -> ReLU ->
    linear2. Attribute names match the official ``model.speech_projector.*`` keys.
    """

    def __init__(self, k: int, encoder_dim: int, llm_dim: int, hidden: int = 2048) -> None:
        super().__init__()
        self.k = k
        self.linear1 = nn.Linear(encoder_dim * k, hidden)
        self.relu = nn.ReLU()
        self.linear2 = nn.Linear(hidden, llm_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape
        t -= t % self.k
        x = x[:, :t].reshape(b, t // self.k, c * self.k)
        return self.linear2(self.relu(self.linear1(x)))
