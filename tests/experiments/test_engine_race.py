"""The per-preset speed label is derived from the measured speed-ups, never asserted."""
from cnncompress.experiments.engine_race import preset_label


def test_real_only_where_every_thread_count_was_faster():
    label = preset_label({48: [0.72, 1.3], 224: [2.4, 2.1]})
    assert label == "none at 48 (0.72×); real at 224 (2.10×)"


def test_within_noise_is_same_speed_and_missing_runs_are_skipped():
    assert preset_label({48: [1.02, None], 224: [None, None]}) == "same speed at 48 (1.02×)"
    assert preset_label({48: [0.96, 1.5]}) == "same speed at 48 (0.96×)"
    assert preset_label({48: [], 224: [None]}) == "not measured"
