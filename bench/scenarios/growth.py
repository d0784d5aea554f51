"""Scenario 5: push time and total time as the template grows (web-service plus N extra rendered files).

The render limit of a template is 1,000 files (`RenderLimits.max_files`), so the largest size is web-service's
files plus as many extra files as make exactly 1,000. Both paths, alternating, `growth_repeats` runs per size.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

from bench.paths import provision_via_workflow
from bench.report import Row, ScenarioResult, seconds, times, top_cpu
from bench.runs import ProvisionRun
from bench.scenarios.context import BenchContext, failure_note, failures
from bench.stats import Summary, ratio
from bench.templates import growth_template

PUSH, VALIDATE, READY = "push_template", "validate_template", "await_ready"


@dataclass(frozen=True)
class GrowthPoint:
    files: int
    workflow: dict[str, float]  # medians: total and per step
    direct: dict[str, float]


async def run(context: BenchContext) -> ScenarioResult:
    config = context.config
    started = time.perf_counter()
    result = ScenarioResult(
        key="growth",
        title="5. Growth: template size",
        parameters={"extra_files": list(config.growth_extra_files), "runs_per_size_and_path": config.growth_repeats},
    )
    window = context.cpu_window().start()
    series: list[GrowthPoint] = []
    all_runs: list[ProvisionRun] = []
    for extra in config.growth_extra_files:
        template, files = growth_template(context.stack.templates_dir, extra)
        workflow_runs: list[ProvisionRun] = []
        direct_runs: list[ProvisionRun] = []
        for workflow_spec, direct_spec in zip(
            context.specs("grow", config.growth_repeats, template),
            context.specs("grow", config.growth_repeats, template),
            strict=True,
        ):
            workflow_runs.append(await provision_via_workflow(context.provisioner, workflow_spec))
            direct_runs.extend((await context.direct.run("sequential", [direct_spec])).runs)
        all_runs += workflow_runs + direct_runs
        wf, direct = _medians(workflow_runs), _medians(direct_runs)
        series.append(GrowthPoint(files, wf, direct))
        result.rows += [
            Row(f"{files} files: push, median", seconds(wf[PUSH]), seconds(direct[PUSH])),
            Row(f"{files} files: validate+render, median", seconds(wf[VALIDATE]), seconds(direct[VALIDATE])),
            Row(f"{files} files: total, median", seconds(wf["total"]), seconds(direct["total"]),
                times(ratio(wf["total"], direct["total"]))),
        ]
    window.stop()
    result.rows.append(Row("not ready / failed", str(failures([r for r in all_runs if r.path == "workflow"])),
                           str(failures([r for r in all_runs if r.path == "direct"])), failure_note(all_runs)))
    result.cpu_seconds = {"both paths": window.seconds}
    result.wall_seconds = time.perf_counter() - started
    first, last = series[0], series[-1]
    result.bottleneck = _growth_bottleneck(first, last) + f"; CPU: {top_cpu(window.seconds)}"
    result.data = {"series": [asdict(point) for point in series], "runs": [run.to_json() for run in all_runs]}
    return result


def _medians(runs: list[ProvisionRun]) -> dict[str, float]:
    medians = {"total": Summary.of(run.seconds for run in runs).median}
    for step in (VALIDATE, PUSH, READY):
        medians[step] = Summary.of(run.steps[step] for run in runs if step in run.steps).median
    return medians


def _growth_bottleneck(first: GrowthPoint, last: GrowthPoint) -> str:
    small, large = first.workflow, last.workflow
    grown = {step: large[step] - small[step] for step in (VALIDATE, PUSH, READY)}
    step = max(grown, key=lambda name: grown[name])
    return (
        f"from {first.files} to {last.files} files the total grows {seconds(large['total'] - small['total'])}, "
        f"mostly in {step} (+{seconds(grown[step])}); push +{seconds(grown[PUSH])}"
    )
