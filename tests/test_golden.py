"""Reference cases produced by the official code on tiny random checkpoints.

Every case folder (one holding ``case.json``) under tests/data/golden/ — or, when the environment
variable ``OMNI2_GOLDEN_DIR`` is set, under that folder instead — becomes one test named after the
folder. The case's ``kind`` picks the checker; an unknown kind fails with a clear reason.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.golden_checks import CHECKERS

DEFAULT_DIR = Path(__file__).parent / "data" / "golden"


def golden_dir() -> Path:
    env = os.environ.get("OMNI2_GOLDEN_DIR")
    return Path(env).expanduser() if env else DEFAULT_DIR


def case_dirs() -> list[Path]:
    root = golden_dir()
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if (p / "case.json").is_file())


_CASES = case_dirs()


def test_golden_cases_exist() -> None:
    assert _CASES, f"no golden case folders (with case.json) found in {golden_dir()}"


@pytest.mark.parametrize("case_dir", _CASES, ids=[c.name for c in _CASES])
def test_golden(case_dir: Path) -> None:
    case = json.loads((case_dir / "case.json").read_text())
    kind = case.get("kind")
    checker = CHECKERS.get(kind)
    if checker is None:
        pytest.fail(f"{case_dir.name}: unknown golden kind {kind!r}; known kinds: {sorted(CHECKERS)}")
    checker(case_dir, case)
