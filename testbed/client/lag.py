"""The event-loop lag probe: how long the load generator's loop takes to run a callback it is handed.

Every ``interval_s`` a probe thread posts a callback into the loop with
``call_soon_threadsafe`` -- exactly how the Poisson ticker hands over each arrival -- and the
callback records ``run - posted``.  A loop that keeps up runs it within tens of microseconds;
one that is busy parsing streams (or starved of CPU) runs it late, and every arrival and every
token receipt it handles in that time is late by as much.  The samples (ns) go to the run's
client verdict (:mod:`testbed.metrics.saturation`).

The thread-to-loop hop is measured rather than an asyncio timer's lateness because an asyncio
timer alone wakes up to 1 ms late (epoll's millisecond timeout), whatever the load.
"""

from __future__ import annotations

import threading
from typing import Any

from testbed.clock import Clock, now_ns

DEFAULT_INTERVAL_S = 0.005


class LagProbe:
    """Posts a timestamped callback into ``loop`` every ``interval_s``; :attr:`samples_ns` holds the lags."""

    def __init__(self, loop: Any, interval_s: float = DEFAULT_INTERVAL_S, clock: Clock = now_ns) -> None:
        self.loop = loop
        self.interval_s = interval_s
        self.clock = clock
        self.samples_ns: list[int] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def tick(self) -> None:
        """Post one probe (called by the probe thread; tests call it directly)."""
        self.loop.call_soon_threadsafe(self._ran, self.clock())

    def _ran(self, posted_ns: int) -> None:
        self.samples_ns.append(self.clock() - posted_ns)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.tick()
            except RuntimeError:  # the loop closed under us
                return

    def start(self) -> LagProbe:
        self._thread = threading.Thread(target=self._run, name="loop-lag-probe", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> list[int]:
        """Stop posting; returns the samples taken so far (a probe still in the loop is dropped)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        return list(self.samples_ns)
