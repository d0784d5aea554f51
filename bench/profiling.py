"""Optional sampling profiles (py-spy) of the Python processes while a scenario runs (`python -m bench --profile`).

py-spy samples a running process from the outside, so the worker stays the unmodified `python worker.py`. Each
profile is written as collapsed stacks (`<name>.txt`, flamegraph.pl / speedscope input) and summarised as the
functions with the most samples, inclusive of what they call.
"""

from __future__ import annotations

import signal
import subprocess
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from bench.probes import py_spy_path

SAMPLE_RATE = 50  # per second: enough for minutes-long windows, light on a 2-core machine
# Frames worth naming in a summary: the product's own code and the SDK's workflow/activity machinery.
INTERESTING = ("activities/", "workflows/", "provisioner/", "temporalio/", "jinja2/", "dulwich/", "sqlalchemy/",
               "kubernetes/", "pydantic", "subprocess.py", "json/")


@contextmanager
def py_spy_record(pids: dict[str, int], directory: Path | None) -> Iterator[dict[str, Path]]:
    """Record each named pid while the block runs; yields name -> collapsed-stack file. A no-op without a directory
    or without py-spy."""
    py_spy = py_spy_path()
    if directory is None or py_spy is None:
        yield {}
        return
    directory.mkdir(parents=True, exist_ok=True)
    outputs = {name: directory / f"{name}.txt" for name in pids}
    recorders = [
        subprocess.Popen(
            [py_spy, "record", "--pid", str(pid), "--rate", str(SAMPLE_RATE), "--format", "raw",
             "--output", str(outputs[name]), "--nonblocking"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        for name, pid in pids.items()
    ]
    try:
        yield outputs
    finally:
        for recorder in recorders:
            recorder.send_signal(signal.SIGINT)
        for recorder in recorders:
            try:
                recorder.wait(timeout=30)
            except subprocess.TimeoutExpired:
                recorder.kill()


def summarise(collapsed: Path, top: int = 12) -> list[tuple[str, float]]:
    """The `top` interesting functions by share of samples (inclusive), from a collapsed-stack file."""
    if not collapsed.exists():
        return []
    inclusive: Counter[str] = Counter()
    total = 0
    for line in collapsed.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        seen: set[str] = set()
        for frame in stack.split(";"):
            name = frame.split(" (")[0]
            location = frame.partition("(")[2]
            if any(marker in location for marker in INTERESTING) and name not in seen:
                seen.add(name)
                inclusive[f"{name} ({location.split(':')[0].rsplit('/', 2)[-1]})"] += count
    return [(name, count / total) for name, count in inclusive.most_common(top)] if total else []
