"""The one downstream training path's data rules: seeded subsets, the cap before the fraction, small sets repeated
to a minimum of steps per epoch."""

from __future__ import annotations

import pytest

from mtpf.training.downstream import AdapterProtocol, capped_splits, repeat_to_min_steps, subsample


def test_subsample_is_seeded_ordered_and_capped():
    rows = list(range(100))
    tenth = subsample(rows, 0.1)
    assert len(tenth) == 10 and tenth == sorted(tenth) and tenth == subsample(rows, 0.1)  # same rows every time
    assert subsample(rows, 0.1, seed=1) != tenth
    assert subsample(rows, 1.0, cap=10) == tenth  # a cap and a fraction of the same size take the same rows
    assert subsample(rows[:3], 0.01) == [subsample(rows[:3], 0.01)[0]]  # at least one row
    assert subsample(rows, 1.0) == rows
    with pytest.raises(ValueError, match=r"fraction must be in \(0, 1\]"):
        subsample(rows, 0.0)


def test_the_cap_comes_before_the_fraction():
    splits = {"train": list(range(1000)), "dev": list(range(300)), "test": list(range(50))}
    protocol = AdapterProtocol(max_train_sentences=200, max_dev_sentences=100, max_test_sentences=None)
    full, dev, test = capped_splits(splits, protocol)
    tenth, _, _ = capped_splits(splits, protocol, fraction=0.1)
    assert (len(full), len(dev), len(test)) == (200, 100, 50)
    assert len(tenth) == 20 and set(tenth) <= set(full)  # a tenth of the full run's rows


def test_small_sets_repeat_to_the_minimum_steps():
    rows = list(range(10))
    assert repeat_to_min_steps(rows, batch_size=4, min_steps=0) == rows
    repeated = repeat_to_min_steps(rows, batch_size=4, min_steps=5)  # 20 rows needed: 2 whole copies
    assert repeated == rows * 2
    assert repeat_to_min_steps(list(range(100)), batch_size=4, min_steps=5) == list(range(100))
