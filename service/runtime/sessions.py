"""onnxruntime sessions: provider choice and verification, CPU options, warm-up, bounded runs.

One `ModelSession` per (model name, version, device, graph variant) lives in a `SessionPool`. Every run holds a
slot of a semaphore of `settings.session_concurrency`; `arun` runs in the pool's thread pool so
the event loop never blocks (onnxruntime releases the GIL while it computes).
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from model_store.manifest import MANIFEST_FILE, Manifest
from model_store.store import ResolvedModel
from service.errors import ModelLoadFailed
from service.settings import Settings

log = logging.getLogger("emoserve.runtime")

GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")
_ORT_TYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(uint8)": np.uint8,
    "tensor(int8)": np.int8,
    "tensor(int32)": np.int32,
    "tensor(int64)": np.int64,
    "tensor(bool)": np.bool_,
}

Feeds = dict[str, np.ndarray]


def resolve_providers(requested: list[str], available: list[str]) -> list[str]:
    """The requested providers that this onnxruntime build has, in the requested order (CPU always last)."""
    chosen = [p for p in requested if p in available]
    if "CPUExecutionProvider" not in chosen:
        chosen.append("CPUExecutionProvider")
    return chosen


def intra_op_threads(settings: Settings) -> int:
    """`settings.intra_op_threads`, or the cores shared out among the worker processes."""
    if settings.intra_op_threads:
        return settings.intra_op_threads
    return max(1, (os.cpu_count() or 1) // max(1, settings.workers))


def session_options(settings: Settings, threads: int | None = None) -> Any:
    """CPU options: intra-op threads = cores / workers, inter-op 1, no spinning with several workers, ALL opts,
    no CPU memory arena (the arena keeps the peak of the largest batch for good: +234 MB after one batch of 32
    faces through emotion-ferplus8@3, against +54 MB without it, at the same speed)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads or intra_op_threads(settings)
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.enable_cpu_mem_arena = False
    if settings.workers > 1:
        # Several worker processes share the cores: spinning idle threads would steal them.
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.log_severity_level = 3
    return opts


def dummy_feeds(session: Any, size: tuple[int, int] | None = None, batch: int = 1) -> Feeds:
    """Zeros shaped like the session's inputs; dynamic axes get `batch` or the (width, height) `size`."""
    feeds: Feeds = {}
    for inp in session.get_inputs():
        shape = list(inp.shape)
        dims: list[int] = []
        for axis, dim in enumerate(shape):
            if isinstance(dim, int) and dim > 0:
                dims.append(dim)
            elif axis == 0:
                dims.append(batch)
            else:
                dims.append(_spatial(shape, axis, size))
        feeds[inp.name] = np.zeros(dims, dtype=_ORT_TYPES.get(inp.type, np.float32))
    return feeds


def _spatial(shape: list[Any], axis: int, size: tuple[int, int] | None) -> int:
    if size is None:
        return 64
    # the last dynamic axes of an image are (height, width), or (height, width, channels) for NHWC
    rank = len(shape)
    channels_last = rank == 4 and isinstance(shape[3], int) and shape[3] in (1, 3, 4)
    w_axis = rank - 2 if channels_last else rank - 1
    return size[0] if axis == w_axis else size[1]


def free_spatial_dims(path: Path) -> bytes:
    """The ONNX graph with its first input's height and width symbolic and output shapes undeclared.

    For fully convolutional graphs exported at one fixed size (YuNet 2023mar declares 1x3x640x640 while its
    reshapes use -1 and its resizes use scales): onnxruntime then runs them at any size. The file on disk,
    and so its verified sha256, is untouched; the edit happens in memory.
    """
    import onnx

    model = onnx.load(str(path))
    dims = model.graph.input[0].type.tensor_type.shape.dim
    if len(dims) != 4:
        raise ValueError(f"{path}: free_spatial needs a 4-d image input, got {len(dims)} dims")
    for i, label in ((2, "height"), (3, "width")):
        dims[i].ClearField("dim_value")
        dims[i].dim_param = label
    for output in model.graph.output:
        output.type.tensor_type.ClearField("shape")
    del model.graph.value_info[:]
    return bytes(model.SerializeToString())


class ModelSession:
    """An InferenceSession look-alike (same `run` signature) with bounded concurrency and an async `arun`."""

    def __init__(
        self,
        session: Any,
        *,
        name: str,
        version: int,
        concurrency: int,
        executor: ThreadPoolExecutor,
        variant: str = "float",
    ) -> None:
        self.session = session
        self.name = name
        self.version = version
        self.variant = variant  # "int8" when the artifact's int8 graph runs
        self.provider: str = session.get_providers()[0]
        self.device = "gpu" if self.provider in GPU_PROVIDERS else "cpu"
        self.input_names = [i.name for i in session.get_inputs()]
        self.output_names = [o.name for o in session.get_outputs()]
        self._slots = threading.BoundedSemaphore(concurrency)
        self.executor = executor

    def run(
        self, output_names: list[str] | None, input_feed: Feeds | np.ndarray, run_options: Any = None
    ) -> list[np.ndarray]:
        """`InferenceSession.run` with a concurrency slot held; an array feeds the first input."""
        if isinstance(input_feed, np.ndarray):
            input_feed = {self.input_names[0]: input_feed}
        with self._slots:
            return list(self.session.run(output_names, input_feed, run_options))

    async def arun(self, output_names: list[str] | None, input_feed: Feeds | np.ndarray) -> list[np.ndarray]:
        """`run` in the pool's threads, off the event loop."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.executor, self.run, output_names, input_feed)

    # The rest of the InferenceSession interface detectors use.
    def get_inputs(self) -> Any:
        return self.session.get_inputs()

    def get_outputs(self) -> Any:
        return self.session.get_outputs()

    def get_providers(self) -> list[str]:
        return list(self.session.get_providers())

    def __repr__(self) -> str:
        return f"ModelSession({self.name}@{self.version} {self.variant} on {self.provider})"


class SessionPool:
    """One `ModelSession` per (name, version, device, float or int8 graph), with the settings' providers and options."""

    def __init__(self, settings: Settings, *, threads: int | None = None) -> None:
        self.settings = settings
        self.threads = threads
        self._sessions: dict[tuple[str, int, str, str], ModelSession] = {}
        self._lock = threading.Lock()
        self._reported: set[str] = set()  # providers already named in the log
        self.executor = ThreadPoolExecutor(
            max_workers=max(4, 2 * settings.session_concurrency), thread_name_prefix="emoserve-infer"
        )

    def providers(self) -> list[str]:
        import onnxruntime as ort

        return resolve_providers(list(self.settings.providers), list(ort.get_available_providers()))

    def load(self, model: ResolvedModel) -> ModelSession:
        """The session of a verified store artifact (created, verified and warmed on first use)."""
        size = model.manifest.input.size
        int8 = model.int8_path if self.settings.int8 and self.providers()[0] not in GPU_PROVIDERS else None
        if int8 is not None:
            session = self._get(int8, model.manifest.name, model.manifest.version, size, variant="int8")
            log.info("%s runs its int8 graph (%s; EMOSERVE_INT8=false runs the float one)", model.ref, int8.name)
            return session
        return self._get(model.model_path, model.manifest.name, model.manifest.version, size)

    def session_factory(self, path: Path, *, free_spatial: bool = False) -> ModelSession:
        """`SessionFactory` for detectors: a model file (name/version read from the manifest beside it).

        `free_spatial`: load the graph with its input's height and width made symbolic (see `free_spatial_dims`).
        """
        path = Path(path)
        manifest_file = path.parent / MANIFEST_FILE
        if manifest_file.is_file():
            manifest = Manifest.from_file(manifest_file)
            return self._get(path, manifest.name, manifest.version, manifest.input.size, free_spatial)
        return self._get(path, path.stem, 0, None, free_spatial)

    def _get(
        self,
        path: Path,
        name: str,
        version: int,
        size: tuple[int, int] | None,
        free_spatial: bool = False,
        variant: str = "float",
    ) -> ModelSession:
        providers = self.providers()
        device = "gpu" if providers[0] in GPU_PROVIDERS else "cpu"
        key = (name, version, device + ("/free-hw" if free_spatial else ""), variant)
        with self._lock:
            if key not in self._sessions:
                self._sessions[key] = self._create(path, name, version, providers, size, free_spatial, variant)
            return self._sessions[key]

    def _create(
        self,
        path: Path,
        name: str,
        version: int,
        providers: list[str],
        size: tuple[int, int] | None,
        free_spatial: bool = False,
        variant: str = "float",
    ) -> ModelSession:
        import onnxruntime as ort

        try:
            source: str | bytes = free_spatial_dims(path) if free_spatial else str(path)
            raw = ort.InferenceSession(
                source, sess_options=session_options(self.settings, self.threads), providers=providers
            )
        except Exception as exc:
            raise ModelLoadFailed(f"{name}@{version}: onnxruntime cannot load {path}: {exc}") from exc
        active = raw.get_providers()
        if self.settings.require_gpu and not any(p in GPU_PROVIDERS for p in active):
            raise ModelLoadFailed(
                f"{name}@{version}: a GPU is required (EMOSERVE_REQUIRE_GPU) but the session runs on {active}; "
                f"requested {list(self.settings.providers)}, available {ort.get_available_providers()}"
            )
        log.debug("%s@%s runs on %s", name, version, active[0])
        self._report_provider(active[0], list(ort.get_available_providers()))
        session = ModelSession(
            raw,
            name=name,
            version=version,
            concurrency=self.settings.session_concurrency,
            executor=self.executor,
            variant=variant,
        )
        try:
            session.run(None, dummy_feeds(raw, size))
        except Exception as exc:
            raise ModelLoadFailed(f"{name}@{version}: warm-up run failed: {exc}") from exc
        return session

    def gpu_requested(self) -> bool:
        """Whether a GPU was asked for explicitly: EMOSERVE_REQUIRE_GPU, or EMOSERVE_PROVIDERS naming one.

        The default provider list also names CUDA (so a GPU build uses it), but that is no request.
        """
        explicit = "providers" in self.settings.model_fields_set
        return self.settings.require_gpu or (explicit and any(p in GPU_PROVIDERS for p in self.settings.providers))

    def _report_provider(self, active: str, available: list[str]) -> None:
        """One log line per provider in use: a warning only when a GPU was asked for and none runs."""
        if active in self._reported:
            return
        self._reported.add(active)
        if self.gpu_requested() and active not in GPU_PROVIDERS:
            log.warning(
                "a GPU provider was requested (EMOSERVE_PROVIDERS=%s) but the models run on %s; "
                "this onnxruntime has %s (install onnxruntime-gpu for CUDA)",
                list(self.settings.providers),
                active,
                available,
            )
        else:
            log.info("models run on %s", active)

    def sessions(self) -> list[ModelSession]:
        return list(self._sessions.values())

    def close(self) -> None:
        """Drop every session and stop the thread pool (waits for runs in flight)."""
        self.executor.shutdown(wait=True)
        self._sessions.clear()
