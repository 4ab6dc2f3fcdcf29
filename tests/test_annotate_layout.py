"""/v1/annotate legibility: captions and score panels never cover another face, and scale with the face."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest

from model_store import ModelStore
from service.pipeline.analyze import Pipeline
from service.pipeline.annotate import FaceInfo, FaceLayout, Rect, draw, layout
from service.pipeline.schema import AnalysisResult
from service.settings import get_settings
from tests.conftest import shared_path


def infos(result: AnalysisResult) -> list[FaceInfo]:
    return [
        FaceInfo(
            Rect(round(f.box.x1), round(f.box.y1), round(f.box.x2), round(f.box.y2)),
            f.emotion.label,
            f.emotion.confidence,
            len(f.emotion.scores),
        )
        for f in result.faces
    ]


def assert_legible(placed: list[FaceLayout], size: tuple[int, int]) -> None:
    """No caption or panel covers another face's box, a panel never its own, and all stay in the image."""
    for i, face in enumerate(placed):
        own = [r for r in (face.caption_rect, face.panel) if r is not None]
        for r in own:
            assert r.inside(*size), (i, r)
            for j, other in enumerate(placed):
                if j != i:
                    assert not r.intersects(other.box), f"face {i}'s {r} covers face {j}'s box {other.box}"
                    others = [o for o in (other.caption_rect, other.panel) if o is not None]
                    assert not any(r.intersects(o) for o in others), f"face {i}'s {r} overlaps face {j}'s labels"
        if face.panel is not None:
            assert not face.panel.intersects(face.box)
            assert face.caption_rect is None or not face.panel.intersects(face.caption_rect)


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pipeline]:
    root = tmp_path_factory.mktemp("root")  # the shipped detector and the fast shipped classifier
    pipe = Pipeline.load(
        get_settings(model_root=root), store=ModelStore(root), classifier_ref="emotion-ferplus8-fast@production"
    )
    yield pipe
    pipe.close()


@pytest.mark.shared
@pytest.mark.parametrize(("photo", "min_faces"), [("12_angry_men.jpg", 8), ("multiface.jpg", 6)])
def test_crowded_photo_labels_cover_no_other_face(
    pipeline: Pipeline, photo: str, min_faces: int, tmp_path: Path
) -> None:
    data = shared_path("media", "photos", photo).read_bytes()
    result = pipeline.analyze_sync(data)
    assert len(result.faces) >= min_faces
    size = (result.image.width, result.image.height)
    placed = layout(size, infos(result))
    assert_legible(placed, size)
    assert all(p.caption for p in placed), "every face of these photos has room for at least a compact caption"
    assert sum(p.panel is not None for p in placed) >= 0.8 * len(placed)
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    assert image is not None
    drawn = draw(image, result)
    assert drawn.shape == image.shape and not np.array_equal(drawn, image)
    assert cv2.imwrite(str(tmp_path / f"annotated-{Path(photo).stem}.png"), drawn)  # to look at by eye


def face(x: int, y: int, side: int, label: str = "surprise") -> FaceInfo:
    return FaceInfo(Rect(x, y, x + side, y + side), label, 0.87, 8)


def test_layout_scales_with_the_face() -> None:
    small, large = layout((2000, 2000), [face(100, 100, 60), face(800, 800, 400)])
    assert small.caption == large.caption == "surprise 87%"
    assert large.font_scale > small.font_scale and large.row_height > small.row_height
    assert small.panel is not None and large.panel is not None and large.panel.height > small.panel.height


def test_layout_falls_back_to_compact_or_nothing_when_crowded() -> None:
    # a grid of faces with 4 px between them: nothing fits outside any face
    grid = [face(x, y, 60) for x in range(0, 320, 64) for y in range(0, 320, 64)]
    placed = layout((316, 316), grid)
    assert_legible(placed, (316, 316))
    assert all(p.panel is None for p in placed)
    # a row of faces with no room around them: the full caption is wider than a face, the compact one fits inside
    row = [face(x, 14, 100) for x in range(0, 520, 104)]
    placed = layout((516, 114), row)
    assert_legible(placed, (516, 114))
    assert {p.caption for p in placed} == {"sur 87%"}
