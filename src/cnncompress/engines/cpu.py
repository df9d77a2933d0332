"""What the CPU can do: instruction-set flags read from ``/proc/cpuinfo`` (Linux), for result files and for
deciding whether a bf16 engine runs real bf16 arithmetic.

``ISA_FLAGS``: the flags that decide which kernels are fast here: AMX (``amx_tile``, ``amx_bf16``, ``amx_int8``:
Intel tile matrix units, bf16 and int8), ``avx512_bf16`` (bf16 dot products in AVX-512), VNNI (``avx512_vnni``,
``avx_vnni``: int8 dot products), ``avx512_vpopcntdq`` (the XNOR-popcount kernel), ``avx512f``, ``avx2``.
"""
from __future__ import annotations

import functools
import platform
from pathlib import Path

ISA_FLAGS = ("amx_tile", "amx_bf16", "amx_int8", "avx512_bf16", "avx512_vnni", "avx_vnni", "avx512_vpopcntdq",
             "avx512f", "avx2")
CPUINFO = Path("/proc/cpuinfo")


@functools.lru_cache(maxsize=1)
def _cpuinfo() -> tuple[str, frozenset]:
    """``(model name, flags)`` of the first processor listed in ``/proc/cpuinfo`` (empty where unreadable)."""
    try:
        text = CPUINFO.read_text(errors="replace")
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
