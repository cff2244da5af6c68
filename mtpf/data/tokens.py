"""Word-level labels onto sub-tokens: the first sub-token of a word carries its label, the rest -100."""

from __future__ import annotations

import torch
from transformers import BatchEncoding, PreTrainedTokenizerBase

IGNORE_INDEX = -100
MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")  # what an encoder's forward takes of a batch


def model_inputs(features: dict) -> dict:
    """The encoder's inputs of a batch (labels and other fields left out)."""
    return {key: value for key, value in features.items() if key in MODEL_INPUTS}


def tokenize_words(
    tokenizer: PreTrainedTokenizerBase,
    sentences: list[list[str]],
    word_labels: list[list[int]] | None,
    max_length: int,
) -> BatchEncoding:
    """Tokenize pre-split words; with labels, add `labels` aligned to first sub-tokens (negative ids ignored)."""
    if not tokenizer.is_fast:
        raise ValueError("A fast tokenizer is needed to map words to sub-tokens (word_ids).")
    encoded = tokenizer(
        sentences, is_split_into_words=True, truncation=True, max_length=max_length, padding=True, return_tensors="pt"
    )
    if word_labels is not None:
        encoded["labels"] = torch.tensor(
            [first_subtoken_labels(encoded.word_ids(i), word_labels[i]) for i in range(len(sentences))]
        )
    return encoded


def first_subtoken_labels(word_ids: list[int | None], labels: list[int]) -> list[int]:
    aligned = []
    previous = None
    for word_id in word_ids:
        if word_id is None or word_id == previous or labels[word_id] < 0:
            aligned.append(IGNORE_INDEX)
        else:
            aligned.append(int(labels[word_id]))
        previous = word_id
    return aligned
