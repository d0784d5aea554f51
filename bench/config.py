"""How big each scenario is. `FULL` is what `make bench` runs; `SMOKE` keeps the code from rotting in `make test`."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

SCENARIOS = ("latency", "throughput", "waiting", "growth")


@dataclass(frozen=True)
class BenchConfig:
    threads: int = 8  # activity threads of the worker = threads of the pooled baseline
    latency_runs: int = 20  # scenario 1, per path, one at a time
    throughput_runs: int = 200  # scenario 2, per path, all at once
    query_fleet: int = 200  # scenario 4: runs held in await_ready while the progress query is timed
    query_samples: int = 300  # scenario 4: progress queries timed, one at a time
    waiting_fleet: int = 400  # scenario 3: runs held in await_ready (incl. the query fleet); see TARGET_FLEET
    # scenario 3: how long the held fleet is watched; over one poll ceiling (30 s), so every run checks meanwhile
    waiting_sample_seconds: float = 32.0
    growth_extra_files: tuple[int, ...] = (10, 100, 989)  # scenario 5: web-service (11 files) + these
    growth_repeats: int = 2  # scenario 5: runs per size and path
    warmup: bool = True  # one untimed project per path before the timed ones
    # The dev server's SQLite file: "tmpfs" (/dev/shm, else a temp dir) or "disk" (the data dir, as the embedded
    # stack does). tmpfs by default: on disk, SQLite's fsyncs bound the workflow path (bench/README.md has figures).
    temporal_db: str = "tmpfs"
    scenarios: tuple[str, ...] = SCENARIOS
    profile_dir: Path | None = None  # py-spy profiles of the throughput scenario go here when set

    def with_overrides(self, **overrides: Any) -> BenchConfig:
        return replace(self, **{key: value for key, value in overrides.items() if value is not None})

    def describe(self) -> dict[str, Any]:
        return {
            "threads": self.threads,
            "latency_runs": self.latency_runs,
            "throughput_runs": self.throughput_runs,
            "query_fleet": self.query_fleet,
            "waiting_fleet": self.waiting_fleet,
            "growth_extra_files": list(self.growth_extra_files),
            "temporal_db": self.temporal_db,
        }


FULL = BenchConfig()
SMOKE = BenchConfig(
    latency_runs=2,
    throughput_runs=2,
    query_fleet=2,
    query_samples=10,
    waiting_fleet=2,
    waiting_sample_seconds=0.5,
    growth_extra_files=(2, 5),
    growth_repeats=1,
    warmup=False,
)
