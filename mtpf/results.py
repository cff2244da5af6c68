"""The evaluation results file (`results.json`): one stable, documented schema for the suite and the model cards.

    {"schema": "mtpf-results/1",
     "results": [{"model": "outputs/demo-release", "family": "ner", "dataset": "conll2003",
                  "dataset_name": "CoNLL-2003", "dataset_config": null, "split": "test", "fraction": 1.0,
                  "seed": 0, "metric": "f1", "value": 88.7, "config_hash": "..."}, ...]}

`family` is the result family of a registered task's downstream protocol (`mtpf.tasks.result_families`): `ner`
(seqeval entity F1) or `tc` (MTEB classification accuracy); values are percentages.
`config_hash` identifies the evaluated weights (backbone and slot files). TC records also keep `experiments`, the
accuracy of each of MTEB's probe experiments (`value` is their mean): tables show the spread and whether two
models differ by more than that noise. `mtpf-eval` adds top-level keys that
readers of this schema may ignore: `suite` (name, description of what it cuts, command, protocol settings),
`models`, `missing` (datasets that could not be evaluated, with the reason; never averaged) and `runs`
(per-run details such as seconds, train sentences and best dev epoch).
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path
from statistics import mean

from mtpf.errors import MtpfError

SCHEMA = "mtpf-results/1"
REQUIRED = ("model", "family", "dataset", "split", "metric", "value")


class ResultsSchemaError(MtpfError, ValueError):
    """A results file this version cannot read; the message names the file and the entry."""


@dataclass(frozen=True)
class ResultRecord:
    model: str
    family: str
    dataset: str
    split: str
    metric: str
    value: float
    dataset_name: str | None = None
    dataset_config: str | None = None
    fraction: float = 1.0
    seed: int = 0
    config_hash: str | None = None
    experiments: list[float] | None = None  # TC: the accuracy of each of MTEB's probe experiments (same draws)


def read_results_file(path: str | os.PathLike) -> dict:
    """The payload of a results.json (schema checked), or an error naming the file: a truncated or foreign file
    must stop a run before it appends to it."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ResultsSchemaError(f"{path}: not a readable JSON results file ({err}); move it away or fix it.") from err
    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        found = data.get("schema") if isinstance(data, dict) else type(data).__name__
        raise ResultsSchemaError(f"{path}: unknown results schema {found!r}; expected {SCHEMA!r}.")
    return data


def load_results(path: str | os.PathLike) -> list[ResultRecord]:
    path = Path(path)
    from mtpf.tasks import result_families  # the registered tasks' downstream protocols

    data = read_results_file(path)
    families = result_families()
    records = []
    for index, entry in enumerate(data.get("results", [])):
        missing = [key for key in REQUIRED if key not in entry]
        unknown = sorted(set(entry) - set(ResultRecord.__dataclass_fields__))
        if missing or unknown:
            raise ResultsSchemaError(
                f"{path}: results[{index}] has missing fields {missing} / unknown fields {unknown}."
            )
        if entry["family"] not in families:
            raise ResultsSchemaError(
                f"{path}: results[{index}].family is {entry['family']!r}; use one of {sorted(families)}."
            )
        numbers = [entry["value"], *(entry.get("experiments") or [])]
        if not all(isinstance(x, int | float) and not isinstance(x, bool) for x in numbers):
            raise ResultsSchemaError(f"{path}: results[{index}] has a value that is not a number: {entry['value']!r}.")
        records.append(ResultRecord(**entry))
    return records


def save_results(records: list[ResultRecord], path: str | os.PathLike) -> None:
    from mtpf.io import atomic_write_text

    payload = {"schema": SCHEMA, "results": [asdict(record) for record in records]}
    atomic_write_text(path, json.dumps(payload, indent=2) + "\n")


def records_for_model(records: list[ResultRecord], model: str | None) -> list[ResultRecord]:
    """The records of one model; with `model` None the file must hold exactly one."""
    models = sorted({record.model for record in records})
    if model is None:
        if len(models) > 1:
            raise ResultsSchemaError(f"The results hold several models {models}; say which one to publish.")
        return list(records)
    chosen = [record for record in records if record.model == model]
    if not chosen:
        raise ResultsSchemaError(f"No results for model {model!r}; the file has {models}.")
    return chosen


def averaged(records: list[ResultRecord]) -> list[tuple[ResultRecord, int]]:
    """One record per (family, dataset, config, split, fraction, metric), its value the mean over seeds."""
    groups: dict[tuple, list[ResultRecord]] = defaultdict(list)
    for record in records:
        key = (record.family, record.dataset, record.dataset_config, record.split, record.fraction, record.metric)
        groups[key].append(record)
    out = []
    for group in groups.values():
        first = group[0]
        out.append((ResultRecord(**{**asdict(first), "value": round(mean(r.value for r in group), 4)}), len(group)))
    return sorted(out, key=lambda item: (item[0].family, item[0].dataset, item[0].fraction))
