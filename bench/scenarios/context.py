"""What every scenario works with: the stack, the config, the shared worker and baseline processes."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

from bench.config import BenchConfig
from bench.cpu import DIRECT, TEMPORAL_SERVER, WORKER, CpuWindow
from bench.environment import BenchStack, WorkerProcess
from bench.paths import DirectProcess
from bench.runs import ProvisionRun, bench_slug, bench_spec
from provisioner.client import ProvisionerClient
from provisioner.contracts import ProjectSpec


@dataclass
class BenchContext:
    stack: BenchStack
    config: BenchConfig
    run_id: str
    worker: WorkerProcess  # the worker of the latency, throughput and growth scenarios
    direct: DirectProcess
    _counter: itertools.count[int] = field(default_factory=itertools.count)

    @property
    def provisioner(self) -> ProvisionerClient:
        return ProvisionerClient(self.stack.client, self.stack.settings.task_queue)

    def specs(self, prefix: str, count: int, template: str = "web-service") -> list[ProjectSpec]:
        """`count` specs with slugs never used before in this run."""
        return [bench_spec(bench_slug(prefix, self.run_id, next(self._counter)), template) for _ in range(count)]

    def cpu_window(self, worker: WorkerProcess | None = None) -> CpuWindow:
        processes = {WORKER: (worker or self.worker).pid, DIRECT: self.direct.pid}
        if self.stack.temporal_pid is not None:
            processes[TEMPORAL_SERVER] = self.stack.temporal_pid
        return CpuWindow(processes)


def failures(runs: list[ProvisionRun]) -> int:
    return sum(run.status not in ("ready", "provisioned") for run in runs)


def failure_note(runs: list[ProvisionRun]) -> str:
    failed = [run for run in runs if run.status not in ("ready", "provisioned")]
    if not failed:
        return ""
    return f"{len(failed)} not ready, e.g. {failed[0].slug}: {failed[0].status} {failed[0].error[:120]}"
