"""Reading the worker's /metrics endpoint the way Prometheus does: over HTTP, in the text exposition format."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable
from dataclasses import dataclass

import httpx

# `name{label="value",...} value`; label values escape `"` and `\` (the provisioner's never contain either).
_SAMPLE = re.compile(r'^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(?P<labels>[^}]*)\})?\s+(?P<value>\S+)')
_LABEL = re.compile(r'(?P<key>[a-zA-Z_][a-zA-Z0-9_]*)="(?P<value>(?:[^"\\]|\\.)*)"')


@dataclass(frozen=True)
class Sample:
    name: str
    labels: dict[str, str]
    value: float


def parse(text: str) -> list[Sample]:
    samples = []
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if line.startswith("#") or match is None:
            continue
        labels = {m["key"]: m["value"] for m in _LABEL.finditer(match["labels"] or "")}
        samples.append(Sample(match["name"], labels, float(match["value"])))
    return samples


class MetricsEndpoint:
    def __init__(self, url: str) -> None:
        self.url = url

    async def scrape(self) -> list[Sample]:
        async with httpx.AsyncClient() as client:
            response = await client.get(self.url, timeout=5)
        response.raise_for_status()
        assert response.headers["content-type"].startswith("text/plain")
        return parse(response.text)

    async def value(self, name: str, **labels: str) -> float | None:
        """The one sample named `name` whose labels include `labels`; None when there is none."""
        found = [s for s in await self.scrape() if s.name == name and labels.items() <= s.labels.items()]
        assert len(found) <= 1, found
        return found[0].value if found else None

    async def wait_for(
        self, name: str, condition: Callable[[float | None], bool], seconds: float = 10, **labels: str
    ) -> float | None:
        """Scrape until the sample satisfies `condition` (the core records some metrics just after a run ends)."""
        deadline = time.monotonic() + seconds
        while True:
            value = await self.value(name, **labels)
            if condition(value) or time.monotonic() > deadline:
                return value
            await asyncio.sleep(0.1)
