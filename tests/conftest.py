"""Shared fixtures: a tiny random checkpoint (made once per run) and spoken test questions."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

# No hub traffic and no Gradio telemetry, ever, in tests.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Idle OpenMP threads must not spin while a test waits on a subprocess (2 cores only).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

REPO_ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> Path:
    """A complete tiny random checkpoint in the official layout (plus a tiny decoder, when built)."""
    from omni2.tools.make_tiny import make_tiny

    return make_tiny(tmp_path_factory.mktemp("tiny") / "LLaMA-Omni2-tiny", seed=0)


@pytest.fixture(scope="session")
def tiny(tiny_dir):
    from omni2.checkpoint import load_omni2

    return load_omni2(tiny_dir, dtype="float32", device="cpu")


@pytest.fixture(scope="session")
def engine(tiny):
    from omni2.engine import Engine

    return Engine(tiny)


def speak(text: str, path: Path, rate: int | None = None) -> Path:
    """Synthesize ``text`` with espeak-ng (installed by .ci/run), optionally resampled with sox."""
    if shutil.which("espeak-ng") is None:
        pytest.fail("espeak-ng is not installed (apt-get install espeak-ng sox): tests need spoken audio")
    raw = path.with_suffix(".raw.wav")
    subprocess.run(["espeak-ng", "-w", str(raw), text], check=True, capture_output=True)
    if rate is None:
        raw.rename(path)
    else:
        subprocess.run(["sox", str(raw), "-r", str(rate), str(path)], check=True, capture_output=True)
        raw.unlink()
    return path


@pytest.fixture(scope="session")
def question_wav(tmp_path_factory) -> Path:
    return speak("What is the capital of France?", tmp_path_factory.mktemp("speech") / "question.wav")


@pytest.fixture(scope="session")
def question2_wav(tmp_path_factory) -> Path:
    return speak("And how many people live there?", tmp_path_factory.mktemp("speech") / "question2.wav")
