"""Errors the bench raises for bad input; the CLI prints them as one line and exits 2."""

__all__ = ["UserError", "CheckpointError", "StorageError", "ProgramError"]


class UserError(ValueError):
    """Something the user gave (a name, a number, a file) cannot be used; the message says what to do."""


class CheckpointError(UserError):
    """A checkpoint or run directory is corrupt, foreign or unsafe to load."""


class StorageError(UserError):
    """An output cannot be written (full disk, no permission, a directory another process holds)."""


class ProgramError(UserError):
    """A user's own program raised an error, or may not be imported without the caller's trust."""
