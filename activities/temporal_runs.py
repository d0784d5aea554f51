"""Activities against Temporal itself: what the other workflows of a project are doing.

A workflow cannot describe another workflow's execution; an activity with the worker's client can. This one is
`async` (unlike the other activities) because the Temporal client is: it runs on the worker's event loop and
holds no activity thread while waiting for the server.
"""

from __future__ import annotations

from temporalio import activity
from temporalio.client import Client
from temporalio.service import RPCError, RPCStatusCode

from provisioner.contracts import provisioning_workflow_id


class TemporalRunActivities:
    def __init__(self, client: Client) -> None:
        self._client = client

    @activity.defn(name="describe_provisioning_run")
    async def describe_provisioning_run(self, slug: str) -> str:
        """The execution status name of the latest provisioning run of `slug` (e.g. "RUNNING"); "" when none."""
        handle = self._client.get_workflow_handle(provisioning_workflow_id(slug))
        try:
            description = await handle.describe()
        except RPCError as error:
            if error.status == RPCStatusCode.NOT_FOUND:
                return ""
            raise
        return description.status.name if description.status is not None else ""
