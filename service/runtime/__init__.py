"""onnxruntime sessions, providers, and dynamic batching."""

from service.runtime.batcher import DynamicBatcher, Timed
from service.runtime.sessions import (
    GPU_PROVIDERS,
    ModelSession,
    SessionPool,
    dummy_feeds,
    intra_op_threads,
    resolve_providers,
    session_options,
)

__all__ = [
    "GPU_PROVIDERS",
    "DynamicBatcher",
    "ModelSession",
    "SessionPool",
    "Timed",
    "dummy_feeds",
    "intra_op_threads",
    "resolve_providers",
    "session_options",
]
