"""Which models carry probes, which images, the reference on what the file holds."""
import pytest
import torch

from cnncompress import methods, models, storage
from cnncompress.deploy import probes, runtime
from cnncompress.storage import probe_section as probe_store


@pytest.fixture(scope="module")
def base():
    torch.manual_seed(0)
    return models.build("vgg_s", num_classes=10, in_channels=1, input_size=48, width=0.125).eval()


def test_only_engine_dependent_methods_need_probes(base):
    assert [probes.needs_probes(methods.apply(base, m)) for m in ("xnor", "bf16", "fp16", "prune-magnitude")] == \
        [True, True, False, False]
    assert not probes.needs_probes(base)
    assert set(probes.FORMS) == set(runtime.EXACT)


def test_choose_is_a_bounded_seeded_subset():
    images = torch.arange(100.0).view(100, 1, 1, 1)
    chosen = probes.choose(images)
    assert len(chosen) == probes.COUNT and torch.equal(chosen, probes.choose(images))
    assert len(set(chosen.flatten().tolist())) == probes.COUNT
    big = torch.zeros(40, 3, 224, 224)
    assert len(probes.choose(big)) == probes.MAX_BYTES // (3 * 224 * 224) == 13


def test_the_reference_is_computed_on_what_the_file_holds(tmp_path, base):
    """With fp16 float tensors the file's weights are rounded: the reference is its exact form's, not the
    in-memory model's."""
    from cnncompress.data import build_dataset
    images = build_dataset("mnist5k", "val", input_size=48).images
    model = methods.apply(base, "bwn")
    path, written = probes.save(model, tmp_path / "b.ccz", images, "mnist5k val split", float_codec="fp16")
    loaded = storage.load(path)
    carried = probe_store.of(loaded)
    assert carried.source == "mnist5k val split" and carried.form == "bwn: " + probes.BINARY
    with torch.no_grad():
        exact = runtime.exact_form(loaded)
        assert torch.equal(carried.reference, torch.cat([exact(x[None]) for x in carried.inputs()]))  # batch 1
    again, rewritten = probes.save(loaded, tmp_path / "again.ccz", carried)  # a re-saved file keeps its images
    assert torch.equal(rewritten.codes, carried.codes)


def test_no_images_or_no_need_writes_a_plain_file(tmp_path, base):
    assert probes.save(methods.apply(base, "xnor"), tmp_path / "a.ccz")[1] is None
    assert probes.save(base, tmp_path / "b.ccz", torch.zeros(4, 1, 48, 48))[1] is None
