"""worker.py as a real process: configured from the environment, and graceful on SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from temporalio.testing import WorkflowEnvironment

from provisioner.settings import PROJECT_ROOT


def test_worker_starts_from_the_environment_and_stops_on_sigterm(
    local_env: WorkflowEnvironment, tmp_path: Path
) -> None:
    env = {
        **os.environ,
        "TEMPORAL_ADDRESS": local_env.client.service_client.config.target_host,
        "PROVISIONER_TASK_QUEUE": "worker-process-test",
        "PROVISIONER_DATA_DIR": str(tmp_path),
        "PROVISIONER_ACTIVITY_THREADS": "3",
    }
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
        assert "with 3 activity threads" in log.read_text()
        # The worker migrated its (SQLite, by default) database before polling.
        assert (tmp_path / "provisioner.db").exists()
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0, log.read_text()
        assert "shutting down" in log.read_text()
    finally:
        if process.poll() is None:
            process.kill()
