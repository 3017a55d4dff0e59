"""Errors an analyst may see. Each carries a one-line message and a process exit code.

Anything raised from the engine that is *not* a LandSegError is a bug; the CLI reports it as such.
"""

from __future__ import annotations


class LandSegError(Exception):
    """Base class: a problem with the user's input, model or output, explained in one line."""

    exit_code = 1


class InputError(LandSegError):
    """A raster input is missing, unreadable, misaligned or does not match the model."""

    exit_code = 2


class ModelError(LandSegError):
    """The model file or its metadata is missing, corrupt or inconsistent."""

    exit_code = 3


class OutputError(LandSegError):
    """The output location cannot be written."""

    exit_code = 4


class Cancelled(LandSegError):
    """The user cancelled the run; outputs were removed."""

    exit_code = 130
