"""The race checks every engine on real images against its reference before timing it: an engine that disagrees
is not used, and the table says why."""
import torch

from cnncompress import deploy, methods, models
from cnncompress.data import build_dataset
from cnncompress.deploy import engines as engine_registry
from cnncompress.deploy.race import prepared


def _real_images(n=32):
    return build_dataset("mnist5k", "val", input_size=48).images[:n]


def test_a_broken_engine_is_refused_with_its_agreement(monkeypatch):
    torch.manual_seed(0)
    model = models.build("squeezenet1_1", 10, 1, 48, 0.25).eval()
    import dataclasses
    torch_engine = engine_registry.get("torch")

    class Broken:  # the torch engine with the classes in the wrong order: a wrong answer, fast
        def __getattr__(self, name):
            return getattr(torch_engine, name)

        def prepare(self, source, shape, threads):
            run = torch_engine.prepare(source, shape, threads)
            return lambda x: run(x).flip(1)

    monkeypatch.setitem(engine_registry.ENGINES, "torch", Broken())
    assert not dataclasses.is_dataclass(engine_registry.ENGINES["torch"])
    runs, skipped = prepared(model, (1, 1, 48, 48), ["torch", "onnxruntime"], threads=1, images=_real_images())
    assert "onnxruntime" in runs and "torch" not in runs
    assert "of 32 real images (< 99 %)" in skipped["torch"] and "the model's own forward" in skipped["torch"]


def test_int8_engines_are_checked_against_the_fake_quant_twin():
    torch.manual_seed(0)
    model = models.build("squeezenet1_1", 10, 1, 48, 0.25).eval()
    images = _real_images()
    quantized = methods.apply(model, "int8", calibration=images, num_calibration=32)
    runs, skipped = prepared(quantized, (1, 1, 48, 48), ["onnxruntime-int8"], threads=1, images=images)
    assert "onnxruntime-int8" in runs or "fake-quant twin" in skipped["onnxruntime-int8"]
    times, why = deploy.race({"q": (quantized, deploy.names("int8"))}, (1, 1, 48, 48), threads=1, runs=2, block=1,
                             images=images)
    assert all(key[0] == "q" for key in list(times) + list(why))
