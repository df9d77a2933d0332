"""The ``.ccz`` compressed-model file.

Layout (little-endian), format version 4 (the header and the manifest's encoding: ``storage.ccz_header``)::

    b"CCZ\\x00" | u32 version | u64 manifest length | sha256 of the manifest bytes (32) | manifest | blobs

The manifest is UTF-8 JSON, zlib-compressed from version 3 (a small model's JSON was larger than its compressed
weights: 33 KB against 22 KB for Deep Compression of the 57 K-weight emotion CNN); it is inflated with a bound
(``MAX_MANIFEST``), never past it. Version 2 files (plain JSON) and version 1 files (no manifest digest) are
still read. Every byte that changes the model is covered by a hash: the manifest by the header's digest, the blob
section by one sha256 in the manifest (``payload_sha256``, from version 4), and each tensor blob by its CRC-32 in
the manifest, which names the tensor that is corrupt (versions 1-3 kept a sha256 per tensor: 64 hex characters
for each of a small model's ~100 tensors, 3.6 KB of a 33 KB emotion CNN file).

The manifest holds the model spec (``models.build`` arguments), the architecture diff against that float
skeleton (only registered layer types), the compression history (method + config), free metadata (classes,
normalisation), the blob section's sha256, and per tensor: name, codec, codec meta, dtype, shape, offset and length
in the blob section, and CRC-32; optionally ``probes``: real images and the outputs of the model's exact form,
which ``deploy.to_inference`` checks the deployed engine against (``storage.probe_section``). ``load`` validates all of it
against the file size and the rebuilt architecture before decoding a single tensor; it never unpickles or executes
anything from the file.
"""
from __future__ import annotations

import hashlib
import os
import zlib
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from cnncompress.errors import InputError, input_error
from cnncompress.layers import compressed_layers
from cnncompress.model_card import USER_MODEL, float_skeleton, is_user, set_float_skeleton
from cnncompress.storage import architecture, probe_section
from cnncompress.storage.ccz_header import (HEADER, MAGIC, MAX_MANIFEST, READABLE_VERSIONS, VERSION, decode_manifest,
                                            encode_manifest, header_size, pack_header)
from cnncompress.storage.checkpoint_io import atomic_chunks
from cnncompress.storage.codecs import MAX_ELEMENTS, TORCH_DTYPES, dtype_name, get_codec, numel

# A file may not make the reader allocate more than MAX_EXPANSION x its size + EXPANSION_ALLOWANCE bytes of
# tensors (1-bit codecs expand 32x into fp32; Deep Compression ~35-50x); CNNCOMPRESS_MAX_EXPANSION overrides.
MAX_EXPANSION = 64
EXPANSION_ALLOWANCE = 16 << 20

# What storage needs from the layers above it is handed in (``configure``), so that it imports neither models nor
# methods: the builder of a model's float skeleton from its spec, and the hooks that register layer types and
# codecs before a file is read. ``cnncompress/__init__.py`` wires the toolkit's own.
_HOOKS: dict[str, list[Callable]] = {"build_skeleton": [], "before_read": []}


def configure(*, build_skeleton: Callable[[dict], nn.Module] | None = None,
              before_read: Callable[[], None] | None = None) -> None:
    """Hand storage the skeleton builder (``spec -> float model``, e.g. ``models.build_from_spec``) and a hook run
    before every read (e.g. importing the method modules so that their layers and codecs are registered)."""
    if build_skeleton is not None:
        _HOOKS["build_skeleton"][:] = [build_skeleton]
    if before_read is not None and before_read not in _HOOKS["before_read"]:
        _HOOKS["before_read"].append(before_read)


def build_skeleton(spec: dict) -> nn.Module:
    """The float model ``spec`` describes, built by the configured skeleton builder (``models.build_from_spec``)."""
    if not _HOOKS["build_skeleton"]:
        raise RuntimeError("storage has no skeleton builder: import cnncompress (or call storage.configure)")
    return _HOOKS["build_skeleton"][0](spec)


def _codec_plan(model: nn.Module, default: str) -> dict[str, tuple[str, dict]]:
    """Per state-dict entry: (codec, options). Compressed layers declare ``storage_codecs() -> {local name: (codec,
    opts)}`` (``layers.CompressedLayer``); every other float tensor takes ``default``."""
    plan = {}
    for path, module in compressed_layers(model):
        for local, choice in module.storage_codecs().items():
            plan[f"{path}.{local}" if path else local] = choice
    state = model.state_dict()
    return {name: plan.get(name, (default if state[name].is_floating_point() else "raw", {})) for name in state}


def save(model: nn.Module, path: str | Path, *, float_codec: str | None = None, metadata: dict | None = None,
         probes: probe_section.Probes | None = None) -> Path:
    """Write ``model`` to ``path`` as a ``.ccz`` (atomically). Returns the path.

    ``float_codec`` (``fp32`` or ``fp16``) applies to float tensors whose layer declares no codec of its own;
    by default the model's ``metadata["float_codec"]`` (set by the ``fp16`` method), else ``fp32``. ``probes``
    (``deploy.probes`` makes them) are written only when given, and must be for the model's compression history.
    """
    float_codec = float_codec or (getattr(model, "metadata", {}) or {}).get("float_codec", "fp32")
    spec = getattr(model, "spec", None) or {"name": USER_MODEL, "class": type(model).__name__}
    skeleton = _float_skeleton(model, spec)
    plan = _codec_plan(model, float_codec)
    entries, blobs, offset, payload = [], [], 0, hashlib.sha256()
    for name, tensor in model.state_dict().items():
        codec_name, options = plan[name]
        data, meta = get_codec(codec_name).encode(tensor.detach().cpu(), **options)
        entries.append({"name": name, "codec": codec_name, "meta": meta, "dtype": dtype_name(tensor.dtype),
                        "shape": list(tensor.shape), "offset": offset, "length": len(data),
                        "crc32": zlib.crc32(data)})
        blobs.append(data)
        payload.update(data)
        offset += len(data)
    section = None
    if probes is not None:
        if not probe_section.belongs(probes, model):
            raise ValueError("probes were computed for another compression history than the model's")
        section, probe_blobs = probe_section.encode(probes, offset)
        blobs += probe_blobs
        for data in probe_blobs:
            payload.update(data)
    manifest = {
        "format": "ccz", "version": VERSION, "spec": spec, "payload_sha256": payload.hexdigest(),
        "architecture": architecture.diff(model, skeleton),
        "compression": getattr(model, "compression_history", []),
        "metadata": {**getattr(model, "metadata", {}), **(metadata or {})},
        "tensors": entries, **({"probes": section} if section else {}),
    }
    encoded = encode_manifest(manifest)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_chunks(path, [pack_header(encoded), encoded, *blobs])  # whole or not at all, under a unique name
    return path


def _float_skeleton(model: nn.Module, spec: dict) -> nn.Module:
    """The float network ``model`` was compressed from, which the file's architecture diff is taken against: built
    from ``spec`` for a registered model; for a user's own network the one its card holds (``methods.apply``
    keeps it), or the network itself when nothing was applied to it."""
    if not is_user(spec):
        with torch.device("meta"):
            return build_skeleton(spec)
    skeleton = float_skeleton(model)
    if skeleton is not None:
        return skeleton
    if not getattr(model, "compression_history", None):
        return model
    raise ValueError(f"cannot tell which layers of {spec.get('class', 'the network')} were compressed (it holds no "
                     f"float skeleton): compress it with cnncompress.methods.apply")


def user_skeleton(path: Path, spec: dict, network) -> nn.Module:
    """The float skeleton of a user network's file, on the meta device, from what the caller names: a built
    ``nn.Module`` (copied) or a builder called with the recorded kwargs. Never anything the file names."""
    if network is None:
        entry = spec.get("entry_point")
        how = f"--model {entry}" if entry else "--model FILE.py:FUNCTION"
        raise input_error(path, f"holds a user network ({spec.get('class', '?')}"
                                f"{', entry point ' + entry if entry else ''}); name it to load the file ({how}, or "
                                f"storage.load(path, model=builder_or_module))")
    if isinstance(network, nn.Module):
        import copy
        return copy.deepcopy(network).to("meta")
    kwargs = spec.get("kwargs") or {}
    if not isinstance(kwargs, dict):
        raise input_error(path, "user network kwargs must be an object")
    try:
        with torch.device("meta"):
            built = network(**kwargs)
    except Exception as error:  # noqa: BLE001 - the caller's builder failed: said in one line, naming the file
        raise input_error(path, f"the network builder raised {type(error).__name__}: {error}") from error
    if not isinstance(built, nn.Module):
        raise input_error(path, f"the network builder returned {type(built).__name__}, not an nn.Module")
    return built


def read_manifest(path: str | Path) -> tuple[dict, int]:
    """Parse and check the header and manifest; returns (manifest, byte offset of the blob section)."""
    for hook in _HOOKS["before_read"]:
        hook()  # e.g. method modules register their codecs and layer types
    path = Path(path)
    if path.exists() and not path.is_file() and not path.is_dir():
        raise input_error(path, "not a regular file (a FIFO or device is never read)")
    try:
        size = path.stat().st_size
        with open(path, "rb") as handle:
            head = handle.read(HEADER.size)
            if len(head) < HEADER.size:
                raise input_error(path, f"truncated .ccz header ({size} bytes)")
            magic, version, manifest_length = HEADER.unpack(head)
            if magic != MAGIC:
                raise input_error(path, "not a .ccz file (bad magic bytes)")
            if version not in READABLE_VERSIONS:
                raise input_error(path, f".ccz format version {version}, this cnncompress reads versions "
                                        f"{', '.join(map(str, READABLE_VERSIONS))}")
            start = header_size(version)
            if manifest_length > MAX_MANIFEST or start + manifest_length > size:
                raise input_error(path, f"manifest length {manifest_length} runs past the end of the file ({size} bytes)")
            digest = handle.read(start - HEADER.size)
            raw = handle.read(manifest_length)
            if version >= 2 and hashlib.sha256(raw).digest() != digest:
                raise input_error(path, "manifest sha256 does not match the header (corrupted file)")
            manifest = decode_manifest(raw, version)
    except FileNotFoundError as error:
        raise input_error(path, "no such file") from error
    except IsADirectoryError as error:
        raise input_error(path, "is a directory, expected a .ccz file") from error
    except (UnicodeDecodeError, ValueError) as error:  # json.JSONDecodeError is a ValueError
        raise input_error(path, f"corrupt manifest ({error})") from error
    if not isinstance(manifest, dict) or not isinstance(manifest.get("tensors"), list):
        raise input_error(path, "corrupt manifest (no tensor list)")
    manifest["version"] = version  # the header's, which chose how the manifest was read
    if version >= 4 and not isinstance(manifest.get("payload_sha256"), str):
        raise input_error(path, "corrupt manifest (no payload sha256)")
    _check_tensor_entries(path, manifest["tensors"], size - start - manifest_length, version)
    if "probes" in manifest:
        probe_section.check(path, manifest["probes"], size - start - manifest_length, manifest.get("spec"))
    return manifest, start + manifest_length


def _check_tensor_entries(path: Path, entries: list, blob_bytes: int, version: int = VERSION) -> None:
    end = 0
    for entry in entries:
        if version >= 4:
            if not isinstance(entry, dict) or not (isinstance(entry.get("crc32"), int)
                                                   and 0 <= entry["crc32"] < 1 << 32):
                raise input_error(path, "corrupt tensor entry (not an object with a CRC-32)")
        elif not isinstance(entry, dict) or not isinstance(entry.get("sha256"), str):
            raise input_error(path, "corrupt tensor entry (not an object with a sha256)")
        try:
            name, shape, offset, length = entry["name"], entry["shape"], entry["offset"], entry["length"]
            codec, dtype, meta = get_codec(entry["codec"]), entry["dtype"], entry.get("meta", {})
        except (KeyError, TypeError, ValueError) as error:
            raise input_error(path, f"corrupt tensor entry ({error})") from error
        if not (isinstance(shape, list) and all(isinstance(d, int) and 0 <= d < MAX_ELEMENTS for d in shape)):
            raise input_error(path, f"tensor {name}: bad shape {shape}")
        if numel(shape) > MAX_ELEMENTS:
            raise input_error(path, f"tensor {name}: shape {shape} is too large")
        if not isinstance(meta, dict):
            raise input_error(path, f"tensor {name}: codec meta must be an object")
        if not isinstance(name, str) or not isinstance(dtype, str) or dtype not in TORCH_DTYPES:
            raise input_error(path, f"tensor {name}: unknown dtype {dtype!r}")
        if not (isinstance(offset, int) and isinstance(length, int) and 0 <= offset and 0 <= length):
            raise input_error(path, f"tensor {name}: bad offset/length")
        if offset + length > blob_bytes:
            raise input_error(path, f"tensor {name}: bytes {offset}..{offset + length} run past the end of the "
                                    f"file (truncated? blob section has {blob_bytes} bytes)")
        try:
            codec.check(length, meta, tuple(shape))
        except (ValueError, KeyError, TypeError, AttributeError, OverflowError, IndexError) as error:
            raise input_error(path, f"tensor {name} ({entry['codec']}): {error}") from error
        end = max(end, offset + length)


def _rebuild(path: Path, manifest: dict, device: str, network=None) -> nn.Module:
    """The model skeleton of the manifest. ``device="meta"``: nothing allocated (validation). ``"cpu"``: the float
    skeleton stays on ``meta`` and only the compressed layers of the architecture diff are built for real; the
    remaining meta tensors are then allocated empty and filled from the file, so loading never holds the
    full float model."""
    spec = manifest.get("spec")
    if not isinstance(spec, dict):
        raise input_error(path, "manifest has no model spec")
    changes = manifest.get("architecture", {})
    if not isinstance(changes, dict):
        raise input_error(path, "architecture must be an object")
    user = user_skeleton(path, spec, network) if is_user(spec) else None  # its errors name the file already
    try:
        if user is not None:
            model = user
        else:
            with torch.device("meta"):
                model = build_skeleton(spec)
        if device == "meta":
            with torch.device("meta"):
                return architecture.apply_diff(model, changes)
        model = architecture.apply_diff(model, changes)
    except (InputError, ValueError, TypeError, AttributeError, RuntimeError, OverflowError) as error:
        raise input_error(path, f"cannot rebuild the model: {error}") from error
    _materialize(model)
    return model


def model_bytes(model: nn.Module) -> int:
    """Bytes that materialising ``model`` (built on the meta device) would allocate: parameters and buffers."""
    tensors = list(model.parameters()) + [b for b in model.buffers() if b is not None]
    return sum(t.numel() * t.element_size() for t in tensors)


def check_expansion(path, model: nn.Module, file_size: int) -> None:
    """Refuse a file whose model would allocate more than ``MAX_EXPANSION`` x its size (+ an allowance): the bound
    on what a hostile spec can make the reader allocate. ``model`` is on the meta device (nothing allocated)."""
    factor = float(os.environ.get("CNNCOMPRESS_MAX_EXPANSION", MAX_EXPANSION))
    needed, allowed = model_bytes(model), factor * file_size + EXPANSION_ALLOWANCE
    if needed > allowed:
        raise input_error(path, f"the model it describes needs {needed / 2**20:.1f} MiB of tensors, more than "
                                f"{factor:g}x the file's {file_size} bytes allow (CNNCOMPRESS_MAX_EXPANSION)")


def _materialize(model: nn.Module) -> None:
    """Allocate (uninitialised, on the CPU) every parameter and buffer still on the meta device."""
    for module in model.modules():
        for name, param in list(module._parameters.items()):
            if param is not None and param.is_meta:
                module._parameters[name] = nn.Parameter(torch.empty_like(param, device="cpu"),
                                                        requires_grad=param.requires_grad)
        for name, buffer in list(module._buffers.items()):
            if buffer is not None and buffer.is_meta:
                module._buffers[name] = torch.empty_like(buffer, device="cpu")


def load(path: str | Path, model=None) -> nn.Module:
    """Read a ``.ccz`` and return the model (eval mode, CPU), with ``.spec``, ``.compression_history``, ``.metadata``.

    ``model``: for a file of a user's own network, the network to fill (a built ``nn.Module``, or the function
    that builds it: called with the kwargs the file records); the file names its entry point but is never
    allowed to import it. Ignored for the toolkit's registered models."""
    path = Path(path)
    manifest, blob_start = read_manifest(path)
    probe = _rebuild(path, manifest, "meta", model)
    expected = {name: list(t.shape) for name, t in probe.state_dict().items()}
    declared = {entry["name"]: entry["shape"] for entry in manifest["tensors"]}
    if expected != declared:
        missing = sorted(set(expected) - set(declared))[:3]
        extra = sorted(set(declared) - set(expected))[:3]
        wrong = sorted(n for n in set(expected) & set(declared) if expected[n] != declared[n])[:3]
        raise input_error(path, f"tensors do not match the architecture (missing {missing}, unexpected {extra}, "
                                f"wrong shape {wrong})")
    check_expansion(path, probe, path.stat().st_size)
    state, version, payload = {}, manifest["version"], hashlib.sha256()
    with open(path, "rb") as handle:
        if version >= 4:  # the whole blob section first: nothing decoded from a bad file
            handle.seek(blob_start)
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                payload.update(chunk)
            if payload.hexdigest() != manifest["payload_sha256"]:
                bad = next((e["name"] for e in manifest["tensors"] if _blob_crc(handle, blob_start, e) != e["crc32"]),
                           None)
                raise input_error(path, (f"tensor {bad}: checksum mismatch" if bad else "payload sha256 mismatch")
                                  + " (corrupted file)")
        for entry in manifest["tensors"]:
            handle.seek(blob_start + entry["offset"])
            data = handle.read(entry["length"])
            if version < 4:
                if hashlib.sha256(data).hexdigest() != entry["sha256"]:
                    raise input_error(path, f"tensor {entry['name']}: sha256 mismatch (corrupted file)")
            try:
                state[entry["name"]] = get_codec(entry["codec"]).decode(data, entry.get("meta", {}),
                                                                        tuple(entry["shape"]), entry["dtype"])
            except (ValueError, KeyError, RuntimeError, TypeError, AttributeError, OverflowError, IndexError) as error:
                raise input_error(path, f"tensor {entry['name']}: cannot decode ({error})") from error
        probes = None if "probes" not in manifest else probe_section.decode(
            path, manifest["probes"], lambda at, length: _read_at(handle, blob_start + at, length),
            list(manifest.get("compression", [])))
    network, model = model, _rebuild(path, manifest, "cpu", model)
    model.load_state_dict(state, strict=True)
    if is_user(manifest["spec"]) and network is not None:  # a later save diffs against the same float network
        set_float_skeleton(model, user_skeleton(path, manifest["spec"], network))
    model.spec = manifest["spec"]
    model.compression_history = list(manifest.get("compression", []))
    model.metadata = dict(manifest.get("metadata", {}))
    if probes is not None:
        probe_section.attach(model, probes)
    return model.eval()


def _read_at(handle, at: int, length: int) -> bytes:
    handle.seek(at)
    return handle.read(length)


def _blob_crc(handle, blob_start: int, entry: dict) -> int:
    return zlib.crc32(_read_at(handle, blob_start + entry["offset"], entry["length"]))


def payload_bytes(path: str | Path) -> int:
    """Bytes of tensor data in a ``.ccz`` (the file minus header and manifest)."""
    manifest, _ = read_manifest(path)
    return sum(entry["length"] for entry in manifest["tensors"])
