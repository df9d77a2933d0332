"""Hypothesis fuzz of the .ccz reader: truncations, bit flips, hostile manifest values -> load or InputError."""
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cnncompress import models, storage
from ccz_mutations import KINDS, load_outcome, mutate


class Seed(bytes):
    def __repr__(self):
        return f"<valid .ccz, {len(self)} bytes>"


@pytest.fixture(scope="module")
def seed_bytes(tmp_path_factory):
    path = tmp_path_factory.mktemp("seed") / "seed.ccz"
    return Seed(storage.save(models.build("cascade_cnn", 10, 1, 28, width=0.125), path).read_bytes())


@pytest.mark.filterwarnings("ignore::hypothesis.errors.HypothesisWarning")
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(kind=st.sampled_from(KINDS), position=st.integers(0, 2**30), value=st.integers(0, 2**30))
def test_mutated_files_load_or_fail_cleanly(seed_bytes, tmp_path, kind, position, value):
    assert load_outcome(mutate(seed_bytes, kind, position, value), tmp_path / "case.ccz") in ("ok", "error")


def test_unmutated_seed_loads(seed_bytes, tmp_path):
    assert load_outcome(seed_bytes, tmp_path / "seed.ccz") == "ok"


@pytest.mark.parametrize("kind", ["truncate", "shape", "architecture", "header_length"])
def test_each_hostile_kind_is_rejected(seed_bytes, tmp_path, kind):
    outcomes = {load_outcome(mutate(seed_bytes, kind, p, v), Path(tmp_path) / "c.ccz") for p in (5, 77) for v in (1, 4)}
    assert "error" in outcomes
