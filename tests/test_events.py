"""Cross-replica model events: the listener survives anything published on the channel."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
import redis

from model_store import ModelStore, StoreEvent
from service.serving import events as events_mod
from service.serving.events import CHANNEL, ModelEvents, decode, publish_sync
from service.serving.metrics import Metrics
from service.serving.model_manager import ModelManager
from service.serving.redis_link import RedisLink
from tests.api_server import run_server
from tests.helpers.tiny_models import publish_test_models, tiny_models_env

GARBAGE: list[bytes | str] = [
    '{"x": 1}',  # first: a KeyError used to end the listener for good
    "not json",
    b"\xff\xfe\x00",
    "[1, 2, 3]",
    "null",
    '"a string"',
    '{"kind": "alias"}',
    '{"name": "tiny-emotion"}',
    '{"kind": "alias", "name": 5}',
    '{"kind": ["alias"], "name": "tiny-emotion"}',
    '{"kind": "alias", "name": "tiny-emotion", "version": "two"}',
    '{"kind": "alias", "name": "tiny-emotion", "version": 2, "alias": {"a": 1}}',
]


def metric(text: str, name: str) -> float | None:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return None


@pytest.mark.parametrize("raw", GARBAGE)
def test_decode_refuses_garbage_with_value_error(raw: bytes | str) -> None:
    with pytest.raises(ValueError):
        decode(raw)


def test_decode_reads_a_real_event() -> None:
    event = StoreEvent("alias", "tiny-emotion", 2, "production")
    assert decode(events_mod.encode(event).encode()) == event


def test_replica_reloads_after_garbage_events(private_redis_url: str, tmp_path: Path) -> None:
    root = publish_test_models(tmp_path, classifier_versions=2)  # production = v1
    env = tiny_models_env(root, EMOSERVE_REDIS_URL=private_redis_url)
    with run_server(env, tmp_path) as s, s.client() as c:
        publisher = redis.Redis.from_url(private_redis_url)
        for raw in GARBAGE:
            assert publisher.publish(CHANNEL, raw) == 1  # the server's listener is subscribed
        deadline = time.monotonic() + 10
        while s.logs().count("ignored a malformed model event") < len(GARBAGE):
            assert time.monotonic() < deadline, "the garbage events were not all logged"
            time.sleep(0.05)
        # a real promotion made elsewhere (the CLI's way): change the store, announce it
        ModelStore(root, shipped=None).set_alias("tiny-emotion", "production", 2)
        assert publish_sync(private_redis_url, StoreEvent("alias", "tiny-emotion", 2, "production"))
        deadline = time.monotonic() + 15
        while c.get("/v1/models").json()["loaded"]["classifier"]["version"] != 2:
            assert time.monotonic() < deadline, "the replica never reloaded after the garbage events"
            time.sleep(0.1)
        ready = c.get("/readyz").json()
        up = metric(c.get("/metrics").text, "emoserve_model_events_listener_up")
        publisher.close()
    logs = s.logs()
    assert ready["model_events"] == "listening" and up == 1
    assert logs.count("ignored a malformed model event") == len(GARBAGE)
    assert "Traceback" not in logs and "subscription lost" not in logs


def test_a_dead_listener_is_restarted_and_visible(
    private_redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """If the listener task ends for any reason, the gauge and `state` say so and it comes back."""
    monkeypatch.setattr(events_mod, "RESTART_BACKOFF_S", (0.5,))

    async def main() -> tuple[list[str], list[float], list[str]]:
        metrics = Metrics()
        link = RedisLink(private_redis_url, metrics)
        store = ModelStore(tmp_path / "store", shipped=None)

        async def no_pipeline(detector: str, classifier: str) -> Any:
            raise AssertionError("no reload expected")

        events = ModelEvents(ModelManager(store, no_pipeline, "d@production", "c@production"), link)
        seen: list[str] = []
        original = events._on_message

        async def crash_once(message: dict[str, Any]) -> None:
            if message.get("type") == "message":
                seen.append(message["data"].decode())
                if len(seen) == 1:
                    raise RuntimeError("a bug in the handler")
            await original(message)

        monkeypatch.setattr(events, "_on_message", crash_once)
        states, gauge = [], []

        def sample() -> None:
            states.append(events.state or "none")
            gauge.append(metrics.registry.get_sample_value("emoserve_model_events_listener_up") or 0.0)

        async def wait_listening() -> None:
            for _ in range(100):
                if events.listening:
                    return
                await asyncio.sleep(0.05)
            raise AssertionError("the listener never (re)started")

        events.start()
        await wait_listening()
        sample()
        await link.client.publish(CHANNEL, '{"kind": "remove", "name": "first"}')
        for _ in range(100):
            if not events.listening:
                break
            await asyncio.sleep(0.01)
        sample()
        await wait_listening()
        sample()
        await link.client.publish(CHANNEL, '{"kind": "remove", "name": "second"}')
        for _ in range(100):
            if len(seen) == 2:
                break
            await asyncio.sleep(0.05)
        sample()
        await events.aclose()
        await link.close()
        return states, gauge, seen

    states, gauge, seen = asyncio.run(main())
    assert states == ["listening", "down", "listening", "listening"]
    assert gauge == [1, 0, 1, 1]
    assert len(seen) == 2 and "second" in seen[1]
