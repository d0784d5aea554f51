"""client-go's workqueue, reduced: the delay queue the sandbox's controllers are driven by."""

from __future__ import annotations

import heapq
import threading
import time

Key = tuple[str, str, str]  # (plural, namespace, name)


class DelayQueue:
    """client-go's workqueue, reduced: deduplicated keys with a due time; a key is never processed twice at once."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._heap: list[tuple[float, int, Key]] = []
        self._due: dict[Key, tuple[float, int]] = {}
        self._active: set[Key] = set()
        self._again: dict[Key, float] = {}
        self._seq = 0
        self._closed = False

    def add(self, key: Key, delay: float = 0.0) -> None:
        with self._cond:
            due = time.monotonic() + max(delay, 0.0)
            if key in self._active:
                if key not in self._again or due < self._again[key]:
                    self._again[key] = due
                return
            self._push(key, due)

    def _push(self, key: Key, due: float) -> None:
        current = self._due.get(key)
        if current is not None and current[0] <= due:
            return
        self._seq += 1
        self._due[key] = (due, self._seq)
        heapq.heappush(self._heap, (due, self._seq, key))
        self._cond.notify()

    def get(self) -> Key | None:
        """The next due key (blocks); None once closed."""
        with self._cond:
            while not self._closed:
                while self._heap and self._due.get(self._heap[0][2]) != self._heap[0][:2]:
                    heapq.heappop(self._heap)  # superseded by an earlier due time
                if not self._heap:
                    self._cond.wait()
                    continue
                due, _, key = self._heap[0]
                wait = due - time.monotonic()
                if wait > 0:
                    self._cond.wait(wait)
                    continue
                heapq.heappop(self._heap)
                del self._due[key]
                self._active.add(key)
                return key
            return None

    def done(self, key: Key) -> None:
        with self._cond:
            self._active.discard(key)
            again = self._again.pop(key, None)
            if again is not None:
                self._push(key, again)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def __len__(self) -> int:
        with self._cond:
            return len(self._due) + len(self._active)

