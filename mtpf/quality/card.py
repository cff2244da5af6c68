"""A release card's quality section: how the recipe the release was trained with compares with its base, as the
quality sweep measured it (`results/quality/summary.json`, the quick protocol at several pre-finetuning seeds).

The numbers are of the recipe, not of the very checkpoint on the card, so the section is only written for a release
whose recorded training (`config.json` → `pretraining`) agrees with every lever of the recipe and its base model; a
release trained otherwise is refused with the lever that differs, never given another recipe's numbers."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mtpf.errors import MtpfError
from mtpf.training.args import argument_defaults

FAMILY_LABELS = {
    "tc": "TC: the quick suite's 10 MTEB classification tasks (accuracy)",
    "ner_full": "NER with all training data (entity F1)",
    "ner_10": "NER with 10 % of the training data (entity F1)",
}
# Levers given as TASK=N specs and recorded as {task: N} in a release's `pretraining`.
PER_TASK_LEVERS = ("slot_layers", "slot_ranks")


class QualityReportError(MtpfError, ValueError):
    """A summary that cannot be read, a recipe it lacks, or a release not trained with that recipe."""


@dataclass(frozen=True)
class RecipeQuality:
    """One recipe's row of the sweep's confirming (quick) protocol, with the base it is compared with."""

    name: str
    levers: dict[str, Any]  # what the recipe sets
    base_levers: dict[str, Any]  # every lever of the sweep at the base config's value
    seeds: list[int]
    deltas: dict[str, dict[str, Any]]  # family -> {"mean_delta", "se", "text"}
    base: dict[str, Any]  # {"model", "tc", "ner_full", "ner_10"}
    protocol: str
    source: str

    def expected(self) -> dict[str, Any]:
        """Every lever's value in a release trained with this recipe."""
        return {**self.base_levers, **self.levers}


def recipe_quality(summary_path: str | Path, name: str | None = None) -> RecipeQuality:
    """Recipe `name` (default: the one marked shipped) from a sweep summary's quick protocol."""
    path = Path(summary_path)
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
        quick, base_levers = summary["quick"], summary["base_levers"]
        recipes, base, protocol = quick["recipes"], quick["base"], quick["protocol"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise QualityReportError(f"{path}: not a quality sweep summary with a quick protocol ({err!r}).") from err
    chosen = [entry for entry in recipes if (entry["name"] == name if name else entry.get("shipped"))]
    if len(chosen) != 1:
        known = ", ".join(entry["name"] for entry in recipes)
        wanted = f"recipe {name!r}" if name else "exactly one shipped recipe"
        raise QualityReportError(f"{path}: the quick protocol has no {wanted} (it has: {known}).")
    entry = chosen[0]
    deltas = {family: entry[family] for family in FAMILY_LABELS}
    return RecipeQuality(entry["name"], entry["levers"], base_levers, entry["seeds"], deltas, base, protocol, str(path))


def _recorded(pretraining: dict[str, Any], lever: str, defaults: dict[str, Any]) -> Any:
    """A lever's value in a release's `pretraining` record, in the recipe's spelling. The record holds the options
    that change the model only when they are on, so a missing one is at its default."""
    interpolation = pretraining.get("interpolation") or {}
    if lever == "release_interpolation":
        return interpolation.get("alpha")
    if lever == "release_layer_alphas":
        return interpolation.get("layer_alphas")
    if lever in PER_TASK_LEVERS:
        per_task = pretraining.get(lever)
        return sorted(f"{task}={number}" for task, number in per_task.items()) if per_task else None
    return pretraining.get(lever, defaults.get(lever))


def _same(first: Any, second: Any) -> bool:
    if isinstance(first, (int, float)) and isinstance(second, (int, float)):
        return math.isclose(first, second, rel_tol=1e-9, abs_tol=1e-12)
    if isinstance(first, list) and isinstance(second, list):
        return len(first) == len(second) and all(_same(a, b) for a, b in zip(first, second))
    return first == second


def check_trained_with(quality: RecipeQuality, pretraining: dict[str, Any] | None, where: str) -> None:
    """Refuse a release whose recorded training differs from the recipe in its base model or in any lever of the
    sweep (those the recipe sets, and the others at the base config's value: an interpolation the recipe does not
    name, or NER's share of the backbone left at 1 where the recipe has 0, both count)."""
    if not pretraining:
        raise QualityReportError(f"{where}: an untrained release; the quality of {quality.name!r} is not its own.")
    defaults = argument_defaults()
    for lever, value in {**quality.expected(), "backbone": quality.base["model"]}.items():
        wanted = sorted(value) if lever in PER_TASK_LEVERS and value else value
        recorded = _recorded(pretraining, lever, defaults)
        if not _same(recorded, wanted):
            raise QualityReportError(
                f"{where}: trained with {lever} = {recorded!r}, recipe {quality.name!r} ({quality.source}) has "
                f"{wanted!r}; its quality numbers would not be this release's."
            )


def quality_section(quality: RecipeQuality) -> str:
    """Markdown for the card: the base's score and the recipe's mean difference ± standard error per family."""
    levers = ", ".join(f"`{key}={value}`" for key, value in quality.levers.items()) or "none"
    seeds = ", ".join(str(seed) for seed in quality.seeds)
    rows = [
        f"| {label} | {quality.base[family]:.2f} | {quality.deltas[family]['text']} |"
        for family, label in FAMILY_LABELS.items()
    ]
    return "\n".join(
        [
            f"Against its base `{quality.base['model']}`, the recipe this release was trained with "
            f"(`{quality.name}`; levers {levers}) measured by mtpf's quality sweep at pre-finetuning seeds {seeds}: "
            "runs of the same recipe, not evaluations of this checkpoint (those are under Evaluation).",
            "",
            "| family | base | recipe − base (mean ± SE over seeds) |",
            "|---|---|---|",
            *rows,
            "",
            f"≈: under two standard errors (no measurable difference). Protocol: {quality.protocol}",
            "",
            f"The standard errors cover the pre-finetuning seeds{_base_noise(quality.base)}, not the teacher's "
            "build (a teacher rebuilt on another machine is another teacher, and NER moves with it); mtpf's "
            "`docs/quality.md` measures it.",
        ]
    )


def _base_noise(base: dict[str, Any]) -> str:
    """What the SEs say about the base's own noise: covered where the base was scored at several downstream seeds."""
    if any(key.endswith("_downstream_se") for key in base):
        return " and, for NER, the base's own run-to-run noise (its mean over downstream seeds)"
    return " only (the base is scored once: its own run-to-run noise is not in them)"
