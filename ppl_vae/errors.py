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
    """Something the user gave (a name, a number, a file) cannot be used: ``reason`` says what is wrong,
    ``hint`` what to do instead; the message is ``"reason; hint"``. Code reads the fields, never the message.

    >>> err = UserError("--sigma must be positive", "try --sigma 0.1")
    >>> str(err), err.reason, err.hint
    ('--sigma must be positive; try --sigma 0.1', '--sigma must be positive', 'try --sigma 0.1')
    """

    def __init__(self, reason: str = "", hint: str = ""):
        super().__init__(f"{reason}; {hint}" if hint else reason)
        self.reason, self.hint = reason, hint

    def __reduce__(self):  # across processes (a study's workers) with both fields
        return type(self), (self.reason, self.hint)


class CheckpointError(UserError):
    """A checkpoint or run directory is corrupt, foreign or unsafe to load."""


class StorageError(UserError):
    """An output cannot be written (full disk, no permission, a directory another process holds)."""


class ProgramError(UserError):
    """A user's own program raised an error, or may not be imported without the caller's trust."""
