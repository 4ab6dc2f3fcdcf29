"""onnxruntime sessions, providers, and dynamic batching."""
