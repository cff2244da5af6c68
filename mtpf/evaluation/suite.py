"""The evaluation suites (`smoke`, `quick`, `paper`) and the run that writes `results.json` + `results.md`.

Results are written after every dataset, atomically; a rerun into the same folder skips what is already there
(same model, config hash, dataset, fraction and seed), so an interrupted suite resumes where it stopped. Folders of
one suite evaluated in parallel (other processes or machines) combine with `merge_results`.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from mtpf.evaluation.candidate import EvalCandidate, load_candidate
from mtpf.evaluation.ner import NerProtocol, finetune_ner
from mtpf.evaluation.ner_data import DEFAULT_DATA_ROOT as DEFAULT_NER_ROOT
from mtpf.evaluation.ner_data import (
    HUB_PREFIX,
    PAPER_NER_DATASETS,
    check_label_sets,
    load_hub_ner_data,
    load_ner_dataset,
    load_user_ner_data,
)
from mtpf.evaluation.tables import results_markdown, suite_commands
from mtpf.evaluation.tc import DEFAULT_TC_ROOT, LEGACY_PROTOCOL, TC_TASKS, TcProtocol, evaluate_tc
from mtpf.io import atomic_write_text
from mtpf.results import SCHEMA, ResultRecord, load_results, read_results_file

logger = logging.getLogger(__name__)


@dataclass
class SuiteSettings:
    name: str
    description: str  # what the suite runs and, for reduced suites, exactly what it cuts
    ner_datasets: list[str]
    fractions: list[float]
    seeds: list[int]
    tc_tasks: list[str]  # Table 6 column names
    ner: NerProtocol = field(default_factory=NerProtocol)
    tc: TcProtocol = field(default_factory=TcProtocol)


SUITES = {
    "smoke": SuiteSettings(
        "smoke",
        "CI check that every stage runs (minutes on any encoder; numbers are not meaningful): CrossNER with 64 "
        "train / 64 dev / 64 test sentences, 1 head epoch + 1 joint epoch at lr 1e-3, length 64; Emotion and "
        "FinancialPhrasebank with 2 probe experiments on 128 eval rows, length 64.",
        ["crossner"],
        [1.0],
        [0],
        ["Emo.", "FPB"],
        NerProtocol(
            warmup_epochs=1,
            epochs=1,
            batch_size=16,
            learning_rate=1e-3,
            warmup_learning_rate=5e-3,
            max_length=64,
            max_train_sentences=64,
            max_dev_sentences=64,
            max_test_sentences=64,
            eval_batch_size=64,
        ),
        TcProtocol(n_experiments=2, max_eval_rows=128, max_length=64),
    ),
    "quick": SuiteSettings(
        "quick",
        "About one CPU hour on a MiniLM-class model. Cuts against `paper`: NER trains on a seeded 1,000-sentence "
        "subset of each training set (all of it where smaller; a data fraction f takes f of that subset), "
        "dev capped at 500 and test at 2,000 sentences "
        "(seeded), 2 head-only epochs (lr 5e-3) + 6 joint epochs at lr 1e-3 (paper: 10 + 30 at 2e-5) with batch 32, "
        "sub-tokens capped at 128, full training data only, one seed; an epoch is at least 20 optimizer steps (a "
        "10 % run repeats its 100 sentences 7 times per epoch: 22 steps, where the paper's protocol would stop after "
        "4; full runs are unchanged). TC keeps MTEB's probe (samples per label, "
        "10 experiments) and the model's own sentence embedding, but caps every eval split at 2,048 label-stratified "
        "rows (MTEB caps only some) and texts at 128 sub-tokens (all-MiniLM-L6-v2's own limit is 256).",
        list(PAPER_NER_DATASETS),
        [1.0],
        [0],
        list(TC_TASKS),
        NerProtocol(
            warmup_epochs=2,
            epochs=6,
            batch_size=32,
            learning_rate=1e-3,
            warmup_learning_rate=5e-3,
            max_length=128,
            max_train_sentences=1000,
            max_dev_sentences=500,
            max_test_sentences=2000,
            min_steps_per_epoch=20,
        ),
        TcProtocol(n_experiments=10, max_eval_rows=2048, max_length=128),
    ),
    "paper": SuiteSettings(
        "paper",
        "The paper's protocol (a GPU job): all five NER datasets with 100/50/20/10 % of the training data, LoRA "
        "r=32/alpha=64 on query, key and MLP of every layer, 10 head-only + 30 joint epochs, batch 64, lr 2e-5, "
        "AdamW wd 0.01; all 16 MTEB classification tasks with MTEB's own settings, each text embedded as the model "
        "defines it (its pooling, normalisation and max_seq_length, as sentence-transformers does).",
        list(PAPER_NER_DATASETS),
        [1.0, 0.5, 0.2, 0.1],
        [0],
        list(TC_TASKS),
    ),
}


def tc_column(name: str) -> str:
    """A TC task given by its Table 6 column (`Bank.`) or MTEB name (`Banking77Classification`)."""
    for column, spec in TC_TASKS.items():
        if name in (column, spec.mteb_name):
            return column
    raise ValueError(f"Unknown TC task {name!r}; use a column {list(TC_TASKS)} or its MTEB name.")


class SuiteRun:
    """One suite over several models, appending to OUTPUT/results.json as it goes."""

    def __init__(
        self,
        settings: SuiteSettings,
        output: str | os.PathLike,
        ner_root: str | os.PathLike = DEFAULT_NER_ROOT,
        tc_root: str | os.PathLike = DEFAULT_TC_ROOT,
        hub_reachable: bool = False,
        command: str = "",
    ) -> None:
        self.settings = settings
        self.output = Path(output)
        self.ner_root = ner_root
        self.tc_root = tc_root
        self.hub_reachable = hub_reachable
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

    def has(
        self, model: str, config_hash: str, family: str, dataset: str, fraction: float = 1.0, seed: int = 0
    ) -> bool:
        """Whether this score of these weights is already here (the one rule for resuming and for planning)."""
        return any(
            r.model == model
            and r.config_hash == config_hash
            and r.family == family
            and r.dataset == dataset
            and r.fraction == fraction
            and r.seed == seed
            for r in self.records
        )

    def run(self, model_names: list[str], ner: bool = True, tc: bool = True) -> Path:
        for name in model_names:
            start = time.monotonic()
            candidate = load_candidate(name)
            self._add_model(
                {
                    "model": candidate.name,
                    "path": candidate.path,
                    "config_hash": candidate.config_hash,
                    "slots": sorted(candidate.adapters),
                }
            )
            if ner:
                self.run_ner(candidate)
            if tc:
                self.run_tc(candidate)
            logger.info("%s evaluated in %.0f s", name, time.monotonic() - start)
        return self.save()

    def run_ner(self, candidate: EvalCandidate) -> None:
        for dataset in self.settings.ner_datasets:
            try:
                name, splits = self._load_ner(dataset)
            except FileNotFoundError as err:
                self._missing(candidate, "ner", dataset, f"data not found: {err}")
                continue
            labels = check_label_sets(splits, name)
            for fraction in self.settings.fractions:
                for seed in self.settings.seeds:
                    if self.has(candidate.name, candidate.config_hash, "ner", name, fraction, seed):
                        continue
                    logger.info("NER %s: %s, %.0f%% of train, seed %d", candidate.name, name, 100 * fraction, seed)
                    run = finetune_ner(candidate, name, splits, labels, self.settings.ner, fraction, seed)
                    self.records.append(
                        ResultRecord(
                            model=candidate.name,
                            family="ner",
                            dataset=name,
                            dataset_name=PAPER_NER_DATASETS.get(name, name),
                            split="test",
                            metric="f1",
                            value=run.test_f1,
                            fraction=fraction,
                            seed=seed,
                            config_hash=candidate.config_hash,
                        )
                    )
                    self.runs.append({"model": candidate.name, **asdict(run)})
                    self.save()

    def _load_ner(self, dataset: str):
        """A local dataset by name, a user's `NAME=DIR` folder, or `hf://ID[:CONFIG]`."""
        if dataset.startswith(HUB_PREFIX):
            return load_hub_ner_data(dataset)
        if "=" in dataset:
            return load_user_ner_data(dataset)
        return dataset, load_ner_dataset(dataset, self.ner_root)

    def run_tc(self, candidate: EvalCandidate) -> None:
        todo = [
            c
            for c in self.settings.tc_tasks
            if not self.has(candidate.name, candidate.config_hash, "tc", TC_TASKS[c].mteb_name)
        ]
        for column in todo:
            start = time.monotonic()
            try:
                records, missing = evaluate_tc(candidate, [column], self.settings.tc, self.tc_root, self.hub_reachable)
            except (OSError, ConnectionError) as err:  # a Hub task whose download failed
                records, missing = [], [self._missing_entry(candidate, "tc", TC_TASKS[column].mteb_name, str(err))]
            self.records.extend(records)
            for entry in missing:
                self._missing(candidate, entry["family"], entry["dataset"], entry["reason"])
            if records:
                self.runs.append(
                    {
                        "model": candidate.name,
                        "dataset": TC_TASKS[column].mteb_name,
                        "seconds": round(time.monotonic() - start, 1),
                    }
                )
            self.save()

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

    def _missing_entry(self, candidate: EvalCandidate, family: str, dataset: str, reason: str) -> dict:
        return {"model": candidate.name, "family": family, "dataset": dataset, "reason": reason}

    def _missing(self, candidate: EvalCandidate, family: str, dataset: str, reason: str) -> None:
        logger.warning("MISSING %s %s for %s: %s", family, dataset, candidate.name, reason)
        entry = self._missing_entry(candidate, family, dataset, reason)
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


def suite_settings(name: str, **overrides) -> SuiteSettings:
    """A named suite with some fields replaced (None leaves the suite's value)."""
    if name not in SUITES:
        raise ValueError(f"Unknown suite {name!r}; use one of {sorted(SUITES)}.")
    settings = SUITES[name]
    ner_overrides = {k: v for k, v in overrides.pop("ner", {}).items() if v is not None}
    tc_overrides = {k: v for k, v in overrides.pop("tc", {}).items() if v is not None}
    settings = replace(settings, **{k: v for k, v in overrides.items() if v is not None})
    return replace(settings, ner=replace(settings.ner, **ner_overrides), tc=replace(settings.tc, **tc_overrides))


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
    run = SuiteRun(settings, output, command=command)
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


def saved_settings(suite: dict, path: Path) -> SuiteSettings:
    """The settings a results file was made with: its suite, protocols (missing fields: defaults), fractions, seeds."""
    if suite.get("name") not in SUITES:
        raise ValueError(f"{path}: unknown suite {suite.get('name')!r}; known: {sorted(SUITES)}.")
    return replace(
        SUITES[suite["name"]],
        ner=saved_protocol_of(suite, "ner"),
        tc=saved_protocol_of(suite, "tc"),
        fractions=suite.get("fractions", SUITES[suite["name"]].fractions),
        seeds=suite.get("seeds", SUITES[suite["name"]].seeds),
    )


def saved_protocol_of(suite: dict, family: str) -> NerProtocol | TcProtocol:
    """The protocol a results file records; a field it predates takes the value that was in force then."""
    if family == "ner":
        return NerProtocol(**suite.get("ner", {}))
    return TcProtocol(**{**LEGACY_PROTOCOL, **suite.get("tc", {})})


def _score_key(record: ResultRecord) -> tuple:
    return (record.model, record.family, record.dataset, record.dataset_config, record.split, record.fraction,
            record.seed)  # fmt: skip


def _union(first: list, second: list) -> list:
    return list(dict.fromkeys([*first, *second]))
