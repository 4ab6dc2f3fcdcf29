"""Canonical label orders and the mapping tables of every supported dataset.

The service relies on these orders: 7 classes, and the 8-class (FER+/AffectNet-8) order that adds
"contempt" at the end.
"""

from __future__ import annotations

EMOTIONS_7: list[str] = ["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"]
EMOTIONS_8: list[str] = [*EMOTIONS_7, "contempt"]

# FER2013 csv `emotion` column: 0=Angry 1=Disgust 2=Fear 3=Happy 4=Sad 5=Surprise 6=Neutral.
FER2013_CSV: dict[int, str] = dict(enumerate(["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"]))
FER2013_USAGE: dict[str, str] = {"Training": "train", "PublicTest": "val", "PrivateTest": "test"}

# FER+ label.csv vote columns (after file name and face box), in file order.
FERPLUS_VOTES: list[str] = [
    "neutral", "happy", "surprise", "sad", "angry", "disgust", "fear", "contempt", "unknown", "NF",
]  # fmt: skip
FERPLUS_SPLITS: dict[str, str] = {"train": "FER2013Train", "val": "FER2013Valid", "test": "FER2013Test"}

# RAF-DB basic list_patition_label.txt: 1..7.
RAFDB: dict[int, str] = {1: "surprise", 2: "fear", 3: "disgust", 4: "happy", 5: "sad", 6: "angry", 7: "neutral"}

# AffectNet expression codes; 8 (None), 9 (Uncertain), 10 (No-Face) are dropped.
AFFECTNET: dict[int, str] = {
    0: "neutral", 1: "happy", 2: "sad", 3: "surprise", 4: "fear", 5: "disgust", 6: "angry", 7: "contempt",
}  # fmt: skip

# Folder names seen in the wild -> canonical name.
ALIASES: dict[str, str] = {
    "anger": "angry", "angry": "angry", "disgust": "disgust", "disgusted": "disgust",
    "fear": "fear", "fearful": "fear", "scared": "fear", "happy": "happy", "happiness": "happy",
    "joy": "happy", "sad": "sad", "sadness": "sad", "surprise": "surprise", "surprised": "surprise",
    "neutral": "neutral", "contempt": "contempt",
}  # fmt: skip


def canonical(name: str) -> str | None:
    """The canonical emotion for a folder/column name, or None when it is not an emotion we know."""
    return ALIASES.get(name.strip().lower())


def label_order(names: set[str] | list[str]) -> list[str]:
    """The canonical order covering `names` (7 classes, or 8 when contempt is present)."""
    return EMOTIONS_8 if "contempt" in set(names) else EMOTIONS_7


def shared_classes(a: list[str], b: list[str]) -> list[str]:
    """Classes present in both label lists, in the order of `a`."""
    return [c for c in a if c in b]
