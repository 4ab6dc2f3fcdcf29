"""Start the real service (`python -m emoserve_cli serve`) on a free loopback port for tests."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
TEST_PLUGIN = '["tests.helpers.tiny_models:register_test_detector"]'


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    url: str
    proc: subprocess.Popen[bytes]
    log: Path

    def client(self, **kw: object) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=30, **kw)  # type: ignore[arg-type]

    def logs(self) -> str:
        return self.log.read_text(errors="replace")


@contextmanager
def run_server(
    env: dict[str, str], log_dir: Path, *, ready: bool = True, workers: int = 1, cpus: str | None = None
) -> Iterator[Server]:
    """Start `emoserve serve` on a free loopback port (pinned to `cpus`, e.g. "1", when given); wait until ready."""
    port = free_port()
    full = {k: v for k, v in os.environ.items() if not k.startswith("EMOSERVE_")}
    full.update({"EMOSERVE_PLUGINS": TEST_PLUGIN, "PYTHONPATH": str(REPO), "EMOSERVE_LOG_LEVEL": "INFO", **env})
    log = log_dir / f"server-{port}.log"
    with open(log, "wb") as fh:
        proc = subprocess.Popen(
            [
                *(["taskset", "-c", cpus] if cpus else []),
                sys.executable,
                "-m",
                "emoserve_cli",
                "serve",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--workers",
                str(workers),
            ],
            cwd=REPO,
            env=full,
            stdout=fh,
            stderr=subprocess.STDOUT,
        )
    server = Server(f"http://127.0.0.1:{port}", proc, log)
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited with {proc.returncode}:\n{server.logs()}")
            try:
                r = httpx.get(server.url + ("/readyz" if ready else "/healthz"), timeout=2)
                if r.status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"server not ready in 60 s:\n{server.logs()}")
            time.sleep(0.1)
        yield server
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


@contextmanager
def redis_server() -> Iterator[str]:
    """A `redis-server` of its own on a free loopback port (nothing saved); yields its URL once it answers."""
    import redis

    port = free_port()
    cmd = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)
    url = f"redis://127.0.0.1:{port}/0"
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                redis.Redis.from_url(url, socket_connect_timeout=1).ping()
                break
            except redis.RedisError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError("redis-server did not start") from None
                time.sleep(0.05)
        yield url
    finally:
        proc.kill()
        proc.wait(10)
