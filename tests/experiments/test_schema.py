"""One schema and one validator for the three recipe kinds: unknown keys and bad values fail before anything runs,
in one line naming the file and the key."""
from pathlib import Path

import pytest

from cnncompress.errors import InputError
from cnncompress.experiments import schema
from cnncompress.experiments.cascade_grid import load_config
from cnncompress.experiments.distill_table import load_recipe as load_distill_recipe
from cnncompress.experiments.recipe import load_recipe, parse_recipe
from cnncompress.experiments.reproduce import run_cascade

REPO = Path(__file__).resolve().parents[2]


def _one_line(error: pytest.ExceptionInfo) -> str:
    message = str(error.value)
    assert "\n" not in message
    return message


def test_unknown_keys_are_rejected_in_every_kind_of_recipe(tmp_path):
    bench = tmp_path / "bench.yaml"
    bench.write_text("baselines: {squeezenet1_1: {width: 0.25}}\nrows:\n- {model: squeezenet1_1, method: fp16, "
                     "colour: red}\n")
    with pytest.raises(InputError) as error:
        load_recipe(bench)
    assert _one_line(error).startswith(str(bench)) and "rows[0]" in str(error.value) and "'colour'" in str(error.value)

    distill = tmp_path / "distill.yaml"
    distill.write_text("experiments:\n- {name: a, teacher: fer-minixception, unlabeled: lfw-faces, "
                       "student: {model: squeezenet1_1, widht: 0.5}}\n")
    with pytest.raises(InputError) as error:
        load_distill_recipe(distill)
    assert _one_line(error).startswith(str(distill)) and "experiments[0].student" in str(error.value) \
        and "'widht'" in str(error.value)
    distill.write_text("teacher: fer-minixception\nunlabeled: lfw-faces\nepoch: 3\n")  # a single experiment
    with pytest.raises(InputError, match="unknown key 'epoch'"):
        load_distill_recipe(distill)

    cascade = tmp_path / "cascade.yaml"
    cascade.write_text("datasets: [mnist5k]\nthreshhold: 0.5\n")
    with pytest.raises(InputError) as error:
        load_config(cascade)
    assert _one_line(error).startswith(str(cascade)) and "'threshhold'" in str(error.value)
    with pytest.raises(InputError, match="threshhold"):  # reproduce reads the cascade recipe the same way
        run_cascade(tmp_path / "out", cascade, quick=False)
    assert not (tmp_path / "out").exists()


def test_values_are_checked_and_yaml_exponents_are_numbers(tmp_path):
    with pytest.raises(InputError, match=r"command line: threshold=2 out of range \[0, 1\]"):
        load_config(None, {"threshold": 2})
    with pytest.raises(InputError, match="losses\\[0\\] must be"):
        load_config(None, {"losses": ["hard"]})
    assert load_config(None, {"lr": None})["lr"] == 0.001  # None: not given on the command line
    recipe = parse_recipe({"baselines": {"squeezenet1_1": {"lr": "1e-3"}}, "rows": []})
    assert recipe.baselines["squeezenet1_1"]["lr"] == 0.001
    distill = tmp_path / "d.yaml"
    distill.write_text("teacher: {train: {data: mnist5k}}\nunlabeled: lfw-faces\n")
    with pytest.raises(InputError, match="teacher.train.model is required"):
        load_distill_recipe(distill)
    with pytest.raises(InputError, match="must be a mapping"):
        schema.check([1, 2], schema.BENCH_RECIPE, "r.yaml")


def test_the_shipped_recipes_are_valid():
    for name in ("table2.yaml", "combined.yaml"):
        assert load_recipe(REPO / "experiments" / name).rows
    assert [e["name"] for e in load_distill_recipe(REPO / "experiments" / "table3.yaml")] == \
        ["table3-emotion", "table3-digits"]
    assert load_config(REPO / "experiments" / "cascade.yaml")["losses"] == ["sum", "soft", "firm", "firm-max"]
