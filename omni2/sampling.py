"""Next-token choice for both LMs: greedy, or temperature / top-k / top-p sampling (HF order).

The order and tie rules follow transformers' processors (repetition penalty, then temperature,
top-k, top-p) so that a checkpoint decodes as it does under the official ``generate`` call.
Sampling draws from an explicit ``torch.Generator`` so runs are reproducible with a seed.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class SamplingConfig:
    """``temperature`` <= 0 means greedy (argmax); top_k 0/None and top_p 1.0/None disable them."""

    temperature: float = 0.0
    top_k: int | None = None
    top_p: float | None = None
    repetition_penalty: float = 1.0

    @property
    def greedy(self) -> bool:
        return self.temperature is None or self.temperature <= 0.0


LLM_GREEDY = SamplingConfig()
# The official TTS call: do_sample=True, temperature 1.0, top_p 1.0, and HF's default top_k 50.
TTS_OFFICIAL = SamplingConfig(temperature=1.0, top_k=50, top_p=1.0)


class Sampler:
    """Picks one token id from a logits vector; holds its own random generator."""

    def __init__(self, config: SamplingConfig, seed: int | None = None,
                 allowed: torch.Tensor | None = None) -> None:
        self.config = config
        self.allowed = allowed  # bool mask [V] of ids that may be chosen, or None
        self.generator = torch.Generator()
        if seed is not None:
            self.generator.manual_seed(seed)
        else:
            self.generator.seed()

    def __call__(self, logits: torch.Tensor, previous: list[int] | None = None) -> int:
        cfg = self.config
        scores = logits.float().reshape(-1)
        if self.allowed is not None:
            scores = scores.masked_fill(~self.allowed.to(scores.device), float("-inf"))
        if cfg.repetition_penalty != 1.0 and previous:
            idx = torch.tensor(sorted(set(previous)), device=scores.device)
            s = scores[idx]
            scores = scores.clone()
            scores[idx] = torch.where(s < 0, s * cfg.repetition_penalty, s / cfg.repetition_penalty)
        if cfg.greedy:
            return int(torch.argmax(scores))
        scores = scores / cfg.temperature
        if cfg.top_k:
            k = min(int(cfg.top_k), scores.numel())
            kth = torch.topk(scores, k).values[-1]
            scores = scores.masked_fill(scores < kth, float("-inf"))
        if cfg.top_p is not None and cfg.top_p < 1.0:
            sorted_scores, order = torch.sort(scores, descending=False)
            cum = sorted_scores.softmax(-1).cumsum(-1)
            drop_sorted = cum <= (1 - cfg.top_p)
            drop_sorted[-1] = False  # always keep the most likely token
            drop = torch.zeros_like(drop_sorted).scatter(0, order, drop_sorted)
            scores = scores.masked_fill(drop, float("-inf"))
        probs = scores.softmax(-1).cpu()
        return int(torch.multinomial(probs, 1, generator=self.generator))
