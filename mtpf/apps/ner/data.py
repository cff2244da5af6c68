"""The downstream NER datasets, each read in its own format into BIO-tagged sentences.

Local copies live in `../shared/data/ner/<name>/` (see each SOURCE.md); a user's own data is any folder with
`train`/`dev`/`test` CoNLL column files (token first, tag last; dev optional), given as `NAME=DIR`.
Where a dataset has no dev split, a fixed seeded 10 % of train becomes dev.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from mtpf.data.conll import ConllFormat, TaggedSentence, read_conll, to_bio
from mtpf.data.roots import NER_DATA
from mtpf.data.splits import HUB_PREFIX, hub_dataset_name, hub_splits, with_dev
from mtpf.errors import MtpfError

logger = logging.getLogger(__name__)
DEFAULT_DATA_ROOT = NER_DATA
SPLITS = ("train", "dev", "test")


@dataclass(frozen=True)
class NerDatasetSpec:
    name: str
    files: dict[str, str]  # split -> file name inside the folder
    fmt: ConllFormat = field(default_factory=ConllFormat)
    folder: str | None = None  # default: the name


TAB = ConllFormat(separator="\t")
LOCAL_NER_DATASETS = {
    spec.name: spec
    for spec in [
        NerDatasetSpec(
            "conll2003",
            {"train": "train.txt", "dev": "dev.txt", "test": "test.txt"},
            ConllFormat(scheme="iob1"),
        ),
        NerDatasetSpec("ontonotes5", {"train": "train.txt", "dev": "dev.txt", "test": "test.txt"}, TAB),
        NerDatasetSpec(
            "mit_restaurant",
            {"train": "train.bio", "test": "test.bio"},
            ConllFormat(tag_first=True, separator="\t"),
        ),
        NerDatasetSpec(
            "jnlpba",
            {"train": "train.iob2", "dev": "dev.tsv", "test": "test.iob2"},
            TAB,
        ),
        *[
            NerDatasetSpec(
                f"crossner_{domain}",
                {"train": "train.txt", "dev": "dev.txt", "test": "test.txt"},
                TAB,
            )
            for domain in ("ai", "literature", "music", "politics", "science")
        ],
    ]
}


CROSSNER_DOMAINS = tuple(f"crossner_{domain}" for domain in ("ai", "literature", "music", "politics", "science"))
# The paper's CrossNER column (39 entity types) is the five domains pooled into one dataset.
NER_GROUPS = {"crossner": CROSSNER_DOMAINS}
# The paper's five NER sub-tasks, in its table order, with its column names.
PAPER_NER_DATASETS = {
    "conll2003": "CoNLL",
    "ontonotes5": "OntoNotes5",
    "mit_restaurant": "MIT Restaurant",
    "jnlpba": "BioNLP",
    "crossner": "CrossNER",
}


class NerDataError(MtpfError, ValueError):
    """A dataset that cannot be read as BIO NER data."""


def load_ner_dataset(name: str, data_root: str | Path = DEFAULT_DATA_ROOT) -> dict[str, list[TaggedSentence]]:
    """train/dev/test sentences of a local dataset (dev carved from train, seeded, where the data has none)."""
    if name in NER_GROUPS:
        parts = [load_ner_dataset(member, data_root) for member in NER_GROUPS[name]]
        return {split: [s for part in parts for s in part[split]] for split in SPLITS}
    if name not in LOCAL_NER_DATASETS:
        known = sorted([*LOCAL_NER_DATASETS, *NER_GROUPS])
        raise NerDataError(f"Unknown NER dataset {name!r}; local ones: {known}.")
    spec = LOCAL_NER_DATASETS[name]
    folder = Path(data_root) / (spec.folder or spec.name)
    splits = {split: read_conll(folder / file, spec.fmt) for split, file in spec.files.items()}
    return with_dev(splits, str(folder), NerDataError)


def ner_dataset_name(spec: str) -> str:
    """The name a NER dataset spec is recorded under: a local name as is, `NAME=DIR` as NAME, `hf://ORG/ID:CONFIG`
    as `ID-CONFIG` (the one rule, for loading, resuming and planning parallel work)."""
    return hub_dataset_name(spec) if spec.startswith(HUB_PREFIX) else spec.partition("=")[0]


def load_user_ner_data(argument: str) -> tuple[str, dict[str, list[TaggedSentence]]]:
    """`NAME=DIR`: CoNLL column files in DIR whose names start with train / dev / test."""
    name, sep, directory = argument.partition("=")
    if not sep or not name or not directory:
        raise NerDataError(f"--ner_datasets takes NAME=DIR, got {argument!r}.")
    folder = Path(directory)
    splits = {}
    for split in SPLITS:
        matches = sorted(p for p in folder.glob(f"{split}*") if p.is_file()) if folder.is_dir() else []
        if len(matches) > 1:
            raise NerDataError(f"{folder}: several {split} files {[m.name for m in matches]}; keep one.")
        if matches:
            splits[split] = read_conll(matches[0], ConllFormat())
    return ner_dataset_name(argument), with_dev(splits, str(folder), NerDataError)


def load_hub_ner_data(argument: str) -> tuple[str, dict[str, list[TaggedSentence]]]:
    """`hf://ID[:CONFIG]`: a Hub (or local `datasets`) NER dataset with `tokens` and `ner_tags`/`tags` columns.

    Tags may be ClassLabel ids or strings; they are read as BIO (an I- after O is repaired and logged).
    """
    from datasets import ClassLabel, Sequence

    splits = {}
    for split, (name, data) in hub_splits(argument, NerDataError).items():
        tag_column = next((c for c in ("ner_tags", "tags") if c in data.column_names), None)
        if "tokens" not in data.column_names or tag_column is None:
            raise NerDataError(f"{argument} [{name}]: needs a 'tokens' and a 'ner_tags' (or 'tags') column.")
        feature = data.features[tag_column]
        inner = feature.feature if isinstance(feature, Sequence) else getattr(feature, "feature", None)
        names_of = inner.names if isinstance(inner, ClassLabel) else None
        splits[split] = [
            TaggedSentence(
                list(tokens),
                to_bio([names_of[t] if names_of else str(t) for t in tags], (f"{argument} [{name}] row", row)),
                f"{argument} [{name}] row",
                row,
            )
            for row, (tokens, tags) in enumerate(zip(data["tokens"], data[tag_column], strict=True))
        ]
    return ner_dataset_name(argument), with_dev(splits, argument, NerDataError)


def label_set(sentences: list[TaggedSentence]) -> list[str]:
    """O, then B- and I- of every entity type the sentences contain (a type may start as a one-word entity in
    train and still have multi-word entities in test, so both tags of a seen type are always labels)."""
    types = {tag[2:] for sentence in sentences for tag in sentence.tags if tag != "O"}
    return ["O", *[f"{prefix}-{kind}" for kind in sorted(types) for prefix in ("B", "I")]]


def check_label_sets(splits: dict[str, list[TaggedSentence]], where: str) -> list[str]:
    """The training label set; a training set without any entity, or a dev/test entity type never seen in train, is an
    error naming the file (and line)."""
    labels = set(label_set(splits["train"]))
    if labels == {"O"}:
        sources = sorted({str(sentence.source) for sentence in splits["train"]}) or ["(empty)"]
        raise NerDataError(
            f"{', '.join(sources[:3])}: the training set of {where} has no entity at all (every tag is O); a tagger "
            "trained on it could only answer O. Check the tag column and the data."
        )
    for split in ("dev", "test"):
        for sentence in splits.get(split, []):
            unknown = sorted(set(sentence.tags) - labels)
            if unknown:
                raise NerDataError(
                    f"{sentence.source}:{sentence.line}: {split} tag(s) {unknown} name an entity type never seen in "
                    f"train ({where})."
                )
    return label_set(splits["train"])


def load_ner_spec(spec: str, data_root: str | Path = DEFAULT_DATA_ROOT) -> tuple[str, dict[str, list[TaggedSentence]]]:
    """Any NER dataset spec — a local name, a user's `NAME=DIR` (or a bare folder), `hf://ID[:CONFIG]` — as (recorded
    name, splits)."""
    if spec.startswith(HUB_PREFIX):
        return load_hub_ner_data(spec)
    if "=" in spec:
        return load_user_ner_data(spec)
    if Path(spec).is_dir() and spec not in LOCAL_NER_DATASETS and spec not in NER_GROUPS:
        return load_user_ner_data(f"{Path(spec).resolve().name}={spec}")
    return spec, load_ner_dataset(spec, data_root)
