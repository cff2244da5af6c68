"""Paired differences over pre-finetuning seeds: the arithmetic behind every `+x ± se` of the quality table.

A recipe at seed s and the base (or another recipe at the same seed) are scored on the same protocol; the
per-seed differences d_s are what varies, so the claim is their mean with the standard error std(d, ddof=1)/√n.
Under two standard errors a difference is `≈` (no measurable change), never a gain or a loss.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class PairedDelta:
    mean_delta: float
    se: float | None  # None with a single seed: no spread to measure
    n: int

    @property
    def significant(self) -> bool:
        """Beyond two standard errors (never with fewer than two seeds)."""
        return self.se is not None and abs(self.mean_delta) > 2 * self.se

    def with_reference_se(self, se: float | None) -> PairedDelta:
        """The difference to a reference that is itself a mean with an error (the base over downstream seeds): that
        error is shared by every seed's difference, so the paired SE cannot see it; it is added in quadrature."""
        if not se or self.se is None:
            return self
        return PairedDelta(self.mean_delta, math.hypot(self.se, se), self.n)

    def as_dict(self) -> dict:
        return {
            "mean_delta": round(self.mean_delta, 3),
            "se": None if self.se is None else round(self.se, 3),
            "n": self.n,
        }

    def describe(self) -> str:
        """`+1.23 ± 0.40` (± one SE); `≈` marks a difference under two SE, `(1 seed)` one without spread."""
        if self.se is None:
            return f"{self.mean_delta:+.2f} (1 seed)"
        return f"{self.mean_delta:+.2f} ± {self.se:.2f}{'' if self.significant else ' ≈'}"


def paired_delta(scores: dict[int, float], reference: dict[int, float] | float) -> PairedDelta:
    """Mean and SE over seeds of scores[s] − reference[s] (a single number: the same reference for every seed, as
    for a base model that has no pre-finetuning seed). Only seeds present on both sides count."""
    if isinstance(reference, dict):
        seeds = sorted(set(scores) & set(reference))
        deltas = [scores[s] - reference[s] for s in seeds]
    else:
        deltas = [scores[s] - reference for s in sorted(scores)]
    if not deltas:
        raise ValueError("No seed scored on both sides: nothing to compare.")
    n = len(deltas)
    mean = sum(deltas) / n
    return PairedDelta(mean, standard_error(deltas) if n > 1 else None, n)


def standard_error(values: list[float]) -> float:
    """The standard error of the mean of `values`: std(values, ddof=1) / sqrt(n), n >= 2."""
    n = len(values)
    mean = sum(values) / n
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1) / n)
