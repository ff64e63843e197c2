"""The read-R/write-W speech-unit schedule of LLaMA-Omni2 (spec §1.8), with a KV cache.

After every R generated text tokens, their (hidden state, token id) pairs are gate-fused and
appended to the TTS LM's input, which then writes up to W tokens. When the text ends, the
remaining pairs (the final eos text token included) are fused, the raw ``<sep>`` embedding is
appended and the TTS LM writes until its eos (or ``max_drain``). An eos inside a non-final window
ends that window early; it stays in the context, as every written token does.

The official code re-reads the whole TTS input each window. Here the TTS LM keeps its KV cache
across windows, so a window costs only its new positions; tokens written at the end of a window
are fed at the start of the next one, which gives the same computation. ``use_cache=False``
reproduces the official re-reading pattern (used as the benchmark baseline and in tests).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import torch

from omni2.checkpoint import TTSVocab
from omni2.lm_runner import LMRunner
from omni2.model.speech_generator import SpeechGenerator
from omni2.sampling import Sampler, SamplingConfig

DEFAULT_MAX_DRAIN = 1024


@dataclass
class WriterTrace:
    """Everything a write produced, kept for tests and goldens (cheap: small tensors)."""

    fused: list[torch.Tensor] = field(default_factory=list)  # (n, d) per write, <sep> row included
    tts_token_ids: list[int] = field(default_factory=list)
    unit_window_ends: list[int] = field(default_factory=list)
    text_window_ends: list[int] = field(default_factory=list)
    tts_window_ends: list[int] = field(default_factory=list)


class UnitWriter:
    """Streaming state of one reply's TTS: call :meth:`read` per text token, :meth:`write` per window."""

    def __init__(
        self,
        generator: SpeechGenerator,
        vocab: TTSVocab,
        read: int,
        write: int,
        sampling: SamplingConfig,
        *,
        seed: int | None = None,
        restrict_to_units: bool = True,
        max_drain: int = DEFAULT_MAX_DRAIN,
        use_cache: bool = True,
        trace: bool = False,
    ) -> None:
        if read < 1 or write < 1:
            raise ValueError(f"(R, W) must be positive, got ({read}, {write})")
        self.gen = generator
        self.vocab = vocab
        self.R, self.W = read, write
        self.max_drain = max_drain
        self.use_cache = use_cache
        self.runner = LMRunner(generator.model)
        allowed = None
        self._allowed_ids: torch.Tensor | None = None
        if restrict_to_units:
            allowed = _allowed_mask(generator.model.config.vocab_size, vocab)  # the sampler's own
            self._allowed_ids = _allowed_ids(generator.model.config.vocab_size, vocab)
        self.sampler = Sampler(sampling, seed=seed, allowed=allowed)
        self._pending_hidden: list[torch.Tensor] = []
        self._pending_ids: list[int] = []
        self._unfed_tokens: list[int] = []  # written tokens not yet run through the TTS LM
        self._all_inputs: list[torch.Tensor] = []  # for use_cache=False: the whole TTS input
        self._window_start = True
        self.n_text = 0
        self.units: list[int] = []
        self.finished = False
        self.trace = WriterTrace() if trace else None

    # -- reading --------------------------------------------------------------------------------
    def read(self, token_id: int, hidden: torch.Tensor) -> bool:
        """Queue one text token and the hidden state that produced it; True when a window is due."""
        if self.finished:
            raise RuntimeError("this reply's speech is already finished")
        self._pending_hidden.append(hidden.reshape(-1))
        self._pending_ids.append(int(token_id))
        return len(self._pending_ids) >= self.R

    # -- writing --------------------------------------------------------------------------------
    @torch.inference_mode()
    def write(self, final: bool = False) -> list[int]:
        """Fuse the queued text, let the TTS LM write, return the new unit ids (0..num_units-1)."""
        if self.finished:
            return []
        gen = self.gen
        dev = self.runner.device
        self._window_start = True
        new_inputs: list[torch.Tensor] = []
        if self._unfed_tokens:
            new_inputs.append(gen.embed(torch.tensor(self._unfed_tokens, device=dev)))
            self._unfed_tokens = []
        fused_rows: list[torch.Tensor] = []
        if self._pending_ids:
            hidden = torch.stack(self._pending_hidden).to(dev)
            ids = torch.tensor(self._pending_ids, device=dev)
            fused_rows.append(gen.fuse(hidden, ids))
            self.n_text += len(self._pending_ids)
            self._pending_hidden, self._pending_ids = [], []
        if final:
            fused_rows.append(gen.embed(torch.tensor([self.vocab.sep_id], device=dev)))
        new_inputs.extend(fused_rows)
        if self.trace is not None and fused_rows:
            self.trace.fused.append(torch.cat(fused_rows).float().cpu())

        budget = self.max_drain if final else self.W
        written: list[int] = []
        if new_inputs:
            hidden_last = self._advance(new_inputs)
            for step in range(budget):
                tok = self.sampler(self._logits(hidden_last))
                written.append(tok)
                if tok == self.vocab.eos_id or step == budget - 1:
                    break
                hidden_last = self._advance([gen.embed(torch.tensor([tok], device=dev))])
        self._unfed_tokens = written[-1:]  # the last written token has not been run yet

        new_units = [t - self.vocab.unit_offset for t in written if self.vocab.is_unit(t)]
        self.units.extend(new_units)
        if self.trace is not None:
            self.trace.tts_token_ids.extend(written)
            self.trace.unit_window_ends.append(len(self.units))
            self.trace.text_window_ends.append(self.n_text)
            self.trace.tts_window_ends.append(len(self.trace.tts_token_ids))
        if final:
            self.finished = True
        return new_units

    def _logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Next-token logits; with the unit mask on, only the rows that can be chosen are computed."""
        if self._allowed_ids is None:
            return self.runner.logits(hidden)
        return self.gen.logits_over(hidden, self._allowed_ids)

    def _advance(self, inputs: list[torch.Tensor]) -> torch.Tensor:
        """Append input rows to the TTS context; return the post-norm hidden of the last position."""
        x = torch.cat(inputs) if len(inputs) > 1 else inputs[0]
        if self.use_cache:
            return self.runner.feed(x)[-1]
        # Official pattern: the context is re-read from scratch at the start of every window;
        # within a window decoding is incremental (HF generate keeps a cache for one call).
        self._all_inputs.append(x)
        if self._window_start:
            self.runner.reset()
            self._window_start = False
            return self.runner.feed(torch.cat(self._all_inputs))[-1]
        return self.runner.feed(x)[-1]


def _allowed_mask(vocab_size: int, vocab: TTSVocab) -> torch.Tensor:
    """A new bool [V] mask of the ids speech generation may emit (every unit token and eos)."""
    allowed = torch.zeros(vocab_size, dtype=torch.bool)
    allowed[vocab.unit_offset : vocab.unit_offset + vocab.num_units] = True
    allowed[vocab.eos_id] = True
    return allowed


@functools.lru_cache(maxsize=8)
def _allowed_ids(vocab_size: int, vocab: TTSVocab) -> torch.Tensor:
    """The same ids as a sorted index tensor (one object per vocabulary, so row caches can key on it)."""
    return _allowed_mask(vocab_size, vocab).nonzero().squeeze(1)
