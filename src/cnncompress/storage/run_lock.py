"""One run per output folder: ``lock_folder(out)`` around a command's work on ``--out``.

The lock is an OS lock (``fcntl.flock``, exclusive) on ``<out>/.cnncompress.lock``: the kernel releases it when the
holding process ends, however it ends (``kill -9`` included), so a stale lock file never blocks a later run. The
holder writes its pid and command line into the file, so a refused run can say who holds the folder. A clean exit
removes the file (and the folder, if this run created it and left it empty).

Only the sub-commands lock (``bench``, ``train``, ``reproduce``, ``optimize``/``sensitivity``, ``distill``), never the
library: a folder is locked once per process, by the command that owns it.
"""
from __future__ import annotations

import contextlib
import errno
import os
import shlex
import sys
import time
from pathlib import Path

from cnncompress.errors import InputError

LOCK_NAME = ".cnncompress.lock"


class FolderInUse(InputError):
    """Another live process holds the output folder's lock (exit code 2, one line naming it)."""


def add_wait_argument(parser) -> None:
    """The ``--wait`` flag of every command that locks its ``--out``."""
    parser.add_argument("--wait", action="store_true",
                        help="if another run holds --out, wait for it to finish instead of refusing (exit 2)")


def _holder(fd: int) -> str:
    """What the holder wrote into the lock file (``pid N: command``), read a few times: a run that has just taken
    the lock may not have written it yet."""
    text = ""
    for _ in range(5):
        with contextlib.suppress(OSError):
            text = os.pread(fd, 4096, 0).decode(errors="replace").strip()
        if text:
            return text.splitlines()[0]
        time.sleep(0.05)
    return "pid unknown"


def _same_file(fd: int, path: Path) -> bool:
    """Whether ``fd`` is still the file at ``path`` (a holder that finished removes it; a lock taken on the removed
    file would lock nothing)."""
    try:
        return os.fstat(fd).st_ino == os.stat(path).st_ino
    except FileNotFoundError:
        return False


def _acquire(lock: Path, folder: Path, wait: bool, say) -> int:
    import fcntl
    announced = False
    while True:
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except FileNotFoundError:  # the holder we waited for created the folder and removed it, empty, on exit
            folder.mkdir(parents=True, exist_ok=True)
            continue
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as error:
                if error.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise
                holder = _holder(fd)
                if not wait:
                    raise FolderInUse(f"{folder}: in use by another cnncompress run ({holder}); wait for it to end, "
                                      "use another --out, or add --wait") from None
                if not announced:
                    say(f"cnncompress: {folder}: in use by another run ({holder}); waiting for it (--wait)")
                    announced = True
                fcntl.flock(fd, fcntl.LOCK_EX)
            if _same_file(fd, lock):
                return fd
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)  # the previous holder removed the file as we got it: lock the new one


@contextlib.contextmanager
def lock_folder(path: str | Path, wait: bool = False, command: str | None = None, say=None):
    """Hold ``path``'s run lock for the ``with`` block (creating the folder if needed). Another live holder:
    ``FolderInUse`` naming its pid and command, or, with ``wait``, block until it ends. ``command``: what to
    write for others to read (default: this process's command line)."""
    folder = Path(path)
    created = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    lock = folder / LOCK_NAME
    say = say or (lambda line: print(line, file=sys.stderr, flush=True))
    try:
        fd = _acquire(lock, folder, wait, say)
    except BaseException:
        if created:
            _remove_empty(folder)
        raise
    try:
        with contextlib.suppress(OSError):  # who holds it is for the message only: a full disk must not stop the run
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"pid {os.getpid()}: {command or shlex.join(sys.argv)}\n".encode(), 0)
        yield lock
    finally:
        with contextlib.suppress(OSError):
            lock.unlink()  # while still holding it: a waiter re-checks the file it locked (``_same_file``)
        os.close(fd)
        if created:
            _remove_empty(folder)


def _remove_empty(folder: Path) -> None:
    """Remove a folder this run created if nothing was written into it (a run refused or failed on bad input)."""
    with contextlib.suppress(OSError):
        folder.rmdir()
