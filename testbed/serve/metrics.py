"""Server-side counters and histograms, rendered in the Prometheus text format (``GET /metrics``).

Kept by the asyncio loop only (no locks).  TTFT and E2E here are server-side: from the
request's arrival at the server to the engine's first / last token (``perf_counter_ns``);
the client measures its own from the scheduled send time.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence

# seconds; dense where translation and chat latencies live
BUCKETS: tuple[float, ...] = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class Histogram:
    def __init__(self, buckets: Sequence[float] = BUCKETS) -> None:
        self.buckets = tuple(buckets)
        self.counts = [0] * len(self.buckets)
        self.total = 0
        self.sum = 0.0

    def observe(self, v: float) -> None:
        self.total += 1
        self.sum += v
        for k, b in enumerate(self.buckets):
            if v <= b:
                self.counts[k] += 1
                break

    def render(self, name: str, help_: str) -> list[str]:
        out = [f"# HELP {name} {help_}", f"# TYPE {name} histogram"]
        acc = 0
        for b, c in zip(self.buckets, self.counts):
            acc += c
            out.append(f'{name}_bucket{{le="{b:g}"}} {acc}')
        out += [f'{name}_bucket{{le="+Inf"}} {self.total}', f"{name}_sum {self.sum:.6f}", f"{name}_count {self.total}"]
        return out


class ServerMetrics:
    def __init__(self) -> None:
        self.requests: Counter[tuple[str, int]] = Counter()  # (endpoint, status)
        self.rejected: Counter[str] = Counter()  # reason
        self.cancelled = 0
        self.output_tokens = 0
        # kept by the HTTP protocol (testbed.serve.connection): timeouts, oversized heads, refusals
        self.connection_events: Counter[str] = Counter()
        self.open_connections = 0
        self.ttft = Histogram()
        self.e2e = Histogram()
        self.queue_wait = Histogram()

    def render(self, gauges: dict[str, tuple[float, str]], extra_counters: dict[str, tuple[Callable[[], int], str]]
               ) -> str:
        lines = ["# HELP testbed_requests_total Finished HTTP requests by endpoint and status.",
                 "# TYPE testbed_requests_total counter"]
        for (ep, st), n in sorted(self.requests.items()):
            lines.append(f'testbed_requests_total{{endpoint="{ep}",status="{st}"}} {n}')
        lines += ["# HELP testbed_rejections_total Requests refused at admission (429/503) by reason.",
                  "# TYPE testbed_rejections_total counter"]
        for reason, n in sorted(self.rejected.items()):
            lines.append(f'testbed_rejections_total{{reason="{reason}"}} {n}')
        lines += ["# HELP testbed_requests_cancelled_total Requests whose client went away mid-generation.",
                  "# TYPE testbed_requests_cancelled_total counter",
                  f"testbed_requests_cancelled_total {self.cancelled}",
                  "# HELP testbed_output_tokens_total Generated tokens sent (counted from token ids).",
                  "# TYPE testbed_output_tokens_total counter", f"testbed_output_tokens_total {self.output_tokens}"]
        lines += ["# HELP testbed_connection_events_total Connections closed by a limit (timeouts, oversized "
                  "heads, refusals), by event.", "# TYPE testbed_connection_events_total counter"]
        for event, n in sorted(self.connection_events.items()):
            lines.append(f'testbed_connection_events_total{{event="{event}"}} {n}')
        lines += ["# HELP testbed_open_connections HTTP connections open now.",
                  "# TYPE testbed_open_connections gauge", f"testbed_open_connections {self.open_connections}"]
        for name, (fn, help_) in extra_counters.items():
            lines += [f"# HELP {name} {help_}", f"# TYPE {name} counter", f"{name} {fn()}"]
        for name, (value, help_) in gauges.items():
            lines += [f"# HELP {name} {help_}", f"# TYPE {name} gauge", f"{name} {value:g}"]
        lines += self.ttft.render("testbed_ttft_seconds", "Server-side time to first token (arrival to first token).")
        lines += self.e2e.render("testbed_e2e_seconds", "Server-side end-to-end time (arrival to last token).")
        lines += self.queue_wait.render("testbed_queue_wait_seconds", "Arrival to the start of the request's batch.")
        return "\n".join(lines) + "\n"
