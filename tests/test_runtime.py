"""The session pool on real onnxruntime sessions: providers, options, warm-up, concurrency."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import numpy as np
import pytest

from model_store import ModelStore
from service.errors import ModelLoadFailed
from service.runtime import SessionPool, dummy_feeds, intra_op_threads, resolve_providers, session_options
from service.settings import get_settings
from tests.helpers.tiny_models import publish_tiny_classifier, tiny_classifier_onnx


def test_resolve_providers_keeps_order_and_cpu() -> None:
    available = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert resolve_providers(
        ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"], available
    ) == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert resolve_providers(["CUDAExecutionProvider"], ["CPUExecutionProvider"]) == ["CPUExecutionProvider"]


def test_cuda_request_falls_back_to_cpu_and_says_so(
    store: ModelStore, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import onnxruntime as ort

    if any(p in ort.get_available_providers() for p in ("CUDAExecutionProvider", "TensorrtExecutionProvider")):
        pytest.skip("this machine has a GPU provider; the fallback cannot be observed")
    model = publish_tiny_classifier(store, tmp_path)
    pool = SessionPool(get_settings(model_root=tmp_path, providers=["CUDAExecutionProvider", "CPUExecutionProvider"]))
    with caplog.at_level(logging.INFO, logger="emoserve.runtime"):
        session = pool.load(model)
    assert session.provider == "CPUExecutionProvider"
    assert session.get_providers() == ["CPUExecutionProvider"]
    assert session.device == "cpu"
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "GPU provider was requested" in warnings[0] and "CPUExecutionProvider" in warnings[0]
    assert pool.load(model) is session  # one session per (name, version, device)
    pool.close()


def test_default_providers_start_quietly_with_one_info_line(
    store: ModelStore, tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The default list names CUDA first, but that is no request: a CPU start logs one info line, no warning."""
    monkeypatch.delenv("EMOSERVE_PROVIDERS", raising=False)
    monkeypatch.delenv("EMOSERVE_REQUIRE_GPU", raising=False)
    one = publish_tiny_classifier(store, tmp_path)
    two = publish_tiny_classifier(store, tmp_path, name="tiny-other")
    pool = SessionPool(get_settings(model_root=tmp_path))
    with caplog.at_level(logging.INFO, logger="emoserve.runtime"):
        provider = pool.load(one).provider
        pool.load(two)
    pool.close()
    records = [r for r in caplog.records if r.name == "emoserve.runtime"]
    assert [r.levelno for r in records if r.levelno >= logging.WARNING] == []
    assert [r.getMessage() for r in records] == [f"models run on {provider}"]


def test_explicit_cpu_provider_is_no_gpu_request(
    store: ModelStore, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    model = publish_tiny_classifier(store, tmp_path)
    pool = SessionPool(get_settings(model_root=tmp_path, providers=["CPUExecutionProvider"]))
    with caplog.at_level(logging.INFO, logger="emoserve.runtime"):
        pool.load(model)
    pool.close()
    assert [r.getMessage() for r in caplog.records if r.name == "emoserve.runtime"] == [
        "models run on CPUExecutionProvider"
    ]


def test_require_gpu_without_gpu_fails_loudly(store: ModelStore, tmp_path: Path) -> None:
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("a GPU provider is available here")
    model = publish_tiny_classifier(store, tmp_path)
    pool = SessionPool(get_settings(model_root=tmp_path, require_gpu=True))
    with pytest.raises(ModelLoadFailed, match="GPU is required"):
        pool.load(model)
    pool.close()


def test_session_options_are_deliberate() -> None:
    settings = get_settings(intra_op_threads=0, workers=2)
    opts = session_options(settings)
    assert opts.intra_op_num_threads == intra_op_threads(settings) >= 1
    assert opts.inter_op_num_threads == 1
    assert opts.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert session_options(get_settings(intra_op_threads=3)).intra_op_num_threads == 3


def test_bad_model_file_is_model_load_failed(tmp_path: Path) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not an onnx graph")
    pool = SessionPool(get_settings(model_root=tmp_path))
    with pytest.raises(ModelLoadFailed, match="cannot load"):
        pool.session_factory(bad)
    pool.close()


def test_factory_session_runs_sync_and_async(tmp_path: Path) -> None:
    path = tiny_classifier_onnx(tmp_path / "m.onnx", variant="rgb")
    pool = SessionPool(get_settings(model_root=tmp_path, session_concurrency=2))
    session = pool.session_factory(path)
    feeds = dummy_feeds(session.session, batch=3)
    assert feeds["input"].shape == (3, 64, 64, 3)
    (sync_out,) = session.run(None, feeds)
    x = np.random.default_rng(1).random((5, 64, 64, 3), dtype=np.float32)

    async def many() -> list[list[np.ndarray]]:
        return await asyncio.gather(*(session.arun(None, x) for _ in range(6)))

    outs = asyncio.run(many())
    assert sync_out.shape == (3, 7)
    assert all(np.allclose(o[0], outs[0][0]) for o in outs)
    pool.close()
