"""Builds serving pipelines for the model manager and wires their batchers to the metrics."""

from __future__ import annotations

from model_store import ModelStore
from service.pipeline.analyze import Pipeline
from service.serving.metrics import Metrics
from service.serving.model_manager import PipelineFactory, ServingPipeline
from service.settings import Settings


def build_pipeline_factory(settings: Settings, store: ModelStore, metrics: Metrics) -> PipelineFactory:
    """A factory loading (and warming) a pipeline for pinned refs, its batcher observed by the metrics."""

    async def factory(detector_ref: str, classifier_ref: str) -> ServingPipeline:
        pipeline = await Pipeline.aload(settings, store=store, detector_ref=detector_ref, classifier_ref=classifier_ref)
        batcher = pipeline.classifier.batcher
        label = pipeline.classifier.name

        def observe(items: int, units: int, seconds: float) -> None:
            metrics.batch_size.labels(model=label).observe(units)
            metrics.queue_depth.labels(model=label).set(batcher.queue_depth)

        batcher.observers.append(observe)
        return pipeline

    return factory
