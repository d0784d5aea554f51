"""The benchmark suite at N=2 per scenario, so that it keeps running. Not how fast this machine was, but what the run
claims: the table prints the figures it measured, each verdict is what its figure says against its limit, and what
holds whatever the machine's speed does hold (every run Ready, no worker thread held by a waiting run)."""

from __future__ import annotations

import json
import math
import re
import statistics
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from bench.config import SMOKE
from bench.environment import TMPFS
from bench.report import seconds
from bench.runner import run_bench

HAS_TMPFS = TMPFS.is_dir()
EXPECTED_SCENARIOS = ["latency", "throughput", "growth", "waiting", "progress_query"]
Scenario = dict[str, Any]


async def test_every_scenario_produces_its_figures(admin_database_url: str, tmp_path: Path) -> None:
    config = replace(SMOKE, growth_extra_files=(2,))  # one template size is enough to keep the code alive
    outcome = await run_bench(config, admin_database_url, tmp_path / "results", echo=False)

    document = json.loads(outcome.latest_path.read_text())
    assert [scenario["key"] for scenario in document["scenarios"]] == EXPECTED_SCENARIOS
    assert outcome.json_path.read_text() == outcome.latest_path.read_text()
    assert outcome.plot_path.read_bytes().startswith(b"\x89PNG")
    assert (tmp_path / "results" / "latest.png").exists()

    scenarios = {scenario["key"]: scenario for scenario in document["scenarios"]}
    for scenario in scenarios.values():
        assert scenario["rows"], scenario["key"]
        assert all(not math.isnan(target["measured"]) for target in scenario["targets"]), scenario["targets"]
    # Every provisioning of the run really ended Ready, on both paths.
    for key in ("latency", "throughput", "growth"):
        runs = scenarios[key]["data"]["runs"]
        assert {run["path"] for run in runs} == {"workflow", "direct"}
        assert {run["status"] for run in runs} == {"ready"}, runs
        failed = row(scenarios[key], "not ready / failed")
        assert (failed["workflow"], failed["direct"]) == ("0", "0"), failed
    waiting = scenarios["waiting"]["data"]
    assert waiting["statuses"] == {"ready": 2}
    assert waiting["memory_mb"]["waiting"]["peak_rss_mb"] > 0
    assert len(scenarios["progress_query"]["data"]["latencies"]) == SMOKE.query_samples

    assert_rows_printed(outcome.table, document["scenarios"])
    assert_targets_printed_as_judged(outcome.table, document["scenarios"])
    # Latency: the printed medians are the medians of the runs, and the target is their ratio.
    latency = scenarios["latency"]
    medians = {
        path: statistics.median(run["seconds"] for run in latency["data"]["runs"] if run["path"] == path)
        for path in ("workflow", "direct")
    }
    total = row(latency, "total, median")
    assert (total["workflow"], total["direct"]) == (seconds(medians["workflow"]), seconds(medians["direct"]))
    assert target(latency, "single-project latency")["measured"] == pytest.approx(
        medians["workflow"] / medians["direct"]
    )
    # Throughput: the rates are the projects over the wall time, printed as such, and the target is their ratio.
    throughput = scenarios["throughput"]
    rates = {path: throughput["data"][path]["rate"] for path in ("workflow", "direct")}
    for path, rate in rates.items():
        assert rate == pytest.approx(config.throughput_runs / throughput["data"][path]["wall"]) and rate > 0
        assert row(throughput, "projects / second")[path] == f"{rate:.2f}"
    assert target(throughput, "throughput at 2 concurrent")["measured"] == pytest.approx(
        rates["workflow"] / rates["direct"]
    )
    # What the waiting scenario guarantees whatever the machine: every run Ready after the release, and no worker
    # thread held by a run while it waited.
    ready = target(scenarios["waiting"], "runs Ready after release, of 2")
    held = target(scenarios["waiting"], "activity threads held by 2 waiting runs")
    assert (ready["measured"], ready["passed"], held["measured"], held["passed"]) == (2, True, 0, True)
    assert row(scenarios["waiting"], "threads held by a waiting run")["workflow"] == "0"
    # The dev server's SQLite file sits on a tmpfs by default, and the results say where it was.
    store = document["header"]["dev_server_store"]
    assert store.startswith(f"SQLite on tmpfs: {TMPFS}/" if HAS_TMPFS else "SQLite on ")
    assert f"dev server store: {store}" in outcome.table


def row(scenario: Scenario, metric: str) -> dict[str, str]:
    found = [row for row in scenario["rows"] if row["metric"] == metric]
    assert len(found) == 1, (metric, scenario["rows"])
    return dict(found[0])


def target(scenario: Scenario, name_start: str) -> dict[str, Any]:
    found = [target for target in scenario["targets"] if target["name"].startswith(name_start)]
    assert len(found) == 1, (name_start, scenario["targets"])
    return dict(found[0])


def assert_rows_printed(table: str, scenarios: list[Scenario]) -> None:
    """Each scenario's section of the table holds its rows, in order, every cell as the results file has it."""
    sections = re.split(r"^== ", table, flags=re.MULTILINE)
    for scenario in scenarios:
        [section] = [s for s in sections if s.startswith(f"{scenario['title']} (")]
        lines = section.splitlines()[2:]  # below the title and the column headings
        for line, printed in zip(lines, scenario["rows"], strict=False):
            cells = [printed[column].strip() for column in ("metric", "workflow", "direct", "note")]
            assert re.fullmatch(r"\s*".join(re.escape(cell) for cell in cells if cell), line.strip()), (line, printed)
        assert len(lines) >= len(scenario["rows"]), section


def assert_targets_printed_as_judged(table: str, scenarios: list[Scenario]) -> None:
    """One line per target under "== targets ==", in order: PASS exactly when the figure is within the limit (judged
    here again), with the measured figure (three significant digits) and the limit."""
    lines = table.split("\n== targets ==\n", 1)[1].splitlines()
    targets = [target for scenario in scenarios for target in scenario["targets"]]
    assert len(lines) == len(targets), (lines, targets)
    for line, judged in zip(lines, targets, strict=True):
        measured, limit, unit = judged["measured"], judged["limit"], re.escape(judged["unit"])
        passed = measured <= limit if judged["at_most"] else measured >= limit
        comparison = "<=" if judged["at_most"] else ">="
        printed = re.fullmatch(
            rf"(PASS|FAIL)  {re.escape(judged['name'])}: ([-+.e\d]+){unit} "
            rf"\(target {comparison} {re.escape(f'{limit:g}')}{unit}\)(  \[.*\])?",
            line,
        )
        assert printed is not None, (line, judged)
        assert (printed[1], judged["passed"]) == ("PASS" if passed else "FAIL", passed), (line, judged)
        assert float(printed[2]) == pytest.approx(measured, rel=6e-3, abs=1e-9), (line, judged)
