"""Compile-at-first-use loader for the C kernels shipped beside this module (``kernels/<name>.c``).

``load(name, argtypes)`` reads ``<name>.c`` from the installed package (``importlib.resources``; the ``.c``
files ship as package data, ``pyproject.toml``), compiles it with ``gcc -O3 -march=native -fno-math-errno
-shared -fPIC`` into ``$CNNCOMPRESS_CACHE`` (default ``~/.cache/cnncompress``) and opens it with ctypes. The
compiled file is named ``<name>-<key>.so``, key = a hash of the source, the flags and the CPU's flags
(``-march=native``: one build per CPU kind, never a stale build after an edit). Beside it lies
``<name>-<key>.so.sha256``, written at build time; a library whose bytes do not match it (truncated, damaged,
replaced) is rebuilt before it is loaded (one warning), never loaded as it is. No compiler, a failed build, or
``CNNCOMPRESS_NO_NATIVE=1``: ``None`` (with one ``RuntimeWarning`` for a failure), and the caller runs its
numpy/torch fallback. Nothing here knows what the kernels compute.

ISA paths. Each C file picks its SIMD path at compile time from the compiler's ISA macros (AVX-512 > AVX2 + FMA >
NEON > scalar) and names it in ``kernel_isa()``; ``-march=native`` gives the best one the CPU has.
``CNNCOMPRESS_ISA=scalar|avx2|avx512|neon`` forces one on any host that can run it, by the flags of
``ISA_FLAGS`` (x86: ``scalar`` adds ``-mno-avx -DCNNCOMPRESS_FORCE_SCALAR``: no hand-written SIMD and no AVX code
from the compiler either; ``avx2`` adds ``-mno-avx512f``; ``avx512`` and ``neon`` are ``-march=native`` on a CPU that
has them). A forced path has its own cache file (``<name>-<isa>-<key>.so``, the path is part of the key). An
unknown value, or a path this CPU lacks (``avx512`` without ``avx512f``, ``avx2`` without ``avx2`` and ``fma``,
``neon`` off aarch64, anything but ``scalar`` off x86 / aarch64) is refused with a one-line ``IsaError`` (an
``InputError``) that names the variable. Unset, empty or ``auto``: the native best. The CPU's flags come from
``cnncompress.hardware`` (the one reader of ``/proc/cpuinfo``).
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

from cnncompress import hardware
from cnncompress.errors import InputError

CFLAGS = ("-O3", "-march=native", "-fno-math-errno", "-shared", "-fPIC")
ISA_ENV = "CNNCOMPRESS_ISA"
ISAS = ("scalar", "avx2", "avx512", "neon")  # the paths CNNCOMPRESS_ISA may force, lowest first
X86 = ("x86_64", "amd64", "i386", "i686")
ARM64 = ("aarch64", "arm64")
ISA_FLAGS = {  # added to the flags of a build of a forced path (x86 / other machines)
    "scalar": {"x86": ("-mno-avx", "-DCNNCOMPRESS_FORCE_SCALAR"), "other": ("-DCNNCOMPRESS_FORCE_SCALAR",)},
    "avx2": {"x86": ("-mno-avx512f",)},
    "avx512": {"x86": ()},
    "neon": {"other": ()},
}
_FROM_ENV = "from-env"


class IsaError(InputError):
    """``CNNCOMPRESS_ISA`` names no known path, or one this CPU cannot run (one line naming the variable)."""


def _machine() -> str:
    return hardware.machine().lower()


def isa_missing(isa: str) -> str:
    """What this host lacks to run the forced path ``isa`` (a phrase), or "" when it can run it."""
    machine = _machine()
    if isa == "scalar":
        return ""
    if isa == "neon":
        return "" if machine in ARM64 else f"is {machine or 'not aarch64'}, and the NEON path is for aarch64"
    if machine not in X86:
        return f"is {machine or 'not x86'}, and the {isa} path is for x86-64"
    flags = set(hardware.flags_text().split())
    need = ("avx2", "fma") if isa == "avx2" else ("avx512f",)
    absent = [flag for flag in need if flag not in flags]
    return f"lacks {' and '.join(absent)}" if absent else ""


def supported_isas() -> tuple[str, ...]:
    """The paths of ``ISAS`` this host can run (``scalar`` always)."""
    return tuple(isa for isa in ISAS if not isa_missing(isa))


@functools.lru_cache(maxsize=16)
def check_isa(value: str) -> str | None:
    """A value of ``CNNCOMPRESS_ISA`` -> the forced path, or None for the native best ("", "auto"). Raises
    ``IsaError`` for an unknown value or a path this CPU lacks."""
    isa = value.strip().lower()
    if isa in ("", "auto"):
        return None
    if isa not in ISAS:
        raise IsaError(f"{ISA_ENV}={value.strip()!r}: unknown kernel path (use one of {', '.join(ISAS)}, or unset it)")
    lacking = isa_missing(isa)
    if lacking:
        raise IsaError(f"{ISA_ENV}={isa}: this CPU ({hardware.cpu_name()}) {lacking}; unset {ISA_ENV} or use one of "
                       f"{', '.join(supported_isas())}")
    return isa


def requested_isa() -> str | None:
    """The path forced by ``$CNNCOMPRESS_ISA`` (None: the native best); ``IsaError`` when it cannot be forced."""
    return check_isa(os.environ.get(ISA_ENV, ""))


def isa_flags(isa: str | None) -> tuple[str, ...]:
    """Compiler flags added for the forced path ``isa`` (none for the native best)."""
    if isa is None:
        return ()
    return ISA_FLAGS[isa].get("x86" if _machine() in X86 else "other", ())


def cache_dir() -> Path:
    return Path(os.environ.get("CNNCOMPRESS_CACHE") or Path.home() / ".cache" / "cnncompress")


def cpu_key() -> str:
    """Machine + CPU flags: a build with ``-march=native`` is only valid on a CPU of the same kind."""
    return platform.machine() + platform.processor() + hardware.flags_text()


def source(name: str) -> str:
    """The C source ``kernels/<name>.c`` as installed with the package."""
    return resources.files(__package__).joinpath(f"{name}.c").read_text()


def library_path(name: str, flags: tuple[str, ...] = CFLAGS, parts: tuple[str, ...] = (),
                 isa: str | None = None) -> Path:
    """The cache file of a build: ``<name>[-<forced isa>]-<hash of sources, flags, CPU flags and isa>.so``."""
    sources = "".join(source(part) for part in parts or (name,))
    key = hashlib.sha256((sources + " ".join(flags) + cpu_key() + f"isa={isa or 'native'}").encode()).hexdigest()[:16]
    return cache_dir() / (f"{name}-{isa}-{key}.so" if isa else f"{name}-{key}.so")


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
        digest = Path(tmp) / (out.name + ".sha256")
        digest.write_text(_sha256(target))
        os.replace(digest, _digest_path(out))  # the digest first: a library without its digest is never trusted
        os.replace(target, out)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _digest_path(library: Path) -> Path:
    return library.with_name(library.name + ".sha256")


def verified(library: Path) -> bool:
    """True when ``library`` is the file this module built: its sha256 matches the digest written beside it at
    build time. A truncated, damaged or foreign file (or one without a digest) is not loaded: it is rebuilt."""
    try:
        return library.is_file() and _digest_path(library).read_text().strip() == _sha256(library)
    except OSError:
        return False


def load(name: str, argtypes: dict[str, list], flags: tuple[str, ...] = CFLAGS,
         parts: tuple[str, ...] = (), isa: str | None = _FROM_ENV) -> ctypes.CDLL | None:
    """The compiled ``<name>.c`` (or ``parts``, several sources linked into one library) with ``argtypes`` set
    per function, or None (one warning) when unavailable. ``isa``: the forced path (None: the native best;
    default: ``$CNNCOMPRESS_ISA``), refused with ``IsaError`` where the CPU lacks it. A library's
    ``kernel_isa()`` (the path it was built for) returns a C string."""
    isa = requested_isa() if isa == _FROM_ENV else check_isa(isa or "")
    if os.environ.get("CNNCOMPRESS_NO_NATIVE"):
        return None
    flags = tuple(flags) + isa_flags(isa)
    try:
        path = library_path(name, flags, parts, isa)
        if not verified(path):  # missing, damaged or foreign: built anew, never loaded as it is
            if path.exists() and _digest_path(path).exists():  # (a build from before digests: rebuilt quietly)
                warnings.warn(f"cnncompress: compiled kernel {path} does not match its build digest; rebuilding it",
                              RuntimeWarning, stacklevel=3)
            compile_library(name, path, flags, parts)
        lib = ctypes.CDLL(str(path))
    except OSError as error:  # FileNotFoundError (no gcc) is an OSError
        warnings.warn(f"cnncompress: C kernel {name}.c unavailable ({error}); using the numpy fallback",
                      RuntimeWarning, stacklevel=3)
        return None
    for function, types in argtypes.items():
        getattr(lib, function).argtypes = types
    if hasattr(lib, "kernel_isa"):
        lib.kernel_isa.restype = ctypes.c_char_p
    return lib


def kernel_path(lib: ctypes.CDLL | None, fallback: str) -> str:
    """``"c-<kernel_isa()>"`` of a loaded library (``c-avx512-vpopcnt``, ``c-avx512``, ``c-avx2``, ``c-neon``,
    ``c-scalar``), or ``fallback`` when there is none."""
    return fallback if lib is None else "c-" + lib.kernel_isa().decode()


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
