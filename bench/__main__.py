"""`python -m bench` (what `make bench` runs): the benchmark suite on the embedded stack and real PostgreSQL.

Exits 0 when it ran, whatever the targets say (they are printed as PASS/FAIL); `--strict` exits 1 on a FAIL.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path

from bench.config import FULL, SCENARIOS, SMOKE
from bench.environment import TEMPORAL_DB_LOCATIONS
from bench.runner import RESULTS_DIR, run_bench

DATABASE_URL_ENV = "PROVISIONER_TEST_DATABASE_URL"
DEFAULT_DATABASE_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


def _sizes(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split(",") if part.strip())


def _scenarios(text: str) -> tuple[str, ...]:
    chosen = tuple(part.strip() for part in text.split(",") if part.strip())
    unknown = set(chosen) - set(SCENARIOS)
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown scenarios {sorted(unknown)}; choose from {', '.join(SCENARIOS)}")
    return chosen


def parse_arguments(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--smoke", action="store_true", help="every scenario at N=2 (seconds, not minutes)")
    parser.add_argument("--scenarios", type=_scenarios, help=f"comma-separated subset of {', '.join(SCENARIOS)}")
    parser.add_argument("--threads", type=int, help="worker activity threads = baseline pool size")
    parser.add_argument("--latency-runs", type=int)
    parser.add_argument("--throughput-runs", type=int)
    parser.add_argument("--query-fleet", type=int)
    parser.add_argument("--waiting-fleet", type=int)
    parser.add_argument("--growth-extra-files", type=_sizes, help="e.g. 10,100,989")
    parser.add_argument("--temporal-db", choices=TEMPORAL_DB_LOCATIONS, help="where the dev server's SQLite lives")
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    parser.add_argument("--database-url", default=os.environ.get(DATABASE_URL_ENV, DEFAULT_DATABASE_URL),
                        help=f"admin URL of the PostgreSQL to create a throw-away database in (${DATABASE_URL_ENV})")
    parser.add_argument("--profile", type=Path, metavar="DIR",
                        help="py-spy profiles of the worker, baseline and bench processes during scenario 2 into DIR")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target fails")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    arguments = parse_arguments(sys.argv[1:] if argv is None else argv)
    config = (SMOKE if arguments.smoke else FULL).with_overrides(
        scenarios=arguments.scenarios,
        threads=arguments.threads,
        latency_runs=arguments.latency_runs,
        throughput_runs=arguments.throughput_runs,
        query_fleet=arguments.query_fleet,
        waiting_fleet=arguments.waiting_fleet,
        growth_extra_files=arguments.growth_extra_files,
        temporal_db=arguments.temporal_db,
        profile_dir=arguments.profile,
    )
    outcome = asyncio.run(run_bench(config, arguments.database_url, arguments.results_dir))
    return 1 if arguments.strict and not outcome.targets_passed else 0


if __name__ == "__main__":
    sys.exit(main())
