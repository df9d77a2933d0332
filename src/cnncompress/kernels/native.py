"""Compile-at-first-use loader for the C kernels shipped beside this module (``kernels/<name>.c``).

``load(name, argtypes)`` reads ``<name>.c`` from the installed package (``importlib.resources``; the ``.c``
files ship as package data, ``pyproject.toml``), compiles it with ``gcc -O3 -march=native -fno-math-errno
-shared -fPIC`` into ``$CNNCOMPRESS_CACHE`` (default ``~/.cache/cnncompress``) and opens it with ctypes. The
compiled file is named ``<name>-<key>.so``, key = a hash of the source, the flags and the CPU's flags
(``-march=native``: one build per CPU kind, never a stale build after an edit). No compiler, a failed build, or
``CNNCOMPRESS_NO_NATIVE=1``: ``None`` (with one ``RuntimeWarning`` for a failure), and the caller runs its
numpy/torch fallback. Nothing here knows what the kernels compute.
"""
from __future__ import annotations

import concurrent.futures
import ctypes
import functools
import hashlib
import os
import platform
import subprocess
import tempfile
import warnings
from importlib import resources
from pathlib import Path

CFLAGS = ("-O3", "-march=native", "-fno-math-errno", "-shared", "-fPIC")


def cache_dir() -> Path:
    return Path(os.environ.get("CNNCOMPRESS_CACHE") or Path.home() / ".cache" / "cnncompress")


def cpu_key() -> str:
    """Machine + CPU flags: a build with ``-march=native`` is only valid on a CPU of the same kind."""
    try:
        flags = next((line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags")), "")
    except OSError:
        flags = ""
    return platform.machine() + platform.processor() + flags


def source(name: str) -> str:
    """The C source ``kernels/<name>.c`` as installed with the package."""
    return resources.files(__package__).joinpath(f"{name}.c").read_text()


def library_path(name: str, flags: tuple[str, ...] = CFLAGS, parts: tuple[str, ...] = ()) -> Path:
    sources = "".join(source(part) for part in parts or (name,))
    key = hashlib.sha256((sources + " ".join(flags) + cpu_key()).encode()).hexdigest()[:16]
    return cache_dir() / f"{name}-{key}.so"


def compile_library(name: str, out: Path, flags: tuple[str, ...] = CFLAGS, parts: tuple[str, ...] = ()) -> None:
    """gcc ``<part>.c`` for each of ``parts`` (default: ``name`` alone) -> ``out`` (built in a temporary file,
    renamed into place: concurrent builds are safe)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        files = []
        for part in parts or (name,):
            files.append(Path(tmp) / f"{part}.c")
            files[-1].write_text(source(part))
        target = Path(tmp) / out.name
        result = subprocess.run(["gcc", *flags, *map(str, files), "-o", str(target), "-lm", "-pthread"],
                                capture_output=True, text=True)
        if result.returncode != 0:
            raise OSError(result.stderr.strip().splitlines()[-1] if result.stderr.strip() else "gcc failed")
        os.replace(target, out)


def load(name: str, argtypes: dict[str, list], flags: tuple[str, ...] = CFLAGS,
         parts: tuple[str, ...] = ()) -> ctypes.CDLL | None:
    """The compiled ``<name>.c`` (or ``parts``, several sources linked into one library) with ``argtypes`` set
    per function, or None (one warning) when unavailable."""
    if os.environ.get("CNNCOMPRESS_NO_NATIVE"):
        return None
    try:
        path = library_path(name, flags, parts)
        if not path.exists():
            compile_library(name, path, flags, parts)
        lib = ctypes.CDLL(str(path))
    except OSError as error:  # FileNotFoundError (no gcc) is an OSError
        warnings.warn(f"cnncompress: C kernel {name}.c unavailable ({error}); using the numpy fallback",
                      RuntimeWarning, stacklevel=3)
        return None
    for function, types in argtypes.items():
        getattr(lib, function).argtypes = types
    return lib


@functools.lru_cache(maxsize=4)
def _pool(threads: int) -> concurrent.futures.ThreadPoolExecutor:
    return concurrent.futures.ThreadPoolExecutor(threads, thread_name_prefix="cnncompress-native")


def split_range(run, total: int, threads: int, multiple: int = 1) -> None:
    """``run(start, stop)`` over ``range(total)`` in ``threads`` contiguous shares (multiples of ``multiple``).
    ctypes drops the GIL, so plain threads run the C loops side by side; they sleep when idle (no OpenMP
    spinning against torch's own pool). The calling thread takes the first share instead of waiting idle."""
    if threads <= 1 or total < 2 * multiple:
        run(0, total)
        return
    step = -(-(-(-total // threads)) // multiple) * multiple
    jobs = [_pool(threads).submit(run, start, min(total, start + step)) for start in range(step, total, step)]
    run(0, min(total, step))
    for job in jobs:
        job.result()
