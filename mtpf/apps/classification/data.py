"""Sentence-classification data: a local task folder name (under the kind's data root), a folder of `train` / `dev`
(or `validation`) / `test` files in JSON lines or CSV with `text` and `label` fields, or `hf://ID[:CONFIG]` (a
`datasets` dataset with `text` and `label` columns). Without a dev split, a seeded 10 % of train becomes dev. Every
error names the file and line, or the dataset and row."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from mtpf.data.splits import HUB_PREFIX, hub_dataset_name, hub_splits, with_dev
from mtpf.errors import MtpfError
from mtpf.io import read_json_lines, utf8_errors_named

FILE_SPLITS = {"train": ("train",), "dev": ("dev", "validation"), "test": ("test",)}  # file stems in a folder


class ClassificationDataError(MtpfError, ValueError):
    """Classification data that cannot be used; the message names the file and line, or the dataset."""


@dataclass
class LabeledText:
    text: str
    label: str
    where: str  # "file:line" or "dataset [split] row N", for error messages


def load_classification_spec(spec: str, data_root: str | Path) -> tuple[str, dict[str, list[LabeledText]]]:
    """(recorded name, splits train/dev/test) of a local task name, a folder, or `hf://ID[:CONFIG]`."""
    if spec.startswith(HUB_PREFIX):
        return hub_dataset_name(spec), with_dev(_hub_splits(spec), spec, ClassificationDataError)
    folder = Path(spec) if Path(spec).is_dir() else Path(data_root) / spec
    if not folder.is_dir():
        raise ClassificationDataError(f"--data {spec!r}: neither a folder nor a task under {data_root}.")
    return folder.name, with_dev(_folder_splits(folder), spec, ClassificationDataError)


def _folder_splits(folder: Path) -> dict[str, list[LabeledText]]:
    splits = {}
    for split, names in FILE_SPLITS.items():
        files = sorted(p for name in names for p in folder.glob(f"{name}.*") if p.suffix in (".jsonl", ".csv"))
        if len(files) > 1:
            raise ClassificationDataError(f"{folder}: several {split} files {[f.name for f in files]}; keep one.")
        if files:
            splits[split] = _read_csv(files[0]) if files[0].suffix == ".csv" else _read_jsonl(files[0])
    return splits


def _read_jsonl(path: Path) -> list[LabeledText]:
    rows = []
    for number, row in read_json_lines(path, ClassificationDataError):
        rows.append(_labeled(row, f"{path}:{number}"))
    return rows


def _read_csv(path: Path) -> list[LabeledText]:
    with utf8_errors_named(path, ClassificationDataError), path.open(encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle)
        if not {"text", "label"} <= set(reader.fieldnames or []):
            raise ClassificationDataError(
                f"{path}:1: the header needs 'text' and 'label' columns, has {reader.fieldnames}."
            )
        return [_labeled(row, f"{path}:{reader.line_num}") for row in reader]


def _labeled(row: object, where: str) -> LabeledText:
    if not isinstance(row, dict) or not isinstance(row.get("text"), str) or row.get("label") in (None, ""):
        raise ClassificationDataError(f'{where}: expected a string "text" and a non-empty "label".')
    if not row["text"].strip():
        raise ClassificationDataError(f"{where}: the text is empty.")
    return LabeledText(row["text"], str(row["label"]), where)


def _hub_splits(spec: str) -> dict[str, list[LabeledText]]:
    from datasets import ClassLabel

    splits = {}
    for split, (name, data) in hub_splits(spec, ClassificationDataError).items():
        if not {"text", "label"} <= set(data.column_names):
            raise ClassificationDataError(
                f"{spec} [{name}]: needs 'text' and 'label' columns, has {data.column_names}."
            )
        feature = data.features["label"]
        names_of = feature.names if isinstance(feature, ClassLabel) else None
        splits[split] = [
            _labeled({"text": text, "label": names_of[label] if names_of else label}, f"{spec} [{name}] row {row}")
            for row, (text, label) in enumerate(zip(data["text"], data["label"], strict=True))
        ]
    return splits


def check_classes(splits: dict[str, list[LabeledText]]) -> list[str]:
    """The training classes (sorted); a dev/test label never seen in train is an error naming file and line."""
    classes = sorted({row.label for row in splits["train"]})
    if len(classes) < 2:
        raise ClassificationDataError(f"{splits['train'][0].where}: train has {len(classes)} class; need at least 2.")
    for split in ("dev", "test"):
        for row in splits[split]:
            if row.label not in classes:
                raise ClassificationDataError(f"{row.where}: {split} label {row.label!r} never occurs in train.")
    return classes
