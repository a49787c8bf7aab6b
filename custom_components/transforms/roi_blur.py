"""TF-Aug ROI blurring B(x_h, m_s): Gaussian smoothing of the healthy tissue inside the tumour ROI only.

Tumor Fabrication (section 2.1) blurs the healthy scan inside the synthetic mask with a Gaussian of
sigma = 2 to remove high-frequency anatomy where the tumour will be. Voxels outside the ROI are
returned bit-identical. Only the ROI's bounding box plus the kernel radius is filtered, so the cost
scales with the tumour, not the volume; the result inside the ROI equals filtering the whole volume
(``scipy.ndimage.gaussian_filter(x, sigma, truncate=truncated, mode="nearest")``) up to float32
rounding.

With ``mask`` (the brain mask), the filter is normalised to the brain (``G(x * w) / G(w)``), so ROI
voxels next to the brain's edge are not darkened by the background value (-1 in prepared scans);
the paper is silent on this edge effect, the bundle enables it by default.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection, NdarrayOrTensor
from monai.networks.layers import separable_filtering
from monai.networks.layers.convutils import gaussian_1d
from monai.transforms import MapTransform, Transform
from monai.utils import convert_to_dst_type, convert_to_tensor


def _spatial_bool(x: Any, what: str, shape: Sequence[int]) -> torch.Tensor:
    t = convert_to_tensor(x, track_meta=False, wrap_sequence=True)
    if t.ndim == len(shape) + 1 and t.shape[0] == 1:
        t = t[0]
    if tuple(t.shape) != tuple(shape):
        raise ValueError(f"{what} has shape {tuple(t.shape)}, expected the image's spatial shape {tuple(shape)}")
    return t > 0


def gaussian_kernel(sigma: float, truncated: float) -> torch.Tensor:
    """Normalised sampled 1D Gaussian (MONAI ``gaussian_1d``), radius ``int(truncated * sigma + 0.5)`` like scipy."""
    return gaussian_1d(torch.tensor(float(sigma)), truncated=truncated, approx="sampled", normalize=True)


class RoiGaussianBlur(Transform):
    """Blur an image inside a region of interest only (TF-Aug's B).

    Args:
        sigma: standard deviation of the Gaussian in voxels (the paper's sigma = 2; prepared scans are 1 mm).
        truncated: kernel radius in standard deviations; the filtered box is the ROI's bounding box
            plus this radius.
        normalize_in_mask: when a ``mask`` is given at call time, filter ``x * mask`` and divide by the
            filtered mask so voxels outside the mask do not leak into the ROI.
    """

    def __init__(self, sigma: float = 2.0, truncated: float = 3.0, normalize_in_mask: bool = True) -> None:
        if sigma <= 0 or truncated <= 0:
            raise ValueError(f"sigma and truncated must be > 0, got {sigma}, {truncated}")
        self.sigma, self.truncated, self.normalize_in_mask = float(sigma), float(truncated), bool(normalize_in_mask)
        self.kernel = gaussian_kernel(self.sigma, self.truncated)
        self.radius = (self.kernel.numel() - 1) // 2

    def __call__(
        self, img: NdarrayOrTensor, roi: NdarrayOrTensor, mask: NdarrayOrTensor | None = None
    ) -> NdarrayOrTensor:
        """
        Args:
            img: channel-first image ``(C, *spatial)``; every channel is blurred.
            roi: region to blur, ``(1, *spatial)`` or ``(*spatial)``, non-zero inside.
            mask: optional brain mask (same shapes as ``roi``) for the normalised filter.

        Returns:
            float32 image of the input's type (MetaTensor metadata kept); outside the ROI equal to the input.
        """
        x = convert_to_tensor(img, track_meta=False, wrap_sequence=True)
        if x.ndim < 2:
            raise ValueError(f"image must be channel-first (C, *spatial), got shape {tuple(x.shape)}")
        spatial = tuple(x.shape[1:])
        inside = _spatial_bool(roi, "roi", spatial)
        out = x.detach().to(torch.float32).clone()
        if inside.any():
            idx = torch.nonzero(inside)
            lo = (idx.min(0).values - self.radius).clamp(min=0).tolist()
            hi = [min(int(h) + 1 + self.radius, s) for h, s in zip(idx.max(0).values.tolist(), spatial, strict=True)]
            box = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
            crop = out[(slice(None), *box)][None]  # (1, C, *box)
            kernels = [self.kernel.to(crop)] * len(spatial)
            if mask is not None and self.normalize_in_mask:
                w = _spatial_bool(mask, "mask", spatial)[box].to(crop)[None, None]
                num = separable_filtering(crop * w, kernels, mode="replicate")
                den = separable_filtering(w, kernels, mode="replicate")
                blurred = num / den.clamp(min=1e-12)
            else:
                blurred = separable_filtering(crop, kernels, mode="replicate")
            sel = inside[box]
            region = out[(slice(None), *box)]
            region[:, sel] = blurred[0][:, sel]
        return convert_to_dst_type(out, img, dtype=torch.float32 if isinstance(img, torch.Tensor) else np.float32)[0]


class RoiGaussianBlurd(MapTransform):
    """Dictionary version of :class:`RoiGaussianBlur`.

    Args:
        keys: image keys to blur.
        roi_key: key of the ROI (e.g. ``roi`` from :class:`TumorMaskAugmentd`, or the synthetic ``label``:
            every non-zero voxel is inside).
        mask_key: key of the brain mask for the normalised filter (None: plain filter).
        sigma, truncated, normalize_in_mask: see :class:`RoiGaussianBlur`.
        allow_missing_keys: do not raise if a key is absent.
    """

    def __init__(
        self,
        keys: KeysCollection,
        roi_key: str = "roi",
        mask_key: str | None = None,
        sigma: float = 2.0,
        truncated: float = 3.0,
        normalize_in_mask: bool = True,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.roi_key, self.mask_key = roi_key, mask_key
        self.blur = RoiGaussianBlur(sigma, truncated, normalize_in_mask)

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        mask = d[self.mask_key] if self.mask_key is not None else None
        for key in self.key_iterator(d):
            d[key] = self.blur(d[key], d[self.roi_key], mask)
        return d
