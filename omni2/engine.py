"""The one streaming engine: user audio (+ session history) in, typed events out.

    engine = Engine(load_omni2("checkpoints/LLaMA-Omni2-0.5B"), vocoder)
    session = engine.new_session()
    turn = engine.respond(session, "question.wav")
    for event in turn:            # Notice, TextDelta, Units, AudioChunk, ..., TurnEnd
        ...
    turn.cancel()                 # from any thread: stops within one TTS window (barge-in)

Per reply: audio -> 128-bin log-mel -> Whisper encoder -> adapter -> spliced prompt -> LLM decode
with a KV cache; every R text tokens the TTS LM writes up to W units (omni2.unit_writer), which a
streaming vocoder (when given) turns into audio chunks. The session is updated only when the turn
ends, and only with what was delivered, so an error or a cancel never leaves it half-updated.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import numpy as np
import torch

from omni2.audio import AudioSource, PreparedAudio, prepare_audio
from omni2.audio_pump import AudioPump
from omni2.checkpoint import LoadedOmni2
from omni2.errors import Omni2Error
from omni2.events import AudioChunk, Event, Notice, TextDelta, TurnEnd, Units
from omni2.lm_runner import LMRunner
from omni2.model.row_gemv import row_gemv_is_faster, use_row_gemv
from omni2.model.speech_encoder import log_mel
from omni2.prompt import render_prompt_ids, splice_speech
from omni2.sampling import LLM_GREEDY, TTS_OFFICIAL, Sampler, SamplingConfig
from omni2.session import AssistantTurn, Session, UserTurn, to_chat
from omni2.unit_writer import DEFAULT_MAX_DRAIN, UnitWriter

log = logging.getLogger(__name__)


class VocoderStream(Protocol):
    def push(self, units: list[int]) -> np.ndarray: ...
    def finalize(self) -> np.ndarray: ...


class Vocoder(Protocol):
    """What the engine needs of a unit decoder (omni2.vocoder.token2wav.Decoder is one)."""

    sample_rate: int

    def stream(self, xvector: Any = None, *, incremental: bool = True) -> VocoderStream: ...


@dataclass(frozen=True)
class ReplyOptions:
    """Per-reply knobs. Defaults follow the official evaluation (greedy LLM, sampled TTS, (R,W) of the config)."""

    max_new_tokens: int = 256
    llm_sampling: SamplingConfig = LLM_GREEDY
    seed: int | None = None
    speak: bool = True
    stream_params: tuple[int, int] | None = None  # None: the checkpoint's (R, W)
    tts_sampling: SamplingConfig = TTS_OFFICIAL
    tts_seed: int | None = None
    restrict_units: bool = True  # TTS may only write units or its eos (a text token there is never valid)
    max_drain: int = DEFAULT_MAX_DRAIN
    tts_cache: bool = True
    reuse_prefix: bool = True
    voice: Any = None  # speaker x-vector for the vocoder (None: the decoder's default voice)
    incremental_flow: bool = True  # freeze finished flow chunks (False: official full-prefix recompute)
    vocoder_thread: bool | None = None  # run the vocoder beside generation (None: on GPUs only)
    allow_silence: bool = False  # answer silent audio instead of reporting it (reference runs do)
    trace: bool = False


@dataclass
class ReplyTrace:
    """Intermediate results of one reply (tests and golden cases compare them)."""

    prompt_ids: list[int] = field(default_factory=list)
    text_ids: list[int] = field(default_factory=list)
    hidden: list[torch.Tensor] = field(default_factory=list)
    writer: Any = None  # omni2.unit_writer.WriterTrace


class _Detokenizer:
    """Incremental text: decodes a short sliding window per token (no O(n²) re-decoding)."""

    def __init__(self, tokenizer) -> None:
        self.tok = tokenizer
        self.ids: list[int] = []
        self.prefix = 0
        self.read = 0

    def push(self, token_id: int) -> str:
        self.ids.append(token_id)
        before = self.tok.decode(self.ids[self.prefix:self.read], skip_special_tokens=True)
        after = self.tok.decode(self.ids[self.prefix:], skip_special_tokens=True)
        if len(after) > len(before) and not after.endswith("\ufffd"):
            self.prefix, self.read = self.read, len(self.ids)
            return after[len(before):]
        return ""


class Turn:
    """One reply in progress: iterate it for events; ``cancel()`` may be called from any thread."""

    def __init__(self, engine: Engine, session: Session, audio: AudioSource, rate: int | None,
                 options: ReplyOptions) -> None:
        self.engine = engine
        self.session = session
        self.audio = audio
        self.rate = rate
        self.options = options
        self._cancel = threading.Event()
        self.delivered_units: int | None = None  # set by a player: units actually heard
        self.result: TurnEnd | None = None

    def cancel(self) -> None:
        self._cancel.set()

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    def __iter__(self) -> Iterator[Event]:
        # Front ends may resume this generator on different threads (Gradio does), so the lock is a
        # plain Lock, which any thread may release.
        with self.session.lock:
            self.session.active_turn = self
            try:
                yield from self.engine._run(self)
            finally:
                self.session.active_turn = None

    def collect(self) -> TurnEnd:
        """Run to the end, ignoring intermediate events (offline use)."""
        for _ in self:
            pass
        assert self.result is not None
        return self.result


_utterance_ids = itertools.count()


class Engine:
    def __init__(self, loaded: LoadedOmni2, vocoder: Vocoder | None = None) -> None:
        self.loaded = loaded
        self.model = loaded.model
        self.tokenizer = loaded.tokenizer
        self.vocoder = vocoder
        self.max_prompt = loaded.config.tokenizer_model_max_length
        # Embedding tables have padding rows past the tokenizer's last id; never sample those.
        rows = self.model.llm.config.vocab_size
        self._text_vocab_mask = None
        if len(self.tokenizer) < rows:
            self._text_vocab_mask = torch.arange(rows) < len(self.tokenizer)
        # Token-by-token decoding: use matrix-vector kernels where this CPU runs them faster.
        if row_gemv_is_faster(torch.device(loaded.device), loaded.dtype):
            decoders = [self.model.llm]
            if self.model.speech_generator is not None:
                decoders.append(self.model.speech_generator.model)
            n = sum(use_row_gemv(m) for m in decoders)
            log.info("decoding with torch.mv for one-row linears (%d layers)", n)

    # -- sessions and encoding ----------------------------------------------------------------
    def new_session(self) -> Session:
        return Session()

    @torch.inference_mode()
    def encode(self, audio: PreparedAudio) -> torch.Tensor:
        """(300, H) adapter output for one prepared utterance."""
        mel = log_mel(audio.samples, self.model.n_mels)
        return self.model.embed_speech(mel[None])[0]

    def add_history(self, session: Session, audio: AudioSource, reply_text: str, rate: int | None = None,
                    allow_silence: bool = False) -> None:
        """Append a past exchange (user audio + what the assistant said) without generating."""
        prepared = prepare_audio(audio, rate, allow_silence=allow_silence)
        speech = self.encode(prepared)
        with session.lock:
            session.encoder_calls += 1
            session.turns.append(UserTurn(speech, prepared.seconds, next(_utterance_ids)))
            session.turns.append(AssistantTurn(reply_text))

    def respond(self, session: Session, audio: AudioSource, options: ReplyOptions | None = None,
                rate: int | None = None, **overrides: Any) -> Turn:
        opts = replace(options or ReplyOptions(), **overrides)
        return Turn(self, session, audio, rate, opts)

    # -- prompt assembly ------------------------------------------------------------------------
    def _prompt(self, turns: list) -> tuple[list[int], list[tuple], list[torch.Tensor | None]]:
        """Prompt ids, one cache key per expanded position, and per-position embedding source."""
        ids = render_prompt_ids(self.tokenizer, to_chat(turns))
        users = iter([t for t in turns if isinstance(t, UserTurn)])
        keys: list[tuple] = []
        for tok in ids:
            if tok == self.loaded.speech_token_id:
                u = next(users)
                keys.extend(("s", u.uid, j) for j in range(u.speech.shape[0]))
            else:
                keys.append(("t", tok))
        return ids, keys, [t.speech for t in turns if isinstance(t, UserTurn)]

    def _fit_history(self, turns: list, notices: list[str]) -> list:
        """Drop the oldest exchanges until the prompt fits tokenizer_model_max_length."""
        if not self.max_prompt:
            return turns
        while True:
            _, keys, _ = self._prompt(turns)
            if len(keys) <= self.max_prompt or len(turns) <= 1:
                break
            turns = turns[2:]
            notices.append(f"conversation too long for the model ({len(keys)} > {self.max_prompt} positions): "
                           "dropped the oldest exchange")
        return turns

    # -- the turn -------------------------------------------------------------------------------
    def _run(self, turn: Turn) -> Iterator[Event]:
        opts, session = turn.options, turn.session
        timings: dict[str, float] = {}
        t_start = time.perf_counter()
        trace = ReplyTrace() if opts.trace else None
        text_ids: list[int] = []
        units: list[int] = []
        window_text_units: list[tuple[int, int]] = []  # (text tokens fused, units written) per window
        first_text = first_unit = first_audio = None
        audio_samples = 0
        stop = ""
        writer: UnitWriter | None = None
        pump: AudioPump | None = None
        committed = False

        def lap(name: str, t0: float) -> float:
            now = time.perf_counter()
            timings[name] = timings.get(name, 0.0) + now - t0
            return now

        try:
            t = time.perf_counter()
            prepared = prepare_audio(turn.audio, turn.rate, allow_silence=opts.allow_silence)
            for w in prepared.warnings:
                yield Notice(w)
            t = lap("audio", t)
            mel = log_mel(prepared.samples, self.model.n_mels)
            t = lap("mel", t)
            with torch.inference_mode():
                enc = self.model.encode(mel[None])
                t = lap("encoder", t)
                speech = self.model.adapter(enc)[0]
            t = lap("adapter", t)
            session.encoder_calls += 1
            user = UserTurn(speech, prepared.seconds, next(_utterance_ids))

            notices: list[str] = []
            turns = self._fit_history([*session.turns, user], notices)
            for n in notices:
                yield Notice(n)
            ids, keys, speeches = self._prompt(turns)
            if trace is not None:
                trace.prompt_ids = list(ids)

            runner = session.runner if (opts.reuse_prefix and session.runner is not None) else None
            if runner is None:
                runner = LMRunner(self.model.llm)
                session.runner, session.cached_keys = runner, []
            common = 0
            if opts.reuse_prefix:
                for a, b in zip(session.cached_keys, keys, strict=False):
                    if a != b:
                        break
                    common += 1
                common = min(common, len(keys) - 1)  # always run at least the last position
            else:
                runner.reset()
            runner.crop(common)
            session.cached_keys = session.cached_keys[:common]
            embeds = splice_speech(ids, self.loaded.speech_token_id, speeches, self.model.embed_text)
            hidden = runner.feed(embeds[common:])[-1]
            session.cached_keys = list(keys)
            timings["prefill_positions"] = float(len(keys) - common)
            t = lap("prefill", t)

            sampling = opts.llm_sampling
            if sampling.repetition_penalty == 1.0 and self.loaded.generation.repetition_penalty != 1.0:
                sampling = replace(sampling, repetition_penalty=self.loaded.generation.repetition_penalty)
            sampler = Sampler(sampling, seed=opts.seed, allowed=self._text_vocab_mask)
            eos = set(self.loaded.generation.eos_ids)
            speak = opts.speak and self.loaded.can_speak
            if speak:
                r, w = opts.stream_params or self.loaded.config.stream_params
                writer = UnitWriter(self.model.speech_generator, self.loaded.tts_vocab, r, w, opts.tts_sampling,
                                    seed=opts.tts_seed, restrict_to_units=opts.restrict_units,
                                    max_drain=opts.max_drain, use_cache=opts.tts_cache, trace=opts.trace)
            if speak and self.vocoder is not None:
                threaded = opts.vocoder_thread if opts.vocoder_thread is not None else self.loaded.device.type == "cuda"
                pump = AudioPump(self.vocoder.stream(opts.voice, incremental=opts.incremental_flow), threaded)

            def audio_events(pieces: list) -> Iterator[AudioChunk]:
                nonlocal first_audio, audio_samples
                for wav, seconds in pieces:
                    timings["vocoder"] = timings.get("vocoder", 0.0) + seconds
                    if wav.size:
                        if first_audio is None:
                            first_audio = time.perf_counter() - t_start
                        audio_samples += wav.size
                        yield AudioChunk(wav, self.vocoder.sample_rate)
            detok = _Detokenizer(self.tokenizer)

            while True:
                if turn.cancelled:
                    stop = "cancelled"
                    break
                t = time.perf_counter()
                tok = sampler(runner.logits(hidden), text_ids)
                text_ids.append(tok)
                if trace is not None:
                    trace.hidden.append(hidden.float().cpu())
                finished = tok in eos or len(text_ids) >= opts.max_new_tokens
                delta = "" if tok in eos else detok.push(tok)
                t = lap("llm", t)
                if delta:
                    if first_text is None:
                        first_text = time.perf_counter() - t_start
                    yield TextDelta(delta, [tok])
                if writer is not None:
                    due = writer.read(tok, hidden)
                    if due or finished:
                        new = writer.write(final=finished)
                        t = lap("tts", t)
                        units.extend(new)
                        window_text_units.append((writer.n_text, len(units)))
                        if new and first_unit is None:
                            first_unit = time.perf_counter() - t_start
                        yield Units(new, final=finished)
                        if pump is not None:
                            pump.submit(new, final=finished)
                if pump is not None:
                    yield from audio_events(pump.ready())
                if finished:
                    stop = "eos" if tok in eos else "max_new_tokens"
                    break
                if turn.cancelled:
                    stop = "cancelled"
                    break
                t = time.perf_counter()
                hidden = runner.feed_ids([tok])[-1]
                session.cached_keys.append(("t", tok))
                lap("llm", t)

            if pump is not None and stop != "cancelled":
                yield from audio_events(pump.drain())
            kept = self._kept_text_ids(turn, text_ids, units, window_text_units, speak)
            text = self.tokenizer.decode([i for i in kept if i not in eos], skip_special_tokens=True).strip()
            session.dropped_turns += len(session.turns) + 1 - len(turns)
            session.turns = [*turns, AssistantTurn(text)]
            committed = True
            if trace is not None:
                trace.text_ids = list(text_ids)
                trace.writer = writer.trace if writer is not None else None
            timings["total"] = time.perf_counter() - t_start
            turn.result = TurnEnd(
                text=text, units=list(units), timings=timings, first_text_latency=first_text,
                first_unit_latency=first_unit, first_audio_latency=first_audio,
                cancelled=stop == "cancelled", stop_reason=stop,
                audio_seconds=audio_samples / (self.vocoder.sample_rate if self.vocoder else 24_000),
                text_ids=list(text_ids), windows=list(window_text_units), trace=trace,
            )
            yield turn.result
        except (Omni2Error, RuntimeError, ValueError) as exc:
            if not committed:
                # The LLM cache may hold a partial turn: drop it so the next turn re-prefills.
                if session.runner is not None:
                    session.runner.reset()
                session.cached_keys = []
            log.debug("turn failed", exc_info=True)
            turn.result = TurnEnd(text="", units=list(units), timings=timings, error=str(exc),
                                  stop_reason="error")
            if isinstance(exc, Omni2Error):
                yield turn.result
            else:
                raise
        finally:
            if pump is not None:
                pump.close()

    @staticmethod
    def _kept_text_ids(turn: Turn, text_ids: list[int], units: list[int],
                       windows: list[tuple[int, int]], speak: bool) -> list[int]:
        """After a cancel, keep only the text whose speech was delivered (all of it otherwise)."""
        if not turn.cancelled or not speak:
            return text_ids
        delivered = len(units) if turn.delivered_units is None else turn.delivered_units
        return heard_text_ids(text_ids, windows, delivered)

    def keep_heard(self, session: Session, result: TurnEnd, heard_units: int) -> str:
        """Barge-in after a turn has ended (playback outlasts generation): shorten the session's last
        assistant turn to the text whose speech was heard, by the same rule as a cancel. Returns it."""
        eos = set(self.loaded.generation.eos_ids)
        kept = heard_text_ids(result.text_ids, result.windows, heard_units)
        text = self.tokenizer.decode([i for i in kept if i not in eos], skip_special_tokens=True).strip()
        active = session.active_turn
        if active is not None and active.result is result:
            # Called while the turn that produced ``result`` is yielding it (possibly on this very
            # thread): its commit is done, so the history can be edited without the lock.
            self._shorten_last(session, result, text)
        else:
            with session.lock:
                self._shorten_last(session, result, text)
        return text

    @staticmethod
    def _shorten_last(session: Session, result: TurnEnd, text: str) -> None:
        last = session.turns[-1] if session.turns else None
        if isinstance(last, AssistantTurn) and last.text == result.text:
            session.turns[-1] = AssistantTurn(text)  # the LLM cache re-prefills from the change on


def heard_text_ids(text_ids: list[int], windows: list[tuple[int, int]], heard_units: int) -> list[int]:
    """Text tokens up to the last TTS window whose units were all heard (nothing before the first)."""
    keep = 0
    for n_text, n_units in windows:
        if 0 < n_units <= heard_units:
            keep = n_text
    return text_ids[:keep]

