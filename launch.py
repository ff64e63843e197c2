"""Single entry point for omni2.

    python launch.py                  # browser voice chat (default sub-command: web)
    python launch.py chat --model DIR --audio q.wav --text-only
    python launch.py download         # fetch the official checkpoints into checkpoints/
    python launch.py vocode --decoder DIR --units units.txt --out-dir wavs/

Run `python launch.py SUBCOMMAND --help` for the options of each.
"""

from __future__ import annotations

import sys

from omni2.cli import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
