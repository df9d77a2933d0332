"""The C kernels as built for each ISA path, checked by a stand-alone C driver (``isa_check.c``: the kernels against
naive C loops on fixed pseudo-random inputs): on this host for every path it can run, and cross-compiled for
aarch64 (the NEON path and the forced scalar one) and run under ``qemu-aarch64`` in user mode. The aarch64 checks
skip only where the cross tools are missing (Debian/Ubuntu packages ``gcc-aarch64-linux-gnu`` and ``qemu-user``)."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from cnncompress.kernels import native

DRIVER = Path(__file__).with_name("isa_check.c")
SOURCES = ("bitpack", "binary_graph", "hashed")
CROSS_GCC, QEMU, SYSROOT = "aarch64-linux-gnu-gcc", "qemu-aarch64", Path("/usr/aarch64-linux-gnu")


def _kernel_dir(tmp_path: Path) -> Path:
    """The C sources as the package ships them (``native.source``), written where the driver can include them."""
    folder = tmp_path / "kernels"
    folder.mkdir()
    for name in SOURCES:
        (folder / f"{name}.c").write_text(native.source(name))
    return folder


def _build_and_run(compiler: str, flags: tuple[str, ...], tmp_path: Path, runner: tuple[str, ...] = ()) -> str:
    binary = tmp_path / "isa_check"
    build = subprocess.run([compiler, "-O3", "-fno-math-errno", *flags, f"-I{_kernel_dir(tmp_path)}", str(DRIVER),
                            "-o", str(binary), "-lm", "-pthread"], capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stderr
    run = subprocess.run([*runner, str(binary)], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    return run.stdout


@pytest.mark.parametrize("isa", native.ISAS)
def test_c_driver_on_this_host(isa, tmp_path):
    """The driver built with the flags ``native.py`` uses for each forced path this host can run."""
    lacking = native.isa_missing(isa)
    if lacking:
        pytest.skip(f"CNNCOMPRESS_ISA={isa}: this host {lacking}")
    if shutil.which("gcc") is None:
        pytest.skip("no gcc")
    flags = tuple(flag for flag in native.CFLAGS if flag not in ("-shared", "-fPIC")) + native.isa_flags(isa)
    out = _build_and_run("gcc", flags, tmp_path)
    assert out.startswith(f"kernel_isa {isa}") and "ok: 0 failed checks" in out, out  # avx512: also -vpopcnt


def _need_cross_tools() -> None:
    if shutil.which(CROSS_GCC) is None or not SYSROOT.is_dir():
        pytest.skip(f"{CROSS_GCC} not installed (apt-get install gcc-aarch64-linux-gnu)")
    if shutil.which(QEMU) is None:
        pytest.skip(f"{QEMU} not installed (apt-get install qemu-user)")


@pytest.mark.parametrize("path,flags", [("neon", ("-march=armv8-a",)),
                                        ("scalar", ("-march=armv8-a", "-DCNNCOMPRESS_FORCE_SCALAR"))])
def test_aarch64_build_under_qemu(path, flags, tmp_path):
    """Cross-compiled for aarch64 (NEON popcount GEMM, packing, LRN, float tile; and the scalar C), run under
    ``qemu-aarch64 -L /usr/aarch64-linux-gnu``: every kernel equals the driver's naive loops."""
    _need_cross_tools()
    out = _build_and_run(CROSS_GCC, flags + ("-Wall",), tmp_path, runner=(QEMU, "-L", str(SYSROOT)))
    assert out.startswith(f"kernel_isa {path} hashed {path}") and "ok: 0 failed checks" in out, out


def test_aarch64_shared_library_builds_as_native_py_builds_it(tmp_path):
    """The two libraries native.py links (bitpack; bitpack + binary_graph; hashed) build for aarch64 with its flags
    (``-march=armv8-a`` in place of ``-march=native``) and export ``kernel_isa``."""
    _need_cross_tools()
    folder = _kernel_dir(tmp_path)
    flags = [flag if flag != "-march=native" else "-march=armv8-a" for flag in native.CFLAGS]
    for parts in (("bitpack",), ("bitpack", "binary_graph"), ("hashed",)):
        out = tmp_path / f"{'-'.join(parts)}.so"
        build = subprocess.run([CROSS_GCC, *flags, *(str(folder / f"{p}.c") for p in parts), "-o", str(out), "-lm",
                                "-pthread"], capture_output=True, text=True, timeout=300)
        assert build.returncode == 0, build.stderr
        symbols = subprocess.run([shutil.which("aarch64-linux-gnu-nm") or "nm", "-D", str(out)], capture_output=True,
                                 text=True).stdout
        assert " kernel_isa" in symbols
