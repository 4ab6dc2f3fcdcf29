"""The pipeline end to end on real onnxruntime sessions: tiny generated models, and YuNet from ../shared."""

from __future__ import annotations

import asyncio
from pathlib import Path

import cv2
import numpy as np
import pytest

from model_store import ModelNotFound, ModelStore
from service.errors import InvalidImage, InvalidOptions
from service.pipeline.analyze import Pipeline
from service.pipeline.schema import AnalysisResult
from service.settings import Settings, get_settings
from tests.conftest import shared_path
from tests.helpers.tiny_models import (
    EMOTIONS,
    publish_test_detector,
    publish_tiny_classifier,
    publish_yunet,
    tiny_classifier_onnx,
)


def _settings(tmp_path: Path, **kw: object) -> Settings:
    return get_settings(model_root=tmp_path / "store", **kw)


def _jpeg(seed: int, value: int = 128, size: tuple[int, int] = (160, 120)) -> bytes:
    rng = np.random.default_rng(seed)
    img = np.clip(rng.normal(value, 30, (size[1], size[0], 3)), 0, 255).astype(np.uint8)
    return bytes(cv2.imencode(".jpg", img)[1].tobytes())


def _bgr(data: bytes) -> np.ndarray:
    arr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    assert arr is not None
    return arr


@pytest.fixture()
def tiny_pipeline(store: ModelStore, tmp_path: Path) -> Pipeline:
    det = publish_test_detector(store, tmp_path)
    clf = publish_tiny_classifier(store, tmp_path)
    pipe = Pipeline.load(_settings(tmp_path, max_delay_ms=5), store=store, detector_ref=det.ref, classifier_ref=clf.ref)
    return pipe


def _check_result(result: AnalysisResult) -> None:
    body = result.model_dump(mode="json")
    assert set(body) == {"image", "models", "faces", "timings_ms"}
    assert set(body["timings_ms"]) == {"decode", "queue", "detect", "align", "classify", "total"}
    for face in body["faces"]:
        assert set(face) == {"box", "score", "landmarks", "emotion"}
        assert "explanation" not in face  # only with explain=true
        scores = face["emotion"]["scores"]
        assert list(scores) == EMOTIONS
        assert abs(sum(scores.values()) - 1.0) < 1e-5
        assert face["emotion"]["label"] == max(scores, key=scores.__getitem__)
        assert face["emotion"]["confidence"] == max(scores.values())
    areas = [(f["box"]["x2"] - f["box"]["x1"]) * (f["box"]["y2"] - f["box"]["y1"]) for f in body["faces"]]
    assert areas == sorted(areas, reverse=True)


def test_analyze_bytes_end_to_end(tiny_pipeline: Pipeline) -> None:
    async def main() -> AnalysisResult:
        try:
            return await tiny_pipeline.analyze(_jpeg(0), {"landmarks": True})
        finally:
            await tiny_pipeline.aclose()

    result = asyncio.run(main())
    _check_result(result)
    assert result.image.width == 160 and result.image.height == 120
    assert len(result.faces) == 1
    assert result.faces[0].landmarks is not None and len(result.faces[0].landmarks) == 5
    assert result.models.classifier.name == "tiny-emotion" and result.models.detector.name == "center-det"
    assert result.timings_ms.total >= result.timings_ms.detect


def test_concurrent_requests_are_batched_and_match_sync(tiny_pipeline: Pipeline) -> None:
    images = [_jpeg(i) for i in range(24)]

    async def main() -> list[AnalysisResult]:
        try:
            return await asyncio.gather(*(tiny_pipeline.analyze(img) for img in images))
        finally:
            await tiny_pipeline.aclose()

    results = asyncio.run(main())
    assert max(tiny_pipeline.classifier.batcher.batch_sizes) > 1
    for img, res in zip(images, results, strict=True):
        sync = tiny_pipeline.analyze_sync(img)
        assert res.faces[0].emotion.scores == pytest.approx(sync.faces[0].emotion.scores, abs=1e-5)
    distinct = {r.faces[0].emotion.scores["happy"] for r in results}
    assert len(distinct) > 20  # every caller got its own image's answer


def test_options_threshold_landmarks_and_validation(tiny_pipeline: Pipeline) -> None:
    img = _jpeg(3)
    assert tiny_pipeline.analyze_sync(img, {"threshold": 0.999}).faces == []
    assert tiny_pipeline.analyze_sync(img, {"landmarks": False}).faces[0].landmarks is None
    assert tiny_pipeline.analyze_sync(img, {"min_face_size": 1000}).faces == []
    for bad in ({"max_faces": 0}, {"threshold": 1.5}, {"min_face_size": -1}, {"colour": "red"}):
        with pytest.raises(InvalidOptions):
            tiny_pipeline.analyze_sync(img, bad)
    with pytest.raises(InvalidImage):
        tiny_pipeline.analyze_sync(b"garbage")
    arr = _bgr(img)
    assert tiny_pipeline.analyze_sync(arr).faces[0].emotion == tiny_pipeline.analyze_sync(img).faces[0].emotion


def test_probability_output_is_not_softmaxed_again_and_temperature(store: ModelStore, tmp_path: Path) -> None:
    det = publish_test_detector(store, tmp_path)
    logits = publish_tiny_classifier(store, tmp_path, "clf-logits")
    probs = publish_tiny_classifier(store, tmp_path, "clf-probs", probabilities=True)
    hot = publish_tiny_classifier(store, tmp_path, "clf-t2", temperature=2.0)
    settings = _settings(tmp_path)
    img = _jpeg(5)
    out = {
        m.manifest.name: Pipeline.load(settings, store=store, detector_ref=det.ref, classifier_ref=m.ref)
        .analyze_sync(img)
        .faces[0]
        .emotion.scores
        for m in (logits, probs, hot)
    }
    assert out["clf-probs"] == pytest.approx(out["clf-logits"], abs=1e-5)
    p1, p2 = np.array(list(out["clf-logits"].values())), np.array(list(out["clf-t2"].values()))
    # softmax(z / 2) == normalised sqrt(softmax(z))
    expected = np.sqrt(p1) / np.sqrt(p1).sum()
    assert p2 == pytest.approx(expected, abs=1e-5)
    assert p2.max() < p1.max()


def test_rgb_nhwc_classifier(store: ModelStore, tmp_path: Path) -> None:
    det = publish_test_detector(store, tmp_path)
    clf = publish_tiny_classifier(store, tmp_path, "tiny-rgb", variant="rgb")
    pipe = Pipeline.load(_settings(tmp_path), store=store, detector_ref=det.ref, classifier_ref=clf.ref)
    result = pipe.analyze_sync(_jpeg(7))
    _check_result(result)
    # the same face crop through the raw model agrees (preprocessing follows the manifest)
    import onnxruntime as ort

    face = result.faces[0]
    arr = _bgr(_jpeg(7))
    marks = np.array(face.landmarks, np.float32)
    crop = pipe.classifier.preprocessor.crop(arr, (face.box.x1, face.box.y1, face.box.x2, face.box.y2), marks)
    x = (crop[..., ::-1].astype(np.float32) - 127.5) / 127.5
    path = tiny_classifier_onnx(tmp_path / "again.onnx", variant="rgb")
    z = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"input": x[None]})[0][0]
    p = np.exp(z - z.max()) / np.exp(z - z.max()).sum()
    assert list(face.emotion.scores.values()) == pytest.approx(p.tolist(), abs=1e-3)


def test_no_classifier_says_how_to_get_one(store: ModelStore, tmp_path: Path) -> None:
    det = publish_test_detector(store, tmp_path)
    with pytest.raises(ModelNotFound, match="emoserve models publish"):
        Pipeline.load(_settings(tmp_path), store=store, detector_ref=det.ref, classifier_ref="emotion-x@production")


@pytest.mark.shared
def test_yunet_on_12_angry_men(store: ModelStore, tmp_path: Path) -> None:
    yunet = shared_path("models", "detectors", "yunet", "face_detection_yunet_2023mar.onnx")
    photo = shared_path("media", "photos", "12_angry_men.jpg")
    det = publish_yunet(store, yunet)
    clf = publish_tiny_classifier(store, tmp_path)
    pipe = Pipeline.load(_settings(tmp_path), store=store, detector_ref=det.ref, classifier_ref=clf.ref)

    async def main() -> AnalysisResult:
        try:
            return await pipe.analyze(photo.read_bytes())
        finally:
            await pipe.aclose()

    result = asyncio.run(main())
    _check_result(result)
    assert result.image.width == 1280 and result.image.height == 720
    assert len(result.faces) >= 8
    assert all(len(f.emotion.scores) == 7 for f in result.faces)
    assert all(f.landmarks is not None for f in result.faces)


@pytest.mark.shared
def test_detector_max_side_setting_reaches_the_detector(store: ModelStore, tmp_path: Path) -> None:
    """test_image.jpg (2048x1536) has a small face that YuNet finds only at full resolution."""
    det = publish_yunet(store, shared_path("models", "detectors", "yunet", "face_detection_yunet_2023mar.onnx"))
    clf = publish_tiny_classifier(store, tmp_path)
    data = shared_path("media", "photos", "test_image.jpg").read_bytes()
    counts = {}
    for side in (640, 2048):
        settings = _settings(tmp_path).model_copy(update={"detector_max_side": side})
        pipe = Pipeline.load(settings, store=store, detector_ref=det.ref, classifier_ref=clf.ref)
        result = pipe.analyze_sync(data)
        pipe.close()
        assert result.image.width == 2048
        assert all(f.box.x2 <= 2048 and f.box.y2 <= 1536 for f in result.faces)
        counts[side] = len(result.faces)
    assert counts[2048] > counts[640], counts


@pytest.mark.shared
def test_server_max_faces_is_a_ceiling_and_batches_stay_bounded(store: ModelStore, tmp_path: Path) -> None:
    """threshold=0 with max_faces=1000 once gave 1,000 "faces" in one onnxruntime batch (4 GB held)."""
    det = publish_yunet(store, shared_path("models", "detectors", "yunet", "face_detection_yunet_2023mar.onnx"))
    clf = publish_tiny_classifier(store, tmp_path)
    data = shared_path("media", "photos", "obama.jpg").read_bytes()
    pipe = Pipeline.load(_settings(tmp_path, max_faces=12, max_batch=5), store=store, detector_ref=det.ref,
                         classifier_ref=clf.ref)  # fmt: skip

    async def main() -> list[AnalysisResult]:
        try:
            return [await pipe.analyze(data, {"threshold": 0.0, "max_faces": n}) for n in (1000, 2)]
        finally:
            await pipe.aclose()

    many, fewer = asyncio.run(main())
    assert len(many.faces) == 12 and len(fewer.faces) == 2
    assert max(pipe.classifier.batcher.batch_sizes) <= 5


def _bright(seed: int, value: int = 180) -> np.ndarray:
    """A camera-like bright frame (the test detector finds one face in the middle of bright images)."""
    img = np.random.default_rng(seed).integers(value - 40, value + 40, (240, 320, 3)).astype(np.uint8)
    return np.asarray(cv2.GaussianBlur(img, (0, 0), 3), dtype=np.uint8)


def test_stream_reuse_skips_unchanged_faces_and_agrees_with_full_analysis(tiny_pipeline: Pipeline) -> None:
    from service.pipeline.stream_reuse import ReusePolicy, StreamState

    still = _bright(1)
    other = _bright(2, value=150)  # a different face crop: classified again at once
    frames = [still] * 8 + [other] * 2
    policy = ReusePolicy(detect_every=3, reclassify_every=5, max_age_ms=1e9, margin=0.0)  # no clock in the test

    async def main() -> list[tuple[AnalysisResult, AnalysisResult, list[tuple[bool, int]]]]:
        state, out = StreamState(), []
        try:
            for frame in frames:
                full = await tiny_pipeline.analyze(frame)
                reused, how = await tiny_pipeline.analyze_stream(frame, None, state, policy)
                out.append((full, reused, [(h.classified, h.age) for h in how]))
            return out
        finally:
            await tiny_pipeline.aclose()

    runs = asyncio.run(main())
    assert [how for _, _, how in runs] == [
        [(True, 0)], [(False, 1)], [(False, 2)], [(False, 3)], [(False, 4)],  # reclassify_every=5
        [(True, 0)], [(False, 1)], [(False, 2)],
        [(True, 0)], [(False, 1)],  # the crop changed
    ]  # fmt: skip
    for full, reused, _ in runs:  # same faces, same boxes (within a pixel), same label as full analysis
        _check_result(reused)
        assert len(full.faces) == len(reused.faces) == 1
        a, b = full.faces[0], reused.faces[0]
        assert abs(a.box.x1 - b.box.x1) < 1 and abs(a.box.y2 - b.box.y2) < 1
        assert a.emotion.label == b.emotion.label


@pytest.mark.parametrize("classify_detected", [True, False])
@pytest.mark.parametrize("why", ["age", "crop change"])
def test_stream_reuse_classifies_only_detected_crops(
    tiny_pipeline: Pipeline, classify_detected: bool, why: str
) -> None:
    """With `classify_detected` (the default) a frame in which a face is classified again is detected first,
    so the crop classified is the one full analysis makes; off, followed landmarks give the crop. Both ways a
    face comes to be classified again: its emotion's age (known before following), and its crop's change
    (known only after following: the followed crop is then dropped for a detected one)."""
    from service.pipeline.stream_reuse import ReusePolicy, StreamState

    by_age = why == "age"
    policy = ReusePolicy(detect_every=5, reclassify_every=2 if by_age else 100, max_age_ms=1e9, margin=0.0,
                         change=6.0 if by_age else 0.0, classify_detected=classify_detected)  # fmt: skip
    noise = np.random.default_rng(1).integers(140, 220, (240, 320, 3)).astype(np.uint8)
    textured = np.asarray(cv2.GaussianBlur(noise, (0, 0), 1), dtype=np.uint8)  # optical flow follows it

    async def main() -> list[tuple[bool, bool]]:
        state, seen = StreamState(), []
        try:
            for _ in range(6):
                _, how = await tiny_pipeline.analyze_stream(textured, None, state, policy)
                seen.append((how[0].classified, state.since_detect == 0))
            return seen
        finally:
            await tiny_pipeline.aclose()

    seen = asyncio.run(main())
    classified = [True, False, True, False, True, False] if by_age else [True] * 6
    assert [c for c, _ in seen] == classified
    by_count = [True, False, False, False, False, True]  # detect_every=5
    assert [d for _, d in seen] == (classified if classify_detected else by_count)


def _textured() -> np.ndarray:
    """A frame optical flow can follow (blurred noise)."""
    noise = np.random.default_rng(1).integers(140, 220, (240, 320, 3)).astype(np.uint8)
    return np.asarray(cv2.GaussianBlur(noise, (0, 0), 1), dtype=np.uint8)


@pytest.mark.parametrize("confirm", [True, False])
def test_stream_reuse_confirms_a_changed_label_on_the_detected_crop(tiny_pipeline: Pipeline, confirm: bool) -> None:
    """With `confirm_changes`, a face followed into a frame whose crop gets another label than the face had is
    detected again in that frame and its detected crop classified: a label change never rests on followed
    landmarks. Without it, the frame is followed. (The stream is told its face was last labelled otherwise.)"""
    from service.pipeline.stream_reuse import ReusePolicy, StreamState

    policy = ReusePolicy(detect_every=10, reclassify_every=100, max_age_ms=1e9, margin=0.0, change=0.0,
                         confirm_changes=confirm)  # fmt: skip
    frame = _textured()

    async def main() -> tuple[list[bool], list[str]]:
        state, detected, labels = StreamState(), [], []
        try:
            for i in range(4):
                if i == 2:  # as if the face had shown another emotion until now
                    probs = state.faces[0].probs
                    assert probs is not None
                    state.faces[0].probs = np.roll(probs, 1)
                result, how = await tiny_pipeline.analyze_stream(frame, None, state, policy)
                assert how[0].classified
                detected.append(state.since_detect == 0)
                labels.append(result.faces[0].emotion.label)
            return detected, labels
        finally:
            await tiny_pipeline.aclose()

    detected, labels = asyncio.run(main())
    assert detected == [True, False, confirm, False]
    assert len(set(labels)) == 1


@pytest.mark.parametrize("confirm", [True, False])
def test_stream_reuse_confirms_an_unclear_label_on_the_detected_crop(tiny_pipeline: Pipeline, confirm: bool) -> None:
    """With `confirm_changes`, a followed face whose label was a near tie (top two closer than `margin`) has its
    next frame detected, and one whose new classification is a near tie has its frame detected and classified
    again: a landmark moved by a pixel flips a tie. (A margin of 2 makes every classification unclear.)"""
    from service.pipeline.stream_reuse import ReusePolicy, StreamState

    frame = _textured()

    async def run(margin: float, tie_at: int | None) -> list[bool]:
        policy = ReusePolicy(detect_every=10, reclassify_every=100, max_age_ms=1e9, margin=margin, change=0.0,
                             confirm_changes=confirm)  # fmt: skip
        state, detected = StreamState(), []
        for i in range(4):
            if i == tie_at:  # as if its label (the same) had been a near tie with another one until now
                before = state.faces[0].probs
                assert before is not None
                top = int(np.argmax(before))
                probs = np.zeros_like(before)
                probs[top], probs[(top + 1) % len(probs)] = 0.5, 0.5 - 1e-7
                state.faces[0].probs = probs
            await tiny_pipeline.analyze_stream(frame, None, state, policy)
            detected.append(state.since_detect == 0)
        return detected

    async def main() -> tuple[list[bool], list[bool]]:
        try:
            return await run(1e-6, 2), await run(2.0, None)
        finally:
            await tiny_pipeline.aclose()

    after_tie, all_unclear = asyncio.run(main())
    assert after_tie == [True, False, confirm, False]
    assert all_unclear == [True, confirm, confirm, confirm]


def test_unconfirmed_names_changed_and_unclear_labels() -> None:
    """`unconfirmed`: a fresh classification is confirmed when it changes the face's label or is a near tie,
    whatever the face was before; faces not classified now (None) are skipped in `probs`' rows."""
    from service.pipeline.detectors import DetectedFace
    from service.pipeline.stream_reuse import ReusePolicy, TrackedFace, unconfirmed

    policy = ReusePolicy(margin=0.3)
    face = DetectedFace((0.0, 0.0, 10.0, 10.0), 0.9, None)
    was_a = TrackedFace(face, np.zeros((32, 32), np.float32), np.array([0.9, 0.1, 0.0]))
    thumb = np.zeros((32, 32), np.float32)
    clear_a, clear_b, tie_a = [0.9, 0.1, 0.0], [0.1, 0.9, 0.0], [0.55, 0.45, 0.0]
    assert not unconfirmed(policy, [thumb], [was_a], np.array([clear_a]))
    assert unconfirmed(policy, [thumb], [was_a], np.array([clear_b]))  # another label
    assert unconfirmed(policy, [thumb], [was_a], np.array([tie_a]))  # the same label, unclear
    assert unconfirmed(policy, [thumb], [None], np.array([tie_a]))  # a new face, unclear
    assert not unconfirmed(policy, [None, thumb], [was_a, was_a], np.array([clear_a]))  # row 0 is the second face


def test_stream_reuse_detects_faces_too_small_to_follow(tiny_pipeline: Pipeline) -> None:
    """`follow_min_size`: optical flow loses small faces, so a stream with one detects every frame instead. The
    size counts in the grey copy flow runs on (at most 640 px wide): the test detector's face is half the
    frame's short side, 120 px of a 320x240 frame and 480 px of a 1280x960 one, 120 and 240 px in the copy."""
    from service.pipeline.stream_reuse import ReusePolicy, StreamState

    small, large = _textured(), cv2.resize(_textured(), (1280, 960), interpolation=cv2.INTER_LINEAR)

    async def detections(frame: np.ndarray, min_size: float) -> list[bool]:
        policy = ReusePolicy(detect_every=10, max_age_ms=1e9, margin=0.0, follow_min_size=min_size)
        state, seen = StreamState(), []
        for _ in range(4):
            await tiny_pipeline.analyze_stream(frame, None, state, policy)
            seen.append(state.since_detect == 0)
        assert (state.grey is None) == all(seen)  # no frame copy kept for flow that will not run
        return seen

    async def main() -> list[list[bool]]:
        try:
            return [await detections(f, m) for f, m in ((small, 100.0), (small, 200.0), (large, 200.0),
                                                        (large, 300.0))]  # fmt: skip
        finally:
            await tiny_pipeline.aclose()

    followed, detected = [True, False, False, False], [True] * 4
    assert asyncio.run(main()) == [followed, detected, followed, detected]


@pytest.mark.shared
def test_stream_reuse_agrees_with_full_analysis_on_woman2() -> None:
    """The quality guard on real video (issue: reuse agrees with full per-frame analysis on >= 97% of
    face-frames: box IoU >= 0.7 and the same label), default models, the clip's first 120 frames, the policy
    that trades speed for agreement (`EMOSERVE_WS_CLASSIFY_DETECTED=true`, `EMOSERVE_WS_REUSE_CHANGE=4`)."""
    from service.pipeline.stream_reuse import ReusePolicy, StreamState
    from service.pipeline.tracking import iou_matrix

    cap = cv2.VideoCapture(str(shared_path("media", "videos", "woman2.mp4")))
    frames = [f for ok, f in iter(cap.read, (False, None)) if ok][:120]
    cap.release()
    pipe = Pipeline.load(get_settings())
    agreeing = ReusePolicy(change=4.0, classify_detected=True)

    async def main() -> tuple[int, int, int]:
        state, agree, total, classified = StreamState(), 0, 0, 0
        try:
            for frame in frames:
                full = await pipe.analyze(frame)
                reused, how = await pipe.analyze_stream(frame, None, state, agreeing)
                classified += sum(h.classified for h in how)
                for i, face in enumerate(full.faces):
                    total += 1
                    boxes = [[(f.box.x1, f.box.y1, f.box.x2, f.box.y2) for f in r.faces] for r in (full, reused)]
                    iou = iou_matrix(boxes[0], boxes[1])[i] if reused.faces else np.zeros(1)
                    j = int(np.argmax(iou))
                    agree += bool(iou[j] >= 0.7 and reused.faces[j].emotion.label == face.emotion.label)
            return agree, total, classified
        finally:
            await pipe.aclose()

    agree, total, classified = asyncio.run(main())
    assert total >= 100 and agree / total >= 0.97, f"{agree} of {total} face-frames agree"
    assert classified < 0.8 * total, "reuse must still save classifications"


def test_stream_reuse_off_does_all_the_work(tiny_pipeline: Pipeline) -> None:
    from service.pipeline.stream_reuse import ReusePolicy, StreamState

    async def main() -> list[bool]:
        state, seen = StreamState(), []
        try:
            for _ in range(4):
                _, how = await tiny_pipeline.analyze_stream(_bright(1), None, state, ReusePolicy(enabled=False))
                seen += [h.classified for h in how]
            return seen
        finally:
            await tiny_pipeline.aclose()

    assert asyncio.run(main()) == [True] * 4


def test_batching_is_read_per_model_from_the_manifest(store: ModelStore, tmp_path: Path) -> None:
    """A manifest's `serving` block sets the model's batching; settings are the defaults and the ceilings."""
    from tests.helpers.tiny_models import classifier_draft

    det = publish_test_detector(store, tmp_path)
    draft = {**classifier_draft("hinted"), "serving": {"max_batch": 4, "max_delay_ms": 7.0, "queue_size": 5000}}
    store.publish(draft, {"model.onnx": tiny_classifier_onnx(tmp_path / "hinted.onnx")}, alias="production")
    plain = publish_tiny_classifier(store, tmp_path)
    settings = _settings(tmp_path, max_batch=16, max_delay_ms=2.0, queue_size=100)
    hinted = Pipeline.load(settings, store=store, detector_ref=det.ref, classifier_ref="hinted@production")
    default = Pipeline.load(settings, store=store, detector_ref=det.ref, classifier_ref=plain.ref)
    try:
        b = hinted.classifier.batcher
        assert (b.max_batch, b.max_delay_s, b.queue_size) == (4, 0.007, 100)  # the queue cannot grow past 100
        d = default.classifier.batcher
        assert (d.max_batch, d.max_delay_s, d.queue_size) == (16, 0.002, 100)
    finally:
        hinted.close()
        default.close()


def test_a_large_jpeg_is_decoded_smaller_and_answered_in_its_own_pixels() -> None:
    from service.pipeline.decode import decode_scaled, reduction

    img = cv2.GaussianBlur(np.random.default_rng(0).integers(0, 255, (1950, 2601, 3)).astype(np.uint8), (0, 0), 3)
    data = bytes(cv2.imencode(".jpg", img)[1].tobytes())
    small, scale, size = decode_scaled(data, 40_000_000, 1280)
    assert small.shape == (975, 1301, 3) and scale == pytest.approx(1301 / 2601)  # 1/2: 1/4 would go under 1280
    assert size == (2601, 1950)
    whole, one, size = decode_scaled(data, 40_000_000, 0)
    assert whole.shape == (1950, 2601, 3) and one == 1.0 and size == (2601, 1950)
    assert (
        reduction((4000, 3000), 1280) == 2 and reduction((8000, 6000), 640) == 8 and reduction((1920, 1080), 1280) == 1
    )
    png = bytes(cv2.imencode(".png", img[:1400, :2700])[1].tobytes())
    assert decode_scaled(png, 40_000_000, 640).scale == 1.0  # only JPEG has DCT scaling


def test_a_reduced_decode_finds_the_same_faces_in_the_same_pixels(store: ModelStore, tmp_path: Path) -> None:
    det = publish_test_detector(store, tmp_path)
    clf = publish_tiny_classifier(store, tmp_path)
    rng = np.random.default_rng(3)
    img = np.clip(rng.normal(180, 20, (1950, 2601, 3)), 0, 255).astype(np.uint8)
    data = bytes(cv2.imencode(".jpg", cv2.GaussianBlur(img, (0, 0), 3))[1].tobytes())
    results = []
    for side in (0, 1280):  # whole, then at half scale
        pipe = Pipeline.load(_settings(tmp_path, decode_min_side=side), store=store, detector_ref=det.ref,
                             classifier_ref=clf.ref)  # fmt: skip
        try:
            results.append(pipe.analyze_sync(data))
        finally:
            pipe.close()
    whole, reduced = results
    assert (reduced.image.width, reduced.image.height) == (whole.image.width, whole.image.height) == (2601, 1950)
    assert len(whole.faces) == len(reduced.faces) == 1
    a, b = whole.faces[0], reduced.faces[0]
    for k in ("x1", "y1", "x2", "y2"):
        assert abs(getattr(a.box, k) - getattr(b.box, k)) <= 4, (a.box, b.box)
    assert a.landmarks is not None and b.landmarks is not None
    assert np.abs(np.asarray(a.landmarks) - np.asarray(b.landmarks)).max() <= 4
