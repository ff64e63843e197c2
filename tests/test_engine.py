"""The streaming engine and sessions on the tiny checkpoint (issue 3's behaviours)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from omni2.checkpoint import GenerationDefaults
from omni2.engine import Engine, ReplyOptions
from omni2.events import Notice, TextDelta, TurnEnd, Units
from omni2.sampling import SamplingConfig

GREEDY = SamplingConfig()


def opts(**kw) -> ReplyOptions:
    base = dict(max_new_tokens=12, tts_sampling=GREEDY, trace=True, max_drain=40)
    base.update(kw)
    return ReplyOptions(**base)


def run(engine, session, audio, **kw) -> tuple[list, TurnEnd]:
    events = list(engine.respond(session, audio, opts(**kw)))
    assert isinstance(events[-1], TurnEnd)
    return events, events[-1]


def engine_with_eos(tiny, eos_ids) -> Engine:
    return Engine(dataclasses.replace(tiny, generation=GenerationDefaults(eos_ids=list(eos_ids))))


def test_events_stream_in_order(engine, question_wav) -> None:
    events, end = run(engine, engine.new_session(), question_wav)
    kinds = [type(e).__name__ for e in events]
    assert kinds[-1] == "TurnEnd" and end.error is None
    units = [e for e in events if isinstance(e, Units)]
    assert units and units[-1].final and not any(u.final for u in units[:-1])
    assert sum(len(u.units) for u in units) == len(end.units)
    assert all(0 <= u < 64 for u in end.units)
    assert "".join(e.text for e in events if isinstance(e, TextDelta)).strip() == end.text
    assert end.first_text_latency is not None and end.first_unit_latency is not None
    for stage in ("mel", "encoder", "adapter", "prefill", "llm", "tts", "total"):
        assert end.timings[stage] >= 0.0
    # R=3, W=10: every non-final window reads 3 text tokens and writes 10 tokens
    w = end.trace.writer
    assert w.text_window_ends[:-1] == list(range(3, 3 * len(w.text_window_ends) - 2, 3))


def test_tts_cache_matches_official_reread(engine, question_wav) -> None:
    _, cached = run(engine, engine.new_session(), question_wav, tts_cache=True)
    _, reread = run(engine, engine.new_session(), question_wav, tts_cache=False)
    assert cached.trace.writer.tts_token_ids == reread.trace.writer.tts_token_ids
    assert cached.units == reread.units
    torch.testing.assert_close(torch.cat(cached.trace.writer.fused), torch.cat(reread.trace.writer.fused))


@pytest.mark.parametrize("rw", [(1, 1), (1, 5), (2, 10), (5, 20)])
def test_any_read_write_schedule(engine, question_wav, rw) -> None:
    _, end = run(engine, engine.new_session(), question_wav, stream_params=rw, max_new_tokens=7)
    w = end.trace.writer
    r, wr = rw
    n_windows = len(w.text_window_ends)
    assert w.text_window_ends[-1] == len(end.trace.text_ids)
    assert n_windows == -(-len(end.trace.text_ids) // r)
    steps = [b - a for a, b in zip([0, *w.tts_window_ends], w.tts_window_ends, strict=False)]
    assert all(s <= wr for s in steps[:-1])


def test_seeded_sampling_is_reproducible(engine, question_wav) -> None:
    sampled = SamplingConfig(temperature=1.0, top_k=50, top_p=0.9)
    a = run(engine, engine.new_session(), question_wav, tts_sampling=sampled, tts_seed=7,
            llm_sampling=sampled, seed=3)[1]
    b = run(engine, engine.new_session(), question_wav, tts_sampling=sampled, tts_seed=7,
            llm_sampling=sampled, seed=3)[1]
    c = run(engine, engine.new_session(), question_wav, tts_sampling=sampled, tts_seed=8,
            llm_sampling=sampled, seed=3)[1]
    assert a.trace.text_ids == b.trace.text_ids and a.units == b.units
    assert a.units != c.units


def test_unit_mask(engine, tiny, question_wav) -> None:
    v = tiny.tts_vocab
    sampled = SamplingConfig(temperature=5.0)  # flat: would pick text tokens if allowed
    masked = run(engine, engine.new_session(), question_wav, tts_sampling=sampled, tts_seed=1, max_drain=30)[1]
    toks = masked.trace.writer.tts_token_ids
    assert all(v.is_unit(t) or t == v.eos_id for t in toks)
    free = run(engine, engine.new_session(), question_wav, tts_sampling=sampled, tts_seed=1, max_drain=30,
               restrict_units=False)[1]
    toks = free.trace.writer.tts_token_ids
    assert any(not v.is_unit(t) and t != v.eos_id for t in toks)  # text tokens happen without the mask…
    assert len(free.units) == sum(v.is_unit(t) for t in toks)  # …and never become units


def test_unit_rows_only_head_equals_full_head_with_mask(tiny) -> None:
    """The TTS head computes only unit/eos rows; logits, and so seeded samples, equal the full head's."""
    from omni2.sampling import TTS_OFFICIAL, Sampler
    from omni2.unit_writer import _allowed_ids, _allowed_mask

    gen, v = tiny.model.speech_generator, tiny.tts_vocab
    size = gen.model.config.vocab_size
    ids, mask = _allowed_ids(size, v), _allowed_mask(size, v)
    hidden = torch.randn(20, gen.hidden_size, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        full = gen.model.lm_head(hidden)
        part = torch.stack([gen.logits_over(h, ids) for h in hidden])
    assert torch.isinf(part[:, ~mask]).all() and torch.isfinite(part[:, mask]).all()
    torch.testing.assert_close(part[:, mask], full[:, mask], atol=1e-5, rtol=1e-5)
    a, b = Sampler(TTS_OFFICIAL, seed=5, allowed=mask), Sampler(TTS_OFFICIAL, seed=5, allowed=mask)
    assert [a(x) for x in full] == [b(x) for x in part]
    # the copied rows follow in-place weight edits (e.g. a checkpoint loaded after first use)
    saved = gen.model.lm_head.weight[ids[0]].detach().clone()
    with torch.no_grad():
        gen.model.lm_head.weight[ids[0]] += 1.0
    try:
        with torch.inference_mode():
            torch.testing.assert_close(gen.logits_over(hidden[0], ids)[ids[0]], gen.model.lm_head(hidden[0])[ids[0]])
    finally:
        with torch.no_grad():
            gen.model.lm_head.weight[ids[0]] = saved


def test_llm_without_eos_stops_at_max_tokens(tiny, question_wav) -> None:
    eng = engine_with_eos(tiny, [10_000])  # an id the model can never produce
    _, end = run(eng, eng.new_session(), question_wav, max_new_tokens=9)
    assert end.stop_reason == "max_new_tokens" and len(end.trace.text_ids) == 9


def test_tts_without_eos_is_capped(engine, question_wav) -> None:
    _, end = run(engine, engine.new_session(), question_wav, max_drain=4)
    assert end.trace.writer.tts_token_ids[-1] != engine.loaded.tts_vocab.eos_id
    w = end.trace.writer
    assert w.tts_window_ends[-1] - w.tts_window_ends[-2] <= 4


def test_empty_reply(tiny, engine, question_wav) -> None:
    first = run(engine, engine.new_session(), question_wav, max_new_tokens=1)[1].trace.text_ids[0]
    eng = engine_with_eos(tiny, [first])
    session = eng.new_session()
    events, end = run(eng, session, question_wav)
    assert end.stop_reason == "eos" and end.text == ""
    assert not [e for e in events if isinstance(e, TextDelta) and e.text]
    assert len(end.trace.writer.fused[-1]) == 2  # the eos text token + <sep>
    assert session.history_text == [""]


def test_cancel_keeps_only_delivered_text(engine, tiny, question_wav) -> None:
    session = engine.new_session()
    turn = engine.respond(session, question_wav, opts(max_new_tokens=30))
    seen_units = 0
    after_cancel = []
    for event in turn:
        if turn.cancelled:
            after_cancel.append(event)
        elif isinstance(event, Units):
            seen_units += len(event.units)
            if seen_units >= 20:  # two windows written; the player says 15 were heard
                turn.delivered_units = 15
                turn.cancel()
    end = turn.result
    assert [type(e) for e in after_cancel] == [TurnEnd]  # stopped at once
    assert end.cancelled and end.stop_reason == "cancelled"
    w = end.trace.writer
    assert w.unit_window_ends[:2] == [10, 20]
    kept_ids = end.trace.text_ids[: w.text_window_ends[0]]  # only window 1's speech was fully heard
    assert session.history_text == [tiny.tokenizer.decode(kept_ids, skip_special_tokens=True).strip()]
    # the session is usable afterwards
    _, nxt = run(engine, session, question_wav)
    assert nxt.error is None and len(session.turns) == 4


def test_error_leaves_session_unchanged_and_usable(engine, question_wav, question2_wav) -> None:
    session = engine.new_session()
    run(engine, session, question_wav)
    before = list(session.turns)
    _, bad = run(engine, session, torch.zeros(16000).numpy())  # silence
    assert bad.error and "silent" in bad.error and bad.stop_reason == "error"
    assert session.turns == before
    _, ok = run(engine, session, question2_wav)
    assert ok.error is None and len(session.turns) == 4


def test_turn3_prompt_is_official_rendering_and_utterances_encoded_once(engine, tiny, question_wav,
                                                                        question2_wav, monkeypatch) -> None:
    calls = []
    real = engine.model.encode
    monkeypatch.setattr(engine.model, "encode", lambda mel: calls.append(1) or real(mel))
    session = engine.new_session()
    ends = [run(engine, session, wav, max_new_tokens=6)[1] for wav in (question_wav, question2_wav, question_wav)]
    assert len(calls) == 3 and session.encoder_calls == 3  # past utterances are never re-encoded
    replies = session.history_text
    messages = []
    for i in range(3):
        messages.append({"role": "user", "content": "<speech>"})
        if i < 2:
            messages.append({"role": "assistant", "content": replies[i]})
    official = tiny.tokenizer.apply_chat_template(messages, add_generation_prompt=True)
    assert ends[2].trace.prompt_ids == list(official)
    # turn 3 prefilled only what changed since turn 2 (not the whole conversation)
    expanded = len(ends[2].trace.prompt_ids) + 3 * 299  # each <speech> id becomes 300 positions
    assert ends[2].timings["prefill_positions"] < expanded - 2 * 300


def test_prefix_reuse_gives_the_same_reply_as_a_fresh_prefill(engine, question_wav, question2_wav) -> None:
    session = engine.new_session()
    run(engine, session, question_wav, max_new_tokens=6)
    reused = run(engine, session, question2_wav, max_new_tokens=8)[1]
    fresh = engine.new_session()
    engine.add_history(fresh, question_wav, session.history_text[0])
    again = run(engine, fresh, question2_wav, max_new_tokens=8, reuse_prefix=False)[1]
    assert reused.trace.prompt_ids == again.trace.prompt_ids
    assert reused.trace.text_ids == again.trace.text_ids
    assert reused.units == again.units


def test_long_history_drops_oldest_turns(tiny, question_wav) -> None:
    eng = Engine(tiny)
    eng.max_prompt = 700  # room for two utterances of 300 positions
    session = eng.new_session()
    for _ in range(2):
        run(eng, session, question_wav, max_new_tokens=4)
    events, end = run(eng, session, question_wav, max_new_tokens=4)
    notices = [e.message for e in events if isinstance(e, Notice)]
    assert any("dropped the oldest exchange" in n for n in notices)
    assert end.trace.prompt_ids.count(tiny.speech_token_id) == 2
    assert len(session.turns) == 4 and session.dropped_turns == 2


def test_sessions_are_independent(engine, question_wav, question2_wav) -> None:
    a, b = engine.new_session(), engine.new_session()
    ta = engine.respond(a, question_wav, opts())
    tb = engine.respond(b, question2_wav, opts())
    ia, ib = iter(ta), iter(tb)
    done = set()
    while len(done) < 2:  # interleave two turns event by event
        for name, it in (("a", ia), ("b", ib)):
            if name not in done and next(it, None) is None:
                done.add(name)
    solo = run(engine, engine.new_session(), question_wav)[1]
    assert ta.result.trace.text_ids == solo.trace.text_ids and ta.result.units == solo.units
    assert len(a.turns) == 2 and len(b.turns) == 2
    assert a.runner is not b.runner


@pytest.fixture(scope="module")
def speaking(tiny_dir):
    from omni2.runtime import load_engine

    eng = load_engine(tiny_dir, device="cpu", dtype="float32")
    assert eng.vocoder is not None
    eng.vocoder.set_deterministic(True)  # zero HiFT phases so runs compare exactly
    return eng


def audio_of(events) -> np.ndarray:
    from omni2.events import AudioChunk

    pieces = [e.samples for e in events if isinstance(e, AudioChunk)]
    return np.concatenate(pieces) if pieces else np.zeros(0, np.float32)


@pytest.mark.parametrize("threaded", [False, True])
def test_audio_streams_with_the_reply(speaking, question_wav, threaded) -> None:
    events, end = run(speaking, speaking.new_session(), question_wav, vocoder_thread=threaded, max_new_tokens=9)
    wav = audio_of(events)
    assert len(wav) == 960 * len(end.units) and np.isfinite(wav).all()
    assert end.first_audio_latency is not None and end.timings["vocoder"] > 0
    assert end.audio_seconds == pytest.approx(len(wav) / 24000)
    if not threaded:  # inline, the order is deterministic: audio starts before the text is over
        kinds = [type(e).__name__ for e in events]
        assert kinds.index("AudioChunk") < max(i for i, k in enumerate(kinds) if k == "Units")


def test_vocoder_thread_and_incremental_flow_change_nothing(speaking, question_wav) -> None:
    base = audio_of(run(speaking, speaking.new_session(), question_wav, vocoder_thread=False,
                        incremental_flow=False, max_new_tokens=9)[0])
    threaded = audio_of(run(speaking, speaking.new_session(), question_wav, vocoder_thread=True,
                            incremental_flow=False, max_new_tokens=9)[0])
    incremental = audio_of(run(speaking, speaking.new_session(), question_wav, vocoder_thread=True,
                               incremental_flow=True, max_new_tokens=9)[0])
    np.testing.assert_array_equal(base, threaded)
    np.testing.assert_allclose(incremental, base, atol=5e-3)


def test_cancel_with_vocoder_thread(speaking, question_wav) -> None:
    session = speaking.new_session()
    turn = speaking.respond(session, question_wav, opts(vocoder_thread=True, max_new_tokens=30))
    for event in turn:
        if isinstance(event, Units):
            turn.cancel()
    assert turn.result.cancelled and len(session.turns) == 2


def test_keep_heard_after_the_turn_ended(engine, tiny, question_wav) -> None:
    session = engine.new_session()
    _, end = run(engine, session, question_wav, max_new_tokens=12)
    assert end.windows[0] == (3, 10) and end.text_ids == end.trace.text_ids
    kept = engine.keep_heard(session, end, heard_units=25)  # windows 1 and 2 (10, 20 units) were heard
    expected = tiny.tokenizer.decode(end.text_ids[: end.windows[1][0]], skip_special_tokens=True).strip()
    assert kept == expected and session.history_text == [expected]
    engine.keep_heard(session, end, heard_units=0)  # the turn was already shortened: left alone
    assert session.history_text == [expected]
