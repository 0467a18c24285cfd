"""Service-level objectives: the ``--slo ttft=..,tpot=..,e2e=..`` bounds, parsed and checked per request.

Pure: an :class:`SLO` is a frozen, validated value; :meth:`SLO.meets` reads one record through
the per-request formulas of :mod:`testbed.metrics.formulas`.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, fields

from testbed.errors import ConfigError
from testbed.metrics.formulas import e2e_ms, is_completed, tpot_ms, ttft_ms
from testbed.metrics.records import RequestRecord

__all__ = ["SLO"]

_SLO_KEYS = {"ttft": "ttft_ms", "tpot": "tpot_ms", "e2e": "e2e_ms"}
_SLO_ALLOWED_KEYS = "ttft, tpot, e2e (milliseconds; e.g. 'ttft=200,tpot=50,e2e=2000')"
_SLO_ALLOWED_VALUE = "a positive, finite number of milliseconds (or unset)"


@dataclass(frozen=True)
class SLO:
    """Service-level objectives in ms; an unset bound (``None``) is not checked.

    A request meets the SLO (:meth:`meets`) iff it completed and
    ``TTFT <= ttft_ms`` (schedule-relative TTFT), ``TPOT <= tpot_ms`` and
    ``E2E <= e2e_ms`` for every bound that is set.  A request with ``N_i = 1`` (or all
    tokens in one chunk) has no TPOT: the TPOT bound is then considered met, since there is
    no per-token time to violate it; its TTFT/E2E bounds still apply.  A failed request never
    meets the SLO.
    """

    ttft_ms: float | None = None
    tpot_ms: float | None = None
    e2e_ms: float | None = None

    def __post_init__(self) -> None:
        for f in fields(self):
            v = getattr(self, f.name)
            if v is None:
                continue
            ok = isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v) and float(v) > 0
            if not ok:
                raise ConfigError(f"slo.{f.name}", v, _SLO_ALLOWED_VALUE)

    @classmethod
    def parse(cls, text: str) -> SLO:
        """Parse ``"ttft=200,tpot=50,e2e=2000"`` (ms; keys may carry ``_ms``; any subset).

        An empty string gives an SLO without bounds.  Unknown or repeated keys, a missing
        ``=`` and values that are not positive numbers raise :class:`ConfigError` naming the
        offending key and value.
        """
        kwargs: dict[str, float] = {}
        for part in (p.strip() for p in text.split(",")):
            if not part:
                continue
            key, sep, raw = part.partition("=")
            key, raw = key.strip().lower(), raw.strip()
            if not sep:
                raise ConfigError("slo", part, _SLO_ALLOWED_KEYS, hint="write each bound as key=milliseconds")
            name = _SLO_KEYS.get(key.removesuffix("_ms"))
            if name is None:
                raise ConfigError("slo key", key, _SLO_ALLOWED_KEYS)
            if name in kwargs:
                raise ConfigError("slo key", key, _SLO_ALLOWED_KEYS, hint="each key may appear once")
            try:
                value = float(raw)
            except ValueError:
                raise ConfigError(f"slo.{key}", raw, _SLO_ALLOWED_VALUE) from None
            kwargs[name] = value
        return cls(**kwargs)  # __post_init__ rejects 0, negatives, inf and nan

    @property
    def is_empty(self) -> bool:
        """True when no bound is set (goodput and attainment are then undefined)."""
        return self.ttft_ms is None and self.tpot_ms is None and self.e2e_ms is None

    def to_dict(self) -> dict[str, float | None]:
        return {"slo_ttft_ms": self.ttft_ms, "slo_tpot_ms": self.tpot_ms, "slo_e2e_ms": self.e2e_ms}

    def meets(self, r: RequestRecord) -> bool:
        """True iff ``r`` completed and every set bound holds (see the class docstring)."""
        if not is_completed(r):
            return False
        if self.ttft_ms is not None:
            v = ttft_ms(r)
            if v is None or v > self.ttft_ms:
                return False
        if self.tpot_ms is not None:
            v = tpot_ms(r)
            if v is not None and v > self.tpot_ms:  # None (N_i = 1): no TPOT, bound met
                return False
        if self.e2e_ms is not None:
            v = e2e_ms(r)
            if v is None or v > self.e2e_ms:
                return False
        return True
