from collections import Counter

import numpy as np
import pytest

from mtpf.data.sampling import DuplicateBatchError, HierarchicalBatchSampler


def make_pairs(prefix: str, count: int) -> list[tuple[str, str]]:
    return [(f"{prefix} anchor {i}", f"{prefix} positive {i}") for i in range(count)]


def dataset_of(sampler: HierarchicalBatchSampler, index: int) -> int:
    return int(np.searchsorted(sampler.offsets, index, side="right") - 1)


def test_every_batch_from_one_dataset_without_duplicates():
    pairs = [make_pairs("a", 300), make_pairs("b", 100)]
    pairs[0][5] = pairs[0][6]  # a duplicate pair
    pairs[0][7] = (pairs[0][8][0], "other")  # a shared anchor
    sampler = HierarchicalBatchSampler(pairs, batch_size=10, seed=3)
    flat = [text for rows in pairs for text in rows]
    batches = list(sampler.epoch_batches(0))
    for batch in batches:
        assert len({dataset_of(sampler, i) for i in batch}) == 1
        texts = [t for i in batch for t in flat[i]]
        assert len(texts) == len(set(texts))
    counts = Counter(dataset_of(sampler, b[0]) for b in batches)
    assert counts[1] == 10 and counts[0] in (29, 30)  # all rows used, unless clashing rows meet in the last batch


def test_same_seed_same_batches_other_epoch_other_batches():
    pairs = [make_pairs("a", 50), make_pairs("b", 50)]
    first = HierarchicalBatchSampler(pairs, batch_size=5, seed=1)
    second = HierarchicalBatchSampler(pairs, batch_size=5, seed=1)
    assert list(first.epoch_batches(0)) == list(second.epoch_batches(0))
    assert list(first.epoch_batches(0)) != list(first.epoch_batches(1))


def test_temperature_flattens_the_dataset_draw():
    pairs = [make_pairs("big", 900), make_pairs("small", 100)]
    proportional = HierarchicalBatchSampler(pairs, batch_size=10, seed=0, temperature=1.0)
    flat = HierarchicalBatchSampler(pairs, batch_size=10, seed=0, temperature=50.0)

    def small_share_of_first_20(sampler):
        return sum(dataset_of(sampler, b[0]) == 1 for b in list(sampler.epoch_batches(0))[:20])

    assert small_share_of_first_20(flat) > small_share_of_first_20(proportional)


def test_duplicate_only_data_is_an_error():
    pairs = [[("same", "text")] * 50]
    with pytest.raises(DuplicateBatchError, match="No pair dataset can fill a batch of 4 pairs"):
        HierarchicalBatchSampler(pairs, batch_size=4, names=["dupes"])


def test_too_small_dataset_is_left_out_loudly(caplog):
    sampler = HierarchicalBatchSampler([make_pairs("a", 40), make_pairs("b", 3)], batch_size=8, names=["a", "b"])
    assert sampler.usable == [0]
    assert "'b' is left out" in caplog.text
