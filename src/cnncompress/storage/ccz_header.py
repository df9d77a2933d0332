"""The ``.ccz`` file's framing: the header and the manifest's encoding (``ccz`` writes and reads the rest).

Layout (little-endian), format version 4::

    b"CCZ\\x00" | u32 version | u64 manifest length | sha256 of the manifest bytes (32) | manifest | blobs

Version 1 has no manifest digest; versions 1-2 store the manifest as plain UTF-8 JSON, versions 3-4 zlib-compress
it, and it is inflated with a bound (``MAX_MANIFEST``), never past it.
"""
from __future__ import annotations

import hashlib
import json
import struct
import zlib

MAGIC = b"CCZ\x00"
VERSION = 4
READABLE_VERSIONS = (1, 2, 3, 4)
HEADER = struct.Struct("<4sIQ")  # magic, version, manifest length (then, from version 2, the manifest digest)
DIGEST_BYTES = 32
MAX_MANIFEST = 64 << 20


def encode_manifest(manifest: dict, version: int = VERSION) -> bytes:
    """The manifest's bytes in a file of format ``version``: compact JSON, zlib-compressed from version 3."""
    encoded = json.dumps(manifest, separators=(",", ":")).encode("utf-8")
    return zlib.compress(encoded, 9) if version >= 3 else encoded


def decode_manifest(raw: bytes, version: int) -> dict:
    """Inverse of ``encode_manifest``; inflates at most ``MAX_MANIFEST`` bytes (``ValueError`` past it, or for
    bytes that are not zlib: a hostile file cannot make the reader allocate more)."""
    if version >= 3:
        inflater = zlib.decompressobj()
        try:
            raw = inflater.decompress(raw, MAX_MANIFEST)
        except zlib.error as error:
            raise ValueError(f"manifest is not zlib data ({error})") from error
        if inflater.unconsumed_tail or not inflater.eof:
            raise ValueError(f"manifest inflates past {MAX_MANIFEST} bytes or is cut short")
    return json.loads(raw.decode("utf-8"))


def pack_header(manifest: bytes, version: int = VERSION) -> bytes:
    """The header that goes before ``manifest`` (the encoded JSON) in a file of format ``version``."""
    digest = hashlib.sha256(manifest).digest() if version >= 2 else b""
    return HEADER.pack(MAGIC, version, len(manifest)) + digest


def header_size(version: int) -> int:
    return HEADER.size + (DIGEST_BYTES if version >= 2 else 0)
