"""Intensity normalisation shared by every bundle: robust rescale of brain voxels to [-1, 1]."""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform, Transform
from monai.utils import convert_to_dst_type


def background_value(volume: np.ndarray) -> float:
    """The background value of a skull-stripped volume: the median of its eight corner voxels.

    0 for raw BraTS scans, -1 for prepared or synthetic scans. (The volume's minimum is not a safe
    rule: raw scans can hold negative values inside the brain, e.g. -52 in TCGA-FG-6692's T1.)
    """
    volume = np.asarray(volume)
    corners = volume[tuple(np.meshgrid(*[[0, s - 1] for s in volume.shape], indexing="ij"))]
    return float(np.median(corners))


def brain_foreground(image: np.ndarray) -> np.ndarray:
    """Brain voxels of a skull-stripped volume: every voxel that differs from the background value."""
    image = np.asarray(image)
    return image != background_value(image)


class RescaleBrainIntensity(Transform):
    """Rescale each channel so that brain voxels span ``[b_min, b_max]`` between robust percentiles.

    Background (voxels equal to the corner value, see :func:`background_value`) is set to ``b_min``;
    brain voxels are clipped to the range, with the lowest ones kept one float step above ``b_min`` so
    that brain and background stay distinguishable after rescaling (the transform is idempotent). This is the TF paper's "intensities to [-1, 1]" step applied identically to real,
    healthy and synthetic images, so every stage compares like with like.

    Args:
        lower: lower percentile of brain voxels mapped to ``b_min``.
        upper: upper percentile of brain voxels mapped to ``b_max``.
        b_min: output minimum.
        b_max: output maximum.
    """

    def __init__(self, lower: float = 0.5, upper: float = 99.5, b_min: float = -1.0, b_max: float = 1.0) -> None:
        if not 0 <= lower < upper <= 100:
            raise ValueError(f"percentiles must satisfy 0 <= lower < upper <= 100, got {lower}, {upper}")
        self.lower, self.upper, self.b_min, self.b_max = lower, upper, b_min, b_max

    def _channel(self, x: np.ndarray) -> np.ndarray:
        brain = brain_foreground(x)
        out = np.full(x.shape, self.b_min, dtype=np.float32)
        if not brain.any():
            return out
        lo, hi = np.percentile(x[brain], [self.lower, self.upper])
        scale = (self.b_max - self.b_min) / max(hi - lo, 1e-8)
        low = np.nextafter(np.float32(self.b_min), np.float32(self.b_max))
        out[brain] = np.clip((x[brain] - lo) * scale + self.b_min, low, self.b_max)
        return out

    def __call__(self, img: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
        """Args: img: channel-first array or tensor (C, *spatial)."""
        arr = img.detach().cpu().numpy() if isinstance(img, torch.Tensor) else np.asarray(img)
        out = np.stack([self._channel(c.astype(np.float32)) for c in arr])
        # same type as the input (MetaTensor metadata such as the affine is kept)
        return convert_to_dst_type(out, img, dtype=torch.float32 if isinstance(img, torch.Tensor) else np.float32)[0]


class RescaleBrainIntensityd(MapTransform):
    """Dictionary version of :class:`RescaleBrainIntensity`.

    Args:
        keys: keys of the images to rescale.
        lower, upper, b_min, b_max: see :class:`RescaleBrainIntensity`.
        allow_missing_keys: do not raise if a key is absent.
    """

    def __init__(
        self,
        keys: KeysCollection,
        lower: float = 0.5,
        upper: float = 99.5,
        b_min: float = -1.0,
        b_max: float = 1.0,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.rescaler = RescaleBrainIntensity(lower, upper, b_min, b_max)

    def __call__(self, data: Mapping[Hashable, Sequence]) -> dict[Hashable, Sequence]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.rescaler(d[key])
        return d
