"""What a benchmark run produces: per-scenario rows, targets with PASS/FAIL, the printed table and the JSON file."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

DEV_SERVER_STORE = "dev_server_store"  # header key: where the Temporal dev server's SQLite file lives


@dataclass(frozen=True)
class Row:
    metric: str
    workflow: str = ""
    direct: str = ""
    note: str = ""


@dataclass(frozen=True)
class Target:
    name: str
    measured: float
    limit: float
    at_most: bool  # True: measured <= limit passes; False: measured >= limit passes
    unit: str = ""
    detail: str = ""

    @property
    def passed(self) -> bool:
        if math.isnan(self.measured):
            return False
        return self.measured <= self.limit if self.at_most else self.measured >= self.limit

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "passed": self.passed}


@dataclass
class ScenarioResult:
    key: str
    title: str
    parameters: dict[str, Any]
    rows: list[Row] = field(default_factory=list)
    targets: list[Target] = field(default_factory=list)
    # CPU seconds per part of the stack over each measured window ("all", or one window per path)
    cpu_seconds: dict[str, dict[str, float]] = field(default_factory=dict)
    bottleneck: str = ""
    data: dict[str, Any] = field(default_factory=dict)  # raw figures for the JSON and the plot
    wall_seconds: float = 0.0
    notes: list[str] = field(default_factory=list)  # printed under the scenario's rows (e.g. profile summaries)

    def to_json(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "title": self.title,
            "parameters": self.parameters,
            "rows": [asdict(row) for row in self.rows],
            "targets": [target.to_json() for target in self.targets],
            "cpu_seconds": self.cpu_seconds,
            "bottleneck": self.bottleneck,
            "data": self.data,
            "wall_seconds": round(self.wall_seconds, 1),
            "notes": self.notes,
        }


def seconds(value: float) -> str:
    if math.isnan(value):
        return "n/a"
    return f"{value * 1000:.1f} ms" if value < 1 else f"{value:.2f} s"


def times(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.2f}x"


def top_cpu(cpu_seconds: dict[str, float]) -> str:
    """'<part> (x s of y s CPU)' for the biggest CPU consumer of a window."""
    if not cpu_seconds:
        return "n/a"
    total = sum(cpu_seconds.values())
    part, spent = max(cpu_seconds.items(), key=lambda item: item[1])
    share = spent / total * 100 if total else 0.0
    return f"{part}: {spent:.1f} of {total:.1f} CPU-s ({share:.0f}%)"


def format_table(results: list[ScenarioResult], header: dict[str, Any]) -> str:
    store = header.get(DEV_SERVER_STORE)
    lines = [
        "provisioner benchmark  "
        + "  ".join(f"{key}={value}" for key, value in header.items() if key != DEV_SERVER_STORE),
        *([f"dev server store: {store}"] if store else []),
        "",
    ]
    width = (46, 16, 16, 44)
    for result in results:
        parameters = ", ".join(f"{key}={value}" for key, value in result.parameters.items())
        lines.append(f"== {result.title} ({parameters}; {result.wall_seconds:.0f} s) ==")
        lines.append(_columns(("metric", "workflow", "direct", "note"), width))
        for row in result.rows:
            lines.append(_columns((row.metric, row.workflow, row.direct, row.note), width))
        for window, parts in result.cpu_seconds.items():
            split = ", ".join(f"{part} {spent:.1f}" for part, spent in parts.items())
            lines.append(f"   CPU-s ({window}): {split}")
        if result.bottleneck:
            lines.append(f"   bottleneck: {result.bottleneck}")
        lines += [f"   {note}" for note in result.notes]
        lines.append("")
    lines.append("== targets ==")
    for result in results:
        for target in result.targets:
            comparison = "<=" if target.at_most else ">="
            verdict = "PASS" if target.passed else "FAIL"
            measured = "n/a" if math.isnan(target.measured) else f"{_figure(target.measured)}{target.unit}"
            lines.append(
                f"{verdict}  {target.name}: {measured} (target {comparison} {target.limit:g}{target.unit})"
                + (f"  [{target.detail}]" if target.detail else "")
            )
    return "\n".join(lines)


def _columns(cells: tuple[str, str, str, str], width: tuple[int, int, int, int]) -> str:
    return "".join(cell.ljust(size) for cell, size in zip(cells, width, strict=True)).rstrip()


def write_results(
    results: list[ScenarioResult], header: dict[str, Any], results_dir: Path, started_at: datetime
) -> tuple[Path, Path]:
    """bench/results/<timestamp>.json and latest.json; returns (timestamped, latest)."""
    results_dir.mkdir(parents=True, exist_ok=True)
    document = {
        "started_at": started_at.isoformat(),
        "header": header,
        "scenarios": [result.to_json() for result in results],
        "targets_passed": all(t.passed for r in results for t in r.targets),
    }
    text = json.dumps(document, indent=2, default=_json_default, allow_nan=True)
    stamped = results_dir / f"{timestamp(started_at)}.json"
    latest = results_dir / "latest.json"
    stamped.write_text(text)
    latest.write_text(text)
    return stamped, latest


def timestamp(moment: datetime) -> str:
    return moment.strftime("%Y%m%dT%H%M%S")


def _json_default(value: object) -> object:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


def _figure(value: float) -> str:
    """Three significant digits, but a count as the whole number it is (1000, not 1e+03)."""
    return f"{value:.0f}" if value.is_integer() else f"{value:.3g}"
