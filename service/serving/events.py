"""Model events across replicas: a store change is published on a Redis channel and every replica
(this one included) reloads. Without Redis, store events reload this process directly.

The listener must outlive anything published on the channel: a message that is not a well-formed
event is logged (one line) and skipped. Should the listener task end anyway, a supervisor restarts
it with backoff; `listening` and the gauge `emoserve_model_events_listener_up` say whether it runs."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import Any, Literal, cast

from redis.exceptions import RedisError

from model_store import StoreEvent
from service.serving.metrics import Metrics
from service.serving.model_manager import ModelManager
from service.serving.redis_link import RedisLink

log = logging.getLogger("emoserve.events")
CHANNEL = "emoserve:model-events"
EVENT_KINDS = ("publish", "alias", "remove")
RESTART_BACKOFF_S = (1.0, 2.0, 4.0, 8.0, 16.0, 30.0)
SHOWN_CHARS = 200  # how much of a bad message a warning shows


def encode(event: StoreEvent) -> str:
    return json.dumps({"kind": event.kind, "name": event.name, "version": event.version, "alias": event.alias})


def decode(raw: Any) -> StoreEvent:
    """The event a channel message carries; ValueError (naming the problem) for anything else."""
    try:
        text = raw.decode() if isinstance(raw, bytes) else raw
        data = json.loads(text)
    except (UnicodeDecodeError, TypeError, ValueError) as exc:
        raise ValueError(f"not JSON ({exc})") from None
    if not isinstance(data, dict):
        raise ValueError(f"a JSON {type(data).__name__}, not an object")
    kind, name = data.get("kind"), data.get("name")
    version, alias = data.get("version"), data.get("alias")
    if kind not in EVENT_KINDS:
        raise ValueError(f"`kind` must be one of {', '.join(EVENT_KINDS)}")
    if not isinstance(name, str):
        raise ValueError("`name` must be a string")
    if version is not None and (not isinstance(version, int) or isinstance(version, bool)):
        raise ValueError("`version` must be an integer or null")
    if alias is not None and not isinstance(alias, str):
        raise ValueError("`alias` must be a string or null")
    return StoreEvent(cast(Literal["publish", "alias", "remove"], kind), name, version, alias)


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
        self.metrics: Metrics | None = redis.metrics if redis is not None else None
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.listening = False
        self.restarts = 0

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.manager.store.subscribe(self._on_store_event)
        if self.redis is not None:
            self._task = asyncio.create_task(self._supervise(), name="model-events")

    @property
    def state(self) -> str | None:
        """For /readyz: None without Redis, else "listening" or "down"."""
        if self.redis is None:
            return None
        return "listening" if self.listening else "down"

    def _set_listening(self, up: bool) -> None:
        self.listening = up
        if self.metrics is not None:
            self.metrics.model_events_listener_up.set(1 if up else 0)

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

    async def _on_message(self, message: dict[str, Any]) -> None:
        """Handle one pub/sub message; a malformed one is logged and skipped."""
        if message.get("type") != "message":
            return
        raw = message.get("data")
        try:
            event = decode(raw)
        except ValueError as exc:
            log.warning("ignored a malformed model event on %s: %s: %.*r", CHANNEL, exc, SHOWN_CHARS, raw)
            return
        await self._reload(event)

    async def _supervise(self) -> None:
        """Run the listener; restart it with backoff if it ever ends."""
        while True:
            try:
                await self._listen()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("model-event listener died; restarting it")
            finally:
                self._set_listening(False)
            delay = RESTART_BACKOFF_S[min(self.restarts, len(RESTART_BACKOFF_S) - 1)]
            self.restarts += 1
            await asyncio.sleep(delay)

    async def _listen(self) -> None:
        assert self.redis is not None
        while True:
            pubsub = self.redis.client.pubsub()
            try:
                await pubsub.subscribe(CHANNEL)
                self._set_listening(True)
                self.restarts = 0  # listening again: the next failure starts the backoff afresh
                log.info("listening for model events on %s", CHANNEL)
                async for message in pubsub.listen():
                    await self._on_message(message)
            except (RedisError, OSError) as exc:
                self._set_listening(False)
                log.warning("model-event subscription lost (%s); retrying in 1 s", exc)
                await asyncio.sleep(1.0)
                # after reconnecting, catch up on anything missed while Redis was away
                with contextlib.suppress(Exception):
                    await self.manager.reload()
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
