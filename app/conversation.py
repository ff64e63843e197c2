"""What every front end shares on top of the engine: a reply in progress, what the listener has
actually heard of it, and barge-in that leaves the history with only that.

The engine keeps only the heard text when a turn is cancelled *while generating*
(``turn.delivered_units``). On a small model generation often finishes long before playback
does, so a barge-in can also come after the turn ended; :meth:`Reply.interrupt` then shortens the
session's last assistant turn itself, using the same rule as the engine (text up to the last
TTS window whose units were all heard).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from omni2.engine import Engine, ReplyOptions, Turn
from omni2.events import AudioChunk, Event, TextDelta, TurnEnd, Units
from omni2.session import Session

log = logging.getLogger(__name__)

UNIT_SAMPLES = 960  # 24 kHz samples per CosyVoice2 unit (25 units per second)
UNITS_PER_SECOND = 25


class PlaybackClock:
    """Models a gapless player that starts each chunk when it arrives or when the previous ends.

    The web server cannot see the browser's audio clock; this estimate (time since the first
    chunk, minus gaps when generation was slower than real time) is what it uses for barge-in.
    """

    def __init__(self) -> None:
        self._segments: list[tuple[float, float]] = []  # (start, end) wall-clock seconds
        self._end = 0.0

    def reset(self) -> None:
        self._segments.clear()
        self._end = 0.0

    def add(self, seconds: float, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        start = max(now, self._end)
        self._end = start + seconds
        self._segments.append((start, self._end))

    def heard(self, now: float | None = None) -> float:
        """Seconds of audio played so far."""
        now = time.monotonic() if now is None else now
        return sum(max(0.0, min(now, e) - s) for s, e in self._segments)

    def remaining(self, now: float | None = None) -> float:
        """Seconds still queued for playback."""
        now = time.monotonic() if now is None else now
        return max(0.0, self._end - now)


@dataclass
class Reply:
    """One assistant reply: the engine turn plus what the front end tracked of its events."""

    turn: Turn
    session: Session
    text: str = ""
    units: int = 0
    audio_samples: int = 0
    windows: list[tuple[str, int]] = field(default_factory=list)  # (text so far, units so far)
    result: TurnEnd | None = None
    interrupted: bool = False
    heard_text: str | None = None  # set by interrupt()
    heard_units: int | None = None  # set by interrupt()
    started: float = field(default_factory=time.monotonic)
    first_audio: float | None = None  # monotonic time the first chunk was handed to the player
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def generating(self) -> bool:
        return self.result is None

    def events(self) -> Iterator[Event]:
        """Iterate the engine turn, keeping the bookkeeping barge-in needs."""
        for ev in self.turn:
            with self._lock:
                if isinstance(ev, TextDelta):
                    self.text += ev.text
                elif isinstance(ev, Units):
                    self.units += len(ev.units)
                    if self.units:
                        self.windows.append((self.text, self.units))
                elif isinstance(ev, AudioChunk):
                    self.audio_samples += ev.samples.size
                    if self.first_audio is None:
                        self.first_audio = time.monotonic()
                elif isinstance(ev, TurnEnd):
                    self.result = ev
                    if self.interrupted and self.heard_text is not None and not ev.cancelled:
                        # Interrupted between the last window and the commit: shorten now.
                        self._truncate_history(self.heard_text)
            yield ev

    def heard_units_from_clock(self, clock: PlaybackClock, now: float | None = None) -> int:
        return min(self.units, int(clock.heard(now) * UNITS_PER_SECOND))

    def interrupt(self, heard_units: int) -> str:
        """Barge-in: stop the reply; the session keeps only the text whose speech was heard.

        Returns the text kept in the history.
        """
        with self._lock:
            if self.interrupted:
                return self.heard_text or ""
            self.interrupted = True
            heard_units = max(0, min(heard_units, self.units))
            self.heard_units = heard_units
            kept = ""
            for text, n in self.windows:
                if 0 < n <= heard_units:
                    kept = text
            self.heard_text = kept.strip()
            if self.result is None:
                self.turn.delivered_units = heard_units
                self.turn.cancel()
            elif not self.result.error:
                self._truncate_history(self.heard_text)
            log.info("barge-in: %d of %d units heard; history keeps %r", heard_units, self.units,
                     self.heard_text[:60])
            return self.heard_text

    def _truncate_history(self, text: str) -> None:
        """Replace the last assistant turn (this reply) with what was heard (the engine's rule)."""
        if self.result is not None and self.heard_units is not None:
            self.heard_text = self.turn.engine.keep_heard(self.session, self.result, self.heard_units)


class Conversation:
    """One user's conversation (a browser tab, a microphone loop): engine session + current reply."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.session = engine.new_session()
        self.reply: Reply | None = None
        self.lock = threading.Lock()

    def start(self, audio, rate: int | None = None, options: ReplyOptions | None = None) -> Reply:
        reply = Reply(self.engine.respond(self.session, audio, options, rate=rate), self.session)
        with self.lock:
            self.reply = reply
        return reply

    def interrupt(self, heard_units: int) -> str | None:
        """Barge into the current reply (if any is generating or playing)."""
        with self.lock:
            reply = self.reply
        if reply is None or reply.interrupted:
            return None
        return reply.interrupt(heard_units)

    def clear(self) -> None:
        with self.lock:
            reply, self.reply = self.reply, None
        if reply is not None and reply.generating:
            reply.interrupt(0)
        self.session.clear()
