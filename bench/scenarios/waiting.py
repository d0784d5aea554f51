"""Scenarios 3 and 4: runs waiting for Ready cost no worker thread, little memory, and stay quick to query.

The Flux simulator holds every Kustomization un-Ready (`flux.hold()`). A fresh `python worker.py` process with
`threads` activity threads provisions the fleet: first `query_fleet` runs (scenario 4 times the `progress` query
while exactly they are waiting), then the rest up to `waiting_fleet` (scenario 3 watches them wait: the worker's
RSS from /proc, its activity threads through `py-spy dump`, the server's pending activities through
DescribeWorkflowExecution). Then `release()`, and every run must end Ready.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
import time
from dataclasses import asdict
from typing import Any

from bench.cpu import TEMPORAL_SERVER, WORKER
from bench.environment import ProcessMemory, WorkerProcess
from bench.paths import workflow_result
from bench.probes import (
    PendingActivities,
    ThreadSample,
    describe_pending_activities,
    ended_slugs,
    sample_activity_threads,
    timed_progress,
    waiting_slugs,
)
from bench.report import Row, ScenarioResult, Target, seconds, top_cpu
from bench.runs import ProvisionRun
from bench.scenarios.context import BenchContext, failure_note, failures
from bench.stats import Summary
from kubesim.flux_simulator import FluxSimulator
from provisioner.client import ProvisionerClient, ProvisioningHandle
from provisioner.contracts import ProjectSpec

RSS_LIMIT_MB = 300.0
QUERY_P95_LIMIT_SECONDS = 0.050
TARGET_FLEET = 1000  # the fleet the memory target speaks of; a smaller fleet's figure is extrapolated to it
# A started activity older than this is not a readiness check (milliseconds) but a thread held through the wait.
HELD_AFTER_SECONDS = 5.0
START_CONCURRENCY = 100
FILL_TIMEOUT_SECONDS = 900.0
DRAIN_TIMEOUT_SECONDS = 300.0
MEMORY_SAMPLE_SECONDS = 1.0
THREAD_SAMPLE_PAUSE_SECONDS = 0.5
QUERIES_AT_FULL_FLEET = 100


class _Fleet:
    """The runs of this scenario, started but not awaited: a client holding a result long-poll per run would load
    the server while the runs wait, which a real backend (it asks for progress now and then) does not do."""

    def __init__(self, provisioner: ProvisionerClient) -> None:
        self._provisioner = provisioner
        self._gate = asyncio.Semaphore(START_CONCURRENCY)
        self.starts: dict[str, asyncio.Task[ProvisioningHandle]] = {}
        self.requested_at: dict[str, float] = {}
        self.ended: set[str] = set()  # runs that ended before the release (they should not have)

    def launch(self, specs: list[ProjectSpec]) -> None:
        for spec in specs:
            self.requested_at[spec.slug] = time.perf_counter()
            self.starts[spec.slug] = asyncio.create_task(self._start(spec), name=f"start {spec.slug}")

    async def _start(self, spec: ProjectSpec) -> ProvisioningHandle:
        async with self._gate:
            return await self._provisioner.start(spec)

    async def results(self) -> list[ProvisionRun]:
        handles = await asyncio.gather(*self.starts.values())
        return list(await asyncio.gather(*(
            workflow_result(handle, slug, self.requested_at[slug])
            for slug, handle in zip(self.starts, handles, strict=True)
        )))

    def cancel(self) -> None:
        for task in self.starts.values():
            task.cancel()


async def run(context: BenchContext) -> list[ScenarioResult]:
    config = context.config
    flux = context.stack.cluster.flux
    provisioner = context.provisioner
    fleet_size = max(config.waiting_fleet, config.query_fleet)
    query_specs = context.specs("wait", config.query_fleet)
    rest_specs = context.specs("wait", fleet_size - config.query_fleet)
    started = time.perf_counter()
    worker = WorkerProcess(context.stack.process_env(config.threads), context.stack.log_path("worker-waiting"))
    fleet = _Fleet(provisioner)
    timeline: list[dict[str, Any]] = []
    flux.hold()
    worker.start()
    sampler: asyncio.Task[None] | None = None
    try:
        idle = worker.memory()
        window = context.cpu_window(worker).start()
        sampler = asyncio.create_task(_sample_memory(worker, timeline, time.perf_counter()))

        fill_started = time.perf_counter()
        fleet.launch(query_specs)
        query_slugs = [spec.slug for spec in query_specs]
        await _until_waiting(provisioner, flux, fleet, query_slugs)
        query_fill_seconds = time.perf_counter() - fill_started
        at_query_fleet = worker.memory()
        query_window = context.cpu_window(worker).start()
        query_latencies, query_failures = await _time_queries(provisioner, query_slugs, config.query_samples)
        query_window.stop()

        rest_started = time.perf_counter()
        fleet.launch(rest_specs)
        all_slugs = list(fleet.starts)
        await _until_waiting(provisioner, flux, fleet, all_slugs)
        fill_seconds = query_fill_seconds + time.perf_counter() - rest_started
        at_fleet = worker.memory()

        waiting_window = context.cpu_window(worker).start()
        thread_samples = await _sample_threads(worker.pid, config.waiting_sample_seconds)
        waiting_window.stop()
        pending = await describe_pending_activities(context.stack.client, all_slugs)
        fleet_latencies, fleet_failures = await _time_queries(
            provisioner, all_slugs, min(QUERIES_AT_FULL_FLEET, config.query_samples)
        )
        waiting_memory = worker.memory()
        still_waiting = len(all_slugs) - len(fleet.ended)

        release_started = time.perf_counter()
        flux.release()
        runs = await asyncio.wait_for(fleet.results(), DRAIN_TIMEOUT_SECONDS)
        drain_seconds = time.perf_counter() - release_started
        final_memory = worker.memory()
        window.stop()
    finally:
        flux.release()
        if sampler is not None:
            sampler.cancel()
        fleet.cancel()
        worker.stop()

    wall = time.perf_counter() - started
    waiting = _waiting_result(
        context, fleet_size, idle, at_query_fleet, at_fleet, waiting_memory, final_memory, thread_samples, pending,
        still_waiting, runs, fill_seconds, drain_seconds, waiting_window.seconds, waiting_window.wall_seconds,
        fleet_latencies,
    )
    waiting.cpu_seconds = {"fleet start to drained": window.seconds, "waiting window": waiting_window.seconds}
    waiting.wall_seconds = wall
    waiting.data["memory_timeline"] = timeline
    queries = _query_result(
        config.query_fleet, query_latencies, fleet_size, fleet_latencies, query_failures + fleet_failures
    )
    queries.cpu_seconds = {"query window": query_window.seconds}
    queries.wall_seconds = query_window.wall_seconds
    queries.data["machine_busy"] = query_window.machine_busy
    queries.rows.append(Row("machine busy while querying", f"{query_window.machine_busy * 100:.0f}%",
                            note=f"stack: {query_window.utilisation * 100:.0f}% of 2 cores"))
    return [waiting, queries]


async def _until_waiting(
    provisioner: ProvisionerClient, flux: FluxSimulator, fleet: _Fleet, slugs: list[str]
) -> None:
    """Until every run of `slugs` is in await_ready (runs that ended instead go to `fleet.ended`)."""
    deadline = time.monotonic() + FILL_TIMEOUT_SECONDS
    # Cheap first: the simulator counts the Kustomizations it holds (applied, hence past apply_flux_resources).
    while flux.held_count + len(fleet.ended) < len(slugs):
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {flux.held_count} of {len(slugs)} runs reached the Ready wait")
        await asyncio.sleep(0.5)
        if time.monotonic() > deadline - FILL_TIMEOUT_SECONDS / 2:
            fleet.ended |= await ended_slugs(provisioner, set(slugs) - fleet.ended)
    # Then the runs' own word: their progress says await_ready is the running step.
    remaining = set(slugs) - fleet.ended
    while remaining:
        remaining -= await waiting_slugs(provisioner, remaining)
        if remaining:
            fleet.ended |= await ended_slugs(provisioner, remaining)
            remaining -= fleet.ended
        if remaining:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(remaining)} runs never reported await_ready")
            await asyncio.sleep(0.5)


async def _time_queries(provisioner: ProvisionerClient, slugs: list[str], count: int) -> tuple[list[float], int]:
    """`count` progress queries, one at a time, each on a random run among `slugs`: their latencies (a failed one's
    until it failed) and how many failed."""
    chooser = random.Random(1)
    latencies = []
    failed = 0
    for _ in range(count):
        latency, progress = await timed_progress(provisioner, chooser.choice(slugs))
        latencies.append(latency)
        failed += progress is None
    return latencies, failed


async def _sample_memory(worker: WorkerProcess, timeline: list[dict[str, Any]], origin: float) -> None:
    with contextlib.suppress(OSError):
        while True:
            memory = worker.memory()
            timeline.append({"t": round(time.perf_counter() - origin, 2), **asdict(memory)})
            await asyncio.sleep(MEMORY_SAMPLE_SECONDS)


async def _sample_threads(pid: int, duration: float) -> list[ThreadSample]:
    samples: list[ThreadSample] = []
    deadline = time.monotonic() + duration
    while True:
        sample = await asyncio.to_thread(sample_activity_threads, pid)
        if sample is None:
            return samples  # no py-spy: the server's view still answers
        samples.append(sample)
        if time.monotonic() >= deadline:
            return samples
        await asyncio.sleep(THREAD_SAMPLE_PAUSE_SECONDS)


def _extrapolated_peak(fleet_size: int, idle: ProcessMemory, at_fleet: ProcessMemory) -> tuple[float, float]:
    """(MB per waiting run, the peak extrapolated to TARGET_FLEET runs).

    The slope is taken from the idle worker to the whole fleet waiting, so it also spreads the heap that the first
    provisionings leave behind over the runs: on the safe side. A larger fleet's runs wait longer and each keeps
    more history cached, which a slope between two smaller fleets misses (bench/README.md has the measurements).
    """
    return _projected(0, idle, fleet_size, at_fleet)


def _projected(
    smaller: int, at_smaller: ProcessMemory, fleet_size: int, at_fleet: ProcessMemory
) -> tuple[float, float]:
    """(MB per waiting run between the two fleet sizes, the peak projected along that slope to TARGET_FLEET)."""
    per_run = max(at_fleet.rss_mb - at_smaller.rss_mb, 0.0) / max(fleet_size - smaller, 1)
    return per_run, at_fleet.peak_rss_mb + per_run * max(TARGET_FLEET - fleet_size, 0)


def _marginal_note(smaller: int, at_smaller: ProcessMemory, fleet_size: int, at_fleet: ProcessMemory) -> str:
    """The slope between the two fleet sizes, without the one-off heap of the first provisionings: for comparison
    only, as it ignores that a larger fleet waits longer (more history per cached run)."""
    if fleet_size <= smaller:
        return ""
    per_run, projected = _projected(smaller, at_smaller, fleet_size, at_fleet)
    return (f"from idle; {smaller}->{fleet_size} waiting: {per_run * 1024:.0f} kB "
            f"(-> {projected:.0f} MB at {TARGET_FLEET})")


def _waiting_result(
    context: BenchContext,
    fleet_size: int,
    idle: ProcessMemory,
    at_query_fleet: ProcessMemory,
    at_fleet: ProcessMemory,
    waiting_memory: ProcessMemory,
    final_memory: ProcessMemory,
    thread_samples: list[ThreadSample],
    pending: PendingActivities,
    still_waiting: int,
    runs: list[ProvisionRun],
    fill_seconds: float,
    drain_seconds: float,
    waiting_cpu: dict[str, float],
    waiting_seconds: float,
    fleet_latencies: list[float],
) -> ScenarioResult:
    config = context.config
    per_run_mb, extrapolated = _extrapolated_peak(fleet_size, idle, at_fleet)
    max_busy = max((sample.busy for sample in thread_samples), default=0)
    mean_busy = sum(s.busy for s in thread_samples) / len(thread_samples) if thread_samples else float("nan")
    pool_threads = max((sample.activity_threads for sample in thread_samples), default=0)
    held = pending.started if pending.oldest_started_seconds > HELD_AFTER_SECONDS else 0
    ready = sum(run.status == "ready" for run in runs)
    result = ScenarioResult(
        key="waiting",
        title=f"3. Waiting costs nothing: {fleet_size} runs held in await_ready",
        parameters={"fleet": fleet_size, "threads": config.threads},
    )
    fleet_query = Summary.of(fleet_latencies)
    result.rows += [
        Row("runs waiting in await_ready at once", str(still_waiting), note=f"filled in {seconds(fill_seconds)}"),
        Row("worker RSS idle / waiting", f"{idle.rss_mb:.0f} / {waiting_memory.rss_mb:.0f} MB",
            note=f"{config.query_fleet} waiting: {at_query_fleet.rss_mb:.0f} MB"),
        Row("worker peak RSS (VmHWM) while waiting", f"{waiting_memory.peak_rss_mb:.0f} MB",
            note=f"after the drain: {final_memory.peak_rss_mb:.0f} MB"),
        Row("worker RSS per waiting run", "n/a" if math.isnan(per_run_mb) else f"{per_run_mb * 1024:.0f} kB",
            note=_marginal_note(config.query_fleet, at_query_fleet, fleet_size, at_fleet)),
        Row("worker OS threads while waiting", str(waiting_memory.threads),
            note=f"activity pool: {pool_threads} of {config.threads} threads created"),
        Row("activity threads busy (py-spy samples)", f"max {max_busy}, mean {mean_busy:.2f}",
            note=f"{len(thread_samples)} samples over {seconds(config.waiting_sample_seconds)}"),
        Row("server: pending activities started/scheduled", f"{pending.started} / {pending.scheduled}",
            note=f"oldest started {seconds(pending.oldest_started_seconds)}; {pending.runs_described} described"),
        Row("threads held by a waiting run", str(held), note=f"started activity older than {HELD_AFTER_SECONDS:g} s"),
        Row("CPU while waiting: worker / Temporal", f"{_per_second(waiting_cpu, WORKER, waiting_seconds)} / "
            f"{_per_second(waiting_cpu, TEMPORAL_SERVER, waiting_seconds)} CPU-s/s",
            note="the readiness polls (one per run per <= 30 s at the 5 min bound)"),
        Row(f"progress query with {fleet_size} in flight", f"p50 {seconds(fleet_query.median)}",
            note=f"p95 {seconds(fleet_query.p95)}"),
        Row("after release(): ready / fleet", f"{ready} / {fleet_size}", note=f"drained in {seconds(drain_seconds)}"),
        Row("not ready / failed", str(failures(runs)), note=failure_note(runs)),
    ]
    if fleet_size >= TARGET_FLEET:
        result.targets.append(Target(f"worker peak RSS with {fleet_size} waiting runs", waiting_memory.peak_rss_mb,
                                     RSS_LIMIT_MB, True, " MB", "VmHWM of the worker process"))
    else:
        result.targets.append(Target(
            f"worker peak RSS with {TARGET_FLEET} waiting runs (extrapolated from {fleet_size})", extrapolated,
            RSS_LIMIT_MB, True, " MB",
            f"measured {waiting_memory.peak_rss_mb:.0f} MB at {fleet_size} + {per_run_mb * 1024:.0f} kB per run",
        ))
    result.targets.append(Target(
        f"activity threads held by {fleet_size} waiting runs", float(held), 0, True, "",
        f"py-spy: at most {max_busy} of {config.threads} busy at once; server: oldest running activity "
        f"{seconds(pending.oldest_started_seconds)}",
    ))
    result.targets.append(Target(f"runs Ready after release, of {fleet_size}", float(ready), fleet_size, False))
    temporal_rate = _per_second(waiting_cpu, TEMPORAL_SERVER, waiting_seconds)
    result.bottleneck = (
        f"filling: CPU-bound provisioning as in scenario 2 ({fleet_size / fill_seconds if fill_seconds else 0:.1f} "
        f"runs/s). Waiting: no thread is held, but the worker's RSS grows {per_run_mb * 1024:.0f} kB per extra "
        f"waiting run (cached workflow state plus the heap left by provisioning it; RSS does not fall after the "
        f"drain), and the Temporal server spends {temporal_rate} CPU-s/s on the {fleet_size} runs' readiness polls"
    )
    result.data = {
        "memory_mb": {
            "idle": asdict(idle), "query_fleet": asdict(at_query_fleet), "fleet": asdict(at_fleet),
            "waiting": asdict(waiting_memory), "final": asdict(final_memory),
            "per_waiting_run_mb": per_run_mb, "extrapolated_peak_at_target_fleet": extrapolated,
        },
        "thread_samples": [asdict(sample) for sample in thread_samples],
        "pending_activities": asdict(pending),
        "fill_seconds": fill_seconds,
        "drain_seconds": drain_seconds,
        "waiting_window_cpu": waiting_cpu,
        "waiting_window_seconds": waiting_seconds,
        "progress_query_at_fleet": fleet_query.to_json(),
        "statuses": {status: sum(run.status == status for run in runs) for status in {run.status for run in runs}},
        "top_cpu": top_cpu(waiting_cpu),
    }
    return result


def _per_second(cpu: dict[str, float], part: str, window_seconds: float) -> str:
    return f"{cpu.get(part, 0.0) / window_seconds:.2f}" if window_seconds else "n/a"


def _query_result(
    query_fleet: int, latencies: list[float], fleet_size: int, fleet_latencies: list[float], failed: int
) -> ScenarioResult:
    summary = Summary.of(latencies)
    at_fleet = Summary.of(fleet_latencies)
    result = ScenarioResult(
        key="progress_query",
        title=f"4. Progress query with {query_fleet} runs in flight",
        parameters={"in_flight": query_fleet, "queries": len(latencies)},
    )
    result.rows += [
        Row("progress query p50", seconds(summary.median), note="one query at a time, random waiting run"),
        Row("progress query p95", seconds(summary.p95)),
        Row("progress query max", seconds(summary.maximum)),
        Row(f"  with {fleet_size} in flight: p50 / p95", f"{seconds(at_fleet.median)} / {seconds(at_fleet.p95)}"),
        Row("queries that failed (timed out)", str(failed), note="counted above with their time until failing"),
    ]
    result.targets.append(Target(
        f"progress query p95 with {query_fleet} in flight", summary.p95 * 1000, QUERY_P95_LIMIT_SECONDS * 1000, True,
        " ms",
    ))
    result.bottleneck = (
        "a query is a round trip client -> server -> worker (a query task on the workflow's cached state) -> server"
        " -> client; cost is the two hops and the worker's workflow-task poll"
    )
    result.data = {
        "latencies": latencies, "summary": summary.to_json(), "at_fleet": at_fleet.to_json(), "failed": failed,
    }
    return result
