import pytest

from cnncompress.errors import InputError
from cnncompress.experiments.recipe import load_recipe, parse_recipe

BASE = {"baselines": {"squeezenet1_1": {"width": 0.25, "epochs": 1}}}


def test_auto_rows_include_baselines():
    recipe = parse_recipe({**BASE, "rows": "auto"})
    assert recipe.rows[0].method == "baseline" and recipe.rows[0].model == "squeezenet1_1"
    assert all(row.model == "squeezenet1_1" for row in recipe.rows)


@pytest.mark.parametrize("raw, problem", [
    ({**BASE, "rows": [{"model": "squeezenet1_1", "method": "no-such-method"}]}, "unknown method"),
    ({**BASE, "rows": [{"model": "vgg_s", "method": "baseline"}]}, "no entry in baselines"),
    ({**BASE, "rows": [{"model": "squeezenet1_1", "method": "baseline", "finetune": -1}]}, "out of range"),
    ({"baselines": {"alexnet": {}}}, "unknown model"),
    ({"baselines": {"vgg_s": {"lr": "fast"}}}, "must be a number"),
    ({**BASE, "threads": 0}, "out of range"),
    ({**BASE, "colour": "red"}, "unknown key"),
    ({}, "baselines"),
])
def test_bad_recipes_fail_before_training(raw, problem):
    with pytest.raises(InputError, match=problem):
        parse_recipe(raw, "r.yaml")


@pytest.mark.parametrize("config, problem", [
    ({"method": "prune-magnitude", "config": {"sparsity": 1.5}}, r"sparsity must be in \[0, 1\), got 1.5"),
    ({"method": "hashed", "config": {"compression": "an eighth"}}, "compression must be a number"),
    ({"method": "kmeans", "config": {"fc_bits": 2.5}}, "fc_bits must be an integer"),
    ({"method": "fixed-point", "config": {"rounding": "up"}}, "rounding must be one of nearest, stochastic"),
    ({"method": "bwn", "config": {"keep_first": "yes"}}, "keep_first must be true or false"),
    ({"method": "cp", "config": {"layers": ["features.conv_nope"], "rank": 8}}, "no layer matches"),
    ({"method": "cp", "config": {"layers": ["features.conv2"], "rank": 0}}, "rank must be"),
    ({"method": "early-exit", "config": {"threshold": float("nan")}}, "threshold must be in"),
])
def test_recipe_values_are_checked_before_any_row_trains(config, problem):
    """Values (type, range, choice) and layer names, named with the recipe file and the row."""
    raw = {"baselines": {"vgg_s": {"width": 0.25, "epochs": 1}},
           "rows": [{"model": "vgg_s", "label": "the row", **config}]}
    with pytest.raises(InputError, match=problem) as info:
        parse_recipe(raw, "r.yaml")
    assert str(info.value).startswith("r.yaml: row the row: ")


def test_good_values_and_layer_names_pass():
    raw = {"baselines": {"vgg_s": {"width": 0.25, "epochs": 1}},
           "rows": [{"model": "vgg_s", "method": "cp", "config": {"layers": ["features.conv2"], "rank": 8}},
                    {"model": "vgg_s", "method": "hashed", "config": {"compression": 1, "layers": "fc"}}]}
    assert [row.method for row in parse_recipe(raw).rows] == ["cp", "hashed"]


def test_bad_yaml_file(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("baselines: [unclosed\n")
    with pytest.raises(InputError, match="r.yaml: bad YAML"):
        load_recipe(path)


def test_pipeline_rows_validate_every_stage():
    row = {"model": "squeezenet1_1", "label": "two", "stages": [{"method": "fp16"}, {"method": "fp16"}]}
    recipe = parse_recipe({**BASE, "rows": [row]})
    assert recipe.rows[0].method == "fp16+fp16" and len(recipe.rows[0].pipeline) == 2
    bad = {**row, "stages": [{"method": "fp16"}, {"method": "fp16", "config": {"nope": 1}}]}
    with pytest.raises(InputError, match="no option"):
        parse_recipe({**BASE, "rows": [bad]})
    with pytest.raises(InputError, match="either method or stages"):
        parse_recipe({**BASE, "rows": [{**row, "method": "fp16"}]})


def test_row_keys_are_safe_folder_names():
    recipe = parse_recipe({**BASE, "rows": [{"model": "squeezenet1_1", "method": "fp16", "label": "a/b c w/o ../x"}]})
    key = recipe.rows[0].key
    assert "/" not in key and "\\" not in key and key.startswith("squeezenet1_1-a_b")


def test_rows_fine_tune_the_recipes_epochs_and_count_every_stage():
    two = {"model": "squeezenet1_1", "label": "two", "stages": [{"method": "fp16"}, {"method": "fp16"}]}
    recipe = parse_recipe({**BASE, "finetune": {"epochs": 3, "schedule": "cosine"},
                           "rows": [{"model": "squeezenet1_1", "method": "baseline"},
                                    {"model": "squeezenet1_1", "method": "fp16"},
                                    {"model": "squeezenet1_1", "method": "fp16", "finetune": 0, "label": "f0"}, two]})
    assert [(r.finetune, r.total_finetune) for r in recipe.rows] == [(0, 0), (3, 3), (0, 0), (3, 6)]


def test_training_settings_of_baselines_and_finetuning():
    from cnncompress.experiments.recipe import train_settings
    settings = {"width": 0.5, "epochs": 20, "lr": 0.01, "schedule": "onecycle", "patience": 4, "weight_decay": 5e-4}
    recipe = parse_recipe({"baselines": {"squeezenet1_1": settings}})
    assert train_settings(recipe.baselines["squeezenet1_1"]) == {"epochs": 20, "lr": 0.01, "schedule": "onecycle",
                                                                 "patience": 4, "weight_decay": 5e-4}
    from cnncompress.experiments.recipe import finetune_settings
    tuned = parse_recipe({"baselines": {"squeezenet1_1": {**settings, "optimizer": "adamw"}},
                          "finetune": {"epochs": 2, "warmup": 0.0}})
    assert finetune_settings(tuned, "squeezenet1_1") == {"optimizer": "adamw", "weight_decay": 5e-4, "epochs": 2,
                                                         "batch_size": 32,
                                                         "warmup": 0.0, "lr": pytest.approx(0.001), "patience": 0}
    with pytest.raises(InputError, match="optimizer="):
        parse_recipe({"baselines": {"vgg_s": {"optimizer": "rmsprop"}}})
    with pytest.raises(InputError, match="unknown key 'patience'"):  # a row and its control train equally long
        parse_recipe({**BASE, "finetune": {"epochs": 1, "patience": 2}})
    with pytest.raises(InputError, match="schedule must be"):
        parse_recipe({"baselines": {"vgg_s": {"schedule": "fast"}}})


def test_the_default_recipe_runs_one_row_per_family_and_every_baseline():
    from cnncompress import methods
    from cnncompress.commands.bench import DEFAULT_RECIPE
    recipe = load_recipe(DEFAULT_RECIPE)
    rows = [r for r in recipe.rows if r.method != "baseline"]
    assert {r.method for r in recipe.rows if r.method == "baseline"} and len(rows) == 7
    assert len({methods.info(r.method).family for r in rows}) == 7
    assert {r.model for r in recipe.rows} == set(recipe.baselines)
