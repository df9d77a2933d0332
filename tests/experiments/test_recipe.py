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
