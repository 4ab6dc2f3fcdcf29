"""The SDK alone: it imports, validates a result and options, and builds clients, with nothing of the
server installed. Run by `make sdk-check` in a virtualenv holding only `pip install ./clients/python`,
and by tests/test_sdk_standalone.py with the server's packages blocked."""

from __future__ import annotations

import asyncio
import json

import emoserve_client
from emoserve_client import AsyncClient, Client
from emoserve_client.models import AnalysisResult, AnalyzeOptions, OptionsError, StreamConfig, parse_server_message

RESULT = {
    "image": {"width": 64, "height": 48},
    "models": {"detector": {"name": "d", "version": 1}, "classifier": {"name": "c", "version": 4}},
    "faces": [
        {
            "box": {"x1": 1.0, "y1": 2.0, "x2": 30.0, "y2": 40.0},
            "score": 0.9,
            "landmarks": None,
            "emotion": {"label": "happy", "confidence": 0.8, "scores": {"happy": 0.8, "sad": 0.2}},
            "explanation": {"label": "happy", "grid": [[0.0, 1.0]], "affine": [[1, 0, 0], [0, 1, 0]]},
        }
    ],
    "timings_ms": {"total": 3.0},
}


def main() -> None:
    result = AnalysisResult.model_validate(RESULT)
    assert result.faces[0].explanation is not None and result.faces[0].emotion.label == "happy"
    try:
        AnalyzeOptions.parse({"max_faces": 0})
    except OptionsError as exc:
        assert isinstance(exc, ValueError) and "max_faces" in exc.problems
    else:
        raise AssertionError("max_faces=0 was accepted")
    message = parse_server_message(json.dumps({"type": "pong"}))
    assert message.type == "pong"
    assert StreamConfig(explain=True).model_dump(exclude_none=True) == {"type": "config", "explain": True}
    Client("http://127.0.0.1:9").close()
    asyncio.run(AsyncClient("http://127.0.0.1:9").aclose())
    print(f"emoserve_client from {emoserve_client.__file__}: ok")


if __name__ == "__main__":
    main()
