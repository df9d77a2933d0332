"""Subprocess entry for ``measure.peak_memory``: ``python -m cnncompress.experiments.memory_probe FILE.ccz infer|train BATCH THREADS``.

Prints ``{"peak_mb": ...}``: the RSS high-water mark (``VmHWM``) after the work, minus the RSS after imports.
"""
from __future__ import annotations

import json
import resource
import sys
from cnncompress import deploy


def _status_mb(field: str) -> float:
    """``VmRSS`` / ``VmHWM`` of this process from /proc (ru_maxrss can carry the parent's peak over fork+exec)."""
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main(path: str, mode: str, batch: int, threads: int, entry: str | None = None) -> None:
    import torch
    import torch.nn.functional as F

    from cnncompress import methods, storage
    from cnncompress.methods.registry import load_builtin
    load_builtin()
    torch.set_num_threads(threads)
    warm = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.Flatten(), torch.nn.LazyLinear(2))
    F.cross_entropy(warm(torch.randn(2, 1, 8, 8)), torch.zeros(2, dtype=torch.long)).backward()  # runtime init
    from cnncompress.models import build
    with torch.device("meta"):  # the meta-device build that .ccz validation uses pulls ~70 MB of torch in once
        build("vgg_s", 2, 1, 48, 0.05)
    network = None
    if entry:  # a user network, named by the caller (the bench's recipe), imported before the baseline RSS
        from cnncompress.models.entry_point import resolve
        network = resolve(entry)
    before = _status_mb("VmRSS")
    model = storage.load(path, model=network)
    spec = model.spec
    x = torch.randn(batch, spec["in_channels"], spec["input_size"], spec["input_size"])
    if mode == "train":
        model.train()
        optimizer = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
        labels = torch.zeros(batch, dtype=torch.long)
        for _ in range(2):
            loss = F.cross_entropy(model(x), labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    else:
        model = deploy.to_inference(model)
        with torch.no_grad():
            for _ in range(3):
                model(x)
    peak = _status_mb("VmHWM")
    print(json.dumps({"peak_mb": max(0.0, peak - before)}))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5] if len(sys.argv) > 5 else None)
