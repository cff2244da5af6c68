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

    def as_dict(self) -> dict:
        return {"mean_delta": round(self.mean_delta, 3), "se": None if self.se is None else round(self.se, 3),
                "n": self.n}  # fmt: skip

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
    if n == 1:
        return PairedDelta(mean, None, 1)
    variance = sum((d - mean) ** 2 for d in deltas) / (n - 1)
    return PairedDelta(mean, math.sqrt(variance / n), n)


def spearman(first: list[float], second: list[float]) -> float:
    """Spearman's rank correlation of two score lists over the same models (average ranks for ties)."""
    if len(first) != len(second) or len(first) < 2:
        raise ValueError("Rank agreement needs the same models, at least two, on both protocols.")

    def ranks(values: list[float]) -> list[float]:
        order = sorted(range(len(values)), key=values.__getitem__)
        result = [0.0] * len(values)
        i = 0
        while i < len(order):
            j = i
            while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
                j += 1
            for k in range(i, j + 1):
                result[order[k]] = (i + j) / 2
            i = j + 1
        return result

    a, b = ranks(first), ranks(second)
    mean_a, mean_b = sum(a) / len(a), sum(b) / len(b)
    cov = sum((x - mean_a) * (y - mean_b) for x, y in zip(a, b))
    norm = math.sqrt(sum((x - mean_a) ** 2 for x in a) * sum((y - mean_b) ** 2 for y in b))
    return cov / norm if norm else 0.0
