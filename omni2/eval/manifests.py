"""Evaluation sets in the formats people already have, read into one list of :class:`EvalItem`.

Accepted (see :func:`load_manifest`):

* the official ``questions.json`` (spec §3.2): a JSON list of ``{"id", "conversation": [{"from":
  "human", "speech": path, "text"?}, {"from": "gpt", "text"}, …]}`` ending with a human turn.
  Earlier gpt turns are replayed as history (their text), exactly as the official script does.
  Optional per-item ``answers`` (list) or ``answer`` (string) give reference answers.
* JSONL, one item a line: ``{"id", "audio": path, "answers"?: [...], "question"?: text}`` or,
  for a conversation, ``{"id", "turns": [{"audio": path}, {"text": reply}, …, {"audio": path}]}``
  (the official ``{"from", "speech"/"text"}`` turn dicts are accepted too).
* a folder of audio files (searched recursively); ids are the relative paths without suffix.
  An optional ``answers.json`` in the folder maps id -> answer or list of answers.

Relative audio paths are resolved against the manifest's folder first, then the current folder
(the official examples use paths relative to the repository root). A missing audio file is not a
manifest error: the item fails at run time and is recorded as failed, like a corrupt file.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omni2.errors import ConfigError

log = logging.getLogger(__name__)

AUDIO_SUFFIXES = {".wav", ".flac", ".mp3", ".ogg", ".opus", ".m4a", ".aiff", ".aif", ".au"}


@dataclass
class EvalItem:
    """One question to answer: optional history (user audio, assistant text) then the audio to answer."""

    id: str
    audio: str
    history: list[tuple[str, str]] = field(default_factory=list)
    answers: list[str] = field(default_factory=list)
    question: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "audio": self.audio, "history": [list(h) for h in self.history],
                "answers": list(self.answers), "question": self.question}


def _resolve(path: str, base: Path) -> str:
    p = Path(path).expanduser()
    if p.is_absolute():
        return str(p)
    for cand in (base / p, Path.cwd() / p):
        if cand.exists():
            return str(cand.resolve())
    return str((base / p).resolve())  # does not exist: the item fails at run time, saying where


def _answers(raw: dict, where: str) -> list[str]:
    val = raw.get("answers", raw.get("answer"))
    if val is None:
        return []
    if isinstance(val, str):
        return [val]
    if isinstance(val, list | tuple) and all(isinstance(a, str | int | float) for a in val):
        return [str(a) for a in val]
    if isinstance(val, int | float):
        return [str(val)]
    raise ConfigError(f"{where}: 'answers' must be a string or a list of strings, got {val!r}")


def _turn_role(turn: Any, where: str) -> tuple[str, str]:
    """('user', audio path) or ('assistant', text) for one turn dict in either accepted form."""
    if not isinstance(turn, dict):
        raise ConfigError(f"{where}: a turn must be an object, got {turn!r}")
    role = str(turn.get("from", turn.get("role", ""))).lower()
    audio = turn.get("speech", turn.get("audio"))
    if role in ("human", "user") or (not role and audio is not None):
        if not isinstance(audio, str) or not audio:
            raise ConfigError(f"{where}: a user turn needs an audio path ('speech' or 'audio')")
        return "user", audio
    if role in ("gpt", "assistant") or (not role and "text" in turn):
        text = turn.get("text", turn.get("value"))
        if not isinstance(text, str):
            raise ConfigError(f"{where}: an assistant turn needs its 'text'")
        return "assistant", text
    raise ConfigError(f"{where}: cannot tell whether this turn is the user's or the assistant's: {turn!r}")


def _from_turns(item_id: str, turns: Any, base: Path, where: str) -> tuple[str, list[tuple[str, str]]]:
    if not isinstance(turns, list) or not turns:
        raise ConfigError(f"{where}: 'conversation'/'turns' must be a non-empty list")
    roles = [_turn_role(t, f"{where}, turn {i + 1}") for i, t in enumerate(turns)]
    for i, (role, _) in enumerate(roles):
        expected = "user" if i % 2 == 0 else "assistant"
        if role != expected:
            raise ConfigError(f"{where}, turn {i + 1}: turns must alternate user/assistant starting with "
                              f"the user; found {role} where {expected} was expected")
    if roles[-1][0] != "user":
        raise ConfigError(f"{where}: the conversation must end with a user turn (the question to answer)")
    history = [(_resolve(roles[i][1], base), roles[i + 1][1]) for i in range(0, len(roles) - 1, 2)]
    return _resolve(roles[-1][1], base), history


def _item(raw: Any, base: Path, where: str, index: int) -> EvalItem:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: an item must be a JSON object, got {type(raw).__name__}")
    item_id = str(raw.get("id", raw.get("question_id", index)))
    question = raw.get("question") if isinstance(raw.get("question"), str) else None
    if "conversation" in raw or "turns" in raw:
        audio, history = _from_turns(item_id, raw.get("conversation", raw.get("turns")), base, where)
        if question is None:
            last = (raw.get("conversation") or raw.get("turns"))[-1]
            question = last.get("text") if isinstance(last.get("text"), str) else None
    elif isinstance(raw.get("audio", raw.get("speech")), str):
        audio, history = _resolve(raw.get("audio", raw.get("speech")), base), []
    else:
        raise ConfigError(f"{where}: item {item_id!r} has neither 'audio' nor 'turns'/'conversation'")
    return EvalItem(item_id, audio, history, _answers(raw, where), question)


def _check_ids(items: list[EvalItem], source: Path) -> list[EvalItem]:
    seen: dict[str, int] = {}
    for i, it in enumerate(items):
        if it.id in seen:
            raise ConfigError(f"{source}: duplicate item id {it.id!r} (items {seen[it.id] + 1} and {i + 1}); "
                              "ids must be unique so a resumed run can tell items apart")
        seen[it.id] = i
    return items


def load_questions_json(path: Path) -> list[EvalItem]:
    """The official questions.json (a JSON list of conversation items)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path} is not valid JSON: {exc}") from exc
    if isinstance(data, dict) and isinstance(data.get("items"), list):
        data = data["items"]
    if not isinstance(data, list):
        raise ConfigError(f"{path}: expected a JSON list of items")
    base = path.parent
    return _check_ids([_item(raw, base, f"{path} item {i + 1}", i) for i, raw in enumerate(data)], path)


def load_jsonl(path: Path) -> list[EvalItem]:
    """One JSON item per line; blank lines and lines starting with '#' are ignored."""
    items = []
    base = path.parent
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        try:
            raw = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{path}:{n}: not valid JSON: {exc}") from exc
        items.append(_item(raw, base, f"{path}:{n}", len(items)))
    return _check_ids(items, path)


def load_folder(path: Path) -> list[EvalItem]:
    """Every audio file under ``path`` (sorted), with answers from an optional answers.json."""
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in AUDIO_SUFFIXES)
    answers: dict[str, Any] = {}
    ans_file = path / "answers.json"
    if ans_file.is_file():
        try:
            answers = json.loads(ans_file.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{ans_file} is not valid JSON: {exc}") from exc
        if not isinstance(answers, dict):
            raise ConfigError(f"{ans_file}: expected an object mapping item id -> answer(s)")
    items = []
    for f in files:
        item_id = f.relative_to(path).with_suffix("").as_posix()
        raw = {"answers": answers[item_id]} if item_id in answers else {}
        items.append(EvalItem(item_id, str(f.resolve()), [], _answers(raw, str(ans_file))))
    return _check_ids(items, path)


def load_manifest(path: str | Path) -> list[EvalItem]:
    """Read any accepted manifest form; ConfigError says what is wrong and where."""
    path = Path(path).expanduser()
    if path.is_dir():
        items = load_folder(path)
    elif path.is_file():
        head = path.read_text(encoding="utf-8").lstrip()[:1]
        items = load_questions_json(path) if head == "[" or path.suffix == ".json" else load_jsonl(path)
    else:
        raise ConfigError(f"evaluation data not found: {path} (give a questions.json, a .jsonl manifest, "
                          "a folder of audio files, or 'sample')")
    if not items:
        raise ConfigError(f"{path}: no evaluation items found")
    return items
