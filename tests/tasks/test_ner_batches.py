"""NER batches: pseudo-labels on first sub-tokens."""

import pytest
from datasets import Dataset
from transformers import AutoTokenizer

from mtpf.tasks.base import TaskContext
from mtpf.tasks.ner.batches import NerBatches
from mtpf.weights import tiny_encoder_dir


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(tiny_encoder_dir())


def test_ner_batches_label_first_subtokens(tokenizer):
    dataset = Dataset.from_dict({"words": [["Dominick's", "owns", "Safeway"]] * 4, "labels": [[3, 1, -1]] * 4})
    batch = NerBatches(dataset, TaskContext(tokenizer), batch_size=2)(0)
    word_ids = tokenizer(["Dominick's", "owns", "Safeway"], is_split_into_words=True).word_ids()
    expected = []
    for position, word in enumerate(word_ids):
        first = word is not None and (position == 0 or word_ids[position - 1] != word)
        expected.append({0: 3, 1: 1, 2: -100}[word] if first else -100)
    assert batch["labels"][0].tolist()[: len(expected)] == expected
