"""Exceptions with messages a user can act on (what was wrong, what is accepted, the fix)."""

from __future__ import annotations


class TestbedError(Exception):
    """Base class: the CLI prints ``str(exc)`` and exits 2, without a traceback."""


class ConfigError(TestbedError, ValueError):
    """A configuration value is not accepted; the message names field, value and allowed values."""

    def __init__(self, field: str, value: object, allowed: str, hint: str = "") -> None:
        self.field, self.value, self.allowed = field, value, allowed
        msg = f"{field}={value!r} is not supported; allowed: {allowed}"
        if hint:
            msg += f". {hint}"
        super().__init__(msg)


class MissingExtraError(TestbedError, ImportError):
    """An optional dependency is missing; names the extra that installs it."""

    def __init__(self, what: str, extra: str, module: str) -> None:
        super().__init__(
            f"{what} needs the Python module '{module}', which is not installed. "
            f"Install the extra: pip install 'testbed[{extra}]'"
        )
        self.extra = extra


class ModelNotFoundError(TestbedError):
    """A --model value that is neither a registry name, a local directory nor a reachable hub id."""


class InputError(TestbedError, ValueError):
    """A request the engine cannot run (empty text, ...)."""
