"""Per-image correctness packing and the paired bootstrap interval of Δaccuracy."""
import numpy as np
import pytest

from cnncompress.experiments import stats


def test_pack_round_trips_compactly():
    bits = np.random.default_rng(0).random(1000) < 0.9
    text = stats.pack(bits)
    assert len(text) == 168 and np.array_equal(stats.unpack(text, 1000), bits)


def test_interval_covers_zero_for_noise_and_not_for_a_real_loss():
    rng = np.random.default_rng(1)
    control = rng.random(1000) < 0.95
    same = stats.delta_interval([(control, control)])
    assert same["delta"] == 0 and same["within_noise"]
    shuffled = rng.permutation(control)  # the same accuracy, different images: noise only
    noisy = stats.delta_interval([(shuffled, control)])
    assert noisy["low"] < 0 < noisy["high"] and noisy["within_noise"]
    worse = control.copy()
    worse[np.flatnonzero(worse)[:40]] = False  # 4 points lost
    loss = stats.delta_interval([(worse, control)])
    assert loss["delta"] == pytest.approx(-4.0) and loss["high"] < 0 and not loss["within_noise"]
    assert stats.delta_interval([(worse, control)]) == loss  # seeded: the same interval every time


def test_seeds_widen_the_interval_when_they_disagree():
    rng = np.random.default_rng(2)
    control = rng.random(1000) < 0.9
    better, worse = control.copy(), control.copy()
    better[np.flatnonzero(~better)[:30]] = True
    worse[np.flatnonzero(worse)[:30]] = False
    one = stats.delta_interval([(better, control)])
    mixed = stats.delta_interval([(better, control), (worse, control), (better, control)])
    assert mixed["seeds"] == 3 and mixed["delta"] == pytest.approx(1.0)
    assert mixed["high"] - mixed["low"] > one["high"] - one["low"] and mixed["within_noise"]
    with pytest.raises(ValueError, match="same non-empty test split"):
        stats.delta_interval([(control, control[:10])])
