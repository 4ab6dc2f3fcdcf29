"""The SDK stands alone: it needs pydantic, httpx and websockets, not the server, OpenCV or numpy; and the
server serves the very schema the SDK reads. (`make sdk-check`, run by CI, installs it in a fresh venv.)"""

from __future__ import annotations

import subprocess
import sys

from tests.api_server import REPO

BLOCKED = ["service", "model_store", "training", "numpy", "cv2", "onnxruntime", "fastapi", "torch", "scipy"]

RUN_WITH_SERVER_BLOCKED = f"""
import importlib.abc, runpy, sys

class Refuse(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {BLOCKED!r}:
            raise ImportError("the SDK imported " + name)
        return None

sys.meta_path.insert(0, Refuse())
sys.path.insert(0, {str(REPO / "clients" / "python")!r})
runpy.run_path({str(REPO / "clients" / "python" / "smoke_check.py")!r}, run_name="__main__")
"""


def test_the_sdk_imports_nothing_of_the_server() -> None:
    proc = subprocess.run([sys.executable, "-c", RUN_WITH_SERVER_BLOCKED], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().endswith(": ok")


def test_the_server_serves_the_sdk_schema() -> None:
    import emoserve_client.schema as wire

    from service.pipeline import schema, stream_schema

    assert schema.AnalysisResult is wire.AnalysisResult and schema.AnalyzeOptions is wire.AnalyzeOptions
    assert stream_schema.StreamResult is wire.StreamResult and stream_schema.StreamConfig is wire.StreamConfig
