"""A built-in spoken-QA sample set (``--data sample``): 20 short factual questions with answers.

The questions are in the style of Llama Questions (one short fact each; accuracy = the answer
appears in the reply). Two items are two-turn conversations, so the history path is exercised
too. Audio is made at run time with espeak-ng into the run folder (no downloads, anyone can run
the whole pipeline); files already made from the same text are reused, so restarts are cheap.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import subprocess
from pathlib import Path

from omni2.errors import ConfigError

log = logging.getLogger(__name__)

# (id, question, answers); answers are alternatives, any one appearing in the reply counts.
QUESTIONS: list[tuple[str, str, list[str]]] = [
    ("q01", "What is the capital of France?", ["Paris"]),
    ("q02", "Which planet is known as the red planet?", ["Mars"]),
    ("q03", "Who wrote the play Romeo and Juliet?", ["Shakespeare"]),
    ("q04", "What is the largest ocean on Earth?", ["Pacific"]),
    ("q05", "How many legs does a spider have?", ["eight", "8"]),
    ("q06", "What gas do plants absorb from the air?", ["carbon dioxide", "CO2"]),
    ("q07", "Who painted the Mona Lisa?", ["Leonardo", "da Vinci"]),
    ("q08", "What is the chemical symbol for gold?", ["Au"]),
    ("q09", "In which country are the pyramids of Giza?", ["Egypt"]),
    ("q10", "What is the tallest mountain in the world?", ["Everest"]),
    ("q11", "How many days are there in a leap year?", ["366", "three hundred sixty six"]),
    ("q12", "What is the freezing point of water in degrees Celsius?", ["zero", "0"]),
    ("q13", "Which animal is the largest mammal?", ["blue whale"]),
    ("q14", "What language is mainly spoken in Brazil?", ["Portuguese"]),
    ("q15", "Who was the first person to walk on the moon?", ["Armstrong"]),
    ("q16", "What is the hardest natural substance?", ["diamond"]),
    ("q17", "Which organ pumps blood through the human body?", ["heart"]),
    ("q18", "What is the largest planet in our solar system?", ["Jupiter"]),
]

# (id, [(question, assistant reply), ...], final question, answers)
CONVERSATIONS: list[tuple[str, list[tuple[str, str]], str, list[str]]] = [
    ("c01", [("Who wrote the novel Pride and Prejudice?", "Pride and Prejudice was written by Jane Austen.")],
     "In which country was she born?", ["England", "English", "Britain", "United Kingdom"]),
    ("c02", [("What is the capital of Japan?", "The capital of Japan is Tokyo.")],
     "Which currency is used in that country?", ["yen"]),
]

SAMPLE_NAME = "sample"


def sample_fingerprint() -> str:
    """Changes whenever the questions change (stored in run.json so old runs are not mixed in)."""
    blob = json.dumps([QUESTIONS, CONVERSATIONS], sort_keys=True).encode()
    return hashlib.sha1(blob).hexdigest()[:12]


def sample_size() -> int:
    return len(QUESTIONS) + len(CONVERSATIONS)


def speak(text: str, path: Path, voice: str = "en-us") -> Path:
    """Synthesize ``text`` with espeak-ng into ``path`` (atomic, reused when the text is unchanged)."""
    stamp = path.with_suffix(".txt")
    if path.is_file() and path.stat().st_size > 44 and stamp.is_file() and stamp.read_text() == text:
        return path
    exe = shutil.which("espeak-ng") or shutil.which("espeak")
    if exe is None:
        raise ConfigError("the sample set is spoken with espeak-ng, which is not installed "
                          "(Debian/Ubuntu: apt-get install espeak-ng)")
    tmp = path.with_name(path.name + ".part")
    try:
        subprocess.run([exe, "-v", voice, "-w", str(tmp), text], check=True, capture_output=True, timeout=60)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
        raise ConfigError(f"espeak-ng failed to speak {text!r}: {exc}") from exc
    os.replace(tmp, path)
    stamp.write_text(text)
    return path


def build_sample(folder: str | Path) -> Path:
    """Speak the sample set into ``folder`` and write ``manifest.jsonl`` there; returns the manifest."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    for qid, question, answers in QUESTIONS:
        wav = speak(question, folder / f"{qid}.wav")
        lines.append({"id": qid, "audio": wav.name, "question": question, "answers": answers})
    for cid, history, question, answers in CONVERSATIONS:
        turns: list[dict] = []
        for i, (q, reply) in enumerate(history):
            turns.append({"audio": speak(q, folder / f"{cid}_{i}.wav").name, "text": q, "from": "human"})
            turns.append({"from": "gpt", "text": reply})
        turns.append({"audio": speak(question, folder / f"{cid}_{len(history)}.wav").name, "from": "human"})
        lines.append({"id": cid, "turns": turns, "question": question, "answers": answers})
    manifest = folder / "manifest.jsonl"
    tmp = manifest.with_name(manifest.name + ".part")
    tmp.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    os.replace(tmp, manifest)
    log.info("sample set: %d spoken questions in %s", len(lines), folder)
    return manifest
