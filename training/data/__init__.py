"""Datasets: readers of the supported layouts, splits, augmentation, decoded-image cache."""

from training.data.dataset import FaceDataset
from training.data.labels import EMOTIONS_7, EMOTIONS_8
from training.data.readers import detect_format, load_dataset

__all__ = ["EMOTIONS_7", "EMOTIONS_8", "FaceDataset", "detect_format", "load_dataset"]
