"""Hostile-input sweep of the command line: every case must exit 2 with one line on stderr naming the file or flag,
leave no new file behind and overwrite nothing.

    .venv/bin/python fuzz/hostile_cli.py            # prints cases / clean / wrong exit / lost and each failure

A case is *clean* when it exits 2, stderr's last line starts with ``cnncompress: error:`` (or is argparse's usage
error) and names what it should, and the working folder holds the same files with the same bytes afterwards. *Wrong
exit*: any other exit code or message. *Lost*: a file that existed before was changed or removed, or a new file
appeared (a half-written output). *Memory*: the call's peak RSS grew more than 64x its largest input file +
200 MiB over an idle call (``IDLE``: Python with torch, onnxruntime and the CLI imported).
"""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from cnncompress import methods, models, storage
from cnncompress.training.trainer import save_weights

CLI = [sys.executable, "-m", "cnncompress.cli"]


def _fixtures(root: Path) -> None:
    """Valid and hostile files the cases refer to (made once; their bytes are checked after every case)."""
    torch.manual_seed(0)
    net = models.build("squeezenet1_1", 10, 1, 48, width=0.25)
    net.metadata = {"dataset": "mnist5k"}
    save_weights(net, root / "model.safetensors")
    good = storage.save(methods.apply(net, "bwn"), root / "bwn.ccz")
    data = good.read_bytes()
    (root / "truncated.ccz").write_bytes(data[: len(data) // 2])
    (root / "empty.ccz").write_bytes(b"")
    (root / "text.ccz").write_text("not a model\n")
    (root / "junk.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}garbage")
    (root / "notimage.jpg").write_bytes(b"GIF89a junk")
    (root / "bad_recipe.yaml").write_text("data: mnist5k\ncolour: blue\nrows: auto\n")
    (root / "bad_value.yaml").write_text("data: mnist5k\nbaselines:\n  vgg_s: {width: 0.25, epochs: 1}\n"
                                         "finetune: {epochs: 1, lr: 0.001}\nrows:\n  - {model: vgg_s, method: "
                                         "prune-magnitude, config: {sparsity: 1.5}}\n")
    (root / "published").mkdir()
    (root / "published" / "table.md").write_text("| the published table |\n")
    os.mkfifo(root / "pipe.ccz")
    bomb = models.build("squeezenet1_1", num_classes=100_000, in_channels=1, input_size=48, width=0.5)
    bomb = methods.apply(bomb, "prune-magnitude", layers="classifier.conv10", sparsity=0.5)
    with torch.no_grad():
        bomb.classifier.conv10.weight.zero_()
    storage.save(bomb, root / "bomb.ccz")
    from safetensors.torch import load_file, save_file  # a 4,000,000-class spec beside 10-class weights
    save_file(load_file(str(root / "model.safetensors")), str(root / "bomb.safetensors"), metadata={
        "cnncompress.spec": json.dumps({**net.spec, "num_classes": 4_000_000})})
    header, row = "emotion,pixels,Usage\n", "3," + " ".join(["7"] * 2304)
    (root / "short.csv").write_text(header + row + ",Training\n" + row + "\n")
    (root / "latin.csv").write_bytes((header + "3,caf\xe9,Training\n").encode("latin-1"))


# (name, argv, text the one-line error must contain)
CASES = [
    ("missing model file", ["compress", "nope.ccz", "--method", "bwn", "--out", "o1"], "nope.ccz"),
    ("truncated .ccz", ["export", "truncated.ccz"], "truncated.ccz"),
    ("empty .ccz", ["export", "empty.ccz"], "empty.ccz"),
    ("text as .ccz", ["export", "text.ccz"], "text.ccz"),
    ("FIFO as .ccz", ["export", "pipe.ccz"], "pipe.ccz"),
    ("memory bomb .ccz", ["export", "bomb.ccz"], "bomb.ccz"),
    ("corrupt safetensors", ["compress", "junk.safetensors", "--method", "bwn", "--out", "o2"], "junk.safetensors"),
    ("unknown method", ["compress", "model.safetensors", "--method", "bwnn", "--out", "o3"], "bwnn"),
    ("bad method value", ["compress", "model.safetensors", "--method", "prune-magnitude", "--config",
                          "sparsity=1.5", "--out", "o4"], "sparsity"),
    ("unknown method option", ["compress", "model.safetensors", "--method", "bwn", "--config", "colour=1",
                               "--out", "o5"], "colour"),
    ("unknown layer", ["compress", "model.safetensors", "--method", "hashed", "--config", "layers=fc99",
                       "--out", "o6"], "fc99"),
    ("not an image", ["predict", "fer-minixception", "notimage.jpg"], "notimage.jpg"),
    ("unknown teacher", ["predict", "fer-nope", "notimage.jpg"], "fer-nope"),
    ("unknown dataset", ["train", "--model", "vgg_s", "--data", "cifar99", "--out", "o7"], "cifar99"),
    ("unknown model", ["train", "--model", "resnet", "--data", "mnist5k", "--out", "o8"], "resnet"),
    ("bad val fraction", ["train", "--model", "vgg_s", "--data", "mnist5k", "--val-fraction", "0.7",
                          "--out", "o9"], "0.7"),
    ("unknown schedule", ["train", "--model", "vgg_s", "--data", "mnist5k", "--schedule", "warp",
                          "--out", "o10"], "warp"),
    ("unknown recipe key", ["bench", "--recipe", "bad_recipe.yaml", "--out", "o11"], "colour"),
    ("bad recipe value", ["bench", "--recipe", "bad_value.yaml", "--out", "o12"], "sparsity"),
    ("missing recipe", ["bench", "--recipe", "nope.yaml", "--out", "o13"], "nope.yaml"),
    ("--only typo", ["bench", "--only", "bwnn", "--out", "published"], "bwnn"),
    ("export to a folder", ["export", "bwn.ccz", "--out", "published"], "published"),
    ("unknown export format", ["export", "bwn.ccz", "--format", "tflite"], "tflite"),
    ("memory bomb safetensors", ["compress", "bomb.safetensors", "--method", "bwn", "--out", "o14"],
     "bomb.safetensors"),
    ("short FER row", ["train", "--model", "vgg_s", "--data", "fer2013:short.csv", "--out", "o15"], "line 3"),
    ("latin-1 FER CSV", ["train", "--model", "vgg_s", "--data", "fer2013:latin.csv", "--out", "o16"], "UTF-8"),
]


def _snapshot(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): (hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir")
            for p in sorted(root.rglob("*")) if not p.is_fifo()}


IDLE = [sys.executable, "-c", "import torch, onnx, onnxruntime, cnncompress.cli, cnncompress.models.loading, "
                              "cnncompress.training.trainer, cnncompress.data"]  # what a CLI call imports, doing nothing


def _run(root: Path, argv: list[str], command: list[str] | None = None) -> tuple[int, str, int]:
    """(exit status, stderr, the child's peak RSS in bytes) of one CLI call (or ``command``)."""
    with tempfile.TemporaryFile("w+") as err:
        child = subprocess.Popen(command or CLI + argv, cwd=root, stdout=subprocess.DEVNULL, stderr=err,
                                 env={**os.environ, "PYTHONWARNINGS": "ignore"})
        _, status, usage = os.wait4(child.pid, 0)
        child.returncode = os.waitstatus_to_exitcode(status)
        err.seek(0)
        return child.returncode, err.read(), usage.ru_maxrss * 1024


def _file_size(root: Path, argv: list[str]) -> int:
    """The largest regular input file named on the command line (the memory bound is stated against it)."""
    sizes = [(root / a).stat().st_size for a in argv if (root / a).is_file()]
    return max(sizes, default=0)


def run_case(root: Path, argv: list[str], expect: str, idle_rss: int = 0) -> tuple[str, str]:
    before = _snapshot(root)
    returncode, stderr, peak = _run(root, argv)
    after = _snapshot(root)
    last = stderr.strip().splitlines()[-1] if stderr.strip() else ""
    grown, bound = peak - idle_rss, 64 * _file_size(root, argv) + 200 * 2**20
    if grown > bound:
        return "memory", f"peak RSS {peak / 2**20:.0f} MiB ({grown / 2**20:.0f} MiB over an idle CLI call), over " \
                         f"64x the file + 200 MiB ({bound / 2**20:.0f} MiB)"
    if before != after:
        changed = sorted(set(before.items()) ^ set(after.items()))[:3]
        return "lost", f"files changed: {changed}"
    if returncode != 2 or expect not in last or not (last.startswith("cnncompress: error:") or "usage:" in stderr):
        return "wrong exit", f"rc={returncode} last line: {last[:200]}"
    return "clean", f"{last[:160]} [peak RSS {peak / 2**20:.0f} MiB, idle {idle_rss / 2**20:.0f}]"


def main() -> int:
    counts = {"clean": 0, "wrong exit": 0, "lost": 0, "memory": 0}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        _fixtures(root)
        idle_rss = _run(root, [], IDLE)[2]
        for name, argv, expect in CASES:
            outcome, detail = run_case(root, argv, expect, idle_rss)
            counts[outcome] += 1
            print(f"{outcome:10s} {name}: {detail}", flush=True)
    print(f"{len(CASES)} cases: {counts['clean']} clean, {counts['wrong exit']} wrong exit, {counts['lost']} lost, "
          f"{counts['memory']} over the memory bound (peak RSS > idle CLI + 64x the file + 200 MiB)")
    return 0 if counts["clean"] == len(CASES) else 1


if __name__ == "__main__":
    raise SystemExit(main())
