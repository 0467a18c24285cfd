"""testbed: a latency testbed for translation and chat models.

``import testbed`` imports no torch / onnxruntime / tensorrt: engines and models are resolved
lazily through registries (:mod:`testbed.engines.registry`, :mod:`testbed.registry`).
"""

__version__ = "0.1.0"
