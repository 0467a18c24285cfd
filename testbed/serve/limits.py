"""The server's bounds on what one client may cost it: memory, time, connections, origins.

:class:`Limits` is one frozen, validated dataclass shared by ``testbed serve`` (its flags), the
ASGI guard (:mod:`testbed.serve.guard`: body size, JSON depth, ``Host`` / ``Content-Type`` /
``Origin`` checks, the connection cap's 503) and the HTTP protocol
(:mod:`testbed.serve.connection`: request-head and body timeouts, header count and size).
:func:`parse_json` is the one way a request body becomes JSON: UTF-8 only, nesting depth
checked without recursion *before* :func:`json.loads` (which would raise ``RecursionError`` on
``'[' * 100000``), no ``NaN`` / ``Infinity`` literals.  Pure: no I/O.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any

from testbed.errors import ConfigError

#: Host names a loopback server always answers to (the bound address is added).
LOCAL_HOSTS = ("localhost", "127.0.0.1", "::1")
#: Bind addresses that mean "every interface": the Host check then needs --allowed-hosts.
WILDCARD_BINDS = ("0.0.0.0", "::", "")


@dataclass(frozen=True)
class Limits:
    """Per-request and per-connection bounds (the README's "Limits and safety" lists each with its flag).

    ``max_body_bytes``: request body (Content-Length checked before reading, chunked bodies
    counted while they stream in) -> 413; ``max_json_depth``: nesting of arrays / objects -> 400;
    ``max_header_bytes`` / ``max_headers``: the request line plus headers, and their count -> 431;
    ``head_timeout_s``: from a connection's first byte (or its opening) to the end of the headers;
    ``body_timeout_s``: from the end of the headers to the end of the body (both -> 408 and close);
    ``keep_alive_s``: an idle keep-alive connection is closed after it; ``max_connections``: open
    connections past it get 503 (``Connection: close``); ``allowed_hosts``: ``Host`` names
    accepted besides the bound address and localhost (``*``: any); ``cors_origins``: origins that
    get CORS headers (none by default: browsers block cross-origin reads).
    """

    max_body_bytes: int = 1 << 20
    max_json_depth: int = 32
    max_header_bytes: int = 32 << 10
    max_headers: int = 100
    head_timeout_s: float = 10.0
    body_timeout_s: float = 30.0
    keep_alive_s: float = 5.0
    max_connections: int = 256
    allowed_hosts: tuple[str, ...] = ()
    cors_origins: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for name, lo, hi in (("max_body_bytes", 1024, 1 << 30), ("max_json_depth", 4, 1000),
                             ("max_header_bytes", 1024, 1 << 20), ("max_headers", 8, 10_000),
                             ("max_connections", 1, 100_000)):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
                raise ConfigError(name, v, f"an integer in [{lo}, {hi}]")
        for name in ("head_timeout_s", "body_timeout_s", "keep_alive_s"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not 0 < v <= 3600:
                raise ConfigError(name, v, "a number of seconds in (0, 3600]")
        for o in self.cors_origins:
            if o != "*" and not re.fullmatch(r"https?://[^/\s]+", o):
                raise ConfigError("cors_origins", o, "origins such as http://localhost:3000 (scheme://host[:port]) "
                                                     "or *")

    def host_names(self, bind_host: str) -> frozenset[str] | None:
        """The ``Host`` names accepted (lower case, no port), or None when any is (``*``)."""
        if "*" in self.allowed_hosts:
            return None
        names = set(LOCAL_HOSTS) | {h.lower().strip("[]") for h in self.allowed_hosts}
        if bind_host not in WILDCARD_BINDS:
            names.add(bind_host.lower().strip("[]"))
        return frozenset(names)


def host_of(header: str) -> str:
    """``Host`` header -> the name without the port, lower case (``[::1]:8000`` -> ``::1``)."""
    h = header.strip().lower()
    if h.startswith("["):
        return h[1:].split("]", 1)[0]
    if h.count(":") == 1:
        return h.split(":", 1)[0]
    return h


class BodyError(ValueError):
    """A body that is not acceptable JSON; ``str()`` is the message for the 400."""


# a JSON string literal, or an unterminated one running to the end; possessive (``*+``), so every
# character is looked at once: linear time on any input (a backtracking pattern is quadratic on
# ``'"\\"' * 100000``)
_STRING = re.compile(r'"(?:[^"\\]|\\.)*+(?:"|\\?\Z)', re.S)
_BRACKETS = re.compile(r"[\[\]{}]")


def json_depth(text: str, limit: int) -> int:
    """The nesting depth of arrays / objects in ``text`` (JSON), counted without recursion.

    Returns ``limit + 1`` as soon as the depth passes ``limit`` (the rest is not scanned).
    Brackets inside string literals do not count.  Malformed text gets a depth too; the parser
    rejects it afterwards.
    """
    opens = text.count("[") + text.count("{")
    if opens <= limit:  # cannot be deeper than the number of openings (brackets in strings included)
        return opens
    depth = deepest = 0
    for m in _BRACKETS.finditer(_STRING.sub("", text)):
        depth += 1 if m.group() in "[{" else -1
        if depth > deepest:
            deepest = depth
            if deepest > limit:
                return deepest
    return deepest


def _no_constants(name: str) -> Any:
    raise BodyError(f"{name} is not valid JSON (only finite numbers are)")


def parse_json(raw: bytes, max_depth: int) -> Any:
    """A request body -> the JSON value; raises :class:`BodyError` naming what is wrong."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BodyError(f"request body is not UTF-8 (byte {exc.start}); send UTF-8 encoded JSON") from None
    depth = json_depth(text, max_depth)
    if depth > max_depth:
        raise BodyError(f"request body nests arrays / objects deeper than {max_depth} levels; "
                        f"at most {max_depth} are accepted")
    try:
        return json.loads(text, parse_constant=_no_constants)
    except BodyError:
        raise
    except (ValueError, RecursionError) as exc:  # RecursionError: cannot happen below the depth limit
        msg = exc.msg if isinstance(exc, json.JSONDecodeError) else "a number with too many digits"
        raise BodyError(f"request body is not valid JSON ({msg}); send a JSON object") from None


def finite(v: Any) -> bool:
    """``v`` is an int or float (not a bool) with a finite value."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def has_surrogate(s: str) -> bool:
    """``s`` holds a lone UTF-16 surrogate (``"\\ud800"`` in JSON), which no tokenizer can encode."""
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


__all__ = ["LOCAL_HOSTS", "BodyError", "Limits", "finite", "has_surrogate", "host_of", "json_depth", "parse_json"]
