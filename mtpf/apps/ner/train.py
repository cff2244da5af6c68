"""Downstream NER adaptation (paper appendix A): LoRA on every layer, a linear head warmed up alone, then joint.

Where the model has a trained `ner` slot, its weights initialise the downstream LoRA of the slot's layers
(the slot's update is reproduced exactly; extra ranks start like fresh LoRA). Labels sit on first sub-tokens;
the score is seqeval's strict IOB2 entity F1 on test, at the epoch with the best dev F1. Words cut off by
`max_length` count as predicted `O`, so truncation can only lower the score, never hide gold entities.
"""

from __future__ import annotations

import logging
import tempfile
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from datasets import Dataset
from peft import PeftModel
from seqeval.metrics import f1_score
from seqeval.scheme import IOB2
from transformers import DataCollatorForTokenClassification, EvalPrediction, PreTrainedTokenizerBase

from modeling_mtpf import MtpfForTokenClassification
from mtpf.data.conll import TaggedSentence
from mtpf.data.tokens import IGNORE_INDEX, first_subtoken_labels
from mtpf.models import LoadedModel
from mtpf.training.downstream import (
    AdapterProtocol,
    DownstreamData,
    DownstreamHead,
    DownstreamRun,
    build_adapter_model,
    capped_splits,
    repeat_to_min_steps,
    train_two_phases,
)

logger = logging.getLogger(__name__)
DOWNSTREAM = "ner"  # adapter name of the downstream LoRA (it continues the `ner` slot where one exists)


@dataclass
class NerProtocol(AdapterProtocol):
    """How one model is adapted to one NER dataset (defaults: the paper's appendix A)."""


@dataclass
class NerRun:
    dataset: str
    fraction: float
    seed: int
    test_f1: float  # percent
    dev_f1: float
    best_epoch: float
    train_sentences: int  # distinct sentences
    rows_per_epoch: int  # after repeating a small set up to min_steps_per_epoch batches
    test_sentences: int
    seconds: float
    dev_curve: list[float] = field(default_factory=list)  # dev F1 after each selecting epoch


def encode_sentences(
    sentences: list[TaggedSentence], tokenizer: PreTrainedTokenizerBase, label_ids: dict[str, int], max_length: int
) -> Dataset:
    """Sub-token inputs with each word's label on its first sub-token and IGNORE_INDEX elsewhere."""
    if not tokenizer.is_fast:
        raise ValueError("NER evaluation needs a fast tokenizer (word_ids) for first-sub-token labels.")
    encoded = tokenizer([s.tokens for s in sentences], is_split_into_words=True, truncation=True, max_length=max_length)
    labels = [
        first_subtoken_labels(encoded.word_ids(row), [label_ids[tag] for tag in sentence.tags])
        for row, sentence in enumerate(sentences)
    ]
    columns = {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"], "labels": labels}
    if "token_type_ids" in encoded:
        columns["token_type_ids"] = encoded["token_type_ids"]
    return Dataset.from_dict(columns)


def sort_by_length(sentences: list[TaggedSentence], encoded: Dataset) -> tuple[list[TaggedSentence], Dataset]:
    """Prediction rows shortest first (gold reordered alike), so each batch pads to nearly its own length.

    Entity F1 does not depend on sentence order; in dataset order most batches pad to their longest sentence.
    """
    lengths = [len(ids) for ids in encoded["input_ids"]]
    order = sorted(range(len(sentences)), key=lengths.__getitem__)
    return [sentences[row] for row in order], encoded.select(order)


def decode_tags(predictions: np.ndarray, label_rows: np.ndarray, id2label: dict[int, str], gold) -> list[list[str]]:
    """Predicted tags per word: first-sub-token predictions, then `O` for words truncation cut off."""
    out = []
    for pred_row, label_row, sentence in zip(predictions, label_rows, gold, strict=True):
        tags = [id2label[int(p)] for p, gold_id in zip(pred_row, label_row) if gold_id != IGNORE_INDEX]
        out.append(tags + ["O"] * (len(sentence.tags) - len(tags)))
    return out


def entity_f1(gold: list[list[str]], predicted: list[list[str]]) -> float:
    """seqeval strict IOB2 entity F1, in percent."""
    return 100.0 * f1_score(gold, predicted, mode="strict", scheme=IOB2, zero_division=0)


def build_ner_model(candidate: LoadedModel, labels: list[str], protocol: NerProtocol) -> PeftModel:
    """The candidate's backbone + a fresh token head + downstream LoRA on every layer (ner slot as init)."""
    return build_adapter_model(
        candidate, DownstreamHead(MtpfForTokenClassification, labels, DOWNSTREAM, DOWNSTREAM), protocol
    )


def train_ner(
    candidate: LoadedModel, data: DownstreamData, protocol: NerProtocol, *, fraction: float = 1.0, seed: int = 0
) -> tuple[NerRun, PeftModel]:
    """The NER protocol (evaluation and apps alike): the run's scores and the tagger at its best dev epoch."""
    start = time.monotonic()
    labels = data.labels
    train, dev, test = capped_splits(data.splits, protocol, fraction)
    label_ids = {label: i for i, label in enumerate(labels)}
    id2label = dict(enumerate(labels))
    encode = lambda rows: encode_sentences(rows, candidate.tokenizer, label_ids, protocol.max_length)  # noqa: E731
    epoch_rows = repeat_to_min_steps(train, protocol.batch_size, protocol.min_steps_per_epoch)
    train_set = encode(epoch_rows)
    dev, dev_set = sort_by_length(dev, encode(dev))
    test, test_set = sort_by_length(test, encode(test))
    torch.manual_seed(seed)
    model = build_ner_model(candidate, labels, protocol)

    def dev_metrics(prediction: EvalPrediction) -> dict[str, float]:
        predicted = decode_tags(prediction.predictions, prediction.label_ids, id2label, dev)
        return {"f1": entity_f1([s.tags for s in dev], predicted)}

    with tempfile.TemporaryDirectory(prefix="mtpf-ner-") as scratch:
        collator = DataCollatorForTokenClassification(candidate.tokenizer)
        run = DownstreamRun(train_set, dev_set, collator, dev_metrics, metric="eval_f1", seed=seed, scratch=scratch)
        trainer, keep_best = train_two_phases(model, protocol, run)
        prediction = trainer.predict(test_set)
    test_f1 = entity_f1(
        [s.tags for s in test], decode_tags(prediction.predictions, prediction.label_ids, id2label, test)
    )
    run = NerRun(
        dataset=data.name,
        fraction=fraction,
        seed=seed,
        test_f1=round(float(test_f1), 4),
        dev_f1=round(float(keep_best.best_score), 4),
        best_epoch=keep_best.best_epoch,
        train_sentences=len(train),
        rows_per_epoch=len(epoch_rows),
        test_sentences=len(test),
        seconds=round(time.monotonic() - start, 1),
        dev_curve=keep_best.curve,
    )
    logger.info("%s", run)
    return run, model
