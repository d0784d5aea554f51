"""Scenario 2: N projects started at once; projects per second from the first start to the last result.

Workflow: N `ProvisionerClient.start` calls at once, then every result, with the worker's activity threads.
Direct: N jobs submitted at once to a thread pool of the same size in the baseline process (a job holds its thread
for the whole provisioning, the Ready wait included, as the "option B" design would).
"""

from __future__ import annotations

import os
import time

from bench.cpu import CpuWindow
from bench.paths import workflows_at_once
from bench.profiling import py_spy_record, summarise
from bench.report import Row, ScenarioResult, Target, seconds, times, top_cpu
from bench.scenarios.context import BenchContext, failure_note, failures
from bench.stats import Summary, ratio

THROUGHPUT_RATIO_LIMIT = 0.7


async def run(context: BenchContext) -> ScenarioResult:
    count = context.config.throughput_runs
    started = time.perf_counter()
    profile_dir = context.config.profile_dir
    workflow_window = context.cpu_window().start()
    with py_spy_record({"workflow-worker": context.worker.pid, "workflow-bench": os.getpid()}, profile_dir) as wf_out:
        workflow_runs, workflow_wall = await workflows_at_once(context.provisioner, context.specs("thrw", count))
    workflow_window.stop()
    direct_window = context.cpu_window().start()
    with py_spy_record({"direct-process": context.direct.pid, "direct-bench": os.getpid()}, profile_dir) as d_out:
        direct = await context.direct.run("pooled", context.specs("thrd", count))
    direct_window.stop()
    direct_runs, direct_wall = direct.runs, direct.wall_seconds

    workflow_rate, direct_rate = count / workflow_wall, count / direct_wall
    rate_ratio = ratio(workflow_rate, direct_rate)
    result = ScenarioResult(
        key="throughput",
        title=f"2. Throughput: {count} projects started at once",
        parameters={"runs_per_path": count, "threads": context.config.threads},
        cpu_seconds={"workflow": workflow_window.seconds, "direct": direct_window.seconds},
        wall_seconds=time.perf_counter() - started,
    )
    workflow_latency = Summary.of(run.from_request for run in workflow_runs)
    direct_latency = Summary.of(run.from_request for run in direct_runs)
    direct_held = Summary.of(run.seconds for run in direct_runs)
    result.rows += [
        Row("projects / second", f"{workflow_rate:.2f}", f"{direct_rate:.2f}", times(rate_ratio)),
        Row("first start -> last result", seconds(workflow_wall), seconds(direct_wall)),
        Row("request -> result, median", seconds(workflow_latency.median), seconds(direct_latency.median),
            "direct: queued for a thread + provisioning"),
        Row("request -> result, p95", seconds(workflow_latency.p95), seconds(direct_latency.p95)),
        Row("thread held per project, median", "", seconds(direct_held.median), "direct: the Ready wait included"),
        Row("CPU-s per project (all processes)", f"{_cpu_per_run(workflow_window, count):.2f}",
            f"{_cpu_per_run(direct_window, count):.2f}", "of the stack's processes"),
        Row("cores kept busy by the stack", f"{workflow_window.utilisation * 100:.0f}%",
            f"{direct_window.utilisation * 100:.0f}%", "of 2; machine-wide busy: "
            f"{workflow_window.machine_busy * 100:.0f}% / {direct_window.machine_busy * 100:.0f}%"),
        Row("not ready / failed", str(failures(workflow_runs)), str(failures(direct_runs)),
            failure_note(workflow_runs + direct_runs)),
    ]
    result.targets.append(Target(
        f"throughput at {count} concurrent, workflow / pooled direct", rate_ratio, THROUGHPUT_RATIO_LIMIT, False, "x",
        f"{workflow_rate:.2f}/s vs {direct_rate:.2f}/s",
    ))
    threads = context.config.threads
    ceiling = threads / direct_held.median if direct_held.median else float("nan")
    result.bottleneck = (
        f"workflow: {_bound(workflow_window)}, CPU-s per project {_cpu_per_run(workflow_window, count):.2f} vs "
        f"{_cpu_per_run(direct_window, count):.2f} direct; top {top_cpu(workflow_window.seconds)}. "
        f"direct: thread-bound, {threads} threads each held {seconds(direct_held.median)} per project (the Ready "
        f"wait sleeps on it) -> ceiling {ceiling:.2f}/s; {_bound(direct_window)}"
    )
    for name, collapsed in {**wf_out, **d_out}.items():
        top = summarise(collapsed, top=8)
        result.notes.append(f"profile {name} ({collapsed}): " + "; ".join(f"{f} {share:.0%}" for f, share in top))
    result.data = {
        "workflow": {"rate": workflow_rate, "wall": workflow_wall, "latency": workflow_latency.to_json(),
                     "cpu": workflow_window.seconds, "machine_busy": workflow_window.machine_busy},
        "direct": {"rate": direct_rate, "wall": direct_wall, "latency": direct_latency.to_json(),
                   "cpu": direct_window.seconds, "machine_busy": direct_window.machine_busy},
        "runs": [run.to_json() for run in workflow_runs + direct_runs],
    }
    return result


def _cpu_per_run(window: CpuWindow, count: int) -> float:
    return sum(window.seconds.values()) / count if count else float("nan")


def _bound(window: CpuWindow) -> str:
    """CPU-bound when the machine's cores were (nearly) all busy over the window."""
    if window.machine_busy >= 0.9:
        return f"CPU-bound (machine {window.machine_busy * 100:.0f}% busy)"
    return f"not CPU-bound (machine {window.machine_busy * 100:.0f}% busy): waiting dominates"

