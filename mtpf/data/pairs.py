"""Text pairs (anchor, positive) for contrastive TC pre-finetuning.

Sources: local `.tsv` (header line, two columns), `.csv`, `.jsonl` (`anchor`/`positive`, or the first two string
fields), a folder holding `pairs.tsv`, or a Hub dataset written `hf://ID[:CONFIG][@SPLIT]` (first two text columns).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from datasets import Dataset

from mtpf.errors import MtpfError
from mtpf.io import read_json_lines, utf8_errors_named

PAIR_COLUMNS = ("anchor", "positive")
HUB_PREFIX = "hf://"


class PairFileError(MtpfError, ValueError):
    """A pair source that cannot give (anchor, positive) rows; the message names file and line."""


@dataclass
class PairSource:
    name: str
    dataset: Dataset  # columns: anchor, positive


def load_pair_sources(specs: list[str]) -> list[PairSource]:
    """Load every pair source; each keeps its own name so batches can be drawn per dataset."""
    if not specs:
        raise PairFileError("No text-pair sources given (DataArguments.pairs is empty).")
    sources = [load_pair_source(spec) for spec in specs]
    names = [source.name for source in sources]
    if len(set(names)) != len(names):
        raise PairFileError(f"Two pair sources share a name: {names}.")
    return sources


def load_pair_source(spec: str) -> PairSource:
    if spec.startswith(HUB_PREFIX):
        return _load_hub_pairs(spec)
    path = Path(spec)
    if path.is_dir():
        path = path / "pairs.tsv"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: pair file not found.")
    readers = {".tsv": _read_delimited, ".csv": _read_delimited, ".jsonl": _read_jsonl}
    if path.suffix not in readers:
        raise PairFileError(f"{path}: unsupported pair file type {path.suffix!r} (use .tsv, .csv or .jsonl).")
    anchors, positives = readers[path.suffix](path)
    if not anchors:
        raise PairFileError(f"{path}: holds no text pairs.")
    name = path.parent.name if path.name == "pairs.tsv" else path.stem
    return PairSource(name=name, dataset=Dataset.from_dict({"anchor": anchors, "positive": positives}))


def _read_delimited(path: Path) -> tuple[list[str], list[str]]:
    delimiter = "\t" if path.suffix == ".tsv" else ","
    anchors, positives = [], []
    with utf8_errors_named(path, PairFileError), path.open(encoding="utf-8", newline="") as stream:
        rows = csv.reader(
            stream, delimiter=delimiter, quoting=csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL
        )
        for number, row in enumerate(rows, start=1):
            if number == 1:
                if len(row) != 2:
                    raise PairFileError(f"{path}:1: expected a header with 2 columns, found {len(row)}: {row!r}.")
                continue
            if len(row) != 2:
                raise PairFileError(f"{path}:{number}: expected 2 columns, found {len(row)}.")
            anchor, positive = (cell.strip() for cell in row)
            if not anchor or not positive:
                raise PairFileError(f"{path}:{number}: empty text in a pair.")
            anchors.append(anchor)
            positives.append(positive)
    return anchors, positives


def _read_jsonl(path: Path) -> tuple[list[str], list[str]]:
    anchors, positives = [], []
    for number, row in read_json_lines(path, PairFileError):
        texts = [row[key] for key in PAIR_COLUMNS if key in row] if "anchor" in row else _string_fields(row)
        if len(texts) < 2 or not all(isinstance(t, str) and t.strip() for t in texts[:2]):
            raise PairFileError(f"{path}:{number}: expected 'anchor' and 'positive' text fields.")
        anchors.append(texts[0].strip())
        positives.append(texts[1].strip())
    return anchors, positives


def _string_fields(row: dict) -> list[str]:
    return [value for value in row.values() if isinstance(value, str)]


def _load_hub_pairs(spec: str) -> PairSource:
    from datasets import load_dataset

    target = spec.removeprefix(HUB_PREFIX)
    target, _, split = target.partition("@")
    dataset_id, _, config = target.partition(":")
    dataset = load_dataset(dataset_id, config or None, split=split or "train")
    text_columns = [name for name, feature in dataset.features.items() if getattr(feature, "dtype", None) == "string"]
    if len(text_columns) < 2:
        raise PairFileError(f"{spec}: needs two text columns, found {text_columns}.")
    dataset = dataset.select_columns(text_columns[:2]).rename_columns(dict(zip(text_columns[:2], PAIR_COLUMNS)))
    return PairSource(name=dataset_id.split("/")[-1] + (f"-{config}" if config else ""), dataset=dataset)


def describe_sources(sources: list[PairSource]) -> str:
    return ", ".join(f"{source.name} ({len(source.dataset):,})" for source in sources)
