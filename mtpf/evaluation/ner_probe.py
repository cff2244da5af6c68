"""A cheap NER signal: a linear probe on frozen token features (the model's `ner` slot merged where it has one).

Fine-tuning LoRA on a NER set costs minutes per model; embedding a thousand sentences and fitting scikit-learn's
logistic regression on first-sub-token features costs seconds. The probe reads what the frozen encoder already
separates, which is what NER pre-finetuning is meant to change; it is a screen, trusted only as far as it is shown
to rank models like the fine-tuning protocol. Scored like the protocol: seqeval's strict IOB2 entity F1 on test,
words cut off by truncation predicted `O`.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from mtpf.apps.ner.data import check_label_sets, load_ner_spec
from mtpf.apps.ner.train import entity_f1
from mtpf.data.conll import TaggedSentence
from mtpf.models import LoadedModel
from mtpf.training.downstream import subsample

logger = logging.getLogger(__name__)


@dataclass
class ProbeProtocol:
    max_train_sentences: int = 600
    max_test_sentences: int = 600
    max_length: int = 128
    batch_size: int = 64
    max_iter: int = 200  # logistic regression iterations (lbfgs)
    regularization: float = 1.0  # scikit-learn's C
    seed: int = 0  # which seeded subsets of train and test


@dataclass
class ProbeRun:
    dataset: str
    test_f1: float  # percent
    train_sentences: int
    train_tokens: int
    test_sentences: int
    seconds: float


@torch.no_grad()
def word_features(
    encoder: torch.nn.Module, tokenizer, sentences: list[TaggedSentence], protocol: ProbeProtocol
) -> list[np.ndarray]:
    """Per sentence, the last hidden state at each word's first sub-token (words cut off by truncation: none)."""
    features = []
    for start in range(0, len(sentences), protocol.batch_size):
        rows = sentences[start : start + protocol.batch_size]
        batch = tokenizer(
            [s.tokens for s in rows],
            is_split_into_words=True,
            truncation=True,
            max_length=protocol.max_length,
            padding=True,
            return_tensors="pt",
        )
        hidden = encoder(**{k: v for k, v in batch.items() if k != "offset_mapping"}).last_hidden_state
        for row in range(len(rows)):
            firsts, seen = [], set()
            for position, word in enumerate(batch.word_ids(row)):
                if word is not None and word not in seen:
                    seen.add(word)
                    firsts.append(position)
            features.append(hidden[row, firsts].float().numpy())
    return features


def probe_ner(candidate: LoadedModel, dataset: str, data_root: str, protocol: ProbeProtocol) -> ProbeRun:
    """Fit the probe on a seeded train subset, score entity F1 on a seeded test subset."""
    start = time.monotonic()
    name, splits = load_ner_spec(dataset, data_root)
    labels = check_label_sets(splits, name)
    label_ids = {label: i for i, label in enumerate(labels)}
    train = subsample(splits["train"], 1.0, protocol.max_train_sentences, protocol.seed)
    test = subsample(splits["test"], 1.0, protocol.max_test_sentences, protocol.seed)
    encoder = candidate.encoder_for("ner")
    train_features = word_features(encoder, candidate.tokenizer, train, protocol)
    x = np.concatenate(train_features)
    y = np.concatenate([[label_ids[t] for t in s.tags[: len(f)]] for s, f in zip(train, train_features)])
    scaler = StandardScaler().fit(x)
    classifier = LogisticRegression(max_iter=protocol.max_iter, C=protocol.regularization)
    classifier.fit(scaler.transform(x), y)
    predicted = []
    for sentence, features in zip(test, word_features(encoder, candidate.tokenizer, test, protocol)):
        tags = [labels[i] for i in classifier.predict(scaler.transform(features))] if len(features) else []
        predicted.append(tags + ["O"] * (len(sentence.tags) - len(tags)))
    run = ProbeRun(
        dataset=name,
        test_f1=round(float(entity_f1([s.tags for s in test], predicted)), 4),
        train_sentences=len(train),
        train_tokens=len(y),
        test_sentences=len(test),
        seconds=round(time.monotonic() - start, 1),
    )
    logger.info("NER probe %s on %s: %s", candidate.name, name, asdict(run))
    return run
