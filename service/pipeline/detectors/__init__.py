"""Face detectors behind one interface, chosen by the manifest's `family`."""

from service.pipeline.detectors.base import (
    DetectedFace,
    FaceDetector,
    SessionFactory,
    create_detector,
    register_detector,
    registered_families,
)

__all__ = [
    "DetectedFace",
    "FaceDetector",
    "SessionFactory",
    "create_detector",
    "register_detector",
    "registered_families",
]
