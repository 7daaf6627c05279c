"""Atomic file writes: every output is written to a temporary file and renamed into place.

A crash can leave a stray ``.<name>.tmp-<hex>`` file, never a half-written output; the next
writer of the same run removes such leftovers (:func:`ppl_vae.storage.directories.remove_leftovers`).
A write that fails for want of space or permission raises :class:`~ppl_vae.errors.StorageError`
(one line) and leaves the file it would have replaced as it was.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import os
import re
import secrets
import stat
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, BinaryIO

from ..errors import StorageError, UserError

__all__ = [
    "atomic_path",
    "write_bytes",
    "write_text",
    "write_json",
    "write_csv",
    "read_json",
    "read_bounded",
    "open_regular",
    "check_regular",
    "sha256_file",
    "sha256_bytes",
    "check_writable",
    "storage_error",
    "TMP_PATTERN",
]

TMP_PATTERN = re.compile(r"^\..+\.tmp-[0-9a-f]{12}$")
"""The name of a temporary file of :func:`atomic_path` (a leftover when its writer was killed)."""


def storage_error(err: OSError, path: str | os.PathLike, doing: str = "write") -> StorageError:
    """``err`` as one line naming the path: what failed and why (no space, no permission, ...)."""
    reason = err.strerror or type(err).__name__
    return StorageError(f"cannot {doing} {path}: {reason}; nothing was replaced")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` if the block succeeds."""
    path = Path(path)
    tmp = path.parent / f".{path.name}.tmp-{secrets.token_hex(6)}"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # created with mode 0666 and O_EXCL: the process's umask applies, as for any file it writes,
        # and the name cannot be taken over by another writer
        os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    except OSError as err:
        raise storage_error(err, path) from None
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as err:  # a full disk, a quota, a read-only file system: one line, the old file kept
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise storage_error(err, path) from None
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: str | os.PathLike, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True, allow_nan=True) + "\n")


def write_csv(path: str | os.PathLike, rows: list[dict[str, Any]], columns: Sequence[str] | None = None) -> None:
    """Rows as CSV; ``columns`` fixes the order of the columns (default: the keys of the first row)."""
    buf = io.StringIO()
    if rows:
        writer = csv.DictWriter(buf, fieldnames=list(columns or rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    write_text(path, buf.getvalue())


_KINDS = (
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a device"),
    (stat.S_ISBLK, "a device"),
)


def _kind(mode: int) -> str | None:
    """What a file of ``mode`` is when it is neither a regular file nor a directory."""
    return next((name for test, name in _KINDS if test(mode)), None)


def check_regular(path: str | os.PathLike, what: str = "file", error: type = UserError) -> None:
    """Refuse (one line) a path that exists and is a FIFO, a socket or a device, whose reading would block
    or consume someone else's stream; a missing path or a directory is left to the caller's own message."""
    try:
        kind = _kind(os.stat(path).st_mode)
    except OSError:
        return
    if kind:
        raise error(f"{what} {path} is {kind}, not a regular file")


def open_regular(path: str | os.PathLike, what: str = "file", error: type = UserError) -> BinaryIO:
    """``open(path, "rb")`` of a regular file only: a FIFO, socket or device is refused in one line without
    blocking (it is opened non-blocking and checked on the open descriptor, so it cannot be swapped in between).

    ``FileNotFoundError`` and ``IsADirectoryError`` are raised as :func:`open` would, so the caller keeps its own
    message for those.
    """
    check_regular(path, what, error)
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise IsADirectoryError(21, os.strerror(21), str(path))
        kind = _kind(mode)
        if kind:
            raise error(f"{what} {path} is {kind}, not a regular file")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_bounded(path: str | os.PathLike, what: str, max_bytes: int, error: type = UserError) -> bytes:
    """The bytes of the regular file ``path``, read once; ``error`` (one line naming ``what``) where it is
    missing, a directory, unreadable or larger than ``max_bytes``."""
    path = Path(path)
    try:
        with open_regular(path, what, error) as f:
            data = f.read(max_bytes + 1)
    except FileNotFoundError:
        raise error(f"{what} not found: {path}") from None
    except IsADirectoryError:
        raise error(f"{what} {path} is a directory") from None
    except OSError as err:
        raise error(f"cannot read the {what} {path}: {err.strerror}") from None
    if len(data) > max_bytes:
        raise error(f"{what} {path} is larger than {max_bytes / (1 << 20):g} MiB; it is not a {what}")
    return data


def read_json(path: str | os.PathLike, what: str, max_bytes: int = 16 << 20, error: type = UserError) -> Any:
    """The JSON value in ``path``, or ``error`` (one line) if it is missing, too large or not JSON."""
    path = Path(path)
    data = read_bounded(path, what, max_bytes, error)
    try:
        return json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:
        raise error(f"{path} is not a valid {what}: {err}") from None


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open_regular(path) as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def check_writable(directory: str | os.PathLike) -> None:
    """Refuse (one line) a directory in which a file cannot be created, before any work is done.

    The test is the act itself — create a file and remove it — since permission bits say
    nothing about a read-only mount, a full disk of inodes or a directory that is a file.
    """
    directory = Path(directory)
    probe = directory / f".write-probe.tmp-{secrets.token_hex(6)}"
    try:
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        os.unlink(probe)
    except OSError as err:
        raise storage_error(err, directory, "write into") from None
