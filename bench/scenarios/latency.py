"""Scenario 1: the time to provision one project, alone, through the workflow and through the direct baseline.

The two paths alternate (one workflow run, one direct run, ...) so that a neighbour's load on this shared machine
hits both alike. Per-step times come from the run's Progress timestamps (workflow time, so a step includes its
scheduling) and, for the baseline, from timing each call.
"""

from __future__ import annotations

import time

from bench.paths import provision_via_workflow
from bench.report import Row, ScenarioResult, Target, seconds, times, top_cpu
from bench.runs import STEP_ORDER, ProvisionRun
from bench.scenarios.context import BenchContext, failure_note, failures
from bench.stats import Summary, ratio

LATENCY_RATIO_LIMIT = 1.3


async def run(context: BenchContext) -> ScenarioResult:
    count = context.config.latency_runs
    started = time.perf_counter()
    if context.config.warmup:
        await provision_via_workflow(context.provisioner, context.specs("warm", 1)[0])
        await context.direct.run("sequential", context.specs("warm", 1))
    window = context.cpu_window().start()
    workflow_runs: list[ProvisionRun] = []
    direct_runs: list[ProvisionRun] = []
    for workflow_spec, direct_spec in zip(context.specs("latw", count), context.specs("latd", count), strict=True):
        workflow_runs.append(await provision_via_workflow(context.provisioner, workflow_spec))
        direct_runs.extend((await context.direct.run("sequential", [direct_spec])).runs)
    window.stop()

    workflow_total = Summary.of(run.seconds for run in workflow_runs)
    direct_total = Summary.of(run.seconds for run in direct_runs)
    latency_ratio = ratio(workflow_total.median, direct_total.median)
    result = ScenarioResult(
        key="latency",
        title="1. Latency: one project at a time",
        parameters={"runs_per_path": count},
        cpu_seconds={"both paths": window.seconds},
        wall_seconds=time.perf_counter() - started,
    )
    result.rows += [
        Row("total, median", seconds(workflow_total.median), seconds(direct_total.median), times(latency_ratio)),
        Row("total, p95", seconds(workflow_total.p95), seconds(direct_total.p95),
            times(ratio(workflow_total.p95, direct_total.p95))),
    ]
    step_medians: dict[str, dict[str, float]] = {"workflow": {}, "direct": {}}
    for step in STEP_ORDER:
        on_workflow = Summary.of(run.steps[step] for run in workflow_runs if step in run.steps).median
        on_direct = Summary.of(run.steps[step] for run in direct_runs if step in run.steps).median
        step_medians["workflow"][step], step_medians["direct"][step] = on_workflow, on_direct
        result.rows.append(Row(f"  step {step}, median", seconds(on_workflow), seconds(on_direct),
                               f"+{seconds(on_workflow - on_direct)}"))
    outside_steps = {
        "workflow": Summary.of(run.seconds - sum(run.steps.values()) for run in workflow_runs).median,
        "direct": Summary.of(run.seconds - sum(run.steps.values()) for run in direct_runs).median,
    }
    result.rows += [
        Row("  outside the steps, median", seconds(outside_steps["workflow"]), seconds(outside_steps["direct"]),
            "client start/history fetch/result"),
        Row("readiness checks per run, median",
            f"{Summary.of(r.readiness_checks for r in workflow_runs).median:.0f}",
            f"{Summary.of(r.readiness_checks for r in direct_runs).median:.0f}",
            "same poll schedule: 1 s, x1.5, max ready_timeout/10 in [10 s, 60 s]"),
        Row("not ready / failed", str(failures(workflow_runs)), str(failures(direct_runs)),
            failure_note(workflow_runs + direct_runs)),
    ]
    result.targets.append(Target(
        "single-project latency, workflow median / direct median", latency_ratio, LATENCY_RATIO_LIMIT, True, "x",
        f"{seconds(workflow_total.median)} vs {seconds(direct_total.median)}",
    ))
    overhead = {step: step_medians["workflow"][step] - step_medians["direct"][step] for step in STEP_ORDER}
    worst_step = max(overhead, key=lambda step: overhead[step])
    result.bottleneck = (
        f"both paths spend most of the time in await_ready (the 1 s first poll interval: "
        f"{seconds(step_medians['workflow'].get('await_ready', float('nan')))} vs "
        f"{seconds(step_medians['direct'].get('await_ready', float('nan')))}); the workflow adds per step the "
        f"activity scheduling round trip through the server, most on {worst_step} (+{seconds(overhead[worst_step])})"
        f"; CPU: {top_cpu(window.seconds)}"
    )
    result.data = {
        "workflow": {"total": workflow_total.to_json(), "step_medians": step_medians["workflow"]},
        "direct": {"total": direct_total.to_json(), "step_medians": step_medians["direct"]},
        "outside_steps_median": outside_steps,
        "runs": [run.to_json() for run in workflow_runs + direct_runs],
        "machine_busy": round(window.machine_busy, 3),
    }
    return result
