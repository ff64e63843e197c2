"""Typed events the streaming engine yields; every front end consumes only these."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class Notice:
    """Something the user should know that is not an error (audio trimmed, history shortened…)."""

    message: str


@dataclass
class TextDelta:
    """New reply text (already detokenized; may be empty when a token completes no character)."""

    text: str
    token_ids: list[int]


@dataclass
class Units:
    """New CosyVoice2 unit ids (0..6560) written by the TTS LM in one window."""

    units: list[int]
    final: bool = False


@dataclass
class AudioChunk:
    """Reply audio ready to play: float32 mono samples."""

    samples: np.ndarray
    sample_rate: int = 24_000


@dataclass
class TurnEnd:
    """The turn is over (finished, cancelled or failed); what the session kept and how long it took."""

    text: str
    units: list[int]
    timings: dict[str, float] = field(default_factory=dict)
    first_text_latency: float | None = None
    first_unit_latency: float | None = None
    first_audio_latency: float | None = None
    cancelled: bool = False
    error: str | None = None
    stop_reason: str = ""  # "eos", "max_new_tokens", "cancelled", "error"
    audio_seconds: float = 0.0
    text_ids: list[int] = field(default_factory=list)  # every generated token (eos included)
    windows: list[tuple[int, int]] = field(default_factory=list)  # per TTS window: (text tokens read, units so far)
    trace: Any = None  # ReplyTrace when asked for (tests, goldens)


Event = Notice | TextDelta | Units | AudioChunk | TurnEnd
