"""A chain of XNOR-graph layers run in one native call: the C op table of ``kernels/binary_graph.c``.

At the 48x48 FER size every layer of an XNOR VGG-S costs microseconds of arithmetic, and the per-layer path
(a Python module call, a ctypes call, packing and a torch allocation per layer) cost more than the whole float net
on onnxruntime. ``NativeChain(op_descs).run(x)`` runs the chain for one input shape in a single ctypes call: the op
table and every buffer (packed words, bit-im2col, K, the float im2col of a float conv, each op's output) are laid
out once per input shape and reused.

``op_descs`` are plain dicts (tensors and numbers; no modules), built by ``deploy/xnor.py``:

    {"kind": "conv", "weight": (O, C, kh, kw), "bias", "stride", "padding", "relu"}
    {"kind": "xconv", "wbits", "alpha", "bias", "kernel", "stride", "padding", "input_scale",
     "correction": size -> (O, OH*OW) int32 or None, "scale", "shift" (a folded BatchNorm or None), "relu"}
    {"kind": "xlinear", "wbits", "alpha", "bias", "input_scale", "scale", "shift", "relu"}
    {"kind": "linear", "weight": (O, K), "bias", "relu"}      {"kind": "affine", "scale", "shift", "relu"}
    {"kind": "relu"}   {"kind": "lrn", "size", "alpha", "beta", "k"}   {"kind": "maxpool", "kernel", "stride",
    "ceil_mode"}   {"kind": "flatten"} (no op: the next op reads the same memory as one vector)

``StemEpilogue`` is the other entry point: the ReLU / LRN / max-pool after a float conv that ran in bf16 on oneDNN
(``deploy/xnor.py`` ``Bf16Conv``), on its bf16 channels_last output, in one pass.

Formulas per op are in the C file's header; the pure reference of a chain is its layers run one by one as
PyTorch modules (the tests compare the two). Threads: ops of at least ``MIN_WORK`` multiply-adds (or word pairs)
are split over ``torch.get_num_threads()`` POSIX threads; smaller ones run on the calling thread.
"""
from __future__ import annotations

import ctypes
import functools

import torch

from cnncompress.kernels import native as _native
from cnncompress.kernels.bitpack import ARGTYPES as _BITPACK_ARGTYPES
from cnncompress.kernels.bitpack_reference import n_words, pool_size

KINDS = {"conv": 0, "xconv": 1, "xlinear": 2, "linear": 3, "relu": 4, "lrn": 5, "maxpool": 6, "affine": 7}
_INTS = ("kind", "C", "H", "W", "O", "OH", "OW", "kh", "kw", "sh", "sw", "ph", "pw", "relu", "input_scale", "K",
         "Kw", "nbits", "Ppad", "lrn_size")
_POINTERS = ("weight", "bias", "scale", "shift", "alpha", "wbits", "corr", "packed", "cols", "affined", "absmean",
             "kscale", "scratch", "out")
MIN_WORK = 1 << 22  # below this many multiply-adds an op stays on the calling thread (a thread start ~20-50 us)


class Op(ctypes.Structure):
    _fields_ = ([(name, ctypes.c_int64) for name in _INTS] + [(name, ctypes.c_double) for name in
                ("lrn_alpha", "lrn_beta", "lrn_k")] + [(name, ctypes.c_void_p) for name in _POINTERS])


def native() -> ctypes.CDLL | None:
    """``bitpack.c`` + ``binary_graph.c`` in one library for the path ``$CNNCOMPRESS_ISA`` asks for (the native best
    when unset), or None (one warning) when it cannot be built."""
    return _library(_native.requested_isa())


@functools.lru_cache(maxsize=None)
def _library(isa: str | None) -> ctypes.CDLL | None:
    _P, _I, _L = ctypes.c_void_p, ctypes.c_int, ctypes.c_long
    argtypes = {**_BITPACK_ARGTYPES, "run_chain": [_P, _I, _P, _I, _L, _P, _L, _I, _L],
                "stem_epilogue": [_P, _P, _L, _P, _I, _L], "op_size": []}
    lib = _native.load("binary_graph", argtypes, parts=("bitpack", "binary_graph"), isa=isa)
    if lib is not None and lib.op_size() != ctypes.sizeof(Op):
        raise RuntimeError(f"binary_graph.c op_t has {lib.op_size()} bytes, the ctypes Op {ctypes.sizeof(Op)}")
    return lib


def available() -> bool:
    return native() is not None


def kernel_path() -> str:
    """The path the chains run: ``"c-avx512-vpopcnt"``, ``"c-avx512"``, ``"c-avx2"``, ``"c-neon"``, ``"c-scalar"``
    (``kernel_isa()`` of bitpack.c, linked in), or ``"none"`` (no library: the layers run one by one)."""
    return _native.kernel_path(native(), "none")


STEM_EPILOGUE = ("relu", "lrn", "maxpool")  # the ops a bf16 stem's epilogue takes, each optional, in this order


class StemEpilogue:
    """The ops of ``op_descs`` (a prefix of ReLU, LRN, max-pool, each at most once, in that order) on a float conv's
    bf16 output stored channels_last ``(N, C, H, W)`` (oneDNN's bf16 conv), written as float NCHW by one native
    pass (``stem_epilogue`` in the C file): one pooled row at a time, the full-size float activation is never
    written. VGG-S conv1 at 224 (96 x 109 x 109 -> 96 x 37 x 37): the float path wrote and read 4.5 MB three times
    (ReLU, LRN, pool: 1.6 ms on one thread). Reference: the same layers in PyTorch on ``x.float()``."""

    def __init__(self, op_descs: list[dict], in_shape: tuple[int, int, int]):
        kinds = [op_desc["kind"] for op_desc in op_descs]
        if kinds != [k for k in STEM_EPILOGUE if k in kinds]:
            raise ValueError(f"a stem epilogue takes {STEM_EPILOGUE} in that order, got {kinds}")
        self.in_shape, shape = tuple(in_shape), tuple(in_shape)
        for op_desc in op_descs:
            shape = output_shape(op_desc, shape)
        self.out_shape = shape
        byk = {op_desc["kind"]: op_desc for op_desc in op_descs}
        lrn, pool = byk.get("lrn"), byk.get("maxpool")
        op = self.op = Op()
        (op.C, op.H, op.W), (op.O, op.OH, op.OW) = in_shape, shape
        op.relu = int("relu" in byk)
        if lrn:
            op.lrn_size, op.lrn_alpha, op.lrn_beta, op.lrn_k = lrn["size"], lrn["alpha"], lrn["beta"], lrn["k"]
        op.kh = op.kw = pool["kernel"] if pool else 1
        op.sh = op.sw = pool["stride"] if pool else 1

    def run(self, y: torch.Tensor) -> torch.Tensor:
        lib = native()
        if lib is None:
            raise RuntimeError("stem epilogue: the native library could not be built")
        if (y.dtype != torch.bfloat16 or tuple(y.shape[1:]) != self.in_shape
                or not y.is_contiguous(memory_format=torch.channels_last)):
            raise ValueError(f"stem epilogue laid out for bf16 channels_last {self.in_shape}, got {y.dtype} "
                             f"{tuple(y.shape)}")
        out = torch.empty(y.shape[0], *self.out_shape)
        if lib.stem_epilogue(ctypes.byref(self.op), y.data_ptr(), y.shape[0], out.data_ptr(),
                             max(1, torch.get_num_threads()), MIN_WORK):
            raise MemoryError("stem epilogue: no memory for its scratch rows")
        return out


def _contiguous(tensor: torch.Tensor | None, dtype=torch.float32) -> torch.Tensor | None:
    return None if tensor is None else tensor.detach().to(dtype).contiguous()


def _kernel(op_desc: dict) -> tuple[int, int]:
    return tuple(op_desc["kernel"]) if op_desc["kind"] == "xconv" else tuple(op_desc["weight"].shape[2:])


def output_shape(op_desc: dict, shape: tuple) -> tuple:
    """The shape (no batch) one op of ``op_desc`` makes of an input of ``shape``: (C, H, W), or (K,) for vectors."""
    kind = op_desc["kind"]
    c, h, w = shape if len(shape) == 3 else (shape[0], 1, 1)
    if kind == "flatten":
        return (c * h * w,)
    if kind in ("conv", "xconv"):
        (kh, kw), (sh, sw), (ph, pw) = _kernel(op_desc), op_desc["stride"], op_desc["padding"]
        filters = (op_desc["wbits"] if kind == "xconv" else op_desc["weight"]).shape[0]
        return filters, (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
    if kind in ("xlinear", "linear"):
        return ((op_desc["wbits"] if kind == "xlinear" else op_desc["weight"]).shape[0],)
    if kind == "maxpool":
        k, s, ceil = op_desc["kernel"], op_desc["stride"], op_desc["ceil_mode"]
        return c, pool_size(h, k, s, ceil), pool_size(w, k, s, ceil)
    return tuple(shape)  # relu, affine, lrn


class NativeChain:
    """The compiled chain for one input shape ``(C, H, W)``; ``run(x)`` takes ``(N, C, H, W)`` float."""

    def __init__(self, op_descs: list[dict], in_shape: tuple[int, int, int]):
        self.in_shape = tuple(in_shape)
        self.keep: list[torch.Tensor] = []  # every tensor the op table points into
        op_descs = list(op_descs)
        self.ops = (Op * sum(op_desc["kind"] != "flatten" for op_desc in op_descs))()
        shape, ops = self.in_shape, iter(self.ops)
        for op_desc in op_descs:
            shape = self._lay_out(op=None if op_desc["kind"] == "flatten" else next(ops), op_desc=op_desc, shape=shape)
        self.out_shape = shape

    def _ptr(self, tensor: torch.Tensor | None):
        if tensor is None:
            return None
        self.keep.append(tensor)
        return tensor.data_ptr()

    def _buffer(self, numel: int, dtype=torch.float32):
        return self._ptr(torch.empty(max(1, numel), dtype=dtype))

    def _lay_out(self, op: Op | None, op_desc: dict, shape: tuple) -> tuple:
        kind, out = op_desc["kind"], output_shape(op_desc, shape)
        if op is None:  # flatten
            return out
        c, h, w = shape if len(shape) == 3 else (shape[0], 1, 1)
        op.kind, op.C, op.H, op.W, op.relu = KINDS[kind], c, h, w, int(bool(op_desc.get("relu")))
        op.scale, op.shift = self._ptr(_contiguous(op_desc.get("scale"))), self._ptr(_contiguous(op_desc.get("shift")))
        op.bias = self._ptr(_contiguous(op_desc.get("bias")))
        if kind in ("conv", "xconv"):
            op.kh, op.kw = _kernel(op_desc)
            (op.sh, op.sw), (op.ph, op.pw) = op_desc["stride"], op_desc["padding"]
        elif kind == "maxpool":
            op.kh = op.kw = op_desc["kernel"]
            op.sh = op.sw = op_desc["stride"]
        op.O, op.OH, op.OW = (out[0], 1, 1) if len(out) == 1 else out
        pixels = op.OH * op.OW
        if kind == "conv":
            op.K, op.Ppad = c * op.kh * op.kw, -(-pixels // 32) * 32
            weight = torch.zeros(-(-op.O // 4) * 4, op.K)  # rows padded to whole 4-filter tiles
            weight[:op.O] = op_desc["weight"].detach().float().reshape(op.O, -1)
            op.weight, op.scratch = self._ptr(weight), self._buffer(op.K * op.Ppad)
        elif kind == "xconv":
            cw = n_words(c)
            op.Kw, op.nbits, op.input_scale = op.kh * op.kw * cw, c * op.kh * op.kw, int(op_desc["input_scale"])
            op.wbits, op.alpha = self._ptr(_contiguous(op_desc["wbits"], torch.int64)), self._ptr(_contiguous(op_desc["alpha"]))
            op.corr = self._ptr(_contiguous(op_desc["correction"]((h, w)), torch.int32))
            op.packed = self._buffer((h + 2 * op.ph) * (w + 2 * op.pw) * cw, torch.int64)
            op.cols = self._buffer(pixels * op.Kw, torch.int64)
            op.affined, op.absmean, op.kscale = self._buffer(c * h * w), self._buffer(h * w), self._buffer(pixels)
        elif kind == "xlinear":
            op.K = c * h * w
            op.Kw, op.nbits, op.input_scale = n_words(op.K), op.K, int(op_desc["input_scale"])
            op.wbits, op.alpha = self._ptr(_contiguous(op_desc["wbits"], torch.int64)), self._ptr(_contiguous(op_desc["alpha"]))
            op.packed, op.affined, op.kscale = self._buffer(op.Kw, torch.int64), self._buffer(op.K), self._buffer(1)
        elif kind == "linear":
            op.K = c * h * w
            op.weight = self._ptr(_contiguous(op_desc["weight"]))
        elif kind == "lrn":
            op.lrn_size, op.lrn_alpha, op.lrn_beta, op.lrn_k = op_desc["size"], op_desc["alpha"], op_desc["beta"], op_desc["k"]
            op.scratch = self._buffer(h * w)
        op.out = self._buffer(op.O * pixels)
        return out

    def run(self, x: torch.Tensor) -> torch.Tensor:
        x = x.detach().float().contiguous()
        if tuple(x.shape[1:]) != self.in_shape:
            raise ValueError(f"chain laid out for {self.in_shape}, got {tuple(x.shape[1:])}")
        y = torch.empty(x.shape[0], *self.out_shape)
        native().run_chain(self.ops, len(self.ops), x.data_ptr(), x.shape[0], x[0].numel(), y.data_ptr(),
                           y[0].numel(), max(1, torch.get_num_threads()), MIN_WORK)
        return y
