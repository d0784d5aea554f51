"""ProjectInitWorkflow with one nondeterministic call, in a module of its own so that the sandbox can import it
(test_replay.py: the determinism guard catches what the worker's unsandboxed runner would not)."""

from __future__ import annotations

import time

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from provisioner.contracts import ProjectSpec, ProvisioningResult
    from workflows.project_init import ProjectInitWorkflow


@workflow.defn(name="ProjectInitWorkflow")
class InitReadingTheSystemClock(ProjectInitWorkflow):
    """Reads the system clock, which differs on every replay: workflow.now() is the deterministic one."""

    @workflow.run
    async def run(self, spec: ProjectSpec) -> ProvisioningResult:
        workflow.logger.debug("started at %s", time.time())
        return await super().run(spec)
