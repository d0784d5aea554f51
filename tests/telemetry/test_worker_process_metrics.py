"""worker.py as a real process, configured from the environment, serving /metrics (see tests/worker for the rest)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
from temporalio.testing import WorkflowEnvironment

from provisioner.settings import PROJECT_ROOT
from provisioner.stack import free_port
from provisioner.telemetry import OTEL_ENDPOINT_ENV
from tests.telemetry.prometheus import parse


def test_the_worker_serves_metrics_on_the_configured_port(local_env: WorkflowEnvironment, tmp_path: Path) -> None:
    port = free_port()
    env = {
        **os.environ,
        "TEMPORAL_ADDRESS": local_env.client.service_client.config.target_host,
        "PROVISIONER_TASK_QUEUE": "worker-metrics-test",
        "PROVISIONER_DATA_DIR": str(tmp_path),
        "PROVISIONER_METRICS_HOST": "127.0.0.1",
        "PROVISIONER_METRICS_PORT": str(port),
    }
    env.pop(OTEL_ENDPOINT_ENV, None)
    log = tmp_path / "worker.log"
    with log.open("w") as output:
        process = subprocess.Popen(
            [sys.executable, str(PROJECT_ROOT / "worker.py")], env=env, stdout=output, stderr=subprocess.STDOUT
        )
    try:
        deadline = time.monotonic() + 60
        while "worker polling task queue" not in log.read_text():
            assert process.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        text = log.read_text()
        assert f"serving Prometheus metrics at http://127.0.0.1:{port}/metrics" in text
        assert f"tracing off: {OTEL_ENDPOINT_ENV} is not set" in text

        # The pollers register shortly after the worker starts.
        while True:
            samples = parse(httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text)
            pollers = [s for s in samples if s.name == "temporal_num_pollers" and s.labels.get("task_queue")]
            if pollers or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert {s.labels["task_queue"] for s in pollers} >= {"worker-metrics-test"}
        assert any(s.name == "provisioner_projects_awaiting_ready" and s.value == 0 for s in samples)

        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0, log.read_text()
    finally:
        if process.poll() is None:
            process.kill()
