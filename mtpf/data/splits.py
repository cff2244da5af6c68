"""Train / dev / test splits of any downstream dataset: Hub loading, the dataset's recorded name, a missing dev.

NER data (`mtpf.apps.ner.data`) and classification apps (`mtpf.apps.classification`) read different row
types, but name, load and complete their splits by these same rules.
"""

from __future__ import annotations

import logging
from typing import TypeVar

import numpy as np

logger = logging.getLogger(__name__)
HUB_PREFIX = "hf://"
SPLIT_NAMES = {"train": ("train",), "dev": ("validation", "dev"), "test": ("test",)}  # ours -> names on the Hub
DEV_FRACTION = 0.1
Row = TypeVar("Row")


def hub_dataset_name(spec: str) -> str:
    """`hf://ORG/ID:CONFIG` is recorded as `ID-CONFIG` (the one rule, for loading, resuming and planning)."""
    dataset_id, _, config = spec.removeprefix(HUB_PREFIX).partition(":")
    return dataset_id.split("/")[-1] + (f"-{config}" if config else "")


def hub_splits(spec: str, error: type[Exception]) -> dict[str, object]:
    """`hf://ID[:CONFIG]` through `datasets.load_dataset`: our split name -> the Hub split (those it has)."""
    from datasets import load_dataset

    dataset_id, _, config = spec.removeprefix(HUB_PREFIX).partition(":")
    try:
        dataset = load_dataset(dataset_id, config or None)
    except Exception as err:  # offline, unknown id, bad config: say which and why
        raise error(f"{spec}: cannot load the dataset ({type(err).__name__}: {err}).") from err
    found = {}
    for split, names in SPLIT_NAMES.items():
        name = next((n for n in names if n in dataset), None)
        if name is not None:
            found[split] = (name, dataset[name])
    return found


def with_dev(splits: dict[str, list[Row]], where: str, error: type[Exception]) -> dict[str, list[Row]]:
    """Train and test must be there and non-empty; without a dev split, a seeded 10 % of train becomes dev."""
    for split in ("train", "test"):
        if not splits.get(split):
            raise error(f"{where}: the {split} split is missing or empty.")
    if "dev" in splits and not splits["dev"]:
        raise error(f"{where}: the dev split is empty.")
    if "dev" not in splits:
        train = splits["train"]
        order = np.random.default_rng(0).permutation(len(train))
        dev_rows = set(order[: max(1, int(len(train) * DEV_FRACTION))].tolist())
        splits["dev"] = [row for i, row in enumerate(train) if i in dev_rows]
        splits["train"] = [row for i, row in enumerate(train) if i not in dev_rows]
        logger.info("%s: no dev split; %d of %d train rows (seed 0) became dev", where, len(dev_rows), len(train))
    return splits
