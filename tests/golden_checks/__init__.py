"""Checkers for golden case kinds: ``CHECKERS[kind](case_dir, case_json) -> None`` (asserts)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from tests.golden_checks.compare import GoldenMismatch  # noqa: F401  (re-export)

Checker = Callable[[Path, dict], None]
CHECKERS: dict[str, Checker] = {}


def register(*kinds: str) -> Callable[[Checker], Checker]:
    def deco(fn: Checker) -> Checker:
        for kind in kinds:
            CHECKERS[kind] = fn
        return fn

    return deco


def _load_checkers() -> None:
    """Importing the checker modules fills CHECKERS (a kind without a module stays unknown)."""
    import importlib

    for name in ("omni2", "cosy2"):
        try:
            importlib.import_module(f"tests.golden_checks.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"tests.golden_checks.{name}":
                raise


_load_checkers()
