"""Length-bucketed NER batches: every sentence once per epoch, less padding, off by default."""

from __future__ import annotations

from datasets import Dataset

from mtpf.tasks.base import TaskContext
from mtpf.tasks.ner.batches import NerBatches


def batches(tiny_tokenizer, buckets: int) -> NerBatches:
    lengths = [1 + (i * 7) % 23 for i in range(96)]
    words = [[f"w{i}"] * n for i, n in enumerate(lengths)]
    dataset = Dataset.from_dict({"words": words, "labels": [[0] * len(w) for w in words]})
    return NerBatches(dataset, TaskContext(tiny_tokenizer, seed=3), batch_size=8, max_length=64, length_buckets=buckets)


def test_buckets_keep_each_sentence_once_per_epoch_and_cut_padding(tiny_tokenizer):
    plain, bucketed = batches(tiny_tokenizer, 0), batches(tiny_tokenizer, 4)
    for source in (plain, bucketed):
        seen = [row for step in range(source.batches_per_epoch) for row in source.global_batch(step)]
        assert sorted(seen) == list(range(96))  # a permutation: nothing lost, nothing twice

    def padding(source: NerBatches) -> float:
        masks = [source(step)["attention_mask"] for step in range(source.batches_per_epoch)]
        return 1 - sum(int(m.sum()) for m in masks) / sum(m.numel() for m in masks)

    assert padding(bucketed) < padding(plain) / 2
    assert plain.global_batch(5) == batches(tiny_tokenizer, 0).global_batch(5)  # off: the batches of before
    assert bucketed.global_batch(5) == batches(tiny_tokenizer, 4).global_batch(5)  # seeded
