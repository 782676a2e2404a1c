"""Synthetic brain MR phantoms (pure numpy): the demo model's training data and demo studies.

A phantom is an ellipsoidal head with skull, brain and ventricles, optionally a tumour with an
enhancing rim (bright on T1c), with randomised contrast, shape, size, position, noise and a
smooth bias field. It is synthetic data for a demo, not anatomy.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Phantom:
    """Volumes in (z, y, x) order, float32 intensities; ``label`` is 1 inside the tumour."""

    t1: np.ndarray
    t1c: np.ndarray
    flair: np.ndarray
    label: np.ndarray


def _ellipsoid(grid: tuple[np.ndarray, ...], center: np.ndarray, radii: np.ndarray) -> np.ndarray:
    z, y, x = grid
    return (((z - center[0]) / radii[0]) ** 2 + ((y - center[1]) / radii[1]) ** 2 + ((x - center[2]) / radii[2]) ** 2) <= 1.0


def brain_phantom(shape: tuple[int, int, int] = (32, 64, 64), *, seed: int, tumor: bool = True) -> Phantom:
    """One random phantom of ``shape`` (z, y, x); the same seed gives the same phantom."""
    rng = np.random.default_rng(seed)
    d, h, w = shape
    grid = tuple(np.meshgrid(np.arange(d), np.arange(h), np.arange(w), indexing="ij"))
    c = np.array([d, h, w], dtype=float) / 2 + rng.uniform(-0.05, 0.05, 3) * np.array(shape)
    head_r = np.array([d * 0.45, h * 0.42, w * 0.36]) * rng.uniform(0.9, 1.05, 3)
    head = _ellipsoid(grid, c, head_r)
    brain = _ellipsoid(grid, c, head_r * 0.85)
    vent = _ellipsoid(grid, c, head_r * np.array([0.25, 0.2, 0.12]))
    label = np.zeros(shape, dtype=np.uint8)
    if tumor:
        for _ in range(20):
            tr = np.array([d, h, w]) * rng.uniform(0.06, 0.16) * rng.uniform(0.8, 1.2, 3)
            tc = c + (rng.uniform(-1, 1, 3) * head_r * 0.5)
            cand = _ellipsoid(grid, tc, tr)
            if cand.sum() > 20 and not (cand & ~brain).any() and not (cand & vent).any():
                label = cand.astype(np.uint8)
                break
    core = label.astype(bool)

    def contrast(skull: float, wm: float, csf: float, lesion: float, enh: float) -> np.ndarray:
        img = np.zeros(shape, np.float32)
        img[head] = skull * rng.uniform(0.9, 1.1)
        img[brain] = wm * rng.uniform(0.85, 1.15)
        img[vent] = csf * rng.uniform(0.8, 1.2)
        img[core] = lesion * rng.uniform(0.85, 1.15)
        img[core] += enh * rng.uniform(0.8, 1.2)
        zz = grid[0] / d - 0.5
        bias = 1 + rng.uniform(-0.15, 0.15) * zz + rng.uniform(-0.15, 0.15) * (grid[1] / h - 0.5)
        img = img * bias.astype(np.float32)
        img += rng.normal(0, rng.uniform(10, 30), shape).astype(np.float32)
        return np.clip(img, 0, None).astype(np.float32)

    t1 = contrast(300, 500, 150, 350, 0)
    t1c = contrast(300, 500, 150, 350, 450)
    flair = contrast(200, 400, 60, 700, 0)
    return Phantom(t1=t1, t1c=t1c, flair=flair, label=label)
