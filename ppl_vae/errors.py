"""Errors the bench raises for bad input; the CLI prints them as one line and exits 2."""

__all__ = ["UserError", "CheckpointError"]


class UserError(ValueError):
    """Something the user gave (a name, a number, a file) cannot be used; the message says what to do."""


class CheckpointError(UserError):
    """A checkpoint or run directory is corrupt, foreign or unsafe to load."""
