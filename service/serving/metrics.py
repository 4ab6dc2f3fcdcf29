"""Prometheus metrics with the contract's names. Works with several uvicorn workers through
prometheus-client's multiprocess mode (PROMETHEUS_MULTIPROC_DIR, set by `emoserve serve`)."""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, multiprocess
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from service.pipeline.schema import AnalysisResult

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1, 0.25, 0.5, 1, 2.5, 5)
UNMATCHED = "unmatched"  # the `endpoint` label of every path that is not one of the app's route templates


class EndpointLabelled:
    """A metric labelled by `endpoint`, whose values are kept to the app's route templates
    (`Metrics.add_endpoints`); any other path, e.g. a raw request path, is counted as `unmatched`."""

    def __init__(self, metric: Counter | Histogram, endpoints: set[str]) -> None:
        self.metric = metric
        self.endpoints = endpoints

    def labels(self, endpoint: str, **labels: str) -> Any:
        return self.metric.labels(endpoint=endpoint if endpoint in self.endpoints else UNMATCHED, **labels)


class Metrics:
    """All of the service's metrics, registered on one registry."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        r = self.registry
        self.endpoints: set[str] = set()  # route templates, the only `endpoint` label values besides UNMATCHED
        self.requests = EndpointLabelled(
            Counter("emoserve_requests_total", "HTTP requests", ["endpoint", "code"], registry=r), self.endpoints
        )
        self.request_duration = EndpointLabelled(
            Histogram(
                "emoserve_request_duration_seconds",
                "Request latency",
                ["endpoint"],
                buckets=LATENCY_BUCKETS,
                registry=r,
            ),
            self.endpoints,
        )
        self.stage_duration = Histogram(
            "emoserve_stage_duration_seconds", "Pipeline stage latency", ["stage"], buckets=LATENCY_BUCKETS, registry=r
        )
        self.batch_size = Histogram(
            "emoserve_batch_size",
            "Items per inference batch",
            ["model"],
            buckets=(1, 2, 4, 8, 16, 32, 64, 128),
            registry=r,
        )
        self.faces_per_image = Histogram(
            "emoserve_faces_per_image", "Faces found per image", buckets=(0, 1, 2, 3, 5, 8, 13, 21, 34), registry=r
        )
        self.emotions = Counter("emoserve_emotions_total", "Faces classified, by label", ["label"], registry=r)
        self.inflight = Gauge(
            "emoserve_inflight_requests", "Requests being processed", multiprocess_mode="livesum", registry=r
        )
        self.queue_depth = Gauge(
            "emoserve_queue_depth", "Items waiting in a batcher", ["model"], multiprocess_mode="livesum", registry=r
        )
        self.model_info = Gauge(
            "emoserve_model_info",
            "Loaded models (value 1)",
            ["role", "name", "version", "provider"],
            multiprocess_mode="livemax",
            registry=r,
        )
        self.cache_requests = Counter("emoserve_cache_requests_total", "Result cache lookups", ["result"], registry=r)
        self.rate_limited = Counter("emoserve_rate_limited_total", "Requests refused by the rate limiter", registry=r)
        self.redis_errors = Counter(
            "emoserve_redis_errors_total",
            "Redis operations that failed (the service degraded)",
            ["operation"],
            registry=r,
        )
        self.model_events_listener_up = Gauge(
            "emoserve_model_events_listener_up",
            "1 while this process listens for cross-replica model events on Redis, else 0",
            multiprocess_mode="livemin",
            registry=r,
        )

        self.ws_connections = Gauge(
            "emoserve_ws_connections", "Open WebSocket streams", multiprocess_mode="livesum", registry=r
        )
        self.ws_frames = Counter(
            "emoserve_ws_frames_total",
            "Stream frames by outcome (processed, dropped, invalid)",
            ["outcome"],
            registry=r,
        )
        self.ws_frame_latency = Histogram(
            "emoserve_ws_frame_latency_seconds",
            "Stream frame latency, from its arrival to its result",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )

    def add_endpoints(self, templates: Iterable[str]) -> None:
        """Route templates (never raw request paths) that may appear as `endpoint` labels."""
        self.endpoints.update(templates)

    def observe_result(self, result: AnalysisResult) -> None:
        """Stage times, faces per image and emotions of one analysis (a request's or a stream frame's)."""
        t = result.timings_ms
        for stage in ("decode", "queue", "detect", "align", "classify"):
            self.stage_duration.labels(stage=stage).observe(getattr(t, stage) / 1000.0)
        self.faces_per_image.observe(len(result.faces))
        for face in result.faces:
            self.emotions.labels(label=face.emotion.label).inc()

    def set_models(self, models: dict[str, tuple[str, int, str]]) -> None:
        """`models` maps role -> (name, version, provider); replaces the previous info series."""
        self.model_info.clear()
        for role, (name, version, provider) in models.items():
            self.model_info.labels(role=role, name=name, version=str(version), provider=provider).set(1)

    def exposition(self) -> tuple[bytes, str]:
        """The text to serve at /metrics (aggregated over workers in multiprocess mode)."""
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
            return generate_latest(registry), CONTENT_TYPE_LATEST
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
