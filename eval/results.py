"""A sweep's run directory: the files the runner writes and reads back on resume.

Every write is atomic (a temporary file renamed into place, :mod:`testbed.io`), so a kill never
leaves half a file:

* ``results.jsonl``: one row per configuration, rewritten whole after each change;
* ``outputs/<key>.jsonl``: every Offline output (text, token ids, token count);
* ``batch1/<key>.jsonl``: the outputs of the divergence set decoded one at a time (batch 1);
* ``records/<key>.jsonl``: the raw SingleStream records, rewritten after every round;
* ``sweep.json``: the validated sweep and one entry per session (run or resume) with its
  result header (command, machine, load average, git SHA) and the load at its end.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from testbed.errors import TestbedError
from testbed.io import write_json_atomic, write_text_atomic
from testbed.metrics.records import RequestRecord

RESULTS = "results.jsonl"
SWEEP_JSON = "sweep.json"


def load1() -> float | None:
    """The 1-minute load average (None where the OS has none): recorded beside every measurement."""
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def _jsonl(path: Path) -> list[dict[str, Any]]:
    rows = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise TestbedError(f"{path}:{n}: not valid JSON ({exc.msg})") from None
    return rows


def _write_jsonl(path: Path, items: Sequence[Any]) -> None:
    write_text_atomic(path, "".join((json.dumps(x, ensure_ascii=False) if isinstance(x, dict) else x.to_json())
                                    + "\n" for x in items))


def read_rows(out_dir: Path) -> list[dict[str, Any]]:
    path = out_dir / RESULTS
    return _jsonl(path) if path.is_file() else []


def write_rows(out_dir: Path, rows: Sequence[dict[str, Any]]) -> None:
    _write_jsonl(out_dir / RESULTS, rows)


def upsert(rows: list[dict[str, Any]], row: dict[str, Any]) -> None:
    for i, r in enumerate(rows):
        if r.get("key") == row["key"]:
            rows[i] = row
            return
    rows.append(row)


def read_outputs(out_dir: Path, key: str, kind: str = "outputs") -> list[dict[str, Any]] | None:
    """``kind``: ``outputs`` (Offline) or ``batch1`` (the divergence set at batch 1)."""
    path = out_dir / kind / f"{key}.jsonl"
    return _jsonl(path) if path.is_file() else None


def write_outputs(out_dir: Path, key: str, outputs: Sequence[dict[str, Any]], kind: str = "outputs") -> None:
    _write_jsonl(out_dir / kind / f"{key}.jsonl", outputs)


def read_records(out_dir: Path, key: str) -> list[RequestRecord]:
    path = out_dir / "records" / f"{key}.jsonl"
    return [RequestRecord.from_dict(d) for d in _jsonl(path)] if path.is_file() else []


def write_records(out_dir: Path, key: str, records: Sequence[RequestRecord]) -> None:
    _write_jsonl(out_dir / "records" / f"{key}.jsonl", records)


def read_meta(out_dir: Path) -> dict[str, Any]:
    path = out_dir / SWEEP_JSON
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def write_meta(out_dir: Path, meta: dict[str, Any]) -> None:
    write_json_atomic(out_dir / SWEEP_JSON, meta)
