"""Locust's FastHttpUser client driven by testbed's Poisson schedule: the comparison row of
``bench/client.py`` (run by it in a child process; gevent's monkey-patching must not touch the
asyncio parent).

The same arrivals as testbed's server scenario (:func:`testbed.client.loadgen.poisson_offsets_ns`,
same rate, seed and count) are fired as greenlets, each issuing one streaming POST through one
``FastHttpUser``'s client (geventhttpclient, a connection pool large enough to never queue).  Each
SSE line is read with the response's ``readline`` and timestamped when it returns, then parsed by
testbed's own :class:`~testbed.client.sse.SseReader` -- so the two clients differ only in transport.
(Locust's ``iter_lines`` reads 1024-byte blocks and would hold tokens back; it is not used.)
Greenlets sleep to each arrival with ``gevent.sleep``, whose libev timer can wake up to 1 ms late:
part of Locust's dispatch delay, as it would be in a Locust test.

Needs ``pip install 'locust>=2.40'`` (or ``pip install -e '.[bench]'``).  Writes one JSON line per
record, then ``{"cpu_s": ...}`` (process CPU over warm-up and run), to ``--out``.
"""

from __future__ import annotations

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402

import gevent  # noqa: E402
from locust import FastHttpUser, task  # noqa: E402
from locust.env import Environment  # noqa: E402

from testbed.client.loadgen import new_record, poisson_offsets_ns  # noqa: E402
from testbed.client.sse import SseReader, error_label  # noqa: E402
from testbed.clock import now_ns  # noqa: E402
from testbed.datasets import load_dataset  # noqa: E402

HEADERS = {"Content-Type": "application/json", "Accept": "text/event-stream"}


class Streamer(FastHttpUser):
    """One user whose client serves every greenlet (``concurrency``: its connection pool)."""

    concurrency = 2048
    network_timeout = 600.0
    connection_timeout = 60.0

    @task
    def nothing(self) -> None:  # required by Locust; the schedule drives the requests
        return None


def send(client, body: bytes, rec) -> None:
    reader = SseReader(rec, chat=False)
    rec.send_ns = now_ns()
    try:
        resp = client.post("/v1/completions", data=body, headers=HEADERS, stream=True)
        if resp.status_code != 200:
            rec.fail(error_label(resp.status_code), now_ns())
            return
        raw = resp._response  # geventhttpclient's response: lines as they arrive
        while True:
            line = raw.readline(b"\n")
            t = now_ns()
            if not line or reader.line(line, t):
                break
        reader.finish(now_ns())
    except Exception as exc:
        rec.fail(f"{type(exc).__name__}: {exc}", now_ns())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--url", required=True)
    ap.add_argument("--rate", type=float, required=True)
    ap.add_argument("-n", type=int, required=True)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--tokens", type=int, default=16)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--model", default="marian-en-de")
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)

    examples = load_dataset("test", limit=400)
    bodies = {id(ex): json.dumps({"model": args.model, "prompt": ex.text, "stream": True, "temperature": 0,
                                  "stream_options": {"include_usage": True}, "max_tokens": args.tokens}).encode()
              for ex in examples}
    Streamer.host = args.url
    client = Streamer(Environment(user_classes=[Streamer])).client
    cpu0 = time.process_time()
    records = []
    for k in range(args.warmup):
        ex, rec = new_record(examples, k, now_ns(), warm=True)
        send(client, bodies[id(ex)], rec)
        records.append(rec)
    t0 = now_ns() + 20_000_000
    pairs = [new_record(examples, k, t0 + o) for k, o in enumerate(poisson_offsets_ns(args.rate, args.seed, n=args.n))]
    greenlets = []
    for ex, rec in pairs:
        wait = (rec.schedule_ns - now_ns()) / 1e9
        if wait > 0:
            gevent.sleep(wait)
        greenlets.append(gevent.spawn(send, client, bodies[id(ex)], rec))
    gevent.joinall(greenlets)
    cpu = time.process_time() - cpu0
    with open(args.out, "w") as f:
        for rec in records + [r for _, r in pairs]:
            f.write(rec.to_json() + "\n")
        f.write(json.dumps({"cpu_s": cpu}) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
