"""``CNNCOMPRESS_ISA``: forcing an ISA path of the C kernels (``kernels/native.py``), refusing one the CPU lacks or
an unknown value, one cache file per forced path, the path each module reports; and the edges of each path's
kernels (K-word tails, 1-row tiles, the AVX2 byte-count blocks) against the pure references."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from cnncompress.errors import InputError
from cnncompress.kernels import binary_graph, bitpack, hashed, native
from cnncompress.kernels import bitpack_reference as ref


@pytest.fixture
def fresh(monkeypatch):
    """The ISA checks re-evaluated (their cache cleared) before and after the test."""
    native.check_isa.cache_clear()
    yield monkeypatch
    native.check_isa.cache_clear()


@pytest.mark.parametrize("value", ["avx3", "sse", "native-ish", "avx512 avx2"])
def test_unknown_value_is_refused_in_one_line(fresh, value):
    fresh.setenv("CNNCOMPRESS_ISA", value)
    for call in (bitpack.kernel_path, binary_graph.available, hashed.kernel_path):
        with pytest.raises(native.IsaError) as error:
            call()
        message = str(error.value)
        assert message.startswith("CNNCOMPRESS_ISA=") and "unknown kernel path" in message and "\n" not in message
        assert isinstance(error.value, InputError)  # a user's bad value: the CLI's exit code 2


def _host(monkeypatch, machine: str, flags: str) -> None:
    monkeypatch.setattr(native.hardware, "machine", lambda: machine)
    monkeypatch.setattr(native.hardware, "flags_text", lambda: flags)
    native.check_isa.cache_clear()


@pytest.mark.parametrize("machine,flags,refused,allowed", [
    ("x86_64", "fpu sse2 sse4_2 popcnt", ("avx2", "avx512", "neon"), ("scalar",)),
    ("x86_64", "sse4_2 popcnt avx avx2 fma", ("avx512", "neon"), ("scalar", "avx2")),
    ("x86_64", "sse4_2 avx avx2", ("avx2", "avx512"), ("scalar",)),  # AVX2 without FMA: the AVX2 path uses FMA
    ("x86_64", "avx2 fma avx512f avx512bw", ("neon",), ("scalar", "avx2", "avx512")),
    ("aarch64", "fp asimd evtstrm aes crc32", ("avx2", "avx512"), ("scalar", "neon")),
    ("riscv64", "", ("avx2", "avx512", "neon"), ("scalar",)),
])
def test_a_path_the_cpu_lacks_is_refused(fresh, machine, flags, refused, allowed):
    _host(fresh, machine, flags)
    for isa in refused:
        with pytest.raises(native.IsaError, match=rf"^CNNCOMPRESS_ISA={isa}: this CPU .*(lacks|is {machine})") as error:
            native.check_isa(isa)
        assert "\n" not in str(error.value)
    for isa in allowed:
        assert native.check_isa(isa) == isa
    assert native.supported_isas() == tuple(isa for isa in native.ISAS if isa in allowed)
    assert native.check_isa("") is None and native.check_isa("auto") is None  # the native best


def test_refused_before_anything_is_built(fresh, tmp_path):
    """A refused path is an error, not a silent numpy fallback, even with CNNCOMPRESS_NO_NATIVE set."""
    fresh.setenv("CNNCOMPRESS_CACHE", str(tmp_path))
    _host(fresh, "x86_64", "sse2 popcnt")
    fresh.setenv("CNNCOMPRESS_ISA", "avx2")
    with pytest.raises(native.IsaError, match="lacks avx2 and fma"):
        native.load("bitpack", bitpack.ARGTYPES)
    fresh.setenv("CNNCOMPRESS_NO_NATIVE", "1")
    with pytest.raises(native.IsaError):
        native.load("bitpack", bitpack.ARGTYPES)
    assert not list(tmp_path.iterdir())


def test_each_forced_path_has_its_own_cache_file(fresh):
    paths = {isa: native.library_path("bitpack", native.CFLAGS + native.isa_flags(isa), (), isa)
             for isa in (None, *native.ISAS)}
    assert len(set(paths.values())) == len(paths)
    assert paths[None].name.startswith("bitpack-") and paths["avx2"].name.startswith("bitpack-avx2-")
    # same flags, another forced path: still another file (avx512 on an AVX-512 host builds with the native flags)
    assert native.library_path("bitpack", native.CFLAGS, (), "avx512") != native.library_path("bitpack", native.CFLAGS)


def test_forced_flags(fresh):
    _host(fresh, "x86_64", "avx2 fma avx512f")
    assert native.isa_flags(None) == ()
    assert native.isa_flags("scalar") == ("-mno-avx", "-DCNNCOMPRESS_FORCE_SCALAR")  # no AVX from the compiler
    assert native.isa_flags("avx2") == ("-mno-avx512f",)
    _host(fresh, "aarch64", "asimd")
    assert native.isa_flags("scalar") == ("-DCNNCOMPRESS_FORCE_SCALAR",) and native.isa_flags("neon") == ()


def test_every_module_reports_the_forced_path(isa):
    path = bitpack.kernel_path()
    assert path == binary_graph.kernel_path()  # bitpack.c is linked into the chain library
    assert path == f"c-{isa}" or (isa == "avx512" and path in ("c-avx512-vpopcnt", "c-avx512"))
    assert hashed.kernel_path() == f"c-{isa}"


def test_unset_and_auto_are_the_native_best(fresh):
    fresh.delenv("CNNCOMPRESS_ISA", raising=False)
    best = bitpack.native()
    if best is None:
        pytest.skip("no C compiler")
    fresh.setenv("CNNCOMPRESS_ISA", "auto")
    assert bitpack.native() is best
    expected = {"x86_64": ("c-avx512-vpopcnt", "c-avx512", "c-avx2", "c-scalar"), "aarch64": ("c-neon",)}
    assert bitpack.kernel_path() in expected.get(native.hardware.machine(), ("c-scalar",))
    if "avx512_vpopcntdq" in native.hardware.flags_text().split():
        assert bitpack.kernel_path() == "c-avx512-vpopcnt"
    elif "avx2" in native.hardware.flags_text().split():
        assert bitpack.kernel_path() in ("c-avx512", "c-avx2")


# ---------------------------------------------------------------- the edges of each path's kernels
@pytest.mark.parametrize("m,n,words", [(1, 1, 1), (2, 3, 2), (4, 4, 4), (5, 9, 7), (3, 5, 8), (6, 7, 9), (1, 13, 31),
                                       (7, 6, 123), (8, 8, 124), (5, 11, 125), (2, 4, 251), (1, 6, 300),
                                       (257, 5, 9), (515, 3, 2)])
def test_gemm_edges_equal_reference(isa, m, n, words):
    """Tails of K (1-3 words after 4-word steps, 7 after 8), 1-row and 1-filter edge tiles, the AVX2 path's
    124-word byte-count blocks (123, 124, 125, 251 words), few words (< 8: the scalar tile on AVX2), more pixels than
    one 256-row block of counts (257, 515)."""
    torch.manual_seed(m * 1000 + n * 10 + words)
    k = 64 * words - (words % 3) * 5  # also bits that do not fill the last word
    a, b = torch.randn(m, k), torch.randn(n, k)
    corr = torch.randint(-5, 5, (n, m), dtype=torch.int32)
    alpha, kscale, bias = torch.rand(n), torch.rand(m), torch.randn(n)
    raw = bitpack.xnor_gemm(bitpack.pack_rows(a), bitpack.pack_rows(b), k)
    assert torch.equal(raw, ref.reference_xnor_gemm(a, b))
    fused = bitpack.xnor_gemm(bitpack.pack_rows(a), bitpack.pack_rows(b), k, corr=corr, alpha=alpha, kscale=kscale,
                              bias=bias)
    torch.testing.assert_close(fused, ref.reference_xnor_gemm(a, b, corr=corr, alpha=alpha, kscale=kscale, bias=bias),
                               rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("c,h,w,pad", [(1, 3, 3, 0), (8, 1, 9, 1), (64, 4, 4, 0), (65, 3, 5, 2), (200, 5, 3, 1)])
def test_packing_edges_equal_reference(isa, c, h, w, pad):
    """Pixel counts around the 8-pixel (AVX2) / 4-pixel (NEON) blocks, channel counts around a word."""
    torch.manual_seed(c + h + w)
    x = torch.randn(c, h, w)
    x[0, 0, 0] = 0.0
    words, absmean = bitpack.pack_image(x, (pad, pad))
    padded = F.pad(ref.sign(x), (pad, pad, pad, pad), value=1.0)  # padding packs as +1
    rows = torch.full((padded.shape[1] * padded.shape[2], bitpack.n_words(c) * 64), -1.0)
    rows[:, :c] = padded.permute(1, 2, 0).reshape(-1, c)
    assert torch.equal(words.reshape(-1, bitpack.n_words(c)), ref.reference_pack_rows(rows))
    torch.testing.assert_close(absmean, x.abs().mean(0))


def test_wide_rows_and_lrn_tails_equal_reference(isa):
    """Max-pool rows wider than the kernel's 1024-float row buffer; LRN over pixel counts around the vector width."""
    torch.manual_seed(5)
    x = torch.randn(1, 2, 5, 1100)
    assert torch.equal(bitpack.max_pool2d(x, 3, 2, True), ref.reference_max_pool2d(x, 3, 2, True))
    for pixels in (1, 7, 8, 9, 15, 16, 17, 33):
        y = torch.randn(1, 6, 1, pixels) * 4
        torch.testing.assert_close(bitpack.local_response_norm(y, 5, 1e-2, 0.75, 2.0),
                                   ref.reference_local_response_norm(y, 5, 1e-2, 0.75, 2.0), rtol=1e-5, atol=1e-6)
