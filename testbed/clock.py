"""The one clock of testbed.

Every timestamp in the project is ``now_ns()`` (``time.perf_counter_ns``): monotonic, integer
nanoseconds, comparable only within one process.  Tests replace it with a scripted clock by
passing ``clock=`` where a component accepts one; nothing else reads the time.
"""

from __future__ import annotations

import time
from collections.abc import Callable

Clock = Callable[[], int]

now_ns: Clock = time.perf_counter_ns
# CPU time of the calling thread (not a timestamp): benchmarks on a shared, loaded machine compare the
# work two variants do with it, which time slices lost to other processes do not inflate
thread_cpu_ns: Clock = time.thread_time_ns


def ns_to_ms(ns: int | float) -> float:
    return ns / 1e6
