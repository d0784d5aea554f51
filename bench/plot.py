"""The benchmark's figure (matplotlib, Agg backend): one panel per scenario plus where the CPU went."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from bench.report import ScenarioResult
from bench.runs import STEP_ORDER

PATH_COLOURS = {"workflow": "tab:blue", "direct": "tab:orange"}


def plot(results: list[ScenarioResult], target: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by_key = {result.key: result for result in results}
    figure, axes = plt.subplots(2, 3, figsize=(18, 10))
    panels = [
        ("latency", _latency),
        ("throughput", _throughput),
        ("growth", _growth),
        ("waiting", _memory),
        ("progress_query", _queries),
    ]
    for axis, (key, draw) in zip(axes.flat, panels, strict=False):
        if key in by_key:
            draw(axis, by_key[key])
        else:
            axis.set_axis_off()
            axis.set_title(f"{key}: not run")
    _cpu(axes.flat[5], results)
    figure.suptitle("provisioner: Temporal workflow vs direct activity calls (same activities, same stack)")
    figure.tight_layout()
    target.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(target, dpi=90)
    plt.close(figure)
    return target


def _latency(axis: Any, result: ScenarioResult) -> None:
    left = {"workflow": 0.0, "direct": 0.0}
    colours = [f"C{index}" for index in range(len(STEP_ORDER) + 1)]
    for index, step in enumerate((*STEP_ORDER, "outside steps")):
        for row, path in enumerate(("workflow", "direct")):
            if step == "outside steps":
                width = result.data["outside_steps_median"][path]
            else:
                width = result.data[path]["step_medians"].get(step, 0.0)
            if math.isnan(width):  # the step did not run
                continue
            axis.barh(row, width, left=left[path], color=colours[index], label=step if row == 0 else None)
            left[path] += width
    axis.set_yticks([0, 1], ["workflow", "direct"])
    axis.set_xlabel("seconds (median per step)")
    axis.set_title(f"1. Latency, one project (N={result.parameters['runs_per_path']} per path)")
    axis.legend(fontsize=7, loc="lower right")


def _throughput(axis: Any, result: ScenarioResult) -> None:
    rates = [result.data["workflow"]["rate"], result.data["direct"]["rate"]]
    bars = axis.bar(["workflow", "direct (pool)"], rates, color=[PATH_COLOURS["workflow"], PATH_COLOURS["direct"]])
    axis.bar_label(bars, fmt="%.2f/s")
    axis.set_ylabel("projects / second")
    axis.set_title(f"2. Throughput, {result.parameters['runs_per_path']} at once")


def _growth(axis: Any, result: ScenarioResult) -> None:
    series = result.data["series"]
    files = [point["files"] for point in series]
    for path in ("workflow", "direct"):
        colour = PATH_COLOURS[path]
        axis.plot(files, [p[path]["total"] for p in series], "o-", color=colour, label=f"{path}: total")
        axis.plot(files, [p[path]["push_template"] for p in series], "s--", color=colour, label=f"{path}: push")
    axis.set_xscale("log")
    axis.set_xticks(files, [str(count) for count in files])
    axis.minorticks_off()
    axis.set_xlabel("files in the template")
    axis.set_ylabel("seconds (median)")
    axis.set_title("5. Growth: push and total time vs template size")
    axis.legend(fontsize=8)


def _memory(axis: Any, result: ScenarioResult) -> None:
    timeline = result.data.get("memory_timeline") or []
    axis.plot([s["t"] for s in timeline], [s["rss_mb"] for s in timeline], label="worker RSS")
    axis.plot([s["t"] for s in timeline], [s["peak_rss_mb"] for s in timeline], ":", label="worker VmHWM")
    axis.axhline(300, color="red", linestyle="--", label="300 MB target")
    axis.set_xlabel("seconds since the fleet started")
    axis.set_ylabel("MB")
    axis.set_title(f"3. Worker memory, {result.parameters['fleet']} runs waiting (then released)")
    axis.legend(fontsize=8)


def _queries(axis: Any, result: ScenarioResult) -> None:
    latencies = sorted(value * 1000 for value in result.data["latencies"])
    if latencies:
        axis.plot(latencies, [(index + 1) / len(latencies) for index in range(len(latencies))])
    axis.axvline(50, color="red", linestyle="--", label="50 ms p95 target")
    axis.axhline(0.95, color="grey", linestyle=":")
    axis.set_xlabel("progress query latency (ms)")
    axis.set_ylabel("cumulative share")
    axis.set_title(f"4. Progress query CDF, {result.parameters['in_flight']} in flight")
    axis.legend(fontsize=8)


def _cpu(axis: Any, results: list[ScenarioResult]) -> None:
    bars = [(f"{result.key}\n{window}", parts) for result in results for window, parts in result.cpu_seconds.items()]
    components = sorted({part for _, parts in bars for part in parts})
    bottom = [0.0] * len(bars)
    for index, part in enumerate(components):
        values = [max(parts.get(part, 0.0), 0.0) for _, parts in bars]
        axis.bar([label for label, _ in bars], values, bottom=bottom, label=part[:70], color=f"C{index}")
        bottom = [b + v for b, v in zip(bottom, values, strict=True)]
    axis.set_ylabel("CPU seconds in the window")
    axis.set_title("Where the CPU went")
    axis.tick_params(axis="x", labelsize=7, labelrotation=30)
    axis.legend(fontsize=7)
