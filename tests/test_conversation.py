"""Barge-in bookkeeping shared by the web UI and the microphone loop (app/conversation.py)."""

from __future__ import annotations

import threading

from app.conversation import Conversation
from omni2.engine import ReplyOptions
from omni2.events import TurnEnd, Units
from omni2.sampling import SamplingConfig


def test_interrupt_after_the_last_window_shortens_the_history(engine, tiny, question_wav) -> None:
    """Barge-in lands after the final units but before the turn is committed: no deadlock, text shortened."""
    conv = Conversation(engine)
    reply = conv.start(question_wav, options=ReplyOptions(max_new_tokens=9, tts_sampling=SamplingConfig(),
                                                          max_drain=20))
    done = threading.Event()
    events = []

    def consume() -> None:
        for ev in reply.events():
            events.append(ev)
            if isinstance(ev, Units) and ev.final:
                conv.interrupt(heard_units=15)  # windows 1 (10 units) heard, window 2 not
        done.set()

    t = threading.Thread(target=consume, daemon=True)
    t.start()
    assert done.wait(120), "the reply never finished (deadlock?)"
    end = events[-1]
    assert isinstance(end, TurnEnd) and not end.cancelled
    expected = tiny.tokenizer.decode(end.text_ids[: end.windows[0][0]], skip_special_tokens=True).strip()
    assert conv.session.history_text == [expected]
