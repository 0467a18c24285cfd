"""The serving process: an OpenAI-compatible HTTP server with dynamic batching and admission control.

``testbed.serve.batcher`` (the engine's worker thread, batches, bounded queue, deadlines,
cancellation), ``testbed.serve.protocol`` (request validation), ``testbed.serve.app`` (the
ASGI app), ``testbed.serve.metrics`` (Prometheus text) and ``testbed.serve.run`` (uvicorn).
"""
