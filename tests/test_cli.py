"""launch.py as a user runs it: real subprocesses, real files, no tracebacks on bad input."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT


def launch(*args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore"}
    return subprocess.run([sys.executable, str(REPO_ROOT / "launch.py"), *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, env=env, cwd=REPO_ROOT)


def test_chat_text_only_answers_a_spoken_question(tiny_dir, question_wav) -> None:
    r = launch("chat", "--model", tiny_dir, "--audio", question_wav, "--text-only", "--max-new-tokens", "8")
    assert r.returncode == 0, r.stderr
    assert "RANDOM weights" in r.stderr  # the tiny model says plainly what it is
    assert r.stdout.strip(), "no reply printed"
    assert "Traceback" not in r.stderr


def test_chat_writes_official_units_and_answers(tiny_dir, question_wav, question2_wav, tmp_path) -> None:
    units, answers = tmp_path / "units.txt", tmp_path / "answers.jsonl"
    r = launch("chat", "--model", tiny_dir, "--audio", question_wav, "--audio", question2_wav,
               "--max-new-tokens", "6", "--tts-greedy", "--units-out", units, "--answers-out", answers)
    assert r.returncode == 0, r.stderr
    lines = units.read_text().splitlines()
    assert len(lines) == 2  # one line per answer
    assert all(re.fullmatch(r"(<\d+>)+", line) for line in lines)
    rows = [json.loads(x) for x in answers.read_text().splitlines()]
    assert [x["question_id"] for x in rows] == ["question", "question2"]
    assert [x["prediction_units"] for x in rows] == lines
    assert all(isinstance(x["prediction"], str) for x in rows)


def test_chat_history_text_replays_a_conversation(tiny_dir, question_wav, question2_wav) -> None:
    r = launch("chat", "--model", tiny_dir, "--audio", question_wav, "--history-text", "It is Paris.",
               "--audio", question2_wav, "--text-only", "--max-new-tokens", "4")
    assert r.returncode == 0, r.stderr
    bad = launch("chat", "--model", tiny_dir, "--audio", question_wav, "--history-text", "a", "--history-text",
                 "b", "--text-only")
    assert bad.returncode == 2 and "--history-text must be given once per earlier turn" in bad.stderr


def test_chat_reads_paths_from_stdin(tiny_dir, question_wav) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    r = subprocess.run([sys.executable, str(REPO_ROOT / "launch.py"), "chat", "--model", str(tiny_dir),
                        "--text-only", "--max-new-tokens", "3"], input=f"{question_wav}\n{question_wav}\n",
                       capture_output=True, text=True, timeout=240, env=env)
    assert r.returncode == 0, r.stderr
    assert r.stderr.count("first text") == 2


@pytest.mark.parametrize("content,message", [
    (b"", "empty"),
    (b"RIFF....WAVEfmt garbage" * 10, "cannot decode"),
])
def test_chat_bad_audio_is_a_message_not_a_traceback(tiny_dir, tmp_path, content, message) -> None:
    bad = tmp_path / "bad.wav"
    bad.write_bytes(content)
    r = launch("chat", "--model", tiny_dir, "--audio", bad, "--text-only")
    assert r.returncode != 0
    assert message in r.stderr and "Traceback" not in r.stderr


def test_chat_silent_audio(tiny_dir, tmp_path) -> None:
    import numpy as np
    import soundfile as sf

    path = tmp_path / "silence.wav"
    sf.write(path, np.zeros(16000, np.float32), 16000)
    r = launch("chat", "--model", tiny_dir, "--audio", path, "--text-only")
    assert r.returncode == 1 and "silent" in r.stderr and "Traceback" not in r.stderr


def test_missing_model_names_the_download_command(tmp_path, question_wav) -> None:
    r = launch("chat", "--model", tmp_path / "LLaMA-Omni2-0.5B", "--audio", question_wav)
    assert r.returncode == 2
    assert "python launch.py download" in r.stderr and "Traceback" not in r.stderr


def test_partial_checkpoint_is_specific(tiny_dir, tmp_path, question_wav) -> None:
    import shutil

    ckpt = tmp_path / "partial"
    shutil.copytree(tiny_dir, ckpt)
    (ckpt / "tokenizer_config.json").unlink()
    r = launch("chat", "--model", ckpt, "--audio", question_wav, "--text-only")
    assert r.returncode == 2 and "tokenizer_config.json" in r.stderr and "Traceback" not in r.stderr


def test_help_for_every_subcommand() -> None:
    r = launch("--help")
    assert r.returncode == 0
    for name in re.findall(r"^\s{4}(\w+)\s", r.stdout, flags=re.M):
        sub = launch(name, "--help")
        assert sub.returncode == 0 and "usage:" in sub.stdout, name


def test_make_tiny_command(tmp_path) -> None:
    r = subprocess.run([sys.executable, "-m", "omni2.tools.make_tiny", str(tmp_path / "t")], capture_output=True,
                       text=True, timeout=240, cwd=REPO_ROOT)
    assert r.returncode == 0, r.stderr
    assert "RANDOM weights" in r.stdout
    for f in ("config.json", "model.safetensors", "tokenizer_config.json", "vocab.json", "merges.txt",
              "tokenizer.json", "generation_config.json", "tts_tokenizer/tokenizer_config.json",
              "speech_encoder/tiny.pt"):
        assert (tmp_path / "t" / f).is_file(), f
    assert Path(tmp_path / "t" / "cosy2_decoder" / "cosyvoice.yaml").is_file()


def test_chat_writes_spoken_reply(tiny_dir, question_wav, tmp_path) -> None:
    import soundfile as sf

    units = tmp_path / "u.txt"
    r = launch("chat", "--model", tiny_dir, "--audio", question_wav, "--max-new-tokens", "6", "--tts-greedy",
               "--out-dir", tmp_path / "wavs", "--units-out", units)
    assert r.returncode == 0, r.stderr
    data, rate = sf.read(tmp_path / "wavs" / "question_reply.wav")
    n_units = units.read_text().count("<")
    assert rate == 24000 and len(data) == 960 * n_units and n_units > 0
