"""The ``.ccz`` file format: ``save(model, path)``, ``load(path)``, codecs and layer registries."""
from cnncompress.storage.architecture import register_layer
from cnncompress.storage.ccz import configure, load, payload_bytes, read_manifest, save
from cnncompress.storage.codecs import CODECS, register_codec

__all__ = ["configure", "save", "load", "payload_bytes", "read_manifest", "register_codec", "register_layer", "CODECS"]
