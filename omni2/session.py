"""Multi-turn conversation state: user utterances (encoded once) and assistant texts.

The official server re-encodes every past utterance and re-prefills the whole conversation each
turn. A :class:`Session` keeps each utterance's adapter output and the LLM KV cache of the last
turn; the next turn reuses the longest unchanged prefix and runs only what is new. Sessions never
share state, so two browser tabs are two sessions.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

import torch

from omni2.lm_runner import LMRunner
from omni2.prompt import ChatTurn


@dataclass
class UserTurn:
    speech: torch.Tensor  # (300, H) adapter output, computed once
    seconds: float = 0.0
    uid: int = -1  # identifies the utterance in the LLM cache keys


@dataclass
class AssistantTurn:
    text: str


@dataclass
class Session:
    """One conversation. Not thread-safe for two concurrent turns (the engine locks it)."""

    turns: list[UserTurn | AssistantTurn] = field(default_factory=list)
    runner: LMRunner | None = None  # LLM cache of ``cached_keys``
    cached_keys: list = field(default_factory=list)  # one key per cached LLM position
    lock: threading.Lock = field(default_factory=threading.Lock)  # held by the running turn (any thread may release)
    active_turn: Any = None  # the Turn holding ``lock``, if any
    encoder_calls: int = 0  # how many utterances were encoded (tests check reuse)
    dropped_turns: int = 0

    def clear(self) -> None:
        with self.lock:
            self.turns.clear()
            self.cached_keys.clear()
            if self.runner is not None:
                self.runner.reset()

    @property
    def history_text(self) -> list[str]:
        return [t.text for t in self.turns if isinstance(t, AssistantTurn)]


def to_chat(turns: list[UserTurn | AssistantTurn]) -> list[ChatTurn]:
    """The chat-template view of a history: user turns are ``<speech>``, assistant turns their text."""
    return [ChatTurn("user") if isinstance(t, UserTurn) else ChatTurn("assistant", t.text) for t in turns]
