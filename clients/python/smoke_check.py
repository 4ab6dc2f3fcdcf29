"""The SDK alone: it imports, validates a result and options, and builds clients, with nothing of the
server installed; given a server's URL and an image file, it also runs against that server (REST,
batch, annotate, explain and a stream). Run by `make sdk-check` in a virtualenv holding only
`pip install ./clients/python`, and by tests/test_sdk_standalone.py with the server's packages blocked.

    python -P clients/python/smoke_check.py [URL IMAGE]
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import emoserve_client
from emoserve_client import AsyncClient, Client, EmoserveAPIError
from emoserve_client.models import (
    AnalysisResult,
    AnalyzeOptions,
    OptionsError,
    StreamConfig,
    StreamError,
    parse_server_message,
)

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


def offline() -> None:
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


def against(url: str, image: Path) -> None:
    """The SDK's calls against a running server, with an image file (paths need neither numpy nor OpenCV)."""
    data = image.read_bytes()
    with Client(url) as c:
        result = c.analyze(image)
        assert result.image.width > 0 and all(f.explanation is None for f in result.faces)
        explained = c.analyze(data, explain=True)
        assert all(f.explanation is not None and len(f.explanation.grid) > 0 for f in explained.faces)
        batch = c.analyze_batch([image, b"not an image"])
        assert isinstance(batch[0], AnalysisResult) and isinstance(batch[1], EmoserveAPIError)
        assert batch[1].code == "invalid_image"
        assert c.annotate(image)[:2] == b"\xff\xd8"
        errors: list[StreamError] = []
        frames = [data] * 4 + [b"bad frame"]
        results = list(c.stream(frames, on_error=errors.append))
        dropped = sum(r.dropped_since_last for r in results) + sum(e.dropped_since_last for e in errors)
        assert len(results) + len(errors) + dropped == len(frames) and len(errors) == 1
    print(f"against {url}: {len(result.faces)} face(s), stream {len(results)} result(s): ok")


def main() -> None:
    offline()
    if len(sys.argv) == 3:
        against(sys.argv[1], Path(sys.argv[2]))
    print(f"emoserve_client from {emoserve_client.__file__}: ok")


if __name__ == "__main__":
    main()
