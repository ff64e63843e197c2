"""Chat prompt rendering and speech splicing (spec §1.4).

Every user turn is the single token ``<speech>``; assistant turns carry their text. The prompt is
rendered with the checkpoint's own chat template (never hand-written), then each ``<speech>`` id is
replaced, in order, by that utterance's adapter output (300 vectors for 30 s of audio).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

SPEECH_TOKEN = "<speech>"


@dataclass(frozen=True)
class ChatTurn:
    """role 'user' (its speech comes separately, in order) or 'assistant' (text)."""

    role: str
    text: str = ""


def render_prompt_ids(tokenizer, turns: Sequence[ChatTurn]) -> list[int]:
    """Token ids of the official prompt for ``turns`` (must end with a user turn)."""
    if not turns or turns[-1].role != "user":
        raise ValueError("a prompt must end with a user turn")
    messages = [
        {"role": "user", "content": SPEECH_TOKEN} if t.role == "user" else {"role": "assistant", "content": t.text}
        for t in turns
    ]
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    if isinstance(ids, dict):  # some tokenizer versions return a BatchEncoding
        ids = ids["input_ids"]
    return [int(i) for i in ids]


def splice_speech(
    ids: Sequence[int], speech_token_id: int, speech: Sequence[torch.Tensor], embed
) -> torch.Tensor:
    """(L', H) prompt embeddings: text pieces embedded with ``embed``, i-th ``<speech>`` -> speech[i]."""
    positions = [i for i, t in enumerate(ids) if t == speech_token_id]
    if len(positions) != len(speech):
        raise ValueError(f"prompt has {len(positions)} <speech> slots but {len(speech)} utterances were given")
    ids_t = torch.tensor(list(ids), dtype=torch.long)
    pieces: list[torch.Tensor] = []
    start = 0
    for pos, feats in zip(positions, speech, strict=True):
        if pos > start:
            pieces.append(embed(ids_t[start:pos]))
        pieces.append(feats)
        start = pos + 1
    if start < len(ids):
        pieces.append(embed(ids_t[start:]))
    device = pieces[0].device
    return torch.cat([p.to(device) for p in pieces], dim=0)
