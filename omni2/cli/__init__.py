"""Command-line front door: one parser, one module per sub-command.

Each sub-command module exposes ``register(subparsers) -> None`` (adds its parser and sets
``func`` via ``set_defaults``). ``main`` turns every :class:`omni2.errors.Omni2Error` into a short
message and exit status 2, so users never see a traceback for bad input.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from omni2.errors import Omni2Error

# Sub-command modules in the order `--help` lists them. A module that fails to import (for
# example an optional front end whose dependency is missing) is reported when it is chosen.
SUBCOMMANDS = ["web", "chat", "mic", "download", "vocode", "eval"]
DEFAULT_SUBCOMMAND = "web"

log = logging.getLogger("omni2")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="launch.py",
        description="omni2: real-time spoken chatbot (LLaMA-Omni2 reimplementation).",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMANDS:
        try:
            module = importlib.import_module(f"omni2.cli.{name}")
        except ModuleNotFoundError as exc:
            if exc.name and exc.name.startswith("omni2.cli."):
                continue  # sub-command not built yet
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    known = set(parser._subparsers._group_actions[0].choices)  # type: ignore[union-attr]
    if not any(a in known for a in argv) and not any(a in ("-h", "--help") for a in argv):
        if DEFAULT_SUBCOMMAND in known:
            argv = [DEFAULT_SUBCOMMAND, *argv]
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except Omni2Error as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
