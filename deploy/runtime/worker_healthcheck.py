"""Health check of a provisioner worker: is the worker of *this* host polling its task queue?

Run inside the worker's container (Docker HEALTHCHECK, Kubernetes exec probe). Exit 0 when Temporal lists, on both
the workflow and the activity task queue of `PROVISIONER_TASK_QUEUE`, a poller whose identity ends with
`@<this hostname>` and that polled within POLLER_FRESHNESS; exit 1 otherwise, with the reason on stderr.

Why this is honest: the worker's identity is the SDK default `<pid>@<hostname>`, and a container's (pod's) hostname
is its own, so a stuck or dead worker in this container stops showing up fresh even when other replicas poll.
It connects exactly as the worker does (`provisioner.temporal.connect`: TEMPORAL_* env config, then Settings).

    python worker_healthcheck.py [--hostname NAME]   NAME: the host whose worker must poll (default: this one)
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import sys
from datetime import UTC, datetime, timedelta

from temporalio.api.enums.v1 import TaskQueueType
from temporalio.api.taskqueue.v1 import TaskQueue
from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest
from temporalio.client import Client

from provisioner.settings import Settings
from provisioner.temporal import connect

# A long poll lasts up to about 70 s and the next one starts right away; three minutes tolerates one slow cycle.
POLLER_FRESHNESS = timedelta(minutes=3)
RPC_TIMEOUT = timedelta(seconds=5)
# Below the probes' own timeouts (15 s in compose, 20 s in Kubernetes), so a hung Temporal yields a clear reason.
OVERALL_TIMEOUT = timedelta(seconds=12)
QUEUE_TYPES = {
    "workflow": TaskQueueType.TASK_QUEUE_TYPE_WORKFLOW,
    "activity": TaskQueueType.TASK_QUEUE_TYPE_ACTIVITY,
}


async def missing_pollers(client: Client, namespace: str, task_queue: str, hostname: str, now: datetime) -> list[str]:
    """One line per task queue type on which no fresh poller of `hostname` was found; empty when healthy."""
    problems: list[str] = []
    for label, queue_type in QUEUE_TYPES.items():
        described = await client.workflow_service.describe_task_queue(
            DescribeTaskQueueRequest(
                namespace=namespace, task_queue=TaskQueue(name=task_queue), task_queue_type=queue_type
            ),
            timeout=RPC_TIMEOUT,
        )
        ours = [poller for poller in described.pollers if poller.identity.endswith(f"@{hostname}")]
        fresh = [p for p in ours if now - p.last_access_time.ToDatetime(tzinfo=UTC) <= POLLER_FRESHNESS]
        if not fresh:
            seen = "a stale poller" if ours else "no poller"
            problems.append(f"{label} task queue {task_queue!r}: {seen} from host {hostname!r}")
    return problems


async def check(settings: Settings, hostname: str) -> list[str]:
    client = await connect(settings)
    return await missing_pollers(client, client.namespace, settings.task_queue, hostname, datetime.now(UTC))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hostname", default=socket.gethostname())
    hostname: str = parser.parse_args(argv).hostname
    settings = Settings.from_env()
    try:
        problems = asyncio.run(asyncio.wait_for(check(settings, hostname), timeout=OVERALL_TIMEOUT.total_seconds()))
    except Exception as error:  # unreachable Temporal, timeout, bad config: all mean "not healthy"
        print(f"unhealthy: {type(error).__name__}: {error}", file=sys.stderr)
        return 1
    for problem in problems:
        print(f"unhealthy: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    status = main()
    sys.stdout.flush()
    sys.stderr.flush()
    # Skip the interpreter's teardown: after a failed connect the Temporal core's runtime can abort while it is torn
    # down, which would turn a clear exit status 1 into SIGABRT.
    os._exit(status)
