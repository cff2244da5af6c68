"""Text classification through mteb: the paper's 16 MTEB tasks, 10 of them read from local copies.

A local task is the real MTEB task class (its metadata, `samples_per_label`, logistic-regression probe) with
`load_data` reading `<data_root>/<folder>/<split>.jsonl` instead of the Hub; the settings follow
`../shared/data/tc/_mteb_reference/task_settings.md`. The other six load from the Hub when it is reachable and
are reported as missing when it is not. The encoder is the model with its `tc` slot merged in, embedding texts
with `MtpfModel.encode` (the model's own pooling, normalisation and max_seq_length, as sentence-transformers
does): an untouched encoder scores its public MTEB numbers.
"""

from __future__ import annotations

import logging
import os
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import mteb
import numpy as np
from datasets import Dataset, DatasetDict
from mteb.abstasks.classification import AbsTaskClassification
from mteb.models.abs_encoder import AbsEncoder
from mteb.models.model_meta import ModelMeta

from modeling_mtpf import MtpfModel
from mtpf.data.roots import TC_DATA
from mtpf.errors import MtpfError
from mtpf.io import read_json_lines
from mtpf.models import LoadedModel
from mtpf.results import ResultRecord

logger = logging.getLogger(__name__)
DEFAULT_TC_ROOT = TC_DATA
TC_SLOT = "tc"


@dataclass(frozen=True)
class TcTaskSpec:
    """One of the paper's TC tasks: its MTEB name, table column, and (if we hold it) the local copy."""

    mteb_name: str
    column: str  # the paper's abbreviation (Table 6)
    folder: str | None = None  # under the TC data root; None: Hub only
    files: dict[str, str] = field(default_factory=dict)  # our split name -> file, default "<split>.jsonl"
    eval_splits: tuple[str, ...] = ("test",)
    train_split: str = "train"
    subset: str | None = None  # MTEB's hf_subset for multilingual tasks
    stratified_test: bool = False  # MTEB subsamples the eval split to 2,048 rows (label-stratified)


# The paper's Table 6 order. Settings from _mteb_reference/task_settings.md.
TC_TASKS = {
    spec.column: spec
    for spec in [
        TcTaskSpec("Banking77Classification", "Bank.", "banking77"),
        TcTaskSpec("EmotionClassification", "Emo.", "emotion"),
        TcTaskSpec(
            "AmazonCounterfactualClassification",
            "ACF",
            "amazon_counterfactual_en",
            eval_splits=("validation", "test"),
            subset="en",
        ),
        # No local MASSIVE train split: the validation split is the probe's training pool, test is scored.
        TcTaskSpec("MassiveIntentClassification", "MI", "massive_intent_en", train_split="validation", subset="en"),
        TcTaskSpec("TweetSentimentExtractionClassification", "TS", "tweet_sentiment_extraction"),
        TcTaskSpec("ToxicChatClassification", "TC", "toxic_chat", stratified_test=True),
        TcTaskSpec("NewsClassification", "News", "ag_news"),
        TcTaskSpec("PatentClassification", "Patent"),
        # MTEB v1 trains and scores on the single 2,264-row split.
        TcTaskSpec(
            "FinancialPhrasebankClassification",
            "FPB",
            "financial_phrasebank",
            files={"train": "all.jsonl"},
            eval_splits=("train",),
        ),
        TcTaskSpec("FrenkEnClassification", "FE"),
        TcTaskSpec("ImdbClassification", "Imdb", "imdb"),
        TcTaskSpec("ArxivClassification", "Arxiv"),
        # MTEB's DBpedia data is 2,048 rows per split; our 5,000-row copy is subsampled the same way.
        TcTaskSpec("DBpediaClassification", "DB.", "dbpedia14", stratified_test=True),
        TcTaskSpec("TweetTopicSingleClassification", "TTS.", eval_splits=("test_2021",)),
        TcTaskSpec("YelpReviewFullClassification", "YRF", stratified_test=True),
        TcTaskSpec("ToxicConversationsClassification", "TCon.", stratified_test=True),
    ]
}
MTEB_SUBSAMPLE_ROWS = 2048
MODEL_EMBEDDING = "model"


class TcDataError(MtpfError, ValueError):
    """A local TC file that cannot be read; the message names the file and line."""


@dataclass
class TcProtocol:
    """How the MTEB classification probe is run (defaults: MTEB's own settings)."""

    n_experiments: int = field(default=10, metadata={"help": "Probe repetitions per task (MTEB: 10)."})
    max_eval_rows: int | None = field(
        default=None, metadata={"help": "Stratified cap on every eval split (default: only where MTEB caps, 2,048)."}
    )
    max_length: int | None = field(
        default=None,
        metadata={"help": "Sub-tokens per text; default the model's own max_seq_length. A number only lowers it."},
    )
    batch_size: int = field(default=64, metadata={"help": "Texts per encoder batch."})
    embedding: str = field(
        default=MODEL_EMBEDDING,
        metadata={"help": "How texts become vectors; 'model' = MtpfModel.encode (pooling, normalize, length)."},
    )


# Results files written before `embedding` existed fed the probe un-normalised mean pooling at up to 512 tokens.
LEGACY_PROTOCOL = {"embedding": "unnormalised-mean"}


def read_jsonl_split(path: Path) -> tuple[list[str], list[str]]:
    """Texts and string labels of one `{"text", "label"}` JSON-lines file."""
    texts, labels = [], []
    for number, row in read_json_lines(path, TcDataError):
        if not isinstance(row, dict) or not isinstance(row.get("text"), str) or "label" not in row:
            raise TcDataError(f'{path}:{number}: expected an object with a string "text" and a "label".')
        texts.append(row["text"])
        labels.append(str(row["label"]))
    if not texts:
        raise TcDataError(f"{path}: the split is empty.")
    return texts, labels


def local_dataset(spec: TcTaskSpec, data_root: str | os.PathLike) -> DatasetDict:
    """The task's splits as a DatasetDict with integer labels shared across splits."""
    folder = Path(data_root) / spec.folder
    splits = {spec.train_split, *spec.eval_splits}
    raw = {split: read_jsonl_split(folder / spec.files.get(split, f"{split}.jsonl")) for split in splits}
    names = sorted({label for _, labels in raw.values() for label in labels})
    ids = {name: i for i, name in enumerate(names)}
    return DatasetDict(
        {
            split: Dataset.from_dict({"text": texts, "label": [ids[x] for x in labels]})
            for split, (texts, labels) in raw.items()
        }
    )


def is_local_available(spec: TcTaskSpec, data_root: str | os.PathLike) -> bool:
    if spec.folder is None:
        return False
    folder = Path(data_root) / spec.folder
    return all((folder / spec.files.get(s, f"{s}.jsonl")).is_file() for s in {spec.train_split, *spec.eval_splits})


def build_task(spec: TcTaskSpec, data_root: str | os.PathLike, protocol: TcProtocol) -> AbsTaskClassification:
    """The MTEB task object: local copy where we have one, else MTEB's own (Hub) loader."""
    base = type(mteb.get_task(spec.mteb_name))
    local = is_local_available(spec, data_root)
    updates = {"eval_splits": list(spec.eval_splits)}
    if local:
        updates.update(
            dataset={"path": str(Path(data_root) / spec.folder), "revision": "local"}, eval_langs=["eng-Latn"]
        )
    elif spec.subset:
        updates["eval_langs"] = {spec.subset: base.metadata.eval_langs[spec.subset]}
    metadata = base.metadata.model_copy(update=updates)

    def load_data(self, num_proc=None, **kwargs) -> None:
        if self.data_loaded:
            return
        if local:
            self.dataset = local_dataset(spec, data_root)
        else:
            base.load_data(self, num_proc=num_proc, **kwargs)
        self._cap_eval_splits()
        self.data_loaded = True

    def cap_eval_splits(self) -> None:
        rows = protocol.max_eval_rows or (MTEB_SUBSAMPLE_ROWS if spec.stratified_test else None)
        if rows is not None:
            self.dataset = cap_splits(self.dataset, spec.eval_splits, rows, self.seed, spec.mteb_name)

    task_class = type(
        base.__name__,
        (base,),
        {
            "metadata": metadata,
            "train_split": spec.train_split,
            "n_experiments": protocol.n_experiments,
            "load_data": load_data,
            "_cap_eval_splits": cap_eval_splits,
            "_undersample_data": undersample_data,
        },
    )
    return task_class()


def cap_splits(dataset: DatasetDict, splits: tuple[str, ...], rows: int, seed: int, name: str) -> DatasetDict:
    """Label-stratified subsample of each eval split to `rows`, as MTEB's `stratified_subsampling` draws it.

    MTEB's draw needs two rows of every label; where a label has one (small caps on many-label tasks), the
    rows are allocated per label in proportion (largest remainder) instead, and the log says so.
    """
    try:
        return AbsTaskClassification.stratified_subsampling(dataset, seed, list(splits), n_samples=rows)
    except ValueError as err:
        logger.warning(
            "%s: MTEB's stratified subsampling failed (%s); using proportional per-label allocation", name, err
        )
    for split in splits:
        if rows < len(dataset[split]):
            dataset[split] = dataset[split].select(proportional_rows(dataset[split]["label"], rows, seed))
    return dataset


def proportional_rows(labels: list[int], rows: int, seed: int) -> list[int]:
    """Row indices: each label gets its share of `rows` (largest remainder), drawn at random with `seed`."""
    rng = np.random.default_rng(seed)
    labels = np.asarray(labels)
    classes, counts = np.unique(labels, return_counts=True)
    quota = counts * rows / len(labels)
    take = np.floor(quota).astype(int)
    take[np.argsort(-(quota - take))[: rows - take.sum()]] += 1
    chosen = [rng.choice(np.flatnonzero(labels == c), size=k, replace=False) for c, k in zip(classes, take)]
    return sorted(int(i) for i in np.concatenate(chosen))


def undersample_data(self, dataset: Dataset, experiment_num: int, idxs: list[int] | None = None):
    """MTEB's `_undersample_data` (same RandomState draw, same rows), reading the label column once.

    MTEB indexes the lazy label column row by row, which under datasets 5 costs seconds per experiment.
    """
    if idxs is None:
        idxs = list(range(len(dataset)))
    np.random.RandomState(self.seed).shuffle(idxs)
    labels = list(dataset[self.label_column_name])
    counts: dict = defaultdict(int)
    sampled = []
    for i in idxs:
        if counts[labels[i]] < self.samples_per_label:
            sampled.append(i)
            counts[labels[i]] += 1
    return dataset.select(sampled), idxs, sampled


class MtpfMtebEncoder(AbsEncoder):
    """An MTEB encoder over an MtpfModel: its own sentence embeddings (`MtpfModel.encode`)."""

    def __init__(self, model: MtpfModel, tokenizer, name: str, revision: str, protocol: TcProtocol) -> None:
        if protocol.embedding != MODEL_EMBEDDING:
            raise ValueError(f"TC protocol embedding={protocol.embedding!r}: only {MODEL_EMBEDDING!r} is supported.")
        self.model = model
        self.tokenizer = tokenizer
        self.max_length = protocol.max_length
        self.batch_size = protocol.batch_size
        self.mteb_model_meta = ModelMeta.create_empty(
            {"name": f"mtpf/{Path(name).name or 'model'}", "revision": revision}
        )

    def encode(self, inputs, *, task_metadata, hf_split, hf_subset, prompt_type=None, **kwargs) -> np.ndarray:
        texts = [text for batch in inputs for text in batch["text"]]
        return self.model.encode(texts, self.tokenizer, self.batch_size, self.max_length).numpy()


def evaluate_tc(
    candidate: LoadedModel,
    columns: list[str],
    protocol: TcProtocol,
    data_root: str | os.PathLike = DEFAULT_TC_ROOT,
    hub_reachable: bool = False,
) -> tuple[list[ResultRecord], list[dict]]:
    """Accuracy records for each task (every eval split), and the tasks that could not be run."""
    records: list[ResultRecord] = []
    missing: list[dict] = []
    tasks = []
    for column in columns:
        spec = TC_TASKS[column]
        if not is_local_available(spec, data_root) and not hub_reachable:
            where = Path(data_root) / spec.folder if spec.folder else f"{data_root} (none was gathered)"
            reason = f"no local copy in {where} and the Hub is offline"
            logger.warning("TC task %s (%s) SKIPPED: %s", spec.mteb_name, column, reason)
            missing.append({"model": candidate.name, "family": "tc", "dataset": spec.mteb_name, "reason": reason})
            continue
        tasks.append(build_task(spec, data_root, protocol))
    if not tasks:
        return records, missing
    model = candidate.encoder_for(TC_SLOT)
    encoder = MtpfMtebEncoder(model, candidate.tokenizer, candidate.name, candidate.config_hash, protocol)
    results = mteb.evaluate(
        encoder, tasks, cache=None, show_progress_bar=False, encode_kwargs={"batch_size": protocol.batch_size}
    )
    for task_result in results.task_results:
        spec = next(s for s in TC_TASKS.values() if s.mteb_name == task_result.task_name)
        for split, entries in task_result.scores.items():
            for entry in entries:
                records.append(
                    ResultRecord(
                        model=candidate.name,
                        family="tc",
                        dataset=spec.mteb_name,
                        dataset_name=spec.column,
                        dataset_config=spec.subset,
                        split=split,
                        metric="accuracy",
                        value=round(100.0 * float(entry["main_score"]), 4),
                        config_hash=candidate.config_hash,
                        experiments=[round(100.0 * float(e["accuracy"]), 4) for e in entry["scores_per_experiment"]],
                    )
                )
    return records, missing
