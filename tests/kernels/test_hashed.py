"""HashedNets hash maps: the documented formula, fast == reference twin, determinism across processes."""
import hashlib
import os
import subprocess
import sys

import pytest
import torch

from cnncompress.kernels import hashed as kernel

MASK = 0xFFFFFFFF


def formula_hash(seed: int, stream: int, key: int) -> int:
    """H(seed, stream, key) re-typed from the docstring of cnncompress.kernels.hashed (independent of it)."""
    def mix(x):
        x ^= x >> 16
        x = (x * 0x7FEB352D) & MASK
        x ^= x >> 15
        x = (x * 0x846CA68B) & MASK
        return x ^ (x >> 16)
    s = mix((seed ^ (stream * 0x9E3779B9)) & MASK)
    return mix(mix(key ^ s) ^ mix(s ^ 0x5BD1E995))


# Fixed values of H: a change of the hash would silently re-map every stored model, so pin them.
PINNED = [((0, 0, 0), 958780621), ((0, 1, 0), 2706128959), ((1, 1, 12345), 2005913311),
          ((MASK, 2, 7), 1025554552), ((42, 3, 2**32 - 1), 3014805284)]


@pytest.mark.parametrize("args,value", PINNED)
def test_hash_matches_documented_formula_and_pinned_values(args, value):
    assert formula_hash(*args) == value
    assert kernel.reference_hash(*args) == value


def test_reference_maps_pinned():
    assert kernel.reference_maps(123, 12, 5) == ([4, 0, 3, 1, 2, 1, 2, 3, 4, 3, 1, 2],
                                                 [1, 1, 1, 1, -1, 1, 1, 1, -1, 1, 1, -1])
    assert kernel.reference_maps(123, 6, 2, bias=True) == ([1, 0, 0, 1, 1, 1], [-1, -1, 1, -1, 1, -1])


@pytest.mark.parametrize("seed,n,buckets,bias", [(0, 1000, 37, False), (MASK, 777, 1, False),
                                                 (2**31 + 5, 3001, 1500, True), (7, 50, 2**30 - 1, False)])
def test_fast_maps_equal_reference(seed, n, buckets, bias, monkeypatch):
    monkeypatch.setattr(kernel, "CHUNK", 256)  # exercise chunk boundaries
    index, sign = kernel.reference_maps(seed, n, buckets, bias)
    assert kernel.bucket_map(seed, n, buckets, bias).tolist() == index
    assert kernel.sign_map(seed, n, bias).tolist() == sign
    slots = kernel.slot_map(seed, n, buckets, bias)
    assert slots.dtype == torch.int32
    assert slots.tolist() == [i + buckets * (s < 0) for i, s in zip(index, sign)]


def test_fast_hash_on_high_keys():
    keys = [0, 1, 2**31 - 1, 2**31, 2**32 - 2, 2**32 - 1]
    import numpy as np
    fast = kernel.hash32(99, 1, np.array(keys, dtype=np.uint32)).tolist()
    assert fast == [formula_hash(99, 1, k) for k in keys]


def test_maps_are_balanced():
    n, buckets = 200_000, 1000
    counts = torch.bincount(kernel.bucket_map(5, n, buckets).long(), minlength=buckets).float()
    assert counts.min() > 0.7 * n / buckets and counts.max() < 1.3 * n / buckets
    signs = kernel.sign_map(5, n).float()
    assert abs(signs.mean().item()) < 0.02
    # the sign is not a function of the bucket (independent streams)
    per_bucket = torch.zeros(buckets).index_add_(0, kernel.bucket_map(5, n, buckets).long(), signs)
    assert per_bucket.abs().mean() < 3 * (n / buckets) ** 0.5


def _digest_script(seed, n, buckets):
    return (f"import hashlib; from cnncompress.kernels import hashed as k; "
            f"print(hashlib.sha256(k.slot_map({seed}, {n}, {buckets}).numpy().tobytes()).hexdigest())")


def test_determinism_across_processes():
    seed, n, buckets = 31337, 100_000, 12_500
    here = hashlib.sha256(kernel.slot_map(seed, n, buckets).numpy().tobytes()).hexdigest()
    env = {**os.environ, "PYTHONHASHSEED": "12345", "OMP_NUM_THREADS": "1"}
    other = subprocess.run([sys.executable, "-c", _digest_script(seed, n, buckets)], env=env, check=True,
                           capture_output=True, text=True).stdout.strip()
    assert other == here
    assert not torch.equal(kernel.slot_map(seed + 1, n, buckets), kernel.slot_map(seed, n, buckets))


def test_expand_and_gradient_is_signed_scatter_add():
    torch.manual_seed(0)
    buckets, n = 11, 300
    index, sign = kernel.reference_maps(4, n, buckets)
    slots = kernel.slot_map(4, n, buckets)
    w = torch.randn(buckets, dtype=torch.float64, requires_grad=True)
    v = kernel.expand(w, slots)
    assert torch.equal(v.detach(), torch.tensor(sign, dtype=torch.float64) * w.detach()[torch.tensor(index)])
    g = torch.randn(n, dtype=torch.float64)
    v.backward(g)
    expected = [0.0] * buckets
    for e in range(n):
        expected[index[e]] += sign[e] * g[e].item()
    assert torch.allclose(w.grad, torch.tensor(expected, dtype=torch.float64))


needs_c = pytest.mark.skipif(kernel.native() is None, reason="no C compiler: the reference path is the only one")


@needs_c
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("n,buckets", [(300, 11), (70_001, 8_750), (200_000, 1)])
def test_c_expand_and_gradient_equal_reference(isa, n, buckets, threads):
    """The C gather/scatter (split over threads above PARALLEL_MIN) == index_select / index_add_ of the reference."""
    torch.manual_seed(1)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        slots = kernel.slot_map(9, n, buckets)
        w = torch.randn(buckets, requires_grad=True)
        w_ref = w.detach().clone().requires_grad_()
        g = torch.randn(n)
        fast = kernel.expand(w, slots)
        fast.backward(g)
        ref = kernel.reference_expand(w_ref, slots)
        ref.backward(g)
    finally:
        torch.set_num_threads(before)
    assert fast.grad_fn is not None and "NativeExpand" in type(fast.grad_fn).__name__  # the C path really ran
    assert kernel.kernel_path() == f"c-{isa}"  # hashed.c built for the forced path
    assert torch.equal(fast, ref)  # a copy with a sign flip: bit-exact
    torch.testing.assert_close(w.grad, w_ref.grad, rtol=1e-4, atol=1e-4)  # float32 sums in another order


@needs_c
@pytest.mark.parametrize("batch,out,features,buckets,threads", [(5, 7, 11, 13, 1), (20, 300, 400, 9000, 2)])
def test_fused_linear_gradients_equal_the_dense_reference(isa, batch, out, features, buckets, threads):
    """The fused hashed linear (never forming dL/dV) == F.linear on reference_expand, output and all three
    gradients; rows whose output gradient is all zero (a ReLU after the layer) still give the right answer."""
    torch.manual_seed(2)
    slots = kernel.slot_map(4, out * features, buckets)
    w, b, x = torch.randn(buckets), torch.randn(out), torch.randn(batch, features)
    grad = torch.randn(batch, out)
    grad[:, ::3] = 0  # whole rows of G^T x are zero: skipped by the kernel
    leaves = [[t.clone().requires_grad_() for t in (x, w, b)] for _ in range(2)]
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        fast = kernel.linear(leaves[0][0], leaves[0][1], slots, out, leaves[0][2], kernel.ExpandBuffer())
        fast.backward(grad)
    finally:
        torch.set_num_threads(before)
    ref = torch.nn.functional.linear(leaves[1][0], kernel.reference_expand(leaves[1][1], slots).view(out, -1),
                                     leaves[1][2])
    ref.backward(grad)
    assert "NativeLinear" in type(fast.grad_fn).__name__  # the fused C path really ran
    torch.testing.assert_close(fast, ref)
    for mine, theirs in zip(leaves[0], leaves[1]):
        torch.testing.assert_close(mine.grad, theirs.grad, rtol=1e-4, atol=1e-4)


@needs_c
def test_expand_buffer_is_reused_only_when_no_graph_holds_it():
    slots = kernel.slot_map(2, 1000, 50)
    w = torch.randn(50, requires_grad=True)
    buffer = kernel.ExpandBuffer()
    first = kernel.expand(w, slots, buffer)
    held = first.detach().clone()
    second = kernel.expand(w * 2, slots, buffer)  # ``first`` is alive: it must not be overwritten
    assert torch.equal(first, held) and torch.equal(second, 2 * held)
    assert second.data_ptr() != first.data_ptr()
    memory = second.data_ptr()
    del first, second
    third = kernel.expand(w, slots, buffer)  # nothing holds the last buffer any more: same memory
    assert third.data_ptr() == memory and torch.equal(third, held)


def test_expand_falls_back_to_reference_off_the_fast_path():
    slots = kernel.slot_map(2, 100, 7)
    w = torch.randn(7, dtype=torch.float64, requires_grad=True)  # float64: not the C kernel's type
    assert "IndexSelect" in type(kernel.expand(w, slots).grad_fn).__name__


def test_bucket_means_is_mean_of_signed_weights():
    torch.manual_seed(1)
    buckets, n = 40, 257  # some buckets may be empty -> 0
    values = torch.randn(n)
    index, sign = kernel.reference_maps(9, n, buckets)
    means = kernel.bucket_means(values, kernel.slot_map(9, n, buckets), buckets)
    for k in range(buckets):
        members = [sign[e] * values[e].item() for e in range(n) if index[e] == k]
        assert means[k].item() == pytest.approx(sum(members) / len(members) if members else 0.0, abs=1e-6)


def test_meta_device_allocates_only():
    slots = kernel.slot_map(1, 10**9, 10**8, device="meta")
    assert slots.device.type == "meta" and slots.shape == (10**9,)


@pytest.mark.parametrize("seed,n,buckets", [(-1, 10, 2), (2**32, 10, 2), (0, 2**32, 2), (0, 10, 0), (0, 10, 2**30)])
def test_bad_arguments(seed, n, buckets):
    with pytest.raises(ValueError):
        kernel.slot_map(seed, n, buckets, device="meta")
