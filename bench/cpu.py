"""Where the CPU went: CPU seconds per process of the stack over a measured window, read from /proc.

The benchmark process itself hosts the sandbox API server, the Flux simulator (whose git clones are its children)
and the git server, plus the Temporal client; the worker's children are its git subprocesses.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
TEMPORAL_SERVER = "temporal dev server"
WORKER = "worker process (+ its git)"
INFRA = "bench process: sandbox + flux sim + git server + client (+ sim git)"
DIRECT = "direct baseline process (+ its git)"


def process_cpu_seconds(pid: int) -> float:
    """CPU time of `pid` and of its children that have been waited for (utime+stime+cutime+cstime)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(value) for value in fields[11:15]) / CLOCK_TICKS


def machine_ticks() -> tuple[int, int]:
    """(busy, total) clock ticks of all cores since boot, from /proc/stat."""
    values = [int(value) for value in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    total = sum(values[:8])  # guest time is already inside user
    return total - idle, total


def own_cpu_seconds() -> float:
    times = os.times()
    return times.user + times.system + times.children_user + times.children_system


@dataclass
class CpuWindow:
    """CPU seconds spent by each part of the stack between `start()` and `stop()`."""

    processes: dict[str, int]  # label -> pid (read through /proc)
    wall_seconds: float = 0.0
    seconds: dict[str, float] = field(default_factory=dict)
    machine_busy: float = 0.0  # share of all cores busy over the window, whoever used them
    _start: dict[str, float] = field(default_factory=dict)
    _started_at: float = 0.0
    _machine_start: tuple[int, int] = (0, 0)

    def start(self) -> CpuWindow:
        self._start = self._read()
        self._started_at = time.monotonic()
        self._machine_start = machine_ticks()
        return self

    def stop(self) -> dict[str, float]:
        """Call before any measured child exits: a waited-for child's CPU would count again in ours."""
        end = self._read()
        self.wall_seconds = time.monotonic() - self._started_at
        busy, total = (end - start for end, start in zip(machine_ticks(), self._machine_start, strict=True))
        self.machine_busy = busy / total if total else 0.0
        self.seconds = {label: round(end[label] - self._start.get(label, 0.0), 2) for label in end}
        return self.seconds

    @property
    def utilisation(self) -> float:
        """Share of the machine's cores the measured processes kept busy over the window."""
        cores = os.cpu_count() or 1
        return sum(self.seconds.values()) / (self.wall_seconds * cores) if self.wall_seconds else 0.0

    def _read(self) -> dict[str, float]:
        readings = {INFRA: own_cpu_seconds()}
        for label, pid in self.processes.items():
            try:
                readings[label] = process_cpu_seconds(pid)
            except OSError:
                readings[label] = self._start.get(label, 0.0)
        return readings
