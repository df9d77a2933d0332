"""Grid sweeps in recipes (grid / seed lists -> rows) and seeds grouped as mean ± std in the table."""
import pytest

from cnncompress.errors import InputError
from cnncompress.experiments.recipe import parse_recipe
from cnncompress.experiments.report import add_ratios, group_seeds, table_lines, text_table

BASE = {"baselines": {"squeezenet1_1": {"width": 0.25, "epochs": 1}}}
PRUNE = {"model": "squeezenet1_1", "method": "prune-magnitude"}


def test_grid_and_seeds_expand_to_the_cartesian_product():
    recipe = parse_recipe({**BASE, "seed": [0, 1, 2], "rows": [
        {"model": "squeezenet1_1", "method": "baseline"},
        {**PRUNE, "config": {"layers": "fc"}, "grid": {"sparsity": [0.5, 0.9], "rounds": [1, 2]}}]})
    rows = recipe.rows
    assert len(rows) == 3 + 2 * 2 * 3 and recipe.seed == 0 and recipe.seeds == [0, 1, 2]
    assert [r.seed for r in rows[:3]] == [0, 1, 2] and {r.method for r in rows[:3]} == {"baseline"}
    pruned = rows[3:]
    assert {(r.config["sparsity"], r.config["rounds"], r.seed) for r in pruned} == \
        {(s, k, seed) for s in (0.5, 0.9) for k in (1, 2) for seed in (0, 1, 2)}
    assert all(r.config["layers"] == "fc" for r in pruned)
    assert pruned[0].label == "prune-magnitude sparsity=0.5,rounds=1"
    assert len({r.key for r in rows}) == len(rows)  # seeds get their own keys (own folders)...
    assert len({r.label for r in pruned}) == 4  # ... but share their label (grouped in the table)


def test_plain_lists_in_config_are_options_not_grids():
    row = {"model": "squeezenet1_1", "method": "tucker", "config": {"layers": ["features.fire9.expand3x3"],
                                                                   "rank": [4, 8]}}
    recipe = parse_recipe({**BASE, "rows": [row]})
    assert len(recipe.rows) == 1 and recipe.rows[0].config["rank"] == [4, 8]


def test_seed_zero_keeps_the_historical_key_and_fixed_baseline_seed_dedups():
    one = parse_recipe({**BASE, "rows": [PRUNE]}).rows[0]
    assert one.seed == 0 and one.key == parse_recipe({**BASE, "seed": [0, 5], "rows": [PRUNE]}).rows[0].key
    fixed = {"baselines": {"squeezenet1_1": {"width": 0.25, "seed": 7}}, "seed": [0, 1],
             "rows": [{"model": "squeezenet1_1", "method": "baseline"}, PRUNE]}
    recipe = parse_recipe(fixed)
    assert [(r.method, r.seed) for r in recipe.rows] == [("baseline", 7), ("prune-magnitude", 0),
                                                         ("prune-magnitude", 1)]
    assert {recipe.baseline_seed("squeezenet1_1", r.seed) for r in recipe.rows} == {7}


def test_pipeline_stage_grids():
    row = {"model": "squeezenet1_1", "label": "p+q",
           "stages": [{"method": "prune-magnitude", "grid": {"sparsity": [0.5, 0.8]}}, {"method": "fp16"}]}
    rows = parse_recipe({**BASE, "rows": [row]}).rows
    assert [r.stages[0]["config"]["sparsity"] for r in rows] == [0.5, 0.8]
    assert rows[1].label == "p+q prune-magnitude.sparsity=0.8" and rows[1].method == "prune-magnitude+fp16"


@pytest.mark.parametrize("raw, problem", [
    ({**BASE, "rows": [{**PRUNE, "grid": {"sparsity": 0.5}}]}, "non-empty lists"),
    ({**BASE, "rows": [{**PRUNE, "grid": {"sparsity": []}}]}, "non-empty lists"),
    ({**BASE, "rows": [{**PRUNE, "grid": {"no_such": [1, 2]}}]}, "no option"),
    ({**BASE, "rows": [{**PRUNE, "grid": {"sparsity": [0.5, 1.5]}}]}, r"sparsity must be in \[0, 1\), got 1.5"),
    ({**BASE, "seed": [1, 1]}, "twice"),
    ({**BASE, "seed": []}, "non-empty list"),
    ({**BASE, "seed": ["a"]}, "integer"),
    ({**BASE, "rows": [PRUNE, PRUNE]}, "defined twice"),
    ({**BASE, "memory": "no"}, "true or false"),
])
def test_bad_sweeps_fail_before_training(raw, problem):
    with pytest.raises(InputError, match=problem):
        parse_recipe(raw, "r.yaml")


def _row(key, method, label, seed, accuracy, size, node="a", ray_node=""):
    return {"key": key, "model": "m", "method": method, "label": label, "config": {}, "seed": seed,
            "finetune_epochs": 1, "accuracy": accuracy, "file_bytes": size, "torch_ms": 2.0, "ort_ms": None,
            "node": node, "ray_node": ray_node}


def test_table_groups_seeds_as_mean_and_std():
    rows = [_row("b0", "baseline", "baseline", 0, 90.0, 1000), _row("b1", "baseline", "baseline", 1, 92.0, 1000),
            _row("p0", "p", "p", 0, 80.0, 500, ray_node="n1"), _row("p1", "p", "p", 1, 84.0, 250, ray_node="n2"),
            {**_row("q", "q", "q", 0, 0, 0), "error": "ValueError: nope"}]
    add_ratios(rows)
    assert rows[3]["x_smaller"] == pytest.approx(4.0)  # against the baseline of the same seed
    grouped = group_seeds(rows)
    assert [g["label"] for g in grouped] == ["baseline", "p", "q"]
    assert grouped[1]["accuracy"] == pytest.approx(82.0) and grouped[1]["accuracy_std"] == pytest.approx(2 ** 1.5)
    assert grouped[1]["seeds"] == 2 and grouped[1]["node"] == "2 nodes"
    lines = table_lines(rows)
    assert "seeds" in lines[0] and "node" in lines[0]
    assert "82.00 ± 2.83" in lines[3] and "3.00x ± 1.41" in lines[3]
    assert "error: ValueError: nope" in text_table(rows)


def test_single_node_single_seed_table_is_unchanged():
    rows = [_row("b0", "baseline", "baseline", 0, 90.0, 1000)]
    add_ratios(rows)
    header = table_lines(rows)[0]
    assert "seeds" not in header and "node" not in header and "±" not in table_lines(rows)[2]
