"""The main job's config is the recipe the quality sweep measured and marked shipped: configs/demo.yaml must equal
the sweep's frozen base config plus that recipe's levers, or the numbers the README and the card quote are of
another model (as they were while the base config carried an interpolation the recipe did not name)."""

from __future__ import annotations

import json

import pytest
import yaml

from mtpf.quality.recipes import RecipeError, load_recipes
from tests.conftest import REPO_ROOT


def test_configs_demo_is_the_shipped_recipe():
    summary = json.loads((REPO_ROOT / "results/quality/summary.json").read_text(encoding="utf-8"))
    shipped = [entry["name"] for entry in summary["quick"]["recipes"] if entry["shipped"]]
    assert len(shipped) == 1, "exactly one recipe of the quick protocol is shipped"
    book = load_recipes(REPO_ROOT / "configs/quality/recipes.yaml")
    demo = yaml.safe_load((REPO_ROOT / "configs/demo.yaml").read_text(encoding="utf-8"))
    assert book.config(shipped[0]) == demo


def test_a_base_config_that_interpolates_is_refused(tmp_path):
    base = tmp_path / "base.yaml"
    base.write_text("backbone: offline:tiny-bert\nrelease_interpolation: 0.5\n")
    recipes = tmp_path / "recipes.yaml"
    recipes.write_text(f"base_config: {base}\nrecipes:\n  - name: a\n")
    with pytest.raises(RecipeError, match="release_interpolation"):
        load_recipes(recipes)
