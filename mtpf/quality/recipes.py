"""Recipes of the quality sweep: a frozen base config (the main job before any lever) plus the arguments (levers)
that a recipe changes.

base_config: base.yaml                # relative to the recipe file; never configs/demo.yaml, which ships a recipe
base_model: offline:minilm-l6        # what every recipe is compared with (default: the config's backbone)
recipes:
  - name: demo                       # the config as it is
  - name: anchor1
    args: {tc_anchor_weight: 1.0}    # any field of train_mtpf.py's argument dataclasses
  - name: demo-wise0.5
    from: demo                       # no training of its own: the release of `demo` at the same seed ...
    interpolation: 0.5               # ... interpolated halfway back to the base (`mtpf interpolate`)
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from mtpf.errors import MtpfError
from mtpf.training.args import argument_defaults, mapping_to_argv

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")
# A recipe's interpolation is a recipe of its own (`from` + `interpolation`), never a training argument: in the base
# config it would silently interpolate every training recipe's release (it did, while the sweep read configs/demo.yaml).
INTERPOLATION_ARGS = ("release_interpolation", "release_layer_alphas")


class RecipeError(MtpfError, ValueError):
    """A recipe file that cannot be run: the message names the file and the recipe."""


@dataclass(frozen=True)
class Recipe:
    name: str
    args: dict[str, Any] = field(default_factory=dict)
    source: str | None = None  # another recipe whose trained release this one reuses
    interpolation: float | None = None
    layer_alphas: tuple[float, ...] | None = None

    @property
    def trains(self) -> bool:
        return self.source is None

    def levers(self) -> dict[str, Any]:
        """The arguments this recipe sets, named as configs/demo.yaml names them (interpolation included)."""
        levers = dict(self.args)
        if self.interpolation is not None:
            levers["release_interpolation"] = self.interpolation
        if self.layer_alphas is not None:
            levers["release_layer_alphas"] = list(self.layer_alphas)
        return levers

    def train_argv(self) -> list[str]:
        return mapping_to_argv(self.args)


@dataclass(frozen=True)
class RecipeBook:
    path: Path
    base_config: Path
    base_model: str
    recipes: dict[str, Recipe]
    base_values: dict[str, Any] = field(default_factory=dict)  # the base config's keys, as read by `load_recipes`

    def config(self, name: str) -> dict[str, Any]:
        """The training config that recipe `name` amounts to: the base config with its levers (those of the recipe it
        comes `from` included), as configs/demo.yaml would hold it when the recipe is shipped."""
        recipe = self.recipes[name]
        inherited = self.recipes[recipe.source].levers() if recipe.source else {}
        return {**self.base_values, **inherited, **recipe.levers()}

    def base_levers(self) -> dict[str, Any]:
        """Every lever some recipe sets (interpolation included), at the value the base config gives it (its default
        where the config is silent): what a recipe that does not name a lever was trained with."""
        defaults = argument_defaults()
        names = {name for recipe in self.recipes.values() for name in recipe.levers()} | set(INTERPOLATION_ARGS)
        return {name: self.base_values.get(name, defaults.get(name)) for name in sorted(names)}


def load_recipes(path: str | Path) -> RecipeBook:
    """Read and check a recipe file (names unique and file-safe, `from` naming a training recipe)."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as err:
        raise RecipeError(f"{path}: not a readable recipe file ({err}).") from err
    if not isinstance(data, dict) or not isinstance(data.get("recipes"), list) or not data.get("base_config"):
        raise RecipeError(f"{path}: expected `base_config` and a list `recipes`.")
    base_config = (path.parent / data["base_config"]).resolve()
    if not base_config.is_file() and Path(data["base_config"]).is_file():
        base_config = Path(data["base_config"]).resolve()
    if not base_config.is_file():
        raise RecipeError(f"{path}: base_config {data['base_config']!r} not found.")
    config = yaml.safe_load(base_config.read_text(encoding="utf-8")) or {}
    if reserved := sorted(set(config) & set(INTERPOLATION_ARGS)):
        raise RecipeError(f"{path}: base_config {base_config} sets {reserved}; interpolate in a recipe of its own.")
    recipes: dict[str, Recipe] = {}
    for index, entry in enumerate(data["recipes"], 1):
        recipe = _recipe(entry, f"{path}: recipe {index}")
        if recipe.name in recipes:
            raise RecipeError(f"{path}: recipe name {recipe.name!r} appears twice.")
        recipes[recipe.name] = recipe
    for recipe in recipes.values():
        if recipe.source is not None and (recipe.source not in recipes or not recipes[recipe.source].trains):
            raise RecipeError(f"{path}: recipe {recipe.name!r} takes `from: {recipe.source}`, not a training recipe.")
    return RecipeBook(path, base_config, str(data.get("base_model") or config.get("backbone")), recipes, config)


def _recipe(entry: Any, where: str) -> Recipe:
    if not isinstance(entry, dict) or not NAME.match(str(entry.get("name", ""))):
        raise RecipeError(f"{where}: needs a `name` of letters, digits and . _ + - (it names the job folders).")
    unknown = set(entry) - {"name", "args", "from", "interpolation", "layer_alphas"}
    if unknown:
        raise RecipeError(f"{where} ({entry['name']}): unknown fields {sorted(unknown)}.")
    args = entry.get("args") or {}
    if not isinstance(args, dict):
        raise RecipeError(f"{where} ({entry['name']}): `args` must map argument names to values.")
    if reserved := sorted(set(args) & set(INTERPOLATION_ARGS)):
        raise RecipeError(f"{where} ({entry['name']}): {reserved} in `args`; use `from` and `interpolation` instead.")
    if entry.get("from") and args:
        raise RecipeError(f"{where} ({entry['name']}): a recipe `from` another trains nothing, so it takes no `args`.")
    alphas = entry.get("layer_alphas")
    return Recipe(
        name=str(entry["name"]),
        args=dict(args),
        source=entry.get("from"),
        interpolation=None if entry.get("interpolation") is None else float(entry["interpolation"]),
        layer_alphas=tuple(float(a) for a in alphas) if alphas else None,
    )
