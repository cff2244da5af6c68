"""Paired differences over pre-finetuning seeds and rank agreement, on hand-computed fixtures."""

from __future__ import annotations

import math

import pytest

from mtpf.quality.stats import paired_delta


def test_paired_delta_against_a_seedless_base():
    delta = paired_delta({0: 68.0, 1: 69.0, 2: 70.0}, 67.0)  # deltas 1, 2, 3: mean 2, sd 1, se 1/sqrt(3)
    assert delta.mean_delta == pytest.approx(2.0)
    assert delta.se == pytest.approx(1 / math.sqrt(3))
    assert delta.n == 3 and delta.significant  # 2 > 2 * 0.577
    assert delta.describe() == "+2.00 ± 0.58"


def test_paired_delta_pairs_seeds_and_marks_noise():
    recipe = {0: 70.0, 1: 66.0, 2: 71.0, 3: 99.0}
    other = {0: 69.0, 1: 67.0, 2: 70.0}  # seed 3 has no partner and does not count
    delta = paired_delta(recipe, other)  # deltas 1, -1, 1: mean 1/3, sd 2/sqrt(3), se 2/3
    assert delta.n == 3
    assert delta.mean_delta == pytest.approx(1 / 3)
    assert delta.se == pytest.approx(2 / 3)
    assert not delta.significant and delta.describe().endswith("≈")


def test_paired_delta_one_seed_has_no_spread():
    delta = paired_delta({0: 70.0}, 67.0)
    assert delta.se is None and not delta.significant and delta.describe() == "+3.00 (1 seed)"
    with pytest.raises(ValueError, match="No seed"):
        paired_delta({0: 1.0}, {1: 1.0})


def test_a_reference_with_its_own_error_widens_the_se_in_quadrature():
    delta = paired_delta({0: 68.0, 1: 69.0, 2: 70.0}, 67.0).with_reference_se(1.0)  # paired se 1/sqrt(3)
    assert delta.mean_delta == pytest.approx(2.0) and delta.se == pytest.approx(math.sqrt(1 / 3 + 1))
    assert not delta.significant  # 2 < 2 * 1.155: the base's own noise makes the gain unresolved
    one_seed = paired_delta({0: 70.0}, 67.0).with_reference_se(1.0)
    assert one_seed.se is None  # no spread of its own: still a single seed, not a measured SE
