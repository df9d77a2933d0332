"""Error types. An ``InputError`` is the user's fault (bad file, bad value) and becomes exit code 2; an OSError the
machine raised (``environment_fault``: full disk, read-only or unwritable folder) becomes exit code 3."""
import errno as _errno
import os as _os
import re as _re


class InputError(Exception):
    """Bad user input: a corrupt file, a wrong shape, an unknown name, a bad config value.

    The message is one line that names the file (or value) and the problem.
    """


def input_error(path, problem: str) -> InputError:
    """Build an ``InputError`` whose message reads ``<path>: <problem>`` (first line of the problem only)."""
    lines = str(problem).strip().splitlines()
    return InputError(f"{path}: {lines[0] if lines else 'invalid'}")


# --- the machine, not the input nor the code -------------------------------------------------------------------

ENVIRONMENT_ERRNOS = frozenset(code for code in (getattr(_errno, name, None) for name in
                                                 ("ENOSPC", "EROFS", "EACCES", "EPERM", "EDQUOT")) if code)
"""OSError codes that say the machine refused the work (full disk, quota, read-only or unwritable folder):
exit code 3, and a bench row that hit one is retried by the next run rather than recorded."""

ENVIRONMENT_EXIT = 3

_OS_ERROR_IN_TEXT = _re.compile(r"\(os error (\d+)\)|Os \{ code: (\d+)")


def os_error_code(error: BaseException) -> int | None:
    """The errno of an ``OSError``, or of a library error that only carries it in its text (safetensors:
    ``... No space left on device (os error 28)``)."""
    if isinstance(error, OSError):
        return error.errno
    match = _OS_ERROR_IN_TEXT.search(str(error))
    return int(match.group(1) or match.group(2)) if match else None


def environment_errno(error: BaseException) -> tuple[int, str | None] | None:
    """``(errno, the file it names or None)`` of the first error in ``error``'s chain (itself, then what it was
    raised from or while handling) that is the machine refusing a write (one of ``ENVIRONMENT_ERRNOS``)."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        code = os_error_code(error)
        if code in ENVIRONMENT_ERRNOS:
            path = getattr(error, "filename", None) or getattr(error, "filename2", None)
            return code, (_os.fsdecode(path) if path is not None else None)
        error = error.__cause__ or error.__context__
    return None


def environment_fault(error: BaseException) -> tuple[str, str] | None:
    """``(path, cause)`` when ``error`` (or an error it was raised from) is the machine refusing a write (one of
    ``ENVIRONMENT_ERRNOS``), else None. ``path`` is the file named by the error (``?`` when it names none)."""
    found = environment_errno(error)
    return (found[1] or "?", _os.strerror(found[0])) if found else None


def as_os_error(error: BaseException, path) -> BaseException:
    """An ``OSError`` naming ``path`` for a write that failed with an OS code (a safetensors error carrying one, an
    OSError without a file name); other errors are returned as they are."""
    code = os_error_code(error)
    if code is None or (isinstance(error, OSError) and error.filename):
        return error
    return OSError(code, _os.strerror(code), str(path))


TRANSIENT_ERRNOS = frozenset({_errno.ENOMEM})
TRANSIENT_NAMES = frozenset({"TimeoutExpired", "OutOfMemoryError"})  # a child past its timeout; torch OOM


def failure_kind(error: BaseException) -> str | None:
    """Why a row failed when the reason is the machine, not the method: ``environment`` (a full disk, a quota, a
    read-only or unwritable folder: ``ENVIRONMENT_ERRNOS``), ``transient`` (out of memory, a child process
    that timed out); None for an ordinary error, which is the row's result (a method that refuses the model)."""
    if environment_fault(error):
        return "environment"
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, (MemoryError, TimeoutError)) or type(error).__name__ in TRANSIENT_NAMES or \
                (isinstance(error, OSError) and error.errno in TRANSIENT_ERRNOS):
            return "transient"
        error = error.__cause__ or error.__context__
    return None
