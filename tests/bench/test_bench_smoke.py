"""The benchmark suite at N=2 per scenario, so that it keeps running: figures produced, not their values."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

from bench.config import SMOKE
from bench.environment import TMPFS
from bench.runner import run_bench

HAS_TMPFS = TMPFS.is_dir()
EXPECTED_SCENARIOS = ["latency", "throughput", "growth", "waiting", "progress_query"]


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
    waiting = scenarios["waiting"]["data"]
    assert waiting["statuses"] == {"ready": 2}
    assert waiting["memory_mb"]["waiting"]["peak_rss_mb"] > 0
    assert len(scenarios["progress_query"]["data"]["latencies"]) == SMOKE.query_samples
    assert "PASS" in outcome.table or "FAIL" in outcome.table
    # The dev server's SQLite file sits on a tmpfs by default, and the results say where it was.
    store = document["header"]["dev_server_store"]
    assert store.startswith(f"SQLite on tmpfs: {TMPFS}/" if HAS_TMPFS else "SQLite on ")
    assert f"dev server store: {store}" in outcome.table
