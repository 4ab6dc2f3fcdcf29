"""Decoded-image cache: a dataset is decoded once into uint8 arrays saved as .npz under a cache dir.

The cache key is a hash of the reader's parameters and the source files' names, sizes and mtimes;
the dataset fingerprint (recorded in manifests) is a hash of the decoded content itself.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np


def cache_dir() -> Path:
    """`$EMOSERVE_CACHE_DIR`, else `~/.cache/emoserve/datasets` (never inside the repository)."""
    env = os.environ.get("EMOSERVE_CACHE_DIR")
    return Path(env) if env else Path.home() / ".cache" / "emoserve" / "datasets"


def files_key(params: dict[str, Any], files: Iterable[Path]) -> str:
    """Hash of reader parameters plus (name, size, mtime) of every source file."""
    h = hashlib.sha256(json.dumps(params, sort_keys=True, default=str).encode())
    for f in sorted(files):
        st = f.stat()
        h.update(f"{f}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:24]


def content_fingerprint(images: np.ndarray, targets: np.ndarray, labels: list[str]) -> str:
    """sha256 (first 16 hex) of the decoded images, targets and label order."""
    h = hashlib.sha256()
    h.update(np.ascontiguousarray(images).tobytes())
    h.update(np.ascontiguousarray(targets).tobytes())
    h.update(",".join(labels).encode())
    return h.hexdigest()[:16]


def cached(key: str, build: Callable[[], dict[str, np.ndarray]], use_cache: bool = True) -> dict[str, np.ndarray]:
    """Load arrays for `key` from the cache, or build and store them."""
    path = cache_dir() / f"{key}.npz"
    if use_cache and path.exists():
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    arrays = build()
    if use_cache:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp.npz")
        np.savez(tmp, **arrays)  # type: ignore[arg-type]
        tmp.replace(path)
    return arrays
