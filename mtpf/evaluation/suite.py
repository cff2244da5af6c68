"""The suite runner: every model through the suite's NER and TC protocols, saved after every dataset.

Results are written after every dataset, atomically; a rerun into the same folder skips what is already there
(same model, config hash, dataset, fraction and seed), so an interrupted suite resumes where it stopped. The suites
themselves are in `suites.py`, the results folder in `store.py`.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import asdict
from pathlib import Path

from mtpf.apps.ner.data import PAPER_NER_DATASETS, check_label_sets, load_ner_spec
from mtpf.apps.ner.train import train_ner
from mtpf.data.roots import DataSources
from mtpf.evaluation.store import ResultsStore, ScoreKey
from mtpf.evaluation.suites import SuiteSettings
from mtpf.evaluation.tc import TC_TASKS, evaluate_tc
from mtpf.models import LoadedModel, load_model
from mtpf.results import ResultRecord
from mtpf.training.downstream import DownstreamData

logger = logging.getLogger(__name__)


class SuiteRun(ResultsStore):
    """One suite over several models, appending to OUTPUT/results.json as it goes."""

    def __init__(
        self, settings: SuiteSettings, output: str | os.PathLike, sources: DataSources | None = None, command: str = ""
    ) -> None:
        super().__init__(settings, output, command)
        sources = sources or DataSources()
        self.ner_root, self.tc_root, self.hub_reachable = sources.ner_root, sources.tc_root, sources.hub_reachable

    def run(self, model_names: list[str], ner: bool = True, tc: bool = True) -> Path:
        for name in model_names:
            start = time.monotonic()
            candidate = load_model(name)
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

    def run_ner(self, candidate: LoadedModel) -> None:
        for dataset in self.settings.ner_datasets:
            try:
                name, splits = self._load_ner(dataset)
            except FileNotFoundError as err:
                self._missing(candidate.name, "ner", dataset, f"data not found: {err}")
                continue
            labels = check_label_sets(splits, name)
            for fraction in self.settings.fractions:
                for seed in self.settings.seeds:
                    if self.has(candidate.name, candidate.config_hash, ScoreKey("ner", name, fraction, seed)):
                        continue
                    logger.info("NER %s: %s, %.0f%% of train, seed %d", candidate.name, name, 100 * fraction, seed)
                    data = DownstreamData(name, splits, labels)
                    run, _ = train_ner(candidate, data, self.settings.ner, fraction=fraction, seed=seed)
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
        return load_ner_spec(dataset, self.ner_root)

    def run_tc(self, candidate: LoadedModel) -> None:
        todo = [
            c
            for c in self.settings.tc_tasks
            if not self.has(candidate.name, candidate.config_hash, ScoreKey("tc", TC_TASKS[c].mteb_name))
        ]
        for column in todo:
            start = time.monotonic()
            try:
                records, missing = evaluate_tc(candidate, [column], self.settings.tc, self.tc_root, self.hub_reachable)
            except (OSError, ConnectionError) as err:  # a Hub task whose download failed
                records, missing = [], [self._missing_entry(candidate.name, "tc", TC_TASKS[column].mteb_name, str(err))]
            self.records.extend(records)
            for entry in missing:
                self._missing(candidate.name, entry["family"], entry["dataset"], entry["reason"])
            if records:
                self.runs.append(
                    {
                        "model": candidate.name,
                        "dataset": TC_TASKS[column].mteb_name,
                        "seconds": round(time.monotonic() - start, 1),
                    }
                )
            self.save()
