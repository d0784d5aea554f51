"""One benchmark run: start the stack, run the chosen scenarios, print the table, write the JSON and the plot."""

from __future__ import annotations

import os
import platform
import subprocess
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path
from typing import Any

from bench.config import BenchConfig
from bench.environment import BenchStack, StackOptions, WorkerProcess
from bench.paths import DirectProcess
from bench.plot import plot
from bench.report import DEV_SERVER_STORE, ScenarioResult, format_table, timestamp, write_results
from bench.runs import new_run_id
from bench.scenarios import growth, latency, throughput, waiting
from bench.scenarios.context import BenchContext
from provisioner.settings import PROJECT_ROOT

RESULTS_DIR = Path(__file__).resolve().parent / "results"


@dataclass(frozen=True)
class BenchOutcome:
    results: list[ScenarioResult]
    table: str
    json_path: Path
    latest_path: Path
    plot_path: Path

    @property
    def targets_passed(self) -> bool:
        return all(target.passed for result in self.results for target in result.targets)


async def run_bench(
    config: BenchConfig, admin_database_url: str, results_dir: Path = RESULTS_DIR, echo: bool = True
) -> BenchOutcome:
    started_at = datetime.now(UTC)
    started = time.perf_counter()
    header = _header(config)
    results: list[ScenarioResult] = []
    options = StackOptions(admin_database_url, config.threads, config.temporal_db)
    async with BenchStack(options) as stack:
        header[DEV_SERVER_STORE] = stack.temporal_store
        with WorkerProcess(stack.process_env(), stack.log_path("worker")) as worker:
            async with DirectProcess(stack, config.threads) as direct:
                context = BenchContext(stack, config, new_run_id(), worker, direct)
                # The fleet scenario last: it runs its own worker and leaves thousands of objects in the sandbox.
                for key, scenario in (("latency", latency.run), ("throughput", throughput.run),
                                      ("growth", growth.run)):
                    if key in config.scenarios:
                        _say(echo, f"running {key} ...")
                        results.append(await scenario(context))
                if "waiting" in config.scenarios:
                    _say(echo, "running waiting + progress_query ...")
                    results += await waiting.run(context)
    header["load_average_end"] = _load_average()
    header["elapsed_s"] = round(time.perf_counter() - started)
    table = format_table(results, header)
    _say(echo, table)
    json_path, latest_path = write_results(results, header, results_dir, started_at)
    plot_path = plot(results, results_dir / f"{timestamp(started_at)}.png")
    (results_dir / "latest.png").write_bytes(plot_path.read_bytes())
    _say(echo, f"\nresults: {json_path} (and {latest_path.name}); plot: {plot_path}")
    return BenchOutcome(results, table, json_path, latest_path, plot_path)


def _header(config: BenchConfig) -> dict[str, Any]:
    return {
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "temporalio": version("temporalio"),
        "commit": _commit(),
        "load_average_start": _load_average(),
        **config.describe(),
    }


def _load_average() -> str:
    return " ".join(f"{value:.1f}" for value in os.getloadavg())


def _commit() -> str:
    try:
        head = subprocess.run(
            ["git", "-C", str(PROJECT_ROOT), "rev-parse", "--short", "HEAD"],
            check=True, capture_output=True, text=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(PROJECT_ROOT), "status", "--porcelain", "--untracked-files=no"],
            check=True, capture_output=True, text=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("+dirty" if dirty else "")


def _say(echo: bool, text: str) -> None:
    if echo:
        print(text, flush=True)
