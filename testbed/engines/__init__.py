"""Engines: one sub-package per runtime, each an :class:`testbed.engines.base.Engine`."""
