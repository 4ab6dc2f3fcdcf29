"""The pipeline: decode -> detect (thread) -> align -> classify (dynamic batcher) -> `AnalysisResult`."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from model_store import ModelNotFound, ModelStore, ResolvedModel
from service.errors import ExplanationUnavailable, InvalidImage
from service.pipeline.classifier import EmotionClassifier, Scores
from service.pipeline.decode import Decoded, decode_scaled
from service.pipeline.detectors import DetectedFace, FaceDetector, create_detector
from service.pipeline.explain import explanation
from service.pipeline.schema import (
    AnalysisResult,
    AnalyzeOptions,
    Box,
    Emotion,
    Face,
    ImageSize,
    ModelInfo,
    ModelsUsed,
    Timings,
    parse_options,
)
from service.pipeline.stream_reuse import (
    FaceReuse,
    ReusePolicy,
    StreamState,
    TrackedFace,
    clear,
    flow_scale,
    follow,
    followable,
    grey_for_flow,
    match_previous,
    needs_classifying,
    stale,
    thumbnail,
    unconfirmed,
)
from service.runtime.sessions import SessionPool
from service.settings import Settings

ImageInput = bytes | bytearray | memoryview | np.ndarray
OptionsInput = AnalyzeOptions | Mapping[str, Any] | None

NO_CLASSIFIER_HINT = (
    "no emotion classifier in the store: train one with `emoserve train ... --publish` "
    "or publish one with `emoserve models publish`"
)


@dataclass
class _Prepared:
    size: tuple[int, int]  # (width, height); the decoded image itself is not kept while faces wait for the classifier
    faces: list[DetectedFace]  # in the image's own pixels, even when it was decoded at a reduced scale
    matrices: list[np.ndarray]  # each face's alignment, image -> crop (image pixels, as the faces)
    batch: np.ndarray
    decode_s: float
    detect_s: float
    align_s: float


class Pipeline:
    """Owns a face detector and an emotion classifier; `analyze` is safe to call concurrently."""

    def __init__(
        self,
        detector: FaceDetector,
        classifier: EmotionClassifier,
        detector_model: ResolvedModel,
        settings: Settings,
        pool: SessionPool | None = None,
    ) -> None:
        self.detector = detector
        self.classifier = classifier
        self.detector_model = detector_model
        self.settings = settings
        self.pool = pool
        self._closed = False

    # -- construction ------------------------------------------------------------------------
    @classmethod
    def load(
        cls,
        settings: Settings,
        *,
        store: ModelStore | None = None,
        detector_ref: str | None = None,
        classifier_ref: str | None = None,
        pool: SessionPool | None = None,
    ) -> Pipeline:
        """Resolve, verify, load and warm both models (blocking; use `aload` from async code)."""
        store = store or ModelStore(settings.model_root)
        classifier_model = _get_classifier(store, classifier_ref or settings.classifier)
        detector_model = store.get(detector_ref or settings.detector)
        pool = pool or SessionPool(settings)
        detector = create_detector(detector_model, pool.session_factory, max_side=settings.detector_max_side)
        classifier = EmotionClassifier(classifier_model, pool.load(classifier_model), settings)
        return cls(detector, classifier, detector_model, settings, pool)

    @classmethod
    async def aload(cls, settings: Settings, **kwargs: Any) -> Pipeline:
        return await asyncio.to_thread(lambda: cls.load(settings, **kwargs))

    def model_versions(self) -> dict[str, tuple[str, int, str]]:
        """role -> (name, version, provider)."""
        det = self.detector_model.manifest
        sessions = self.pool.sessions() if self.pool else []
        provider = next((s.provider for s in sessions if s.name == det.name), "opencv")
        return {
            "detector": (det.name, det.version, provider),
            "classifier": (self.classifier.name, self.classifier.version, self.classifier.session.provider),
        }

    # -- analysis ----------------------------------------------------------------------------
    def _prepare(self, image: ImageInput, opts: AnalyzeOptions) -> _Prepared:
        t0 = time.perf_counter()
        bgr, scale, size = self._decode(image)
        t1 = time.perf_counter()
        faces = self._detect(bgr, opts, scale)
        t2 = time.perf_counter()
        pre = self.classifier.preprocessor
        matrices = [pre.matrix(f.box, f.landmarks) for f in faces]
        batch = pre.normalize([pre.warp(bgr, on_decoded(m, scale)) for m in matrices])
        t3 = time.perf_counter()
        return _Prepared(size, faces, matrices, batch, t1 - t0, t2 - t1, t3 - t2)

    def _decode(self, image: ImageInput) -> Decoded:
        """The image, its scale against the full image (< 1 for a large JPEG decoded smaller) and the full size."""
        if isinstance(image, np.ndarray):
            if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
                raise InvalidImage(f"an image array must be BGR uint8 (H, W, 3), got {image.dtype} {image.shape}")
            return Decoded(image, 1.0, (image.shape[1], image.shape[0]))
        return decode_scaled(image, self.settings.max_image_pixels, self.settings.decode_min_side)

    def _detect(self, bgr: np.ndarray, opts: AnalyzeOptions, scale: float = 1.0) -> list[DetectedFace]:
        """The faces to classify, in the full image's pixels (`bgr` is that image at `scale`)."""
        threshold = opts.threshold if opts.threshold is not None else self.settings.detector_threshold
        found = self.detector.detect(bgr, threshold)  # resizes to detector_max_side, maps boxes back
        if scale != 1.0:
            found = [rescaled(f, 1.0 / scale) for f in found]
        min_size = opts.min_face_size if opts.min_face_size is not None else self.settings.min_face_size
        ceiling = self.settings.max_faces  # a client may ask for fewer faces, never for more
        max_faces = min(opts.max_faces, ceiling) if opts.max_faces is not None else ceiling
        return select_faces(found, min_size, max_faces)

    def check(self, opts: AnalyzeOptions) -> AnalyzeOptions:
        """The options, refused when they ask for what the served models cannot give."""
        if opts.explain and not self.classifier.can_explain:
            raise ExplanationUnavailable(
                f"explain: {self.classifier.model.ref} does not provide heat maps (its manifest has no `explain` "
                "output); serve a version that does, or re-export it with `emoserve export NAME@VERSION --add-cam`",
                detail={"model": self.classifier.model.ref},
            )
        return opts

    def _result(
        self, prep: _Prepared, scores: Scores, opts: AnalyzeOptions, queue_s: float, classify_s: float, t0: float
    ) -> AnalysisResult:
        labels = self.classifier.labels
        probs, cams = scores
        faces = []
        for i, (face, p) in enumerate(zip(prep.faces, probs, strict=True)):
            best = int(np.argmax(p))
            explained = None
            if opts.explain and cams is not None:
                size = self.classifier.preprocessor.size
                explained = explanation(labels[best], cams[i, best], prep.matrices[i], size)
            marks = None
            if opts.landmarks and face.landmarks is not None:
                marks = [[round(float(x), 2), round(float(y), 2)] for x, y in np.asarray(face.landmarks)]
            faces.append(
                Face(
                    box=Box(**dict(zip(("x1", "y1", "x2", "y2"), (round(float(v), 2) for v in face.box), strict=True))),
                    score=round(float(face.score), 4),
                    landmarks=marks,
                    emotion=Emotion(
                        label=labels[best],
                        confidence=float(p[best]),
                        scores={label: float(v) for label, v in zip(labels, p, strict=True)},
                    ),
                    explanation=explained,
                )
            )
        det = self.detector_model.manifest
        ms = 1000.0
        timings = Timings(
            decode=prep.decode_s * ms,
            queue=queue_s * ms,
            detect=prep.detect_s * ms,
            align=prep.align_s * ms,
            classify=classify_s * ms,
            total=(time.perf_counter() - t0) * ms,
        )
        return AnalysisResult(
            image=ImageSize(width=prep.size[0], height=prep.size[1]),
            models=ModelsUsed(
                detector=ModelInfo(name=det.name, version=det.version),
                classifier=ModelInfo(name=self.classifier.name, version=self.classifier.version),
            ),
            faces=faces,
            timings_ms=timings,
        )

    async def analyze(self, image: ImageInput, options: OptionsInput = None) -> AnalysisResult:
        """Analyze encoded image bytes or a BGR uint8 array. Decode/detect/align run in a thread."""
        t0 = time.perf_counter()
        opts = self.check(parse_options(options))
        with self.classifier.batcher.coming():  # a batch forming now waits for these faces
            prep = await asyncio.to_thread(self._prepare, image, opts)
        timed = await self.classifier.classify(prep.batch)
        return self._result(prep, timed.result, opts, timed.queue_s, timed.run_s, t0)

    async def analyze_stream(
        self, image: ImageInput, options: OptionsInput, state: StreamState, policy: ReusePolicy
    ) -> tuple[AnalysisResult, list[FaceReuse]]:
        """One frame of a stream: like `analyze`, reusing the stream's work where `policy` allows
        (`service.pipeline.stream_reuse`); says for each face whether it was classified now."""
        if not policy.enabled:  # every frame analysed in full, as a REST request is
            state.reset()
            result = await self.analyze(image, options)
            return result, [FaceReuse(True, 0) for _ in result.faces]
        t0 = time.perf_counter()
        opts = self.check(parse_options(options))
        if state.owner is not self:  # probabilities of another classifier are not reused
            state.reset()
            state.owner = self
        with self.classifier.batcher.coming():
            prep, fresh, before, decoded = await asyncio.to_thread(self._prepare_stream, image, opts, state, policy)
        # the frame is held while its faces wait for the classifier only when a confirmation may need it
        dec = decoded if policy.confirm_changes else None
        del decoded
        timed = await self.classifier.classify(prep.batch)
        queue_s, run_s = timed.queue_s, timed.run_s
        if dec is not None and state.since_detect > 0 and unconfirmed(policy, fresh, before, timed.result.probs):
            # a label changed (or hesitates) on a crop aligned on followed landmarks: detect, classify detected crops
            first = prep
            with self.classifier.batcher.coming():
                prep, fresh, before, _ = await asyncio.to_thread(self._prepare_stream, dec, opts, state, policy)
            timed = await self.classifier.classify(prep.batch)
            queue_s, run_s = queue_s + timed.queue_s, run_s + timed.run_s
            prep.decode_s = first.decode_s
            prep.detect_s, prep.align_s = prep.detect_s + first.detect_s, prep.align_s + first.align_s
        now = time.perf_counter()
        probs = np.zeros((len(prep.faces), len(self.classifier.labels)))
        new_cams = timed.result.cams
        cams: list[np.ndarray | None] = []
        reuse, tracked, k = [], [], 0
        for i, (face, prev) in enumerate(zip(prep.faces, before, strict=True)):
            if fresh[i] is not None:
                probs[i] = timed.result.probs[k]
                cam = None if new_cams is None else new_cams[k]
                tracked.append(TrackedFace(face, fresh[i], probs[i], now, 0, cam))
                reuse.append(FaceReuse(True, 0))
                k += 1
            else:
                assert prev is not None and prev.probs is not None
                probs[i], cam = prev.probs, prev.cam
                tracked.append(TrackedFace(face, prev.thumb, prev.probs, prev.classified_at, prev.age + 1, prev.cam))
                reuse.append(FaceReuse(False, prev.age + 1))
            cams.append(cam)
        state.faces = tracked
        wanted = opts.explain and cams and all(c is not None for c in cams)
        maps = np.stack(cams) if wanted else None  # type: ignore[arg-type]
        return self._result(prep, Scores(probs, maps), opts, queue_s, run_s, t0), reuse

    def _prepare_stream(
        self, image: ImageInput | Decoded, opts: AnalyzeOptions, state: StreamState, policy: ReusePolicy
    ) -> tuple[_Prepared, list[np.ndarray | None], list[TrackedFace | None], Decoded]:
        """Decode, detect or follow, align: the thumbnails of the faces to classify (None: reused), the faces
        they continue, and the decoded frame. A frame given decoded (`Decoded`, the confirmation of a label
        change) is detected, and each of its faces classified."""
        t0 = time.perf_counter()
        confirming = isinstance(image, Decoded)
        dec = image if isinstance(image, Decoded) else self._decode(image)
        bgr, decoded, size = dec
        t1 = time.perf_counter()
        to_flow = flow_scale(*bgr.shape[:2]) * decoded  # full-image pixels -> the flow copy's
        due = confirming or not state.faces or state.since_detect + 1 >= policy.detect_every
        if not due:  # optical flow loses faces smaller than follow_min_size: detect them again
            due = not all(followable(policy, t.face, to_flow) for t in state.faces)
        if policy.confirm_changes and not due:  # an unclear label is confirmed on a detected crop: detect at once
            due = not all(clear(policy, t) for t in state.faces)
        if policy.classify_detected and not due:  # a face to classify whatever moved: detect, skip the flow
            now = time.perf_counter()
            due = any(stale(policy, t, now) for t in state.faces)
        located: tuple[list[DetectedFace], list[TrackedFace | None]] | None = None
        grey: np.ndarray | None = None  # this frame's, made only when faces are followed into or out of it
        if not due and state.grey is not None:
            grey, scale = grey_for_flow(bgr)
            if grey.shape == state.grey.shape:  # faces in full-image pixels
                followed = follow(state.grey, grey, scale * decoded, [t.face for t in state.faces])
                located = None if followed is None else (followed, list(state.faces))
        align_s = 0.0
        if located is not None:
            faces, before = located
            ta = time.perf_counter()
            matrices, crops, fresh = self._crops_to_classify(bgr, decoded, faces, before, policy)
            align_s += time.perf_counter() - ta
            if policy.classify_detected and any(f is not None for f in fresh):
                located = None  # a face is classified again: detect, so its crop is the one full analysis makes
            else:
                state.since_detect += 1
        if located is None:
            faces, state.since_detect = self._detect(bgr, opts, decoded), 0
            before = match_previous(state, faces)
            ta = time.perf_counter()
            matrices, crops, fresh = self._crops_to_classify(bgr, decoded, faces, before, policy, confirming)
            align_s += time.perf_counter() - ta
        # a small grey copy of the frame (not the frame) for the next one to follow from, unless it is due
        may_follow = bool(faces) and state.since_detect + 1 < policy.detect_every
        may_follow = may_follow and all(followable(policy, f, to_flow) for f in faces)
        state.grey = (grey if grey is not None else grey_for_flow(bgr)[0]) if may_follow else None
        t2 = time.perf_counter()
        batch = self.classifier.preprocessor.normalize([c for c, f in zip(crops, fresh, strict=True) if f is not None])
        t3 = time.perf_counter()
        prep = _Prepared(size, faces, matrices, batch, t1 - t0, t2 - t1 - align_s, t3 - t2 + align_s)
        return prep, fresh, before, dec

    def _crops_to_classify(
        self, bgr: np.ndarray, decoded: float, faces: list[DetectedFace], before: list[TrackedFace | None],
        policy: ReusePolicy, every: bool = False,
    ) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray | None]]:  # fmt: skip
        """The faces' alignment matrices and crops, and the thumbnails of those to classify (None: reused;
        with `every`, none is)."""
        pre = self.classifier.preprocessor
        matrices = [pre.matrix(f.box, f.landmarks) for f in faces]
        crops = [pre.warp(bgr, on_decoded(m, decoded)) for m in matrices]
        now = time.perf_counter()
        fresh = [
            t if every or needs_classifying(policy, b, t, now) else None
            for t, b in zip(map(thumbnail, crops), before, strict=True)
        ]
        return matrices, crops, fresh

    def analyze_sync(self, image: ImageInput, options: OptionsInput = None) -> AnalysisResult:
        """Blocking analysis without the batcher (CLI, scripts); the same result as `analyze`."""
        t0 = time.perf_counter()
        opts = self.check(parse_options(options))
        prep = self._prepare(image, opts)
        t1 = time.perf_counter()
        scores = self.classifier.run(prep.batch)
        return self._result(prep, scores, opts, 0.0, time.perf_counter() - t1, t0)

    async def aclose(self) -> None:
        """Stop the batcher (waiting callers get an error) and release the sessions."""
        if self._closed:
            return
        self._closed = True
        await self.classifier.aclose()
        if self.pool is not None:
            await asyncio.to_thread(self.pool.close)

    def close(self) -> None:
        """Synchronous close, for code that never used `analyze` (the batcher was not started)."""
        self._closed = True
        if self.pool is not None:
            self.pool.close()


def rescaled(face: DetectedFace, k: float) -> DetectedFace:
    """`face` with its box and landmarks multiplied by `k`."""
    box = (face.box[0] * k, face.box[1] * k, face.box[2] * k, face.box[3] * k)
    marks = None if face.landmarks is None else np.asarray(face.landmarks, np.float32) * np.float32(k)
    return DetectedFace(box=box, score=face.score, landmarks=marks)


def on_decoded(image_to_crop: np.ndarray, scale: float) -> np.ndarray:
    """A crop's alignment (full-image pixels -> crop) for the image decoded at `scale`: the same crop."""
    if scale == 1.0:
        return image_to_crop
    m = np.array(image_to_crop, np.float32)
    m[:, :2] /= np.float32(scale)
    return m


def select_faces(found: list[DetectedFace], min_size: float, max_faces: int) -> list[DetectedFace]:
    """The faces the pipeline classifies: at least `min_size` px on their short side, the `max_faces` largest,
    largest first (the order of `faces` in a result)."""
    kept = [f for f in found if min(f.box[2] - f.box[0], f.box[3] - f.box[1]) >= min_size]
    kept.sort(key=lambda f: (f.box[2] - f.box[0]) * (f.box[3] - f.box[1]), reverse=True)
    return kept[:max_faces]


def _get_classifier(store: ModelStore, ref: str) -> ResolvedModel:
    try:
        model = store.get(ref)
    except ModelNotFound as exc:
        raise ModelNotFound(f"{NO_CLASSIFIER_HINT} ({exc})") from exc
    if model.manifest.task != "emotion_classifier":
        raise ModelNotFound(f"{model.ref} is a {model.manifest.task}, not an emotion classifier; {NO_CLASSIFIER_HINT}")
    return model
