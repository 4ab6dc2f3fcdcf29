"""Reliability suite (not a test; loopback only, bounded in requests and time).

    .venv/bin/python bench/reliability.py [--fuzz 10000] [--overload-requests 100000] [--cases overload,...]
        [--out docs/reliability.md]

Starts the real service (`emoserve serve`, test detector + tiny classifier, a Redis of its own)
and runs:
- fuzzing: generated bad inputs across the REST endpoints and the WebSocket (random bytes,
  truncated JPEG/PNG, decompression bombs, huge declared dimensions, wrong content types,
  malformed multipart and JSON, bad options); zero 5xx, zero crashes, bounded RSS;
- overload: offered load at 4x the measured capacity; 429/503 with Retry-After, admitted p99
  within 3x the unloaded p99, RSS before/after;
- faults: Redis stopped and restarted during load; a corrupted artifact promoted (refused, the
  old version keeps serving); SIGTERM during load (in-flight requests finish, streams close 1001).
Prints a summary table and writes it (markdown) to --out.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import httpx
import numpy as np
from rich.console import Console
from rich.table import Table
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.attacks import run_attacks  # noqa: E402
from model_store import ModelStore  # noqa: E402
from tests.api_server import Server, free_port, run_server  # noqa: E402
from tests.helpers.tiny_models import publish_test_models, tiny_models_env  # noqa: E402


@dataclass
class CaseResult:
    case: str
    requests: int = 0
    failures: int = 0
    p99_ms: float | None = None
    rss_before_mb: float | None = None
    rss_after_mb: float | None = None
    notes: list[str] = field(default_factory=list)
    peak_rss_mb: float | None = None


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def p99(values: list[float]) -> float:
    return statistics.quantiles(values, n=100)[98] * 1000 if len(values) > 1 else float("nan")


# -- bad inputs ------------------------------------------------------------------------------
def _jpeg(rng: random.Random, w: int = 160, h: int = 120) -> bytes:
    img = np.frombuffer(rng.randbytes(w * h * 3), np.uint8).reshape(h, w, 3)
    return bytes(cv2.imencode(".jpg", img)[1])


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_bomb(side: int) -> bytes:
    """A valid PNG header declaring side x side RGB pixels, with a tiny compressed body."""
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    body = zlib.compress(b"\0" * 65536, 9)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", body) + _png_chunk(b"IEND", b"")


def bad_request(rng: random.Random) -> tuple[str, dict]:
    """(kind, httpx request kwargs incl. url) for one generated bad input."""
    jpg = _jpeg(rng)
    png = bytes(cv2.imencode(".png", np.zeros((40, 40, 3), np.uint8))[1])
    endpoint = rng.choice(["/v1/analyze", "/v1/annotate", "/v1/analyze/batch"])
    kinds: list[tuple[str, Callable[[], dict]]] = [
        (
            "random_bytes",
            lambda: {
                "content": rng.randbytes(rng.randint(0, 4096)),
                "headers": {"content-type": rng.choice(["image/jpeg", "image/png", "image/webp"])},
            },
        ),
        (
            "truncated_jpeg",
            lambda: {"content": jpg[: rng.randint(1, len(jpg) - 1)], "headers": {"content-type": "image/jpeg"}},
        ),
        (
            "truncated_png",
            lambda: {"content": png[: rng.randint(1, len(png) - 1)], "headers": {"content-type": "image/png"}},
        ),
        (
            "png_bomb",
            lambda: {
                "content": png_bomb(rng.choice([20_000, 50_000, 2**31 - 1])),
                "headers": {"content-type": "image/png"},
            },
        ),
        ("zero_dims", lambda: {"content": png_bomb(0), "headers": {"content-type": "image/png"}}),
        (
            "wrong_type",
            lambda: {
                "content": jpg,
                "headers": {
                    "content-type": rng.choice(
                        ["text/plain", "application/xml", "video/mp4", "image/gif", "application/octet-stream", ""]
                    )
                },
            },
        ),
        (
            "bad_multipart",
            lambda: {
                "content": rng.randbytes(200) + b"--zz--",
                "headers": {"content-type": rng.choice(["multipart/form-data; boundary=zz", "multipart/form-data"])},
            },
        ),
        ("multipart_wrong_field", lambda: {"files": {"nope": ("a.jpg", jpg, "image/jpeg")}}),
        (
            "bad_json",
            lambda: {
                "content": rng.choice(
                    [b"{", b"[]", b"null", b'{"image_base64": 5}', b'{"image_base64": "@@@"}', rng.randbytes(64)]
                ),
                "headers": {"content-type": "application/json"},
            },
        ),
        (
            "bad_options",
            lambda: {
                "content": jpg,
                "headers": {"content-type": "image/jpeg"},
                "params": {
                    rng.choice(["max_faces", "threshold", "min_face_size", "landmarks"]): rng.choice(
                        ["-1", "1e9", "abc", "", "NaN", "2.5"]
                    )
                },
            },
        ),
    ]
    kind, make = rng.choice(kinds)
    kw = make()
    if endpoint.endswith("batch") and "files" not in kw and kind == "multipart_wrong_field":
        kw = {"files": [("images", ("a.jpg", kw["files"]["nope"][1], "image/jpeg"))] * 2}
    return kind, {"url": endpoint, **kw}


async def fuzz_http(server: Server, n: int, seed: int) -> tuple[Counter[str], Counter[str]]:
    rng = random.Random(seed)
    statuses: Counter[str] = Counter()
    failures: Counter[str] = Counter()
    sem = asyncio.Semaphore(8)
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:

        async def one() -> None:
            kind, kw = bad_request(rng)
            async with sem:
                try:
                    r = await client.post(**kw)
                    statuses[str(r.status_code)] += 1
                    if r.status_code >= 500:
                        failures[f"{kind}:{r.status_code}"] += 1
                except httpx.HTTPError as exc:
                    failures[f"{kind}:{type(exc).__name__}"] += 1

        await asyncio.gather(*(one() for _ in range(n)))
    return statuses, failures


async def fuzz_ws(server: Server, n: int, seed: int) -> tuple[int, Counter[str]]:
    rng = random.Random(seed)
    failures: Counter[str] = Counter()
    sent = 0
    url = server.url.replace("http", "ws") + "/v1/stream"
    while sent < n:
        try:
            async with connect(url, compression=None, max_size=None) as ws:
                for _ in range(min(200, n - sent)):
                    sent += 1
                    choice = rng.random()
                    if choice < 0.4:
                        await ws.send(rng.randbytes(rng.randint(1, 3000)))
                    elif choice < 0.7:
                        await ws.send(
                            rng.choice(
                                [
                                    '{"type": "config", "threshold": 7}',
                                    "{",
                                    "[]",
                                    '{"type": "x"}',
                                    '{"type": "frame", "id": {}}',
                                    '{"type":"config","smoothing":-1}',
                                ]
                            )
                        )
                    else:
                        await ws.send(_jpeg(rng)[: rng.randint(10, 500)])
                    msg = json.loads(await asyncio.wait_for(ws.recv(), 10))
                    if msg.get("type") not in ("error", "result", "pong", "hello"):
                        failures[f"unexpected:{msg.get('type')}"] += 1
        except ConnectionClosed as exc:
            if exc.rcvd is None or exc.rcvd.code not in (1000, 1009):
                failures[f"closed:{exc.rcvd.code if exc.rcvd else None}"] += 1
        except (OSError, TimeoutError) as exc:
            failures[type(exc).__name__] += 1
    return sent, failures


# -- load ------------------------------------------------------------------------------------
async def closed_loop(url: str, body: bytes, concurrency: int, total: int) -> tuple[list[float], float, Counter[int]]:
    lat: list[float] = []
    codes: Counter[int] = Counter()
    left = total
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:

        async def worker() -> None:
            nonlocal left
            while left > 0:
                left -= 1
                t0 = time.perf_counter()
                r = await client.post("/v1/analyze", content=body, headers={"content-type": "image/jpeg"})
                lat.append(time.perf_counter() - t0)
                codes[r.status_code] += 1

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return lat, time.perf_counter() - t0, codes


async def open_loop(url: str, body: bytes, rate: float, total: int) -> tuple[list[float], Counter[int], int]:
    """Fire `total` requests at `rate`/s regardless of answers; latencies of the 200s."""
    admitted: list[float] = []
    codes: Counter[int] = Counter()
    missing_retry_after = 0
    limits = httpx.Limits(max_connections=512, max_keepalive_connections=512)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:

        async def one() -> None:
            nonlocal missing_retry_after
            t0 = time.perf_counter()
            try:
                r = await client.post("/v1/analyze", content=body, headers={"content-type": "image/jpeg"})
            except httpx.HTTPError:
                codes[-1] += 1
                return
            codes[r.status_code] += 1
            if r.status_code == 200:
                admitted.append(time.perf_counter() - t0)
            elif r.status_code in (429, 503) and not r.headers.get("retry-after"):
                missing_retry_after += 1

        tasks = []
        start = time.perf_counter()
        for i in range(total):
            delay = start + i / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one()))
        await asyncio.gather(*tasks)
    return admitted, codes, missing_retry_after


# -- cases -----------------------------------------------------------------------------------
def base_env(root: Path, **extra: str) -> dict[str, str]:
    return tiny_models_env(root, EMOSERVE_LOG_LEVEL="WARNING", **extra)


def case_fuzz(root: Path, work: Path, n: int) -> list[CaseResult]:
    with run_server(base_env(root, EMOSERVE_CACHE_TTL_S="0"), work) as s:
        pid = s.proc.pid
        before = rss_mb(pid)
        statuses, failures = asyncio.run(fuzz_http(s, n, seed=1))
        mid = rss_mb(pid)
        ws_sent, ws_failures = asyncio.run(fuzz_ws(s, max(1000, n // 10), seed=2))
        alive = httpx.get(s.url + "/healthz").status_code == 200
        after = rss_mb(pid)
    http = CaseResult(
        "fuzz: REST bad inputs",
        n,
        sum(failures.values()),
        None,
        before,
        mid,
        [f"statuses {dict(sorted(statuses.items()))}"] + [f"{k}: {v}" for k, v in failures.items()],
    )
    ws = CaseResult(
        "fuzz: WebSocket bad frames",
        ws_sent,
        sum(ws_failures.values()) + (0 if alive else 1),
        None,
        mid,
        after,
        [f"{k}: {v}" for k, v in ws_failures.items()] + ([] if alive else ["server died"]),
    )
    return [http, ws]


def wrk(url: str, body_file: Path, connections: int, seconds: float, delay_ms: float) -> dict[str, Any]:
    """Run Debian's wrk (one thread) with bench/wrk/post_image.lua; its JSON summary."""
    script = REPO / "bench" / "wrk" / "post_image.lua"
    cmd = ["taskset", "-c", "0", "wrk", "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--timeout", "30s",
           "-s", str(script), url, "--", str(body_file), f"{delay_ms:.2f}"]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    result["rate"] = result["requests"] / result["duration_s"]
    return result


def case_overload(root: Path, work: Path, total: int, body: bytes, max_inflight: int = 2) -> CaseResult:
    """Offered load at 4x capacity from wrk, the server alone on core 1, wrk and a latency probe on core 0.

    Capacity: wrk closed loop with `max_inflight` connections (all admitted). Overload: 64 paced wrk
    connections offering 4x that rate until `total` requests, while a probe sends 10 requests/s and
    times the admitted ones (wrk's own latency figures mix 200s with fast refusals).
    """
    if not shutil.which("wrk") or not shutil.which("taskset"):
        return CaseResult(
            "overload: 4x capacity", 0, 1, None, None, None, ["needs wrk and taskset: apt-get install wrk"]
        )
    os.sched_setaffinity(0, {0})  # this process (the probe) shares core 0 with wrk
    body_file = work / "overload.jpg"
    body_file.write_bytes(body)
    env = base_env(root, EMOSERVE_CACHE_TTL_S="0", EMOSERVE_MAX_INFLIGHT=str(max_inflight),
                   EMOSERVE_INTRA_OP_THREADS="1")  # fmt: skip
    try:
        with run_server(env, work, cpus="1") as s:
            pid = s.proc.pid
            unloaded, _, _ = asyncio.run(closed_loop(s.url, body, 1, 300))
            cap = wrk(s.url, body_file, max_inflight, 10, 0)
            capacity = cap["rate"]
            rate = 4 * capacity
            conns = 64
            trial = wrk(s.url, body_file, conns, 5, 1000 * conns / rate)  # warm-up, and calibrates the pacing
            delay = max(0.0, 1000 * conns / rate - (1000 * conns / trial["rate"] - 1000 * conns / rate))
            before = rss_mb(pid)
            seconds = total / rate

            async def both() -> tuple[dict[str, Any], tuple[list[float], Counter[int], int]]:
                load = asyncio.to_thread(wrk, s.url, body_file, conns, seconds, delay)
                probe = open_loop(s.url, body, 10, int(seconds * 10))
                return await asyncio.gather(load, probe)

            load, (admitted, probe_codes, probe_missing) = asyncio.run(both())
            after = rss_mb(pid)
            alive = httpx.get(s.url + "/readyz").status_code == 200
    finally:
        os.sched_setaffinity(0, set(range(os.cpu_count() or 1)))
    base_p99, adm_p99 = p99(unloaded), p99(admitted)
    statuses = {int(k): v for k, v in load["statuses"].items()}
    errors = sum(load["errors"].values()) + probe_codes.get(-1, 0)
    bad_codes = sum(v for k, v in statuses.items() if k not in (200, 429, 503)) + sum(
        v for k, v in probe_codes.items() if k not in (-1, 200, 429, 503)
    )
    missing = load["missing_retry_after"] + probe_missing
    growth = after - before
    checks = {
        "offered >= 4x capacity": load["rate"] >= 3.8 * capacity,
        "only 200/429/503, no socket errors": errors == 0 and bad_codes == 0,
        "every refusal has Retry-After": missing == 0,
        "admitted p99 <= 3x unloaded p99": adm_p99 <= 3 * base_p99,
        "RSS growth < 25 MB": growth < 25,
        "still ready": alive,
    }
    notes = [
        f"server on 1 core (MAX_INFLIGHT {max_inflight}); capacity {capacity:.0f} req/s; offered "
        f"{load['rate']:.0f} req/s ({load['rate'] / capacity:.1f}x) for {load['duration_s']:.0f} s by wrk",
        f"wrk codes {dict(sorted(statuses.items()))}; probe codes {dict(sorted(probe_codes.items()))}",
        f"unloaded p99 {base_p99:.1f} ms, admitted p99 (probe, n={len(admitted)}) {adm_p99:.1f} ms "
        f"({adm_p99 / base_p99:.2f}x); RSS {growth:+.1f} MB over {load['requests']} requests",
    ] + [f"FAILED: {k}" for k, ok in checks.items() if not ok]
    failures = sum(not ok for ok in checks.values())
    return CaseResult("overload: 4x capacity", load["requests"], failures, adm_p99, before, after, notes)


def case_redis(root: Path, work: Path, body: bytes) -> CaseResult:
    port = free_port()
    cmd = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    redis_proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)
    time.sleep(0.5)
    env = base_env(
        root,
        EMOSERVE_REDIS_URL=f"redis://127.0.0.1:{port}/0",
        EMOSERVE_RATE_LIMIT_PER_S="100000",
        EMOSERVE_RATE_LIMIT_BURST="100000",
    )
    codes: Counter[int] = Counter()
    lat: list[float] = []
    try:
        with run_server(env, work) as s, httpx.Client(base_url=s.url, timeout=30) as c:
            before = rss_mb(s.proc.pid)
            for phase in ("up", "down", "up-again"):
                if phase == "down":
                    redis_proc.terminate()
                    redis_proc.wait(10)
                if phase == "up-again":
                    redis_proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)
                    time.sleep(1.5)
                for _ in range(150):
                    t0 = time.perf_counter()
                    codes[c.post("/v1/analyze", content=body, headers={"content-type": "image/jpeg"}).status_code] += 1
                    lat.append(time.perf_counter() - t0)
            redis_state = c.get("/readyz").json()["redis"]
            after = rss_mb(s.proc.pid)
    finally:
        redis_proc.kill()
    failures = sum(v for k, v in codes.items() if k != 200) + (0 if redis_state == "ok" else 1)
    return CaseResult(
        "fault: Redis stopped and restarted",
        sum(codes.values()),
        failures,
        p99(lat),
        before,
        after,
        [f"codes {dict(codes)}", f"redis after restart: {redis_state}"],
    )


def case_corrupt(root: Path, work: Path, body: bytes) -> CaseResult:
    store = ModelStore(root, shipped=None)
    v2 = store.get("tiny-emotion@2").model_path
    data = bytearray(v2.read_bytes())
    data[len(data) // 2] ^= 0xFF
    v2.write_bytes(bytes(data))
    env = base_env(root, EMOSERVE_ADMIN_KEYS='["admin"]')
    with run_server(env, work) as s, httpx.Client(base_url=s.url, timeout=30, headers={"X-API-Key": "admin"}) as c:
        put = c.put("/v1/models/tiny-emotion/aliases/production", json={"version": 2})
        after = c.post("/v1/analyze", content=body, headers={"content-type": "image/jpeg"})
    refused = put.status_code == 409 and put.json()["error"]["code"] == "artifact_corrupt"
    serving_v1 = after.status_code == 200 and after.json()["models"]["classifier"]["version"] == 1
    return CaseResult(
        "fault: corrupted artifact promoted",
        2,
        int(not refused) + int(not serving_v1),
        None,
        None,
        None,
        [
            f"PUT -> {put.status_code} {put.json()['error']['code'] if put.status_code != 200 else ''}",
            f"still serving v{after.json()['models']['classifier']['version']}",
        ],
    )


def case_sigterm(root: Path, work: Path, body: bytes) -> CaseResult:
    results: list[int | str] = []
    close_code: list[int | None] = []

    async def scenario(s: Server) -> None:
        url = s.url.replace("http", "ws") + "/v1/stream"
        async with httpx.AsyncClient(base_url=s.url, timeout=30) as client, connect(url, compression=None) as ws:
            await ws.send(body)
            while json.loads(await ws.recv())["type"] == "hello":  # the server's first message
                pass

            async def req() -> None:
                try:
                    r = await client.post("/v1/analyze", content=body, headers={"content-type": "image/jpeg"})
                    results.append(r.status_code)
                except httpx.HTTPError as exc:
                    results.append(type(exc).__name__)

            tasks = [asyncio.create_task(req()) for _ in range(40)]
            await asyncio.sleep(0.05)  # requests are in flight
            s.proc.send_signal(signal.SIGTERM)
            await asyncio.gather(*tasks)
            try:
                while True:
                    await asyncio.wait_for(ws.recv(), 15)
            except ConnectionClosed as exc:
                close_code.append(exc.rcvd.code if exc.rcvd else None)

    with run_server(base_env(root, EMOSERVE_CACHE_TTL_S="0"), work) as s:
        asyncio.run(scenario(s))
        s.proc.wait(30)
    # requests sent after the listener closed may be refused (connection error): that is not a
    # lost accepted request; an accepted one must finish with 200 or a 503 saying the server stops
    lost = sum(1 for r in results if isinstance(r, int) and r not in (200, 503))
    return CaseResult(
        "fault: SIGTERM during load",
        len(results),
        lost + (0 if close_code == [1001] else 1),
        None,
        None,
        None,
        [f"results {dict(Counter(map(str, results)))}", f"stream closed with {close_code}"],
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fuzz", type=int, default=10_000)
    ap.add_argument("--overload-requests", type=int, default=100_000)
    ap.add_argument("--out", type=Path, default=REPO / "docs" / "reliability.md")
    ap.add_argument("--cases", default="fuzz,overload,redis,sigterm,corrupt,attacks", help="comma-separated subset")
    args = ap.parse_args()
    cases = set(args.cases.split(","))
    if shutil.which("redis-server") is None:
        sys.exit("needs redis-server")
    rng = random.Random(0)
    body = _jpeg(rng, 320, 240)
    results: list[CaseResult] = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        root = publish_test_models(work, classifier_versions=2)  # v2 = same weights
        started = time.time()
        if "fuzz" in cases:
            results += case_fuzz(root, work, args.fuzz)
        if "overload" in cases:
            results.append(case_overload(root, work, args.overload_requests, _jpeg(rng, 640, 480)))
        if "redis" in cases:
            results.append(case_redis(root, work, body))
        if "sigterm" in cases:
            results.append(case_sigterm(root, work, body))
        if "corrupt" in cases:
            results.append(case_corrupt(root, work, body))
        if "attacks" in cases:
            for o in run_attacks(work / "attacks"):
                results.append(CaseResult(o.case, o.requests, o.failures, notes=o.notes, peak_rss_mb=o.peak_rss_mb))
        took = time.time() - started
    table = Table(title=f"reliability suite ({took:.0f} s)")
    cols = ("case", "requests", "failures", "p99 ms", "RSS before MB", "RSS after MB", "peak RSS MB", "notes")
    for col in cols:
        table.add_column(col, overflow="fold")

    def fmt(v: float | None) -> str:
        return "-" if v is None else f"{v:.1f}"

    rows = [
        [
            r.case,
            str(r.requests),
            str(r.failures),
            fmt(r.p99_ms),
            fmt(r.rss_before_mb),
            fmt(r.rss_after_mb),
            fmt(r.peak_rss_mb),
            "; ".join(r.notes),
        ]
        for r in results
    ]
    for row in rows:
        table.add_row(*row)
    Console(width=200).print(table)
    write_table(args.out, cols, rows)
    sys.exit(1 if any(r.failures for r in results) else 0)


def write_table(path: Path, cols: tuple[str, ...], rows: list[list[str]]) -> None:
    """Put `rows` into the results table of `path` (the first markdown table), replacing the rows of the
    same cases and keeping the others (a run of some cases updates only theirs); the prose stays."""
    lines = path.read_text().splitlines() if path.exists() else ["# Reliability suite", ""]
    start = next((i for i, line in enumerate(lines) if line.startswith("| case |")), len(lines))
    end = start
    while end < len(lines) and lines[end].startswith("|"):
        end += 1
    fresh = {r[0] for r in rows}
    kept = []
    for line in lines[start + 2 : end]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        if cells[0] not in fresh:
            kept.append(cells[:-1] + ["-"] * (len(cols) - len(cells)) + cells[-1:])  # older tables lack columns
    table = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    table += ["| " + " | ".join(r) + " |" for r in kept + rows]
    path.write_text("\n".join(lines[:start] + table + lines[end:]) + "\n")


if __name__ == "__main__":
    main()
