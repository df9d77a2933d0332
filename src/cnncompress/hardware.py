"""What the CPU can do: the one reader of ``/proc/cpuinfo`` (Linux). A leaf: kernels (which ISA path to build),
deploy (whether a bf16 / int8 engine runs real bf16 / VNNI arithmetic) and result files (where a number was
measured) all ask here.

``ISA_FLAGS``: the flags that decide which kernels are fast here: AMX (``amx_tile``, ``amx_bf16``, ``amx_int8``:
Intel tile matrix units, bf16 and int8), ``avx512_bf16`` (bf16 dot products in AVX-512), VNNI (``avx512_vnni``,
``avx_vnni``: int8 dot products), ``avx512_vpopcntdq`` (the XNOR-popcount kernel), ``avx512f``, ``avx2``.
"""
from __future__ import annotations

import functools
import os
import platform
from pathlib import Path

ISA_FLAGS = ("amx_tile", "amx_bf16", "amx_int8", "avx512_bf16", "avx512_vnni", "avx_vnni", "avx512_vpopcntdq",
             "avx512f", "avx512bw", "avx2", "fma", "popcnt", "asimd", "neon")
CPUINFO = Path("/proc/cpuinfo")
CPUINFO_VARIABLE = "CNNCOMPRESS_CPUINFO"
"""A file in ``/proc/cpuinfo``'s format read instead of it: for a process whose CPU is not the one the kernel
lists, e.g. one run by ``qemu-x86_64 -cpu Haswell`` to check the int8 numerics of an AVX2-only CPU on any x86
host (``benchmarks/check_int8_on_avx2.py``); QEMU's user mode passes the host's ``/proc/cpuinfo`` through."""


@functools.lru_cache(maxsize=1)
def _cpuinfo() -> tuple[str, frozenset]:
    """``(model name, flags)`` of the first processor listed in ``/proc/cpuinfo`` (or the file named by
    ``$CNNCOMPRESS_CPUINFO``; empty where unreadable)."""
    source = Path(os.environ[CPUINFO_VARIABLE]) if os.environ.get(CPUINFO_VARIABLE) else CPUINFO
    try:
        text = source.read_text(errors="replace")
    except OSError:
        return platform.processor() or platform.machine(), frozenset()
    name, flags = "", frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and not name:
            name = value.strip()
        elif key in ("flags", "Features") and not flags:
            flags = frozenset(value.split())
        if name and flags:
            break
    return name or platform.processor() or platform.machine(), flags


def flags_text() -> str:
    """Every flag of the CPU, space-separated (what a ``-march=native`` build depends on)."""
    return " ".join(sorted(_cpuinfo()[1]))


def machine() -> str:
    """``x86_64``, ``aarch64``, ..."""
    return platform.machine()


def cores() -> int:
    """Logical CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def summary() -> dict:
    """What a results file records about the CPU: model, machine, cores and the ISA flags that pick kernels."""
    return {"cpu": cpu_name(), "machine": machine(), "cores": cores(),
            "isa": sorted(flag for flag, present in isa_flags().items() if present)}


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``), e.g. ``Intel(R) Xeon(R) Platinum 8480+``."""
    return _cpuinfo()[0]


def isa_flags() -> dict[str, bool]:
    """``{flag: present}`` for every flag of ``ISA_FLAGS``."""
    flags = _cpuinfo()[1]
    return {flag: flag in flags for flag in ISA_FLAGS}


def has_amx() -> bool:
    """True when the CPU has AMX bf16 tiles (Intel Sapphire Rapids and later)."""
    flags = isa_flags()
    return flags["amx_tile"] and flags["amx_bf16"]


def has_vnni() -> bool:
    """True when the CPU has int8 dot products (AVX512-VNNI, AVX-VNNI or AMX-INT8): u8 x s8 products accumulate
    without the 16-bit saturation of ``vpmaddubsw`` that older x86 int8 kernels hit."""
    flags = isa_flags()
    return flags["avx512_vnni"] or flags["avx_vnni"] or flags["amx_int8"]


def has_bf16() -> bool:
    """True when the CPU computes bf16 natively (``avx512_bf16`` dot products or AMX bf16 tiles)."""
    flags = isa_flags()
    return flags["avx512_bf16"] or flags["amx_bf16"]


def bf16_note() -> str:
    """One line on what bf16 arithmetic runs on here."""
    if has_amx():
        return "bf16 on AMX tiles"
    if has_bf16():
        return "bf16 on AVX512-BF16 dot products (no AMX on this CPU)"
    return "no bf16 arithmetic on this CPU (neither AVX512-BF16 nor AMX)"
