"""Small statistics over samples: percentiles by linear interpolation (numpy's default method)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any


def percentile(values: Sequence[float], fraction: float) -> float:
    """The `fraction` (0..1) percentile of `values`; NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    position = (len(ordered) - 1) * fraction
    lower = int(position)
    upper = min(lower + 1, len(ordered) - 1)
    return ordered[lower] + (ordered[upper] - ordered[lower]) * (position - lower)


@dataclass(frozen=True)
class Summary:
    count: int
    median: float
    p95: float
    mean: float
    minimum: float
    maximum: float

    @classmethod
    def of(cls, values: Iterable[float]) -> Summary:
        samples = list(values)
        if not samples:
            nan = float("nan")
            return cls(0, nan, nan, nan, nan, nan)
        return cls(
            count=len(samples),
            median=percentile(samples, 0.5),
            p95=percentile(samples, 0.95),
            mean=sum(samples) / len(samples),
            minimum=min(samples),
            maximum=max(samples),
        )

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator else float("nan")
