"""Hostile-client cases of the reliability suite: the default models and limits, peak RSS per case.

Each case starts the real service (`emoserve serve`, the shipped default classifier, YuNet, a Redis
of its own) and samples the server's RSS every 20 ms while it runs, so a request that allocates
gigabytes and gives them back still shows. A failure is any 5xx, crash, or answer other than the
one the case expects. Loopback only; every loop is bounded in count and time.
"""

from __future__ import annotations

import asyncio
import functools
import json
import socket
import struct
import threading
import time
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import httpx
import numpy as np
import redis
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from tests.api_server import Server, redis_server, run_server

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
RSS_LIMIT_MB = 600.0


@dataclass
class Outcome:
    case: str
    requests: int = 0
    failures: int = 0
    peak_rss_mb: float = 0.0
    notes: list[str] = field(default_factory=list)


class PeakRss:
    """Samples a process's RSS in a thread; `peak` is the highest seen (MB)."""

    def __init__(self, pid: int, every_s: float = 0.02) -> None:
        self.pid, self.every_s, self.peak = pid, every_s, 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        self.peak = max(self.peak, int(line.split()[1]) / 1024)
            except OSError:
                return
            self._stop.wait(self.every_s)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


# -- bodies ----------------------------------------------------------------------------------
def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def bombs() -> dict[str, bytes]:
    """Small files that declare (or decode to) huge images, one per format OpenCV can read."""
    ihdr = struct.pack(">IIBBBBB", 60_000, 60_000, 8, 2, 0, 0, 0)
    png = b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", zlib.compress(bytes(65536), 9))
    jp2_ihdr = struct.pack(">II", 8000, 8000) + b"\x00\x03\x07\x07\x00\x00"
    jp2 = b"\x00\x00\x00\x0cjP  \r\n\x87\n" + struct.pack(">I", 22) + b"ihdr" + jp2_ihdr + bytes(800)
    small = np.full((8, 8, 3), 200, np.uint8)
    tiff = bytes(cv2.imencode(".tiff", small)[1])
    hdr = b"#?RADIANCE\nFORMAT=32-bit_rle_rgbe\n\n-Y 20000 +X 20000\n" + bytes(4096)
    pnm = b"P6\n30000 30000\n255\n" + bytes(4096)
    jpeg = bytearray(cv2.imencode(".jpg", small)[1].tobytes())
    sof = jpeg.find(b"\xff\xc0")
    jpeg[sof + 5 : sof + 9] = struct.pack(">HH", 60_000, 60_000)  # declared 60000x60000
    return {"png 60000^2": png, "jpeg2000 8000^2": jp2, "tiff": tiff, "hdr 20000^2": hdr, "pnm 30000^2": pnm,
            "jpeg 60000^2": bytes(jpeg)}  # fmt: skip


@functools.cache
def photo() -> bytes:
    path = SHARED / "media" / "photos" / "obama.jpg"
    if path.exists():
        return path.read_bytes()
    img = np.random.default_rng(0).integers(60, 200, (480, 640, 3), dtype=np.uint8)
    return bytes(cv2.imencode(".jpg", img)[1])


# -- server ----------------------------------------------------------------------------------
@contextmanager
def default_server(work: Path, **extra: str) -> Iterator[tuple[Server, str]]:
    """The service with its default models (the package's shipped layer) and a Redis of its own;
    yields (server, redis url)."""
    root = work / "models"  # empty: the shipped layer serves the default classifier and YuNet
    root.mkdir(parents=True, exist_ok=True)
    with redis_server() as url:
        env = {"EMOSERVE_MODEL_ROOT": str(root), "EMOSERVE_REDIS_URL": url, "EMOSERVE_LOG_LEVEL": "WARNING", **extra}
        with run_server(env, work) as server:
            yield server, url


def five_xx(server: Server) -> int:
    """5xx answers counted by the server itself."""
    text = httpx.get(server.url + "/metrics", timeout=30).text
    total = 0
    for line in text.splitlines():
        if line.startswith("emoserve_requests_total{") and 'code="5' in line:
            total += int(float(line.rsplit(" ", 1)[1]))
    return total


def post(client: httpx.Client, body: bytes, query: str = "", ctype: str = "image/jpeg") -> int:
    return client.post("/v1/analyze" + query, content=body, headers={"content-type": ctype}).status_code


# -- cases -----------------------------------------------------------------------------------
def case_bombs(server: Server, _redis_url: str, out: Outcome) -> None:
    codes: Counter[str] = Counter()
    with httpx.Client(base_url=server.url, timeout=60) as c:
        for name, body in bombs().items():
            for _ in range(5):
                code = post(c, body)
                codes[f"{name}:{code}"] += 1
                out.requests += 1
                out.failures += not 400 <= code < 500
    out.notes.append(" ".join(f"{k}x{v}" for k, v in sorted(codes.items())))


def case_max_options(server: Server, _redis_url: str, out: Outcome) -> None:
    faces = []
    with httpx.Client(base_url=server.url, timeout=120) as c:
        for i in range(6):  # a trailing byte after the JPEG's end makes each body new to the result cache
            r = c.post("/v1/analyze?threshold=0&max_faces=1000", content=photo() + bytes([i]),
                       headers={"content-type": "image/jpeg"})  # fmt: skip
            out.requests += 1
            out.failures += r.status_code != 200
            faces.append(len(r.json().get("faces", [])) if r.status_code == 200 else -1)
    out.notes.append(f"faces per answer {sorted(set(faces))} (server max_faces 32)")


def _slow_socket(server: Server, length: int) -> socket.socket:
    host, port = server.url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=30)
    sock.sendall(f"POST /v1/analyze HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\nContent-Length: {length}"
                 "\r\n\r\n".encode() + b"\xff")  # fmt: skip
    return sock


def case_slow_bodies(server: Server, _redis_url: str, out: Outcome) -> None:
    socks = [_slow_socket(server, 100_000) for _ in range(80)]
    try:
        time.sleep(0.5)
        with httpx.Client(base_url=server.url, timeout=60) as c:
            codes = Counter(post(c, photo()) for _ in range(20))
        out.requests, out.failures = 20, sum(v for k, v in codes.items() if k != 200)
        out.notes.append(f"real requests {dict(codes)}")
        for s in socks[:8]:  # the slow ones end with 408 once the body timeout passes
            s.settimeout(40)
            head = s.recv(64)
            if s is socks[0]:
                out.notes.append(head.split(b"\r\n", 1)[0].decode(errors="replace"))
            out.failures += b" 408 " not in head
    finally:
        for s in socks:
            s.close()


def case_client_aborts(server: Server, _redis_url: str, out: Outcome) -> None:
    before = five_xx(server)
    body = photo()
    for _ in range(50):
        sock = _slow_socket(server, len(body) + 1)
        sock.sendall(body[: len(body) // 2])
        sock.close()
        out.requests += 1
    time.sleep(1.0)
    out.failures = five_xx(server) - before
    out.notes.append(f"5xx counted by the server: {out.failures}")


def case_redis_garbage(server: Server, redis_url: str, out: Outcome) -> None:
    r = redis.Redis.from_url(redis_url)
    with httpx.Client(base_url=server.url, timeout=60) as c:
        post(c, photo())  # fills the result cache and a rate-limit bucket
        garbage: list[bytes] = [b"\x00\xffnot json", b'{"forged": true}', b"[]", b"-1e309"]
        for value in garbage:
            for key in r.scan_iter("emoserve:*"):
                if r.type(key) == b"hash":
                    r.hset(key, mapping={f: value for f in r.hkeys(key)})
                else:
                    r.set(key, value)
            for event in (value, b'{"x": 1}', b"null"):
                r.publish("emoserve:model-events", event)
            codes = Counter(post(c, photo()) for _ in range(3))
            out.requests += 3
            out.failures += sum(v for k, v in codes.items() if k != 200)
        ready = c.get("/readyz")
    out.failures += ready.status_code != 200
    out.notes.append(f"/readyz after {ready.status_code}")


def case_stream_flood(server: Server, _redis_url: str, out: Outcome) -> None:
    frame = photo()
    closes: Counter[str] = Counter()

    async def one() -> None:
        try:
            async with connect(
                server.url.replace("http", "ws") + "/v1/stream", compression=None, open_timeout=60
            ) as ws:
                await ws.send(frame)
                msg = json.loads(await asyncio.wait_for(ws.recv(), 60))
                closes[msg["type"]] += 1
        except ConnectionClosed as exc:
            closes[str(exc.rcvd.code if exc.rcvd else None)] += 1
        except (OSError, TimeoutError) as exc:
            closes[type(exc).__name__] += 1

    async def flood() -> None:
        await asyncio.gather(*(one() for _ in range(300)))

    asyncio.run(flood())
    out.requests = 300
    out.failures = sum(v for k, v in closes.items() if k not in ("result", "1013"))
    out.notes.append(f"outcomes {dict(closes)}")


CASES: dict[str, Callable[[Server, str, Outcome], None]] = {
    "attack: image bombs (6 formats, sent as image/jpeg)": case_bombs,
    "attack: worst options (threshold=0, max_faces=1000)": case_max_options,
    "attack: 80 slow uploads (1 byte, then silence) beside real requests": case_slow_bodies,
    "attack: 50 clients drop mid-upload": case_client_aborts,
    "attack: garbage Redis values and model events": case_redis_garbage,
    "attack: 300 streams at once (cap 16 per worker)": case_stream_flood,
}


def run_attacks(work: Path) -> list[Outcome]:
    """Every case against one server with the default models and limits; RSS sampled per case."""
    results = []
    with default_server(work) as (server, redis_url):
        for title, case in CASES.items():
            outcome = Outcome(title)
            with PeakRss(server.proc.pid) as rss:
                try:
                    case(server, redis_url, outcome)
                except Exception as exc:  # a case that breaks is a failure, not the end of the suite
                    outcome.failures += 1
                    outcome.notes.append(f"{type(exc).__name__}: {exc}")
            outcome.peak_rss_mb = rss.peak
            if rss.peak > RSS_LIMIT_MB:
                outcome.failures += 1
                outcome.notes.append(f"peak RSS over {RSS_LIMIT_MB:.0f} MB")
            if server.proc.poll() is not None:
                outcome.failures += 1
                outcome.notes.append("server died")
                results.append(outcome)
                break
            results.append(outcome)
        if server.proc.poll() is None:
            total = five_xx(server)
            results.append(Outcome("all attacks: 5xx counted by the server", failures=total, notes=[f"{total} 5xx"]))
    return results
