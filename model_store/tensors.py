"""How a stored model is fed and read, one definition for the service, the training job and the benches.

    x = normalize(pixels, manifest.input)        # uint8 (N, H, W, C) -> the float32 batch the model takes
    p = probabilities(manifest, raw_outputs)     # what the service serves: softmax(z / T), or p^(1/T)

Output rule (read from the manifest, never guessed from the numbers): the model outputs
probabilities when `decoding.params.output` is "probabilities", or else when the first declared
output (`manifest.outputs[0].name`) is named "prob", "probs", "probabilities" or "softmax"
(case-insensitive). Otherwise the output is logits and gets a softmax. The manifest's `temperature`
T divides the logits; for probability outputs it is applied as p^(1/T), renormalised, which is the
same thing. A manifest's `prior_correction` then divides each probability by prior^strength and
renormalises (logit adjustment: logits / T minus strength * log prior).
"""

from __future__ import annotations

import numpy as np

from model_store.manifest import InputSpec, Manifest

PROBABILITY_OUTPUT_NAMES = {"prob", "probs", "probabilities", "softmax"}


def normalize(pixels: np.ndarray, spec: InputSpec) -> np.ndarray:
    """uint8 images (N, H, W, C), already in the spec's colour order -> float32 `(pixel * scale - mean) / std`
    in the spec's layout (one converting copy, then the affine map in place, skipped where it is identity)."""
    n, h, w, c = pixels.shape
    x = np.empty((n, c, h, w) if spec.layout == "NCHW" else (n, h, w, c), np.float32)
    x[...] = pixels.transpose(0, 3, 1, 2) if spec.layout == "NCHW" else pixels
    gain: np.ndarray = np.float32(spec.scale) / np.asarray(spec.std, np.float32)
    bias: np.ndarray = -np.asarray(spec.mean, np.float32) / np.asarray(spec.std, np.float32)
    if spec.layout == "NCHW":
        gain, bias = gain.reshape(-1, 1, 1), bias.reshape(-1, 1, 1)
    if not np.all(gain == 1):
        x *= gain
    if np.any(bias != 0):
        x += bias
    return x


def softmax(z: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Row-wise softmax of `z / temperature`, float64."""
    z = np.asarray(z, np.float64) / temperature
    e = np.exp(z - z.max(axis=1, keepdims=True))
    out: np.ndarray = e / e.sum(axis=1, keepdims=True)
    return out


def outputs_probabilities(manifest: Manifest) -> bool:
    """True when the manifest says the model already ends in a softmax (see the module docstring)."""
    params = manifest.decoding.params if manifest.decoding else {}
    if "output" in params:
        return str(params["output"]).lower() == "probabilities"
    return bool(manifest.outputs) and manifest.outputs[0].name.lower() in PROBABILITY_OUTPUT_NAMES


def probabilities(manifest: Manifest, raw: np.ndarray) -> np.ndarray:
    """Model outputs (N, labels) -> the served probabilities (N, labels), float64 rows summing to 1."""
    out = np.asarray(raw, np.float64).reshape(len(raw), -1)
    t = manifest.temperature or 1.0
    if outputs_probabilities(manifest):
        out = np.clip(out, 1e-12, None) ** (1.0 / t)
        probs: np.ndarray = out / out.sum(axis=1, keepdims=True)
    else:
        probs = softmax(out, t)
    pc = manifest.prior_correction
    return probs if pc is None else correct_prior(probs, pc.prior, pc.strength)


def correct_prior(probs: np.ndarray, prior: list[float] | np.ndarray, strength: float) -> np.ndarray:
    """Probabilities (N, C) divided by prior^strength per class, rows renormalised."""
    if strength == 0:
        return probs
    out = probs * np.asarray(prior, np.float64) ** -strength
    result: np.ndarray = out / out.sum(axis=1, keepdims=True)
    return result
