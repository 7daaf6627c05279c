"""Errors the bench raises for bad input; the CLI prints them as one line and exits 2."""

__all__ = ["UserError", "CheckpointError", "StorageError", "ProgramError", "bounded", "MAX_MESSAGE"]

MAX_MESSAGE = 1000
"""The most characters of a message shown: what a user typed (a name, a path, a value) can be any length."""


def bounded(text: str, limit: int = MAX_MESSAGE) -> str:
    """``text`` cut to about ``limit`` characters, its head and tail kept and the cut said."""
    text = str(text)
    if len(text) <= limit:
        return text
    keep = max(limit - 40, 2) // 2
    return f"{text[:keep]}...[{len(text) - 2 * keep} characters cut]...{text[-keep:]}"


class UserError(ValueError):
    """Something the user gave (a name, a number, a file) cannot be used; the message says what to do."""


class CheckpointError(UserError):
    """A checkpoint or run directory is corrupt, foreign or unsafe to load."""


class StorageError(UserError):
    """An output cannot be written (full disk, no permission, a directory another process holds)."""


class ProgramError(UserError):
    """A user's own program raised an error, or may not be imported without the caller's trust."""
