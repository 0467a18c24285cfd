"""An exclusive lock on a sweep's run directory: two writers can never interleave their rows.

:class:`RunLock` holds ``<out>/.lock`` with ``fcntl.flock`` (the kernel drops the lock when the
holder dies, however it dies) and writes the holder's pid, host, command and start time into
it.  A second sweep on the same directory is refused with a :class:`LockedError` naming the
holder.  A lock file left by a holder that is gone (its flock released: killed, crashed, a
rebooted machine) is taken over with a warning naming the old holder.  The file is removed on
release; a race with a remover is detected by comparing inodes and retried.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import socket
from pathlib import Path
from typing import Any

from testbed.errors import TestbedError

LOCK_NAME = ".lock"


class LockedError(TestbedError):
    """Another process holds the run directory."""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def describe(holder: dict[str, Any]) -> str:
    return (f"pid {holder.get('pid', '?')} on {holder.get('host', '?')} since {holder.get('started_at', '?')} "
            f"(command: {holder.get('command', '?')})")


class RunLock:
    def __init__(self, out_dir: Path, command: str) -> None:
        self.path = out_dir / LOCK_NAME
        self.command = command
        self.fd: int | None = None
        self.previous: dict[str, Any] | None = None  # a stale holder's record, when one was taken over

    def acquire(self) -> RunLock:
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(10):
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read(fd)
                os.close(fd)
                raise LockedError(
                    f"{self.path.parent} is in use by another sweep: {describe(holder)}; wait for it to finish, "
                    "or use another --out") from None
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if not same:  # the holder removed the file between our open and our lock: try again
                os.close(fd)
                continue
            old = _read(fd)
            if old:
                self.previous = old
            me = {"pid": os.getpid(), "host": socket.gethostname(), "command": self.command,
                  "started_at": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")}
            os.ftruncate(fd, 0)
            os.pwrite(fd, (json.dumps(me) + "\n").encode(), 0)
            os.fsync(fd)
            self.fd = fd
            return self
        raise LockedError(f"could not lock {self.path}: it kept being replaced")

    def stale_note(self) -> str | None:
        """A warning when a lock left by a holder that is gone was taken over."""
        if not self.previous:
            return None
        p = self.previous
        why = ("its process is gone" if p.get("host") == socket.gethostname() and isinstance(p.get("pid"), int)
               and not _pid_alive(p["pid"]) else "its lock was released without cleaning up")
        return f"took over a stale lock on {self.path.parent} left by {describe(p)}: {why}"

    def release(self) -> None:
        if self.fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)
        finally:
            os.close(self.fd)  # closing drops the flock
            self.fd = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def _read(fd: int) -> dict[str, Any]:
    try:
        raw = os.pread(fd, 4096, 0)
        obj = json.loads(raw) if raw.strip() else {}
    except (OSError, ValueError):
        return {}
    return obj if isinstance(obj, dict) else {}
