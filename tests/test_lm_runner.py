"""LMRunner's growing KV cache: same hidden states as a full forward, across growth and crops."""

from __future__ import annotations

import torch

from omni2.lm_runner import GrowingCache, LMRunner


def _full_hidden(lm, embeds: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return lm.model(inputs_embeds=embeds[None], use_cache=False).last_hidden_state[0]


def test_growing_cache_matches_full_forward_across_growth_and_crop(tiny) -> None:
    lm = tiny.model.llm
    gen = torch.Generator().manual_seed(0)
    d = lm.config.hidden_size
    embeds = torch.randn(150, d, generator=gen) * 0.1
    runner = LMRunner(lm)
    assert isinstance(runner.cache, GrowingCache)
    # a prefill, single-token steps past the first 64-slot buffer, then a multi-token feed
    got = [runner.feed(embeds[:40])]
    got += [runner.feed(embeds[i : i + 1]) for i in range(40, 100)]
    got.append(runner.feed(embeds[100:130]))
    assert runner.length == 130 and runner.cache.get_seq_length() == 130
    torch.testing.assert_close(torch.cat(got), _full_hidden(lm, embeds[:130]), atol=1e-4, rtol=1e-4)

    # crop back into the middle (a shared prompt prefix) and continue with different inputs
    runner.crop(70)
    assert runner.cache.get_seq_length() == 70
    other = torch.randn(20, d, generator=gen) * 0.1
    tail = runner.feed(other)
    ref = _full_hidden(lm, torch.cat([embeds[:70], other]))[70:]
    torch.testing.assert_close(tail, ref, atol=1e-4, rtol=1e-4)

    # a token's write touches only its own slot: earlier cached keys are unchanged by later feeds
    keys_before = runner.cache.layers[0].keys[..., :90, :].clone()
    runner.feed(embeds[:5])
    torch.testing.assert_close(runner.cache.layers[0].keys[..., :90, :], keys_before, atol=0, rtol=0)


def test_reset_gives_an_empty_growing_cache(tiny) -> None:
    runner = LMRunner(tiny.model.llm)
    runner.feed(torch.zeros(3, tiny.model.llm.config.hidden_size))
    runner.reset()
    assert runner.length == 0 and runner.cache.get_seq_length() == 0
    assert isinstance(runner.cache, GrowingCache)
