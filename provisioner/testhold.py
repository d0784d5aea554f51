"""TEST ONLY: hold an activity at a named point, so that a crash test can kill the worker exactly there.

`hold_point("create_repository.staged")` returns at once unless the environment variable PROVISIONER_TEST_HOLD_AT
names that very point. When it does, it appends `<point> <pid>` to the file named by PROVISIONER_TEST_HOLD_MARKER and
blocks the calling thread for good; the test waits for the line and kills the process (tests/chaos/).
"""

from __future__ import annotations

import os
import threading

HOLD_AT_ENV = "PROVISIONER_TEST_HOLD_AT"
HOLD_MARKER_ENV = "PROVISIONER_TEST_HOLD_MARKER"


def hold_point(name: str) -> None:
    if os.environ.get(HOLD_AT_ENV) != name:
        return
    with open(os.environ[HOLD_MARKER_ENV], "a", encoding="utf-8") as marker:
        marker.write(f"{name} {os.getpid()}\n")
    threading.Event().wait()  # until the test kills the process
