"""Reading the live progress of a project's runs for `GET /projects/{slug}`.

A closed run's progress never changes, and answering a query on a closed run makes a worker replay the run's whole
history (tens of milliseconds of worker time per request). So a closed run is queried once, pinned to its run id,
and then answered from a bounded in-process cache; a running run is always queried.
"""

from __future__ import annotations

from collections import OrderedDict
from datetime import timedelta
from http import HTTPStatus

from fastapi import HTTPException
from temporalio.client import Client, WorkflowExecutionStatus, WorkflowHandle
from temporalio.service import RPCError, RPCStatusCode

from provisioner.client import PROGRESS_QUERY
from provisioner.contracts import Progress

QUERY_TIMEOUT = timedelta(seconds=5)
CLOSED_RUNS_CACHED = 4096
# How the SDK reports a query no worker answered within the RPC timeout.
_UNANSWERED = (RPCStatusCode.CANCELLED, RPCStatusCode.DEADLINE_EXCEEDED)


class RunProgressReader:
    def __init__(self, client: Client, task_queue: str, capacity: int = CLOSED_RUNS_CACHED) -> None:
        self._client = client
        self._task_queue = task_queue
        self._capacity = capacity
        self._closed: OrderedDict[str, Progress] = OrderedDict()  # run id -> final progress, least recent first

    async def read(self, workflow_id: str) -> Progress | None:
        """The progress of the latest run of `workflow_id`, or None if the workflow never ran."""
        status, run_id = await self.latest_run(workflow_id)
        if status is None:
            return None
        if status == WorkflowExecutionStatus.RUNNING:
            return await self._query(self._client.get_workflow_handle(workflow_id))
        cached = self._closed.get(run_id)
        if cached is not None:
            self._closed.move_to_end(run_id)
            return cached
        progress = await self._query(self._client.get_workflow_handle(workflow_id, run_id=run_id))
        self._closed[run_id] = progress
        if len(self._closed) > self._capacity:
            self._closed.popitem(last=False)
        return progress

    async def latest_run(self, workflow_id: str) -> tuple[WorkflowExecutionStatus | None, str]:
        """The status and the id of the latest run of `workflow_id`; (None, "") if the workflow never ran."""
        try:
            description = await self._client.get_workflow_handle(workflow_id).describe(rpc_timeout=QUERY_TIMEOUT)
        except RPCError as error:
            if error.status == RPCStatusCode.NOT_FOUND:
                return None, ""
            raise
        return description.status, description.run_id

    async def _query(self, handle: WorkflowHandle[object, object]) -> Progress:
        try:
            progress: Progress = await handle.query(PROGRESS_QUERY, result_type=Progress, rpc_timeout=QUERY_TIMEOUT)
        except RPCError as error:
            if error.status in _UNANSWERED:
                raise HTTPException(
                    HTTPStatus.SERVICE_UNAVAILABLE,
                    f"no worker answered the progress query of {handle.id} within {QUERY_TIMEOUT.total_seconds():g} s:"
                    f" is a worker polling task queue {self._task_queue!r}?",
                ) from None
            raise
        return progress
