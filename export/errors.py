"""Errors of the export toolchain: one line for the user, an exit code for the CLI."""

from __future__ import annotations

from engine.errors import LandSegError


class ExportError(LandSegError):
    """The model cannot be exported, fails its parity check, or a tool it needs is missing."""

    exit_code = 5
