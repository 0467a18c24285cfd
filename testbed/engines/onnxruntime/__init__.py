"""ONNX Runtime engine (extra ``onnx``; ``gpu`` for onnxruntime-gpu)."""
