"""Directories as transactions: one writer at a time, built aside, swapped in whole.

- :func:`locked` takes an advisory ``fcntl`` lock on ``.<name>.lock`` beside a directory: a
  second writer of the same directory fails at once, in one line, naming the holder's pid.
  The lock file lives beside the directory (not in it), so it guards a directory that does
  not exist yet and survives the directory being swapped.
- :func:`staging_dir` names a fresh ``.<name>.staging-<hex>`` beside the target; the new
  content is written there and :func:`swap_in` puts it in the target's place with one
  ``renameat2(RENAME_EXCHANGE)`` (two renames where the file system lacks it), then removes
  the old content. A crash leaves the old directory or the new one, and a leftover staging
  directory that the next writer of the same target removes (:func:`remove_leftovers`).

Readers take no lock: every file they read is replaced atomically, and a checkpoint reader
starts over when it meets a file that was replaced under it.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import os
import re
import secrets
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path

from ..errors import StorageError
from .atomic import TMP_PATTERN, storage_error

__all__ = [
    "locked",
    "staging_dir",
    "swap_in",
    "remove_leftovers",
    "make_parents",
    "remove_created",
    "check_contained",
]

_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


def _renameat2():
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    return fn


_EXCHANGE = _renameat2()


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically; ``False`` where the system cannot (then nothing happened)."""
    if _EXCHANGE is None:
        return False
    if _EXCHANGE(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
        return False
    raise OSError(code, os.strerror(code), str(b))


def _sync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _named(target: str | os.PathLike) -> Path:
    """``target`` with a name of its own: ``.`` and ``..`` become the absolute path they stand for, so
    the lock, staging and leftovers of a directory are the same whichever way it is spelled."""
    target = Path(target)
    return Path(os.path.abspath(target)) if target.name in ("", "..") else target


def _lock_path(target: Path) -> Path:
    return target.parent / f".{target.name}.lock"


@contextlib.contextmanager
def locked(target: str | os.PathLike, what: str = "directory") -> Iterator[None]:
    """Hold the advisory lock of ``target`` for the block; a second holder gets :class:`StorageError`.

    The lock file is removed on release. A process that opened it just before (and so locks
    a file no longer at that path) sees the path's inode change and tries again.
    """
    target = _named(target)
    lock = _lock_path(target)
    for _ in range(10):
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as err:
            raise storage_error(err, target.parent, "write into") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
            os.close(fd)
            raise StorageError(
                f"{target} is being written by another ppl-vae process (pid {holder}); "
                f"wait for it to finish or choose another {what}"
            ) from None
        try:
            same = os.fstat(fd).st_ino == os.stat(lock).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)  # the previous holder removed this file as we opened it: take the new one
    else:
        raise StorageError(f"cannot lock {target}: its lock file keeps changing")
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield
    finally:
        with contextlib.suppress(OSError):
            os.unlink(lock)
        os.close(fd)


def staging_dir(target: str | os.PathLike) -> Path:
    """Create and return a fresh, empty ``.<name>.staging-<hex>`` directory beside ``target``."""
    target = _named(target)
    path = target.parent / f".{target.name}.staging-{secrets.token_hex(6)}"
    try:
        path.mkdir()
    except OSError as err:
        raise storage_error(err, target.parent, "write into") from None
    return path


def swap_in(staging: Path, target: Path) -> None:
    """Put ``staging`` in ``target``'s place in one step; remove what was there before."""
    target = _named(target)
    try:
        if not target.exists():
            os.rename(staging, target)
        elif _exchange(staging, target):
            shutil.rmtree(staging)  # now the old content
        else:
            old = target.parent / f".{target.name}.old-{secrets.token_hex(6)}"
            os.rename(target, old)
            os.rename(staging, target)
            shutil.rmtree(old)
    except OSError as err:
        raise storage_error(err, target) from None
    _sync_dir(target.parent)


_LEFTOVER = re.compile(r"^\.(?P<name>.+)\.(staging|old)-[0-9a-f]{12}$")


def remove_leftovers(target: str | os.PathLike, subdirs: tuple[str, ...] = ()) -> list[Path]:
    """Remove what killed writers of ``target`` left: staging and old copies beside it, and
    temporary files in it (and in its ``subdirs``). Call only while holding :func:`locked`."""
    target = _named(target)
    removed = []
    if target.parent.is_dir():
        for path in target.parent.iterdir():
            m = _LEFTOVER.match(path.name)
            if m and m["name"] == target.name and path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
                removed.append(path)
    for folder in (target, *(target / s for s in subdirs)):
        if folder.is_dir() and not folder.is_symlink():
            for path in folder.iterdir():
                if TMP_PATTERN.match(path.name) and path.is_file():
                    path.unlink()
                    removed.append(path)
    return removed


def make_parents(path: str | os.PathLike) -> list[Path]:
    """Create the missing parents of ``path``; return the ones created (outermost first)."""
    created = []
    for parent in reversed(Path(path).absolute().parents):
        if not parent.exists():
            try:
                parent.mkdir()
            except FileExistsError:
                continue
            except OSError as err:
                remove_created(created)
                raise storage_error(err, parent, "create") from None
            created.append(parent)
        elif not parent.is_dir():
            remove_created(created)
            raise StorageError(f"cannot create {path}: {parent} is not a directory")
    return created


def remove_created(created: list[Path]) -> None:
    """Remove directories made by :func:`make_parents`, innermost first, where they are still empty."""
    for parent in reversed(created):
        with contextlib.suppress(OSError):
            parent.rmdir()


def check_contained(root: str | os.PathLike, names: Iterable[str], whole: Iterable[str] = ()) -> None:
    """Refuse (one line), before any work, a write into ``root/<name>`` that a symbolic link would carry out of
    ``root``: for each of ``names`` (relative paths) that exists, wherever a link sits on the way.

    A file written atomically replaces a link rather than writing through it, so ``names`` are the folders
    written into. The folders in ``whole`` are replaced as a whole (:func:`swap_in`), which a link cannot be:
    those are refused as links wherever they point.
    """
    root = Path(root)
    inside = Path(os.path.realpath(root))
    whole = set(whole)
    for name in [*names, *whole]:
        path = root / name
        if not (path.exists() or path.is_symlink()):
            continue
        real = Path(os.path.realpath(path))
        if real != inside and inside not in real.parents:
            raise StorageError(
                f"{path} leads to {real}, outside {root}; ppl_vae writes only inside its own folders: "
                "replace the link with a folder"
            )
        if name in whole and path.is_symlink():
            raise StorageError(f"{path} is a symbolic link; ppl_vae replaces it as a whole: replace it with a folder")
