"""Intensity normalisation shared by every bundle: robust rescale of brain voxels to [-1, 1]."""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform, Transform
from monai.utils import convert_to_dst_type, convert_to_numpy

from custom_components.data.brain_mask import infer_brain_mask
from custom_components.data.datalist import source_name
from custom_components.data.validation import check_brain_mask_grid


def _affine_of(img: Any) -> np.ndarray | None:
    affine = getattr(img, "affine", None)
    return None if affine is None else np.asarray(affine.detach().cpu() if isinstance(affine, torch.Tensor) else affine)


class RescaleBrainIntensity(Transform):
    """Rescale each channel so that brain voxels span ``[b_min, b_max]`` between robust percentiles.

    The brain is the given ``mask`` (e.g. the datalist item's ``brain_mask``) or, without one, the mask
    :func:`custom_components.data.brain_mask.infer_brain_mask` infers (and checks) from the first channel:
    all modalities of a case share one brain (TCGA-FG-6692's four inferred masks agree to Dice 0.9999), and one
    inference per case keeps loading cheap. Voxels outside the brain are set to ``b_min``; brain voxels are
    clipped to the range, with the lowest ones kept one float step above ``b_min`` so that brain and background
    stay distinguishable after rescaling (the transform is idempotent, and every later step that needs the brain
    - crop sampling, DTSS, TF-Aug placement - reads it from the rescaled image as "above ``b_min``"). This is the
    TF paper's "intensities to [-1, 1]" step applied identically to real, healthy and synthetic images, so every
    stage compares like with like.

    Args:
        lower: lower percentile of brain voxels mapped to ``b_min``.
        upper: upper percentile of brain voxels mapped to ``b_max``.
        b_min: output minimum.
        b_max: output maximum.
        check: reject an implausible inferred mask (see :func:`~custom_components.data.brain_mask.check_brain_mask`).
    """

    def __init__(
        self, lower: float = 0.5, upper: float = 99.5, b_min: float = -1.0, b_max: float = 1.0, check: bool = True
    ) -> None:
        if not 0 <= lower < upper <= 100:
            raise ValueError(f"percentiles must satisfy 0 <= lower < upper <= 100, got {lower}, {upper}")
        self.lower, self.upper, self.b_min, self.b_max, self.check = lower, upper, b_min, b_max, check

    def _channel(self, x: np.ndarray, brain: np.ndarray) -> np.ndarray:
        out = np.full(x.shape, self.b_min, dtype=np.float32)
        if not brain.any():
            return out
        lo, hi = np.percentile(x[brain], [self.lower, self.upper])
        scale = (self.b_max - self.b_min) / max(hi - lo, 1e-8)
        low = np.nextafter(np.float32(self.b_min), np.float32(self.b_max))
        out[brain] = np.clip((x[brain] - lo) * scale + self.b_min, low, self.b_max)
        return out

    def __call__(
        self, img: np.ndarray | torch.Tensor, mask: np.ndarray | torch.Tensor | None = None
    ) -> np.ndarray | torch.Tensor:
        """Args:
        img: channel-first array or tensor (C, *spatial).
        mask: optional brain mask ((1, *spatial) or (*spatial), non-zero = brain) on the image's grid; its shape
            (and, for MetaTensors, its affine) must match the image's.
        """
        arr = convert_to_numpy(img, wrap_sequence=True)
        if mask is None:
            brain = infer_brain_mask(arr[0].astype(np.float32), name=source_name(img), check=self.check)
        else:
            m = convert_to_numpy(mask, wrap_sequence=True)
            m = m[0] if m.ndim == arr.ndim else m
            check_brain_mask_grid(
                arr.shape[1:], _affine_of(img), m.shape, _affine_of(mask), source_name(img), source_name(mask)
            )
            brain = m > 0
        out = np.stack([self._channel(c.astype(np.float32), brain) for c in arr])
        # same type as the input (MetaTensor metadata such as the affine is kept)
        return convert_to_dst_type(out, img, dtype=torch.float32 if isinstance(img, torch.Tensor) else np.float32)[0]


class RescaleBrainIntensityd(MapTransform):
    """Dictionary version of :class:`RescaleBrainIntensity`.

    Args:
        keys: keys of the images to rescale.
        lower, upper, b_min, b_max, check: see :class:`RescaleBrainIntensity`.
        mask_key: key of an optional brain mask (the datalist item's ``brain_mask``, loaded onto the image's grid);
            when the data holds it, it is the brain of every image, else the brain is inferred.
        allow_missing_keys: do not raise if a key is absent.
    """

    def __init__(
        self,
        keys: KeysCollection,
        lower: float = 0.5,
        upper: float = 99.5,
        b_min: float = -1.0,
        b_max: float = 1.0,
        mask_key: str | None = "brain_mask",
        check: bool = True,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.rescaler = RescaleBrainIntensity(lower, upper, b_min, b_max, check)
        self.mask_key = mask_key

    def __call__(self, data: Mapping[Hashable, Sequence]) -> dict[Hashable, Sequence]:
        d = dict(data)
        mask = d.get(self.mask_key) if self.mask_key is not None else None
        if isinstance(mask, str):
            raise ValueError(f"{mask}: brain mask not loaded; add '{self.mask_key}' to the LoadImaged keys")
        for key in self.key_iterator(d):
            d[key] = self.rescaler(d[key], mask)
        return d
