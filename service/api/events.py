"""Model events across replicas: a store change is published on a Redis channel and every replica
(this one included) reloads. Without Redis, store events reload this process directly."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging

from redis.exceptions import RedisError

from model_store import StoreEvent
from service.api.model_manager import ModelManager
from service.api.redis_link import RedisLink

log = logging.getLogger("emoserve.events")
CHANNEL = "emoserve:model-events"


def encode(event: StoreEvent) -> str:
    return json.dumps({"kind": event.kind, "name": event.name, "version": event.version, "alias": event.alias})


def publish_sync(redis_url: str, event: StoreEvent) -> bool:
    """Announce a store change made outside the service (e.g. `emoserve models promote`)."""
    import redis

    try:
        client = redis.Redis.from_url(redis_url, socket_connect_timeout=2, socket_timeout=2)
        client.publish(CHANNEL, encode(event))
        client.close()
    except (RedisError, OSError) as exc:
        log.warning("could not announce %s on %s: %s", event, redis_url, exc)
        return False
    return True


class ModelEvents:
    """Publishes local store events and reloads on events from any replica."""

    def __init__(self, manager: ModelManager, redis: RedisLink | None) -> None:
        self.manager = manager
        self.redis = redis
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.manager.store.subscribe(self._on_store_event)
        if self.redis is not None:
            self._task = asyncio.create_task(self._listen(), name="model-events")

    def _on_store_event(self, event: StoreEvent) -> None:
        """Called from the thread that changed the store."""
        assert self._loop is not None
        asyncio.run_coroutine_threadsafe(self._dispatch(event), self._loop)

    async def _dispatch(self, event: StoreEvent) -> None:
        if self.redis is not None:
            sent = await self.redis.run("publish", lambda c: c.publish(CHANNEL, encode(event)))
            if sent is not None:
                return  # our own subscriber receives it too
        await self._reload(event)

    async def _reload(self, event: StoreEvent) -> None:
        if event.kind not in ("alias", "publish"):
            return
        watched = {ref.partition("@")[0] for ref in self.manager.refs.values()}
        if event.name not in watched:
            return
        try:
            await self.manager.reload()
        except Exception as exc:  # the old models keep serving; the reason is logged and kept
            log.error("reload after %s failed: %s", event, exc)

    async def _listen(self) -> None:
        assert self.redis is not None
        while True:
            try:
                pubsub = self.redis.client.pubsub()
                await pubsub.subscribe(CHANNEL)
                log.info("listening for model events on %s", CHANNEL)
                async for message in pubsub.listen():
                    if message.get("type") != "message":
                        continue
                    data = json.loads(message["data"])
                    await self._reload(StoreEvent(data["kind"], data["name"], data.get("version"), data.get("alias")))
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError, ValueError) as exc:
                log.warning("model-event subscription lost (%s); retrying in 1 s", exc)
                await asyncio.sleep(1.0)
                # after reconnecting, catch up on anything missed while Redis was away
                with contextlib.suppress(Exception):
                    await self.manager.reload()

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
