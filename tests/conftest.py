from __future__ import annotations

import itertools
import os

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


class ScriptedClock:
    """A clock that advances by a fixed step (ns) on every read, or follows a script."""

    def __init__(self, start: int = 1_000_000_000, step: int = 1_000_000, script: list[int] | None = None):
        self._it = iter(script) if script is not None else itertools.count(start, step)
        self.reads = 0

    def __call__(self) -> int:
        self.reads += 1
        return next(self._it)


@pytest.fixture
def clock() -> ScriptedClock:
    return ScriptedClock()
