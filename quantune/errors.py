"""Error types: user mistakes get a message that says what to do, never a bare traceback."""

from __future__ import annotations


class QuantuneError(Exception):
    """Base class of every error quantune raises on purpose."""


class UserInputError(QuantuneError, ValueError):
    """Bad model, data, config or option given by the user; the message says how to fix it.

    The CLI prints the message alone and exits with code 2.
    """


class ConfigVersionError(UserInputError):
    """A config or artifact was written by a newer quantune, or has fields this version lacks."""
