"""The emotion classifier: manifest-driven preprocessing, batched inference, calibrated probabilities
(`model_store.tensors` says how outputs become probabilities, for the training job too)."""

from __future__ import annotations

import itertools
from typing import NamedTuple

import numpy as np

from model_store.manifest import ServingHints
from model_store.store import ResolvedModel
from model_store.tensors import probabilities
from service.pipeline.align import Preprocessor
from service.runtime.batcher import DynamicBatcher, Timed
from service.runtime.sessions import ModelSession
from service.settings import Settings


class Scores(NamedTuple):
    """A batch's probabilities (N, labels) and, when the model explains, its class activation maps (N, labels, h, w)."""

    probs: np.ndarray
    cams: np.ndarray | None = None

    def rows(self, start: int, stop: int) -> Scores:
        return Scores(self.probs[start:stop], None if self.cams is None else self.cams[start:stop])


def join_scores(parts: list[Scores]) -> Scores:
    """Consecutive batches' scores as one."""
    cams = [p.cams for p in parts]
    joined: np.ndarray | None = None
    if all(c is not None for c in cams):
        joined = np.concatenate(cams)  # type: ignore[arg-type]
    return Scores(np.concatenate([p.probs for p in parts]), joined)


def chunks(batch: np.ndarray, size: int) -> list[np.ndarray]:
    """`batch` cut into consecutive pieces of at most `size` rows."""
    return [batch[i : i + size] for i in range(0, len(batch), size)]


class EmotionClassifier:
    """Runs one classifier model; `classify` batches faces across callers through a `DynamicBatcher`."""

    def __init__(self, model: ResolvedModel, session: ModelSession, settings: Settings) -> None:
        manifest = model.manifest
        if manifest.task != "emotion_classifier" or not manifest.labels:
            raise ValueError(f"{model.ref} is a {manifest.task}, not an emotion classifier with labels")
        self.model = model
        self.session = session
        self.labels: list[str] = list(manifest.labels)
        self.temperature = manifest.temperature
        self.preprocessor = Preprocessor.from_manifest(manifest)
        self.output_name = manifest.outputs[0].name if manifest.outputs else session.output_names[0]
        if self.output_name not in session.output_names:
            self.output_name = session.output_names[0]
        explain = manifest.explain
        if explain and explain.output not in session.output_names:
            raise ValueError(f"{model.ref}: its manifest's explain output {explain.output!r} is not in the graph")
        self.cam_output = explain.output if explain else None
        hints = manifest.serving or ServingHints()  # per model; the settings are defaults and ceilings
        delay = hints.max_delay_ms
        self.batcher: DynamicBatcher[np.ndarray, Scores] = DynamicBatcher(
            self.run_many,
            max_batch=min(settings.max_batch, hints.max_batch or settings.max_batch),
            max_delay_ms=settings.max_delay_ms if delay is None else delay,
            queue_size=min(settings.queue_size, hints.queue_size or settings.queue_size),
            size_of=len,
            split=chunks,
            join=join_scores,
            executor=session.executor,
            name=f"classifier {model.ref}",
        )

    @property
    def name(self) -> str:
        return self.model.manifest.name

    @property
    def version(self) -> int:
        return self.model.manifest.version

    @property
    def can_explain(self) -> bool:
        """True when the model outputs class activation maps (its manifest's `explain`)."""
        return self.cam_output is not None

    def postprocess(self, raw: np.ndarray) -> np.ndarray:
        """Model output (N, labels) -> probabilities (N, labels), float64 rows summing to 1."""
        out = np.asarray(raw).reshape(len(raw), -1)
        if out.shape[1] != len(self.labels):
            raise ValueError(f"{self.model.ref} outputs {out.shape[1]} values per face for {len(self.labels)} labels")
        return probabilities(self.model.manifest, out)

    def empty(self) -> Scores:
        return Scores(np.zeros((0, len(self.labels))), None)

    def run_many(self, batches: list[np.ndarray]) -> list[Scores]:
        """Several callers' batches in one model call; each gets its own rows back (the batcher's function)."""
        sizes = [len(b) for b in batches]
        scores = self.run(np.concatenate(batches)) if sum(sizes) else self.empty()
        bounds = np.cumsum([0, *sizes])
        return [scores.rows(int(a), int(b)) for a, b in itertools.pairwise(bounds)]

    def run(self, batch: np.ndarray) -> Scores:
        """Synchronous: a preprocessed batch (N, ...) -> probabilities (N, labels) and maps, in model calls of at
        most `max_batch` faces. The maps come with every call: in the graph they cost next to nothing."""
        if len(batch) == 0:
            return self.empty()
        feed = self.session.input_names[0]
        names = [self.output_name] + ([self.cam_output] if self.cam_output else [])
        outs = [self.session.run(names, {feed: part}) for part in chunks(batch, self.batcher.max_batch)]
        probs = self.postprocess(np.concatenate([o[0] for o in outs]))
        cams = np.concatenate([o[1] for o in outs]) if self.cam_output else None
        return Scores(probs, cams)

    async def classify(self, batch: np.ndarray) -> Timed[Scores]:
        """Probabilities (and maps) of one image's faces, batched with other callers; with queue/run times."""
        if len(batch) == 0:
            return Timed(self.empty(), 0.0, 0.0, 0)
        return await self.batcher.submit_timed(batch)

    async def aclose(self) -> None:
        await self.batcher.aclose()
