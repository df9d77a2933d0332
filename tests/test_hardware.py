"""hardware: the CPU's flags come from /proc/cpuinfo, or from the file $CNNCOMPRESS_CPUINFO names (a process run
under an emulator whose CPU is not the host's), and the int8 scheme follows them."""
from cnncompress import hardware as cpu
from cnncompress.deploy import int8


def _with_cpuinfo(monkeypatch, path):
    monkeypatch.setenv(cpu.CPUINFO_VARIABLE, str(path))
    cpu._cpuinfo.cache_clear()


def test_cpuinfo_variable_replaces_proc_cpuinfo_and_picks_the_int8_scheme(tmp_path, monkeypatch):
    haswell, xeon = tmp_path / "haswell", tmp_path / "xeon"
    haswell.write_text("processor\t: 0\nmodel name\t: Emulated Haswell\nflags\t\t: fpu sse4_2 avx avx2 fma popcnt\n")
    xeon.write_text("processor\t: 0\nmodel name\t: Test Xeon\nflags\t\t: fpu avx2 avx512f avx512_vnni\n")
    try:
        _with_cpuinfo(monkeypatch, haswell)
        assert cpu.cpu_name() == "Emulated Haswell" and cpu.isa_flags()["avx2"] and not cpu.has_vnni()
        x86 = cpu.machine().lower() in ("x86_64", "amd64")
        assert int8.reduce_range_here() == x86  # no VNNI: 7-bit weights on x86
        assert "7-bit" in int8.scheme(int8.reduce_range_here()) or not x86
        _with_cpuinfo(monkeypatch, xeon)
        assert cpu.cpu_name() == "Test Xeon" and cpu.has_vnni() and not int8.reduce_range_here()
    finally:
        monkeypatch.delenv(cpu.CPUINFO_VARIABLE)
        cpu._cpuinfo.cache_clear()


def test_an_unreadable_cpuinfo_variable_gives_no_flags_not_an_error(tmp_path, monkeypatch):
    try:
        _with_cpuinfo(monkeypatch, tmp_path / "missing")
        assert not any(cpu.isa_flags().values()) and cpu.cpu_name()
    finally:
        monkeypatch.delenv(cpu.CPUINFO_VARIABLE)
        cpu._cpuinfo.cache_clear()
