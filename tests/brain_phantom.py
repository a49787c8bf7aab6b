"""A synthetic brain phantom shared by the brain-mask and registration-gate tests."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

SHAPE = (40, 48, 40)


def brain_shape() -> np.ndarray:
    """An ellipsoidal 'brain' (about 17 % of the volume, as in BraTS) with a ventricle-like hole-free core."""
    grid = np.indices(SHAPE, dtype=np.float32)
    centre = (np.asarray(SHAPE, dtype=np.float32) - 1) / 2
    radii = np.array([12.0, 15.0, 11.0], dtype=np.float32)
    r = np.sqrt(sum(((grid[i] - centre[i]) / radii[i]) ** 2 for i in range(3)))
    return r <= 1.0


def brain_texture(seed: int = 0) -> np.ndarray:
    """Smooth tissue-like texture around 100 with dark spots below zero (like the -52 of the real T1)."""
    rng = np.random.default_rng(seed)
    tex = 100.0 + 40.0 * ndimage.gaussian_filter(rng.standard_normal(SHAPE), 1.5) / 0.1
    tex = tex.astype(np.float32)
    tex[18:21, 22:25, 18:21] = -52.0  # interpolation undershoot inside the brain
    tex[20, 26, 20] = 0.0  # a brain voxel exactly equal to the zero background
    return tex
