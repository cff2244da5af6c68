"""The results store of a suite: OUTPUT/results.json (+ results.md), resumed, merged, written atomically.

A store refuses a folder made under another suite or protocol, knows which scores it already holds (`has`: the one
rule for resuming and for planning parallel work), and merges folders of one suite evaluated elsewhere.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, replace
from pathlib import Path
from typing import NamedTuple

from mtpf.evaluation.suites import SuiteSettings, saved_protocol_of, saved_settings
from mtpf.evaluation.tables import results_markdown, suite_commands
from mtpf.io import atomic_write_text
from mtpf.results import SCHEMA, ResultRecord, load_results, read_results_file

logger = logging.getLogger(__name__)


class ScoreKey(NamedTuple):
    """Which score of a model: a family's dataset at a data fraction and seed (TC: full data, seed 0)."""

    family: str
    dataset: str
    fraction: float = 1.0
    seed: int = 0


class ResultsStore:
    """The scores of one suite in OUTPUT (loaded if the folder has them), appended to and saved as they come."""

    def __init__(self, settings: SuiteSettings, output: str | os.PathLike, command: str = "") -> None:
        self.settings = settings
        self.output = Path(output)
        self.command = command
        self.records: list[ResultRecord] = []
        self.missing: list[dict] = []
        self.runs: list[dict] = []
        self.models: list[dict] = []
        self.previous_commands: list[str] = []
        self._load_previous()

    def _load_previous(self) -> None:
        path = self.output / "results.json"
        if not path.is_file():
            return
        data = read_results_file(path)
        self._check_same_protocol(path, data.get("suite", {}))
        self.records = load_results(path)
        self.runs = data.get("runs", [])
        self.models = data.get("models", [])
        self.previous_commands = suite_commands(data.get("suite", {}))
        logger.info("%s: resuming, %d results already there", path, len(self.records))

    def _check_same_protocol(self, path: Path, saved: dict) -> None:
        """Refuse to mix scores of another suite or protocol (protocol fields saved before they existed: defaults)."""
        if saved.get("name") != self.settings.name:
            raise ValueError(f"{path}: holds results of suite {saved.get('name')!r}; use another --output.")
        for family, current in (("ner", self.settings.ner), ("tc", self.settings.tc)):
            saved_protocol = asdict(saved_protocol_of(saved, family))
            for key, value in asdict(current).items():
                if saved_protocol.get(key) != value:
                    raise ValueError(
                        f"{path}: its {family} protocol has {key}={saved_protocol.get(key)!r}, this run "
                        f"{key}={value!r}; scores would not be comparable. Use another --output."
                    )

    def has(self, model: str, config_hash: str, key: ScoreKey) -> bool:
        """Whether this score of these weights is already here (the one rule for resuming and for planning)."""
        return any(
            r.model == model
            and r.config_hash == config_hash
            and (r.family, r.dataset, r.fraction, r.seed) == tuple(key)
            for r in self.records
        )

    def _add_model(self, entry: dict) -> None:
        """Tables list models in the order they were first evaluated; a re-evaluated label takes its new entry."""
        names = [m["model"] for m in self.models]
        if entry["model"] in names:
            self.models[names.index(entry["model"])] = entry
        else:
            self.models.append(entry)

    def merge_from(self, folder: str | os.PathLike, keep_commands: bool = True) -> int:
        """Add the scores of another results folder of this suite and protocol; returns how many were new.

        A label must name the same weights (config hash) in both folders and a score present in both must agree:
        anything else would put unlike numbers in one table. `keep_commands=False` leaves out the folder's
        commands (a parallel run records its own command instead of its workers' per-job ones).
        """
        path = Path(folder) / "results.json"
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no results to merge.")
        data = read_results_file(path)
        self._check_same_protocol(path, data.get("suite", {}))
        known = {_score_key(r): r for r in self.records}
        hashes = {r.model: r.config_hash for r in self.records} | {m["model"]: m["config_hash"] for m in self.models}
        added = 0
        for record in load_results(path):
            if hashes.setdefault(record.model, record.config_hash) != record.config_hash:
                raise ValueError(
                    f"{path}: model {record.model!r} has config hash {record.config_hash}, but "
                    f"{hashes[record.model]} in {self.output}; one label names two different weights."
                )
            same = known.get(_score_key(record))
            if same is not None and same.value != record.value:
                raise ValueError(
                    f"{path}: {record.model} {record.dataset} (fraction {record.fraction}, seed {record.seed}) "
                    f"scores {record.value} there and {same.value} in {self.output}."
                )
            if same is None:
                self.records.append(record)
                known[_score_key(record)] = record
                added += 1
        for entry in data.get("models", []):
            if entry["model"] not in [m["model"] for m in self.models]:
                self.models.append(entry)
        self.runs += [run for run in data.get("runs", []) if run not in self.runs]
        self.missing += [entry for entry in data.get("missing", []) if entry not in self.missing]
        if keep_commands:
            self.previous_commands += [c for c in suite_commands(data["suite"]) if c not in self.previous_commands]
        self.settings = replace(
            self.settings,
            fractions=_union(self.settings.fractions, data["suite"].get("fractions", [])),
            seeds=_union(self.settings.seeds, data["suite"].get("seeds", [])),
        )
        return added

    def _missing_entry(self, model: str, family: str, dataset: str, reason: str) -> dict:
        return {"model": model, "family": family, "dataset": dataset, "reason": reason}

    def _missing(self, model: str, family: str, dataset: str, reason: str) -> None:
        logger.warning("MISSING %s %s for %s: %s", family, dataset, model, reason)
        entry = self._missing_entry(model, family, dataset, reason)
        if entry not in self.missing:
            self.missing.append(entry)

    def save(self) -> Path:
        """results.json (schema mtpf-results/1 plus suite, models, runs, missing) and results.md, atomically."""
        self.output.mkdir(parents=True, exist_ok=True)
        scored = {(r.model, r.family, r.dataset) for r in self.records}
        self.missing = [m for m in self.missing if (m["model"], m["family"], m["dataset"]) not in scored]
        payload = {
            "schema": SCHEMA,
            "suite": {
                "name": self.settings.name,
                "description": self.settings.description,
                "command": self.command,
                "previous_commands": [c for c in self.previous_commands if c != self.command],
                "ner": asdict(self.settings.ner),
                "tc": asdict(self.settings.tc),
                "fractions": self.settings.fractions,
                "seeds": self.settings.seeds,
            },
            "models": self.models,
            "results": [asdict(r) for r in self.records],
            "missing": self.missing,
            "runs": self.runs,
        }
        atomic_write_text(self.output / "results.json", json.dumps(payload, indent=2) + "\n")
        atomic_write_text(self.output / "results.md", results_markdown(payload))
        return self.output / "results.json"


def merge_results(
    output: str | os.PathLike,
    folders: list[str | os.PathLike],
    command: str = "",
    order: list[str] | None = None,
    keep_commands: bool = True,
) -> Path:
    """Combine results folders of one suite into OUTPUT (which may be one of them or already hold results).

    Tables list models in the order they first appear; `order` puts these first (gains are against the first).
    """
    if not folders:
        raise ValueError("Give at least one results folder to merge.")
    first_file = Path(folders[0]) / "results.json"
    if not first_file.is_file():
        raise FileNotFoundError(f"{first_file}: no results to merge.")
    settings = saved_settings(read_results_file(first_file).get("suite", {}), first_file)
    run = ResultsStore(settings, output, command=command)
    for folder in folders:
        if Path(folder).resolve() != Path(output).resolve():
            logger.info("%s: %d new results", folder, run.merge_from(folder, keep_commands))
    names = [m["model"] for m in run.models]
    unknown = [name for name in order or [] if name not in names]
    if unknown:
        raise ValueError(f"Cannot order by {unknown}: the merged models are {names}.")
    rank = {name: position for position, name in enumerate(order or [])}
    run.models.sort(key=lambda m: rank.get(m["model"], len(rank)))
    return run.save()


def _score_key(record: ResultRecord) -> tuple:
    return (
        record.model,
        record.family,
        record.dataset,
        record.dataset_config,
        record.split,
        record.fraction,
        record.seed,
    )


def _union(first: list, second: list) -> list:
    return list(dict.fromkeys([*first, *second]))
