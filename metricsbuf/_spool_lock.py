"""The spool folder on disk: its files, the checks made before SQLite opens them, and the lock.

This is the bottom of the spool: it knows the folder and its files, not what the store holds.
``Spool.open`` (in _spool.py) checks the store's files, then takes the lock, then connects. It
also defines SpoolError, which every part of the spool raises (from here up), and
SpoolLockedError; _spool.py re-exports both.

The store and the files SQLite keeps beside it must be regular files in the folder (SQLite
follows links): see ``check_store_files``.

The lock is an ``flock`` on ``spool.lock``, opened without following a symbolic link and only
when it is a regular file with one link that holds nothing but a pid: metricsbuf never
truncates a file it did not make. An ``flock`` belongs to the open file description, which a
forked child shares: so a child closes its copy of the lock descriptor at once (the
``os.register_at_fork`` hook in _spool.py), and the lock ends with the process that took it.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
from pathlib import Path

from ._exceptions import MetricsBufError

DB_FILENAME = "spool.sqlite3"
LOCK_FILENAME = "spool.lock"
# The store and the files SQLite keeps beside it (it follows links when it opens them).
_STORE_FILENAMES = tuple(DB_FILENAME + suffix for suffix in ("", "-wal", "-shm", "-journal"))

# What a lock file of ours may hold: a pid (or nothing, after a crash between truncate and write).
_MAX_LOCK_CONTENT = 32


class SpoolError(MetricsBufError):
    """The spool could not be opened, read or written; the message names the path."""


class SpoolLockedError(SpoolError):
    """Another process (or logger) has this spool open."""


def check_store_files(folder: Path) -> None:
    """The store and SQLite's files beside it must be regular files in the folder, not links.

    SQLite follows a link when it opens them: a dangling one would create a file elsewhere, one
    to another spool would give two processes the same store behind the lock's back.
    """
    for filename in _STORE_FILENAMES:
        path = folder / filename
        try:
            mode = os.lstat(path).st_mode
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise SpoolError(f"cannot check the spool file {path}: {exc}") from exc
        if stat.S_ISLNK(mode):
            raise SpoolError(
                f"the spool file {path} is a symbolic link; metricsbuf does not follow links in a "
                f"spool folder: move the file itself into {folder}"
            )
        if not stat.S_ISREG(mode):
            raise SpoolError(f"the spool file {path} is not a regular file")


def take_lock(folder: Path) -> int:
    lock_path = folder / LOCK_FILENAME
    # O_NOFOLLOW: never through a link. O_NONBLOCK: a FIFO planted there must not hang the open.
    # O_CLOEXEC: a program this process starts does not inherit the lock.
    flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        fd = os.open(lock_path, flags, 0o644)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.EMLINK) and lock_path.is_symlink():
            raise SpoolError(
                f"the spool lock {lock_path} is a symbolic link; metricsbuf does not follow links in "
                "a spool folder (remove the link)"
            ) from None
        raise SpoolError(f"cannot open the spool lock {lock_path}: {exc}") from exc
    try:
        _check_lock_file(fd, lock_path)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _lock_content(fd).strip()
            holder = holder if holder.isdigit() else ""  # shown only when it is a pid
            raise SpoolLockedError(
                f"the spool {folder} is in use by another process{f' (pid {holder})' if holder else ''}: "
                "one logger or `metricsbuf sync` at a time per spool folder"
            ) from None
        content = _lock_content(fd)
        if content.strip() and not content.strip().isdigit():
            raise SpoolError(
                f"the spool lock {lock_path} does not look like a metricsbuf lock file (it holds "
                f"{content[:20]!r}, not a pid); metricsbuf leaves it as it is: move it away"
            )
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _check_lock_file(fd: int, lock_path: Path) -> None:
    """A lock file metricsbuf may write to: a regular file with one link, holding at most a pid."""
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        raise SpoolError(f"the spool lock {lock_path} is not a regular file; metricsbuf leaves it as it is")
    if info.st_nlink != 1:
        raise SpoolError(
            f"the spool lock {lock_path} has {info.st_nlink} hard links; metricsbuf writes only to a lock "
            "file of its own: move it away"
        )
    if info.st_size > _MAX_LOCK_CONTENT:
        raise SpoolError(
            f"the spool lock {lock_path} does not look like a metricsbuf lock file ({info.st_size} bytes, "
            "not a pid); metricsbuf leaves it as it is: move it away"
        )


def _lock_content(fd: int) -> str:
    try:
        return os.pread(fd, _MAX_LOCK_CONTENT, 0).decode("ascii", "replace")
    except OSError:
        return ""
