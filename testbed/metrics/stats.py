"""Sample statistics of latency lists: percentiles by one stated method, and "n/a" for undefined.

Pure: no clock, no I/O.  Percentiles use ``numpy.percentile(method="linear")``
(:data:`PERCENTILE_METHOD`, printed in every report); an empty sample gives ``None``
statistics, rendered :data:`NA` (``"n/a"``), never 0.
"""

from __future__ import annotations

import numbers
from collections.abc import Iterable, Sequence

import numpy as np

from testbed.errors import ConfigError

__all__ = ["DEFAULT_PERCENTILES", "NA", "PERCENTILE_METHOD", "fmt", "percentiles"]

#: Printed in every report next to the percentiles.
PERCENTILE_METHOD = "numpy.percentile(method='linear')"
#: Percentiles (in percent) computed by :func:`percentiles` by default.
DEFAULT_PERCENTILES: tuple[float, ...] = (50, 90, 95, 99)
#: How an undefined value (``None``) is rendered.
NA = "n/a"


def _pkey(p: float) -> str:
    return f"p{float(p):g}"


def percentiles(
    values: Iterable[float | None], ps: Sequence[float] = DEFAULT_PERCENTILES
) -> dict[str, float | int | None]:
    """Statistics of a latency sample: ``count``, ``mean``, ``min``, ``max`` and ``p<P>``.

    ``ps`` are in percent (``50`` -> key ``"p50"``, ``99.9`` -> ``"p99.9"``), computed with
    ``numpy.percentile(method="linear")`` (:data:`PERCENTILE_METHOD`).  ``None`` entries
    (undefined per-request values) are dropped, so per-request lists can be passed as is.
    An empty sample gives ``count == 0`` and every statistic ``None`` (rendered ``"n/a"``),
    never 0.
    """
    for p in ps:
        if not isinstance(p, numbers.Real) or isinstance(p, bool) or not 0 <= p <= 100:
            raise ConfigError("percentile", p, "numbers in [0, 100] (percent, e.g. 99 for p99)")
    sample = np.asarray([v for v in values if v is not None], dtype=float)
    out: dict[str, float | int | None] = {"count": int(sample.size)}
    if sample.size == 0:
        out.update(mean=None, min=None, max=None)
        out.update({_pkey(p): None for p in ps})
        return out
    out.update(mean=float(sample.mean()), min=float(sample.min()), max=float(sample.max()))
    qs = np.percentile(sample, list(ps), method="linear")
    out.update({_pkey(p): float(q) for p, q in zip(ps, qs)})
    return out


def fmt(value: float | int | None, spec: str = ".2f") -> str:
    """Format a metric value; ``None`` (undefined) becomes :data:`NA`, never ``"0"``."""
    return NA if value is None else format(value, spec)
