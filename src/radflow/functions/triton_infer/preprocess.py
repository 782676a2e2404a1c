"""Pure numpy pre- and post-processing shared by the operator and the training script.

The model sees the volume's voxel grid stretched to its fixed input size (index space, not
physical space), so going back to the source grid is the inverse stretch and the mask keeps the
volume's geometry exactly. Linear resizing follows the half-voxel-centre convention of
``torch.nn.functional.interpolate(mode="trilinear", align_corners=False)`` so training
(``models/train_brain_tumor.py`` calls these same functions) and serving agree voxel for voxel.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

Normalisation = Literal["zscore", "minmax", "none"]


def _source_coords(n_in: int, n_out: int) -> np.ndarray:
    """Source coordinate of each output voxel centre (align_corners=False), clamped at 0."""
    scale = n_in / n_out
    return np.clip((np.arange(n_out, dtype=np.float64) + 0.5) * scale - 0.5, 0, n_in - 1)


def resize_linear(volume: np.ndarray, size: tuple[int, int, int]) -> np.ndarray:
    """Separable (tri)linear resize of a (z, y, x) volume to ``size``, as float32."""
    out = np.asarray(volume, dtype=np.float32)
    for axis, n_out in enumerate(size):
        n_in = out.shape[axis]
        if n_in == n_out:
            continue
        src = _source_coords(n_in, n_out)
        i0 = np.floor(src).astype(np.intp)
        i1 = np.minimum(i0 + 1, n_in - 1)
        t = (src - i0).astype(np.float32)
        bshape = [1, 1, 1]
        bshape[axis] = n_out
        t = t.reshape(bshape)
        out = np.take(out, i0, axis=axis) * (1 - t) + np.take(out, i1, axis=axis) * t
    return np.ascontiguousarray(out, dtype=np.float32)


def resize_nearest(labels: np.ndarray, size: tuple[int, int, int]) -> np.ndarray:
    """Nearest-neighbour resize of a (z, y, x) label map to ``size``, keeping its dtype."""
    out = labels
    for axis, n_out in enumerate(size):
        n_in = out.shape[axis]
        if n_in == n_out:
            continue
        idx = np.minimum(
            np.floor((np.arange(n_out) + 0.5) * (n_in / n_out)).astype(np.intp), n_in - 1
        )
        out = np.take(out, idx, axis=axis)
    return np.ascontiguousarray(out)


def normalise(volume: np.ndarray, method: Normalisation = "zscore") -> np.ndarray:
    """Intensity normalisation that makes the model indifferent to the scanner's units.

    ``zscore`` uses the mean and standard deviation of the voxels brighter than the volume
    mean (a rough head mask, so the amount of air around the head does not matter);
    ``minmax`` maps the 0.5th-99.5th percentiles to 0-1.
    """
    v = np.asarray(volume, dtype=np.float32)
    if method == "none":
        return v
    if method == "minmax":
        lo, hi = np.percentile(v, [0.5, 99.5])
        return ((v - lo) / max(float(hi - lo), 1e-6)).astype(np.float32)
    fg = v[v > v.mean()]
    if fg.size < 2:
        return np.zeros_like(v)
    return ((v - fg.mean()) / max(float(fg.std()), 1e-6)).astype(np.float32)


def preprocess(
    volume: np.ndarray, size: tuple[int, int, int], method: Normalisation = "zscore"
) -> np.ndarray:
    """Volume (z, y, x) -> model input (1, 1, *size) float32: resize, then normalise."""
    return normalise(resize_linear(volume, size), method)[None, None]


def postprocess(
    output: np.ndarray,
    source_shape: tuple[int, ...],
    *,
    mode: Literal["argmax", "threshold"] = "argmax",
    threshold: float = 0.5,
) -> np.ndarray:
    """Model output (1, C, *size) -> uint8 label map in the source grid (nearest neighbour).

    ``argmax`` picks the most probable class per voxel (class index = label value);
    ``threshold`` sets label 1 where the last channel (the foreground probability, or the only
    channel of a sigmoid model) exceeds ``threshold``.
    """
    scores = np.asarray(output)
    if scores.ndim != 5 or scores.shape[0] != 1:
        raise ValueError(f"model output has shape {scores.shape}, expected (1, C, z, y, x)")
    if mode == "argmax" and scores.shape[1] > 1:
        labels = np.argmax(scores[0], axis=0).astype(np.uint8)
    else:
        labels = (scores[0, -1] > threshold).astype(np.uint8)
    return resize_nearest(labels, (source_shape[0], source_shape[1], source_shape[2]))
