"""Errors a user can act on: one line saying what is wrong, plus a hint saying what to do."""

from __future__ import annotations


class CurateError(Exception):
    """A problem with the user's input or environment (not a bug in curate).

    The CLI prints ``error: <message>`` and, when given, ``hint: <hint>``, without a traceback.
    """

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message} (hint: {self.hint})"


class ConfigError(CurateError):
    """The pipeline definition is invalid; raised before any work starts."""


class ShardFailed(CurateError):
    """One or more shards could not be processed after all retries."""
