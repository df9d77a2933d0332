"""What a results file records about where its numbers were measured: device, library versions, git commit."""
from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path

import torch


def environment() -> dict:
    """What the numbers were measured on: device, threads, library versions, git commit, which XNOR kernel
    ran (``bitpack.kernel_path``: AVX-512 VPOPCNTDQ, scalar popcount or numpy) and the precision of its large float
    stem convs (``deploy.xnor.stem_precision``: bf16 on AVX512-BF16 / AMX, else fp32), which HashedNets expand kernel
    (``hashed.kernel_path``: C or torch), torch's CPU capability, and the
    engines' facts (``engines.engine_environment``: ISA flags, AMX, bf16, OpenVINO version and precisions)."""
    import onnxruntime
    commit = git_commit()
    from cnncompress import hardware
    cpu = hardware.cpu_name()
    from cnncompress.deploy import engine_environment
    from cnncompress.kernels import bitpack, hashed
    from cnncompress.deploy.xnor import stem_precision
    return {"torch": torch.__version__, "onnxruntime": onnxruntime.__version__, "python": platform.python_version(),
            "cpu": cpu, "cores": os.cpu_count(), "git_commit": commit, "node": platform.node(),
            "xnor_kernel": bitpack.kernel_path(), "xnor_float_stem": stem_precision("auto"),
            "hashed_kernel": hashed.kernel_path(),
            "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "engines": engine_environment()}


def git_commit() -> str:
    """The checked-out commit (short hash), with " (+ uncommitted changes)" when tracked files differ from it;
    "" outside a git checkout."""
    def git(*args):
        return subprocess.run(["git", *args], capture_output=True, text=True, cwd=Path(__file__).parent).stdout
    try:
        head = git("rev-parse", "--short", "HEAD").strip()
        dirty = head and git("status", "--porcelain", "--untracked-files=no").strip()
    except OSError:
        return ""
    return head + (" (+ uncommitted changes)" if dirty else "")
