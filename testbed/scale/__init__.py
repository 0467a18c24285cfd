"""Past one machine: load from Locust workers (:mod:`testbed.scale.locust_run`), replicas on
Ray Serve (:mod:`testbed.scale.ray_serve`), and the capacity plan (:mod:`testbed.scale.plan`).

Locust and Ray Serve come with the ``scale`` extra (``pip install 'testbed[scale]'``), never with
the default install; :func:`require` turns their absence into an error that names the extra.
The plan needs neither.
"""

from __future__ import annotations

import importlib.util

from testbed.errors import MissingExtraError


def require(what: str, module: str) -> None:
    """Raise :class:`MissingExtraError` (naming ``pip install 'testbed[scale]'``) when ``module`` is absent.

    Checked without importing: Locust's import monkey-patches the process (gevent).
    """
    if importlib.util.find_spec(module) is None:
        raise MissingExtraError(what, "scale", module)
