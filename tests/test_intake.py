"""Request intake under attack: slow uploads, uploads that never finish, too many at once.

A real uvicorn server with two admission slots: clients that trickle their bodies must neither hold
the slots nor stop real requests from being served.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import cv2
import numpy as np
import pytest

from tests.api_server import Server, run_server
from tests.helpers.tiny_models import publish_test_models, tiny_models_env


def jpeg(seed: int) -> bytes:
    img = np.random.default_rng(seed).integers(100, 220, (240, 320, 3), dtype=np.uint8)
    return bytes(cv2.imencode(".jpg", img)[1])


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = publish_test_models(tmp_path_factory.mktemp("intake-models"))
    env = tiny_models_env(root, EMOSERVE_MAX_INFLIGHT="2", EMOSERVE_BODY_TIMEOUT_S="3",
                          EMOSERVE_MAX_BODY_BYTES="1000000", EMOSERVE_MAX_BUFFERED_BODY_BYTES="3000000")  # fmt: skip
    with run_server(env, tmp_path_factory.mktemp("intake-logs")) as s:
        yield s


def slow_upload(server: Server, length: int = 100_000) -> socket.socket:
    """Headers of a POST /v1/analyze declaring `length` bytes, then one byte of the body."""
    host, port = server.url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=30)
    head = f"POST /v1/analyze HTTP/1.1\r\nHost: {host}\r\nContent-Type: image/jpeg\r\nContent-Length: {length}\r\n\r\n"
    sock.sendall(head.encode() + b"\xff")
    return sock


def status_of(sock: socket.socket) -> int:
    data = sock.recv(4096)
    return int(data.split(b" ", 2)[1]) if data else 0


def test_slow_uploads_hold_no_admission_slot(server: Server) -> None:
    socks = [slow_upload(server, 100_000) for _ in range(8)]  # 4x the admission limit, 800 kB reserved
    try:
        time.sleep(0.5)
        with server.client() as c:
            for i in range(4):
                r = c.post("/v1/analyze", content=jpeg(i), headers={"content-type": "image/jpeg"})
                assert r.status_code == 200, r.text
    finally:
        for s in socks:
            s.close()


def test_a_body_that_never_finishes_gets_408(server: Server) -> None:
    sock = slow_upload(server)
    try:
        started = time.monotonic()
        sock.settimeout(30)
        assert status_of(sock) == 408
        assert time.monotonic() - started < 25
    finally:
        sock.close()


def test_uploads_beyond_the_buffer_budget_get_503_with_retry_after(server: Server) -> None:
    socks = [slow_upload(server, 900_000) for _ in range(3)]  # 2.7 MB of the 3 MB budget reserved
    try:
        time.sleep(0.5)
        with server.client() as c:
            r = c.post("/v1/analyze", content=b"\xff" * 500_000, headers={"content-type": "image/jpeg"})
        assert r.status_code == 503 and r.headers["retry-after"] == "1"
        assert r.json()["error"]["code"] == "overloaded" and "reading other uploads" in r.json()["error"]["message"]
    finally:
        for s in socks:
            s.close()
