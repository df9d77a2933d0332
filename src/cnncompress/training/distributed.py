"""torch.distributed helpers: process groups on loopback, DistributedDataParallel wrapping, batch sharding.

Data-parallel SGD (DDP): every rank holds the same weights, computes the gradient of its shard of each global
batch, and DDP all-reduces (averages) the gradients before the optimizer step, so every rank takes the same step.

Sharding (equivalent to ``torch.utils.data.DistributedSampler`` with the trainer's seeded per-epoch
permutation, no padding): the global batch ``B_t`` (``batch_size`` indices of the permutation) is split
``B_t[rank::world]``. Rank ``r`` scales its mean loss by ``n_r * world / |B_t|``; after DDP's average the gradient
is ``(1/world) Σ_r (n_r world / |B_t|) ∇ mean_r = (1/|B_t|) Σ_{i ∈ B_t} ∇ loss_i`` — exactly the 1-process
gradient at the same global batch, also for a last batch that does not divide evenly. A rank with no sample
in a batch forwards the batch with weight 0 (DDP needs every rank in every all-reduce).

Not identical to one process: dropout masks (each rank draws for its shard) and BatchNorm batch statistics
(computed per shard; SyncBatchNorm needs CUDA).

Backends: gloo on CPU, nccl on CUDA (one GPU per rank: ``cuda:LOCAL_RANK``).
"""
from __future__ import annotations

import os
import socket
import warnings
from typing import Callable

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from cnncompress.errors import InputError


def world() -> tuple[int, int]:
    """``(rank, world_size)`` of this process; ``(0, 1)`` outside a process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def backend(device: str) -> str:
    return "nccl" if device.startswith("cuda") else "gloo"


def barrier() -> None:
    if world()[1] > 1:
        dist.barrier()


def all_sum(values: list[float]) -> list[float]:
    """Sum a few numbers over all ranks (float64; the values of this rank outside a group)."""
    if world()[1] == 1:
        return values
    tensor = torch.tensor(values, dtype=torch.float64)
    if dist.get_backend() == "nccl":
        tensor = tensor.cuda()
    dist.all_reduce(tensor)
    return tensor.cpu().tolist()


class DDP(DistributedDataParallel):
    """DistributedDataParallel that also answers the wrapped model's attributes (``model.classifier`` ...), so
    method loss functions that inspect the model keep working; calling it runs DDP's forward."""

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.module, name)


def wrap(model: nn.Module, device: str) -> nn.Module:
    """``model`` wrapped in DDP when this process is one of several ranks, else ``model`` itself."""
    if world()[1] == 1:
        return model
    # 1x1 convolutions' gradients can come in another stride order than DDP's flat buckets: a copy, not an error
    warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
    if device.startswith("cuda"):
        index = torch.cuda.current_device()
        return DDP(model, device_ids=[index], output_device=index)
    return DDP(model)


def shard(index: torch.Tensor, rank: int, world_size: int) -> torch.Tensor:
    """This rank's part of a global batch of dataset indices: ``index[rank::world_size]``."""
    return index[rank::world_size]


def init_from_env(device: str = "cpu") -> bool:
    """Join the process group described by torchrun's variables (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
    ``MASTER_ADDR``, ``MASTER_PORT``); False when they say one process (or the group exists already)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or (dist.is_available() and dist.is_initialized()):
        return False
    if device.startswith("cuda"):
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend(device), init_method="env://")
    return True


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _entry(rank: int, fn: Callable, world_size: int, port: int, device: str, args: tuple) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE=str(world_size))
    init_from_env(device)
    try:
        fn(*args)
    finally:
        dist.destroy_process_group()


def spawn(fn: Callable, nprocs: int, args: tuple = (), device: str = "cpu") -> None:
    """Run ``fn(*args)`` in ``nprocs`` fresh processes forming one group on 127.0.0.1 (gloo on CPU, nccl on
    CUDA with one GPU per rank). ``fn`` must be importable (a module-level function). Raises InputError with
    the failing rank's last error line."""
    if nprocs < 1:
        raise InputError(f"--ddp {nprocs}: needs at least 1 process")
    if device.startswith("cuda") and nprocs > torch.cuda.device_count():
        raise InputError(f"--ddp {nprocs} on cuda needs {nprocs} GPUs; {torch.cuda.device_count()} visible")
    import torch.multiprocessing as mp
    try:
        mp.start_processes(_entry, args=(fn, nprocs, free_port(), device, args), nprocs=nprocs,
                           start_method="spawn")
    except mp.ProcessRaisedException as error:
        lines = [line for line in str(error).strip().splitlines() if line.strip()]
        last = lines[-1] if lines else "?"
        if "InputError" in last:
            raise InputError(last.split("InputError:", 1)[1].strip()) from None
        raise RuntimeError(f"a DDP rank failed: {last}") from None
