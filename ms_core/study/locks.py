"""Inter-process folder locks, so two runs on the same visit never interleave their writes.

A lock is an exclusive ``fcntl.flock`` on the file ``LOCK_NAME`` inside the folder being written
(a visit's ``derivatives/ms_dash/sub-X/ses-Y``). ``flock`` locks belong to an open file, so the
lock works between processes (two CLI runs, the app and a batch job) *and* between threads of one
process (two browser sessions of the same Streamlit server). The kernel releases it when the
holder exits, even on ``SIGKILL``, so a crashed run never leaves a stale lock behind. The lock
file itself is left in place: deleting it would let two runs lock two different files.

Within one thread the lock is re-entrant: ``segment_visit`` holds it for the whole run and
``write_outputs`` takes it again for the write phase without deadlocking.

Linux/macOS only (``fcntl``); on network file systems ``flock`` may be local to one machine.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from ms_core.foundation.errors import InputError
from ms_core.foundation.settings import lock_timeout_s

__all__ = ["LOCK_NAME", "LockTimeout", "folder_lock", "folder_locks", "is_locked"]

#: Name of the lock file inside a locked folder (hidden; never part of a result).
LOCK_NAME = ".ms_dash.lock"

_held = threading.local()


class LockTimeout(InputError):
    """Another run holds the folder's lock and did not release it in time."""


def _held_here() -> dict[Path, int]:
    table: dict[Path, int] | None = getattr(_held, "table", None)
    if table is None:
        table = {}
        _held.table = table
    return table


def _try_flock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return False
        raise
    return True


@contextlib.contextmanager
def folder_lock(folder: Path | str, *, timeout_s: float | None = None,
                poll_s: float = 0.05) -> Iterator[Path]:
    """Hold the exclusive lock of ``folder`` (created if missing) for the ``with`` block.

    Parameters
    ----------
    folder
        The folder whose writes are serialised.
    timeout_s
        Seconds to wait for another holder; ``None`` uses
        :func:`ms_core.foundation.settings.lock_timeout_s` (``MS_DASH_LOCK_TIMEOUT_S``, default 900
        s), ``0`` fails at once when the lock is taken.
    poll_s
        Seconds between attempts while waiting.

    Yields
    ------
    Path
        The lock file.

    Raises
    ------
    LockTimeout
        naming ``folder`` when the lock could not be taken within ``timeout_s``.
    InputError
        when the folder or its lock file cannot be created (read-only study, permissions).
    """
    path = Path(folder).resolve()
    held = _held_here()
    if path in held:  # re-entrant within a thread
        held[path] += 1
        try:
            yield path / LOCK_NAME
        finally:
            held[path] -= 1
        return
    wait_s = lock_timeout_s() if timeout_s is None else max(0.0, float(timeout_s))
    lock_file = path / LOCK_NAME
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise InputError(path, f"cannot create the lock file {LOCK_NAME} ({e.strerror})") from e
    try:
        deadline = time.monotonic() + wait_s
        while not _try_flock(fd):
            if time.monotonic() >= deadline:
                raise LockTimeout(path, (
                    f"another run is writing results in this folder (lock {LOCK_NAME} held); "
                    f"waited {wait_s:g} s. Try again when it has finished, or raise "
                    "MS_DASH_LOCK_TIMEOUT_S"))
            time.sleep(poll_s)
        with contextlib.suppress(OSError):  # who holds it, for a person looking; optional
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
        held[path] = 1
        try:
            yield lock_file
        finally:
            del held[path]
    finally:
        os.close(fd)  # releases the flock


@contextlib.contextmanager
def folder_locks(*folders: Path | str, timeout_s: float | None = None) -> Iterator[list[Path]]:
    """Hold the locks of several folders (a comparison reads two visits), taken in sorted
    order so that two runs locking overlapping sets can never deadlock."""
    unique = sorted({Path(f).resolve() for f in folders})
    with contextlib.ExitStack() as stack:
        yield [stack.enter_context(folder_lock(f, timeout_s=timeout_s)) for f in unique]


def is_locked(folder: Path | str) -> bool:
    """Whether some run (another process, or another thread here) holds ``folder``'s lock.

    A cheap probe for the UI ("a segmentation of this visit is running"). Returns ``False``
    when the folder or its lock file does not exist.
    """
    lock_file = Path(folder).resolve() / LOCK_NAME
    try:
        fd = os.open(lock_file, os.O_RDWR)
    except OSError:
        return False
    try:
        if _try_flock(fd):
            fcntl.flock(fd, fcntl.LOCK_UN)
            return False
        return True
    finally:
        os.close(fd)
