"""Error types with messages meant for users: the CLI and UIs print them without a traceback."""

from __future__ import annotations


class Omni2Error(Exception):
    """Base class: a problem the user can fix (bad input, missing files, wrong config)."""


class AudioError(Omni2Error):
    """Audio that cannot be read or used (empty, corrupt, non-finite, unsupported)."""


class CheckpointError(Omni2Error):
    """A checkpoint folder or file that is missing, partial or does not match its config."""


class ConfigError(Omni2Error):
    """A config file with missing, malformed or inconsistent values."""
