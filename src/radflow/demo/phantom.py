"""Synthetic brain MR phantoms (pure numpy): the demo model's training data and demo studies.

A phantom is an ellipsoidal head (scalp/skull, cortex, white matter, two lateral ventricles)
with, optionally, one tumour: either homogeneously enhancing or rim-enhancing around a necrotic
core, with a peritumoural oedema that only FLAIR shows. Everything a model could overfit to is
randomised per seed: head shape, size, position and in-plane rotation, tissue contrasts, the
overall intensity scale (scanners do not agree on units), noise level and a smooth
multiplicative bias field. ``tumor=False`` gives a tumour-free case, which the demo model must
answer with an empty mask. It is synthetic data for a demo, not anatomy.

The label is the tumour core (enhancing part plus necrosis), 1 inside, 0 elsewhere; the oedema
is not labelled, as in the BraTS "tumour core" region.
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


def _ellipsoid(
    grid: tuple[np.ndarray, ...], center: np.ndarray, radii: np.ndarray, angle: float = 0.0
) -> np.ndarray:
    """Voxels inside an ellipsoid whose (y, x) axes are rotated by ``angle`` radians about z."""
    z, y, x = grid
    dy, dx = y - center[1], x - center[2]
    c, s = np.cos(angle), np.sin(angle)
    ry, rx = c * dy - s * dx, s * dy + c * dx
    return ((z - center[0]) / radii[0]) ** 2 + (ry / radii[1]) ** 2 + (rx / radii[2]) ** 2 <= 1.0


def _bias_field(
    rng: np.random.Generator, shape: tuple[int, int, int], strength: float
) -> np.ndarray:
    """A smooth multiplicative field (second-order polynomial), 1 +/- about ``strength``."""
    d, h, w = shape
    z = (np.arange(d, dtype=np.float32) / max(d - 1, 1) - 0.5)[:, None, None]
    y = (np.arange(h, dtype=np.float32) / max(h - 1, 1) - 0.5)[None, :, None]
    x = (np.arange(w, dtype=np.float32) / max(w - 1, 1) - 0.5)[None, None, :]
    a = rng.uniform(-1, 1, 6).astype(np.float32) * strength
    field = (
        1
        + a[0] * z
        + a[1] * y
        + a[2] * x
        + 2 * (a[3] * z * y + a[4] * y * x + a[5] * (x * x - 1 / 12))
    )
    return np.clip(field, 0.5, 1.5).astype(np.float32)


def brain_phantom(
    shape: tuple[int, int, int] = (32, 64, 64), *, seed: int, tumor: bool = True
) -> Phantom:
    """One random phantom of ``shape`` (z, y, x); the same seed gives the same phantom."""
    rng = np.random.default_rng(seed)
    d, h, w = shape
    dims = np.array([d, h, w], dtype=float)
    grid = tuple(np.meshgrid(np.arange(d), np.arange(h), np.arange(w), indexing="ij", sparse=True))
    c = (dims - 1) / 2 + rng.uniform(-0.06, 0.06, 3) * dims
    head_r = dims * np.array([0.44, 0.42, 0.35]) * rng.uniform(0.82, 1.05, 3)
    angle = float(rng.uniform(-0.3, 0.3))
    head = _ellipsoid(grid, c, head_r, angle)
    brain_r = head_r * rng.uniform(0.80, 0.90)
    brain = _ellipsoid(grid, c, brain_r, angle)
    white = _ellipsoid(grid, c, brain_r * rng.uniform(0.78, 0.9), angle)
    vent = np.zeros(shape, dtype=bool)
    vr = brain_r * np.array([0.28, 0.22, 0.08]) * rng.uniform(0.6, 1.4)
    for side in (-1, 1):
        off = np.array([0.0, 0.0, side * brain_r[2] * rng.uniform(0.08, 0.16)])
        vent |= _ellipsoid(grid, c + off, vr, angle)

    core = np.zeros(shape, dtype=bool)
    necrosis = np.zeros(shape, dtype=bool)
    oedema = np.zeros(shape, dtype=bool)
    if tumor:
        for attempt in range(40):
            scale = rng.uniform(0.07, 0.17) * (0.97**attempt)
            tr = dims * scale * rng.uniform(0.75, 1.25, 3)
            tc = c + rng.uniform(-1, 1, 3) * brain_r * 0.55
            t_angle = float(rng.uniform(-np.pi, np.pi))
            cand = _ellipsoid(grid, tc, tr, t_angle)
            if cand.sum() >= 30 and not (cand & ~brain).any():
                core = cand
                if rng.random() < 0.5:  # rim-enhancing with a necrotic centre
                    necrosis = _ellipsoid(grid, tc, tr * rng.uniform(0.45, 0.7), t_angle) & core
                oedema = (
                    _ellipsoid(grid, tc, tr * rng.uniform(1.2, 1.6), t_angle)
                    & brain
                    & ~core
                    & ~vent
                )
                break
    label = core.astype(np.uint8)
    enhancing = core & ~necrosis
    scale = float(rng.uniform(0.5, 2.0))  # arbitrary scanner units
    noise_rel = float(rng.uniform(0.02, 0.07))
    bias_strength = float(rng.uniform(0.0, 0.25))

    def contrast(
        scalp: float, gm: float, wm: float, csf: float, oed: float, nec: float, enh: float
    ) -> np.ndarray:
        def j(v: float) -> float:
            return v * float(rng.uniform(0.88, 1.12)) * scale

        img = np.zeros(shape, np.float32)
        img[head] = j(scalp)
        img[brain] = j(gm)
        img[white] = j(wm)
        img[vent] = j(csf)
        img[oedema] = j(oed)
        img[necrosis] = j(nec)
        img[enhancing] = j(enh)
        img *= _bias_field(rng, shape, bias_strength)
        sigma = noise_rel * wm * scale
        # magnitude images: Rician noise (the modulus of a complex Gaussian), not Gaussian
        re = img + rng.normal(0, sigma, shape).astype(np.float32)
        im = rng.normal(0, sigma, shape).astype(np.float32)
        return np.sqrt(re * re + im * im).astype(np.float32)

    t1 = contrast(350, 400, 500, 150, 380, 200, 360)
    t1c = contrast(350, 400, 500, 150, 380, 200, float(rng.uniform(750, 1050)))
    flair = contrast(250, 420, 360, 60, 750, 300, 600)
    return Phantom(t1=t1, t1c=t1c, flair=flair, label=label)
