"""Hinge reconstruction loss of TF-GAN (eq. 2) and the ROI mask ``m_roi`` it is computed with.

``m_roi`` is the region where the generator may change the coarse image freely: the tumour (and the
ROI that TF-Aug modified, when a datalist item has one), grown by ``margin`` voxels so the generator
can blend the tumour boundary and model a little mass effect. The paper leaves its construction open;
the default margin (4 voxels) covers the band that TF-Aug's ROI blur (Gaussian, sigma 2) alters
around the mask (about 2 sigma).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping

import numpy as np
import torch
from monai.config import KeysCollection, NdarrayOrTensor
from monai.transforms import MapTransform, Transform
from monai.utils import convert_to_dst_type
from scipy import ndimage
from torch.nn.modules.loss import _Loss

DEFAULT_HINGE_MARGIN: float = 0.05
DEFAULT_ROI_MARGIN: int = 4


class HingeL1Loss(_Loss):
    """Hinge L1 loss outside the ROI (TF-GAN eq. 2).

    ``loss = mean(max(0, (1 - m_roi) * |x_s - x_s'| - margin))`` over every element (batch, channels and
    voxels, ROI voxels included with value 0: inside the ROI the term is ``max(0, -margin) = 0``). Outside the
    ROI, differences up to ``margin`` cost nothing and larger ones grow linearly with slope 1.

    Args:
        margin: tolerated absolute difference (in image units; images are in [-1, 1], so the default 0.05 is
            2.5 % of the range).
        reduction: ``"mean"`` (default), ``"sum"`` or ``"none"`` (element-wise map).
    """

    def __init__(self, margin: float = DEFAULT_HINGE_MARGIN, reduction: str = "mean") -> None:
        super().__init__(reduction=reduction)
        if margin < 0:
            raise ValueError(f"margin must be non-negative, got {margin}")
        if reduction not in ("mean", "sum", "none"):
            raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
        self.margin = float(margin)

    def forward(self, refined: torch.Tensor, coarse: torch.Tensor, roi: torch.Tensor) -> torch.Tensor:
        """Args:
        refined: generator output ``x_s`` ``(B, C, *spatial)``.
        coarse: coarse input ``x_s'``, same shape.
        roi: ``m_roi`` (1 inside, 0 outside), ``(B, 1, *spatial)`` or broadcastable to ``refined``.
        """
        if refined.shape != coarse.shape:
            raise ValueError(f"refined {tuple(refined.shape)} and coarse {tuple(coarse.shape)} shapes differ")
        outside = 1.0 - (roi > 0).to(refined.dtype)
        term = torch.clamp(outside * (refined - coarse).abs() - self.margin, min=0.0)
        if self.reduction == "mean":
            return term.mean()
        if self.reduction == "sum":
            return term.sum()
        return term


def roi_mask(*masks: NdarrayOrTensor | None, margin: int = DEFAULT_ROI_MARGIN) -> NdarrayOrTensor:
    """``m_roi``: the union of ``masks > 0`` grown by ``margin`` voxels (Euclidean distance, exact).

    Args:
        masks: arrays or tensors of one shape (e.g. the label ``(1, *spatial)`` and TF-Aug's ROI); ``None`` entries
            are skipped. Dimensions before the last three (batch, channel) are dilated separately.
        margin: dilation radius in voxels (0: no dilation).

    Returns:
        float32 mask of 0 and 1, same type and shape as the first mask.
    """
    given = [m for m in masks if m is not None]
    if not given:
        raise ValueError("roi_mask needs at least one mask")
    if margin < 0:
        raise ValueError(f"margin must be non-negative, got {margin}")
    arrays = [m.detach().cpu().numpy() if isinstance(m, torch.Tensor) else np.asarray(m) for m in given]
    shape = arrays[0].shape
    for a in arrays[1:]:
        if a.shape != shape:
            raise ValueError(f"masks differ in shape: {shape} vs {a.shape}")
    union = np.zeros(shape, dtype=bool)
    for a in arrays:
        union |= a > 0
    if margin > 0:
        flat = union.reshape((-1, *shape[-3:]))
        grown = np.stack([_dilate(v, margin) for v in flat])
        union = grown.reshape(shape)
    dtype = torch.float32 if isinstance(given[0], torch.Tensor) else np.float32
    return convert_to_dst_type(union.astype(np.float32), given[0], dtype=dtype)[0]


def _dilate(mask: np.ndarray, margin: int) -> np.ndarray:
    if not mask.any():
        return mask
    return ndimage.distance_transform_edt(~mask) <= margin


class RoiMask(Transform):
    """Array transform for :func:`roi_mask`.

    Args:
        margin: dilation radius in voxels.
    """

    def __init__(self, margin: int = DEFAULT_ROI_MARGIN) -> None:
        if margin < 0:
            raise ValueError(f"margin must be non-negative, got {margin}")
        self.margin = int(margin)

    def __call__(self, *masks: NdarrayOrTensor | None) -> NdarrayOrTensor:
        """Args: masks: one or more masks of one shape (``None`` skipped)."""
        return roi_mask(*masks, margin=self.margin)


class RoiMaskd(MapTransform):
    """Build ``m_roi`` from the label (and TF-Aug's ``roi`` when present) and store it under ``output_key``.

    Args:
        keys: keys whose union (values > 0) is dilated, e.g. ``["label", "roi"]``; missing keys are skipped when
            ``allow_missing_keys`` (a datalist item without ``roi`` then uses the label alone).
        margin: dilation radius in voxels.
        output_key: where to store the mask (overwrites an existing ``roi``); it keeps the first key's metadata.
        allow_missing_keys: skip absent keys (at least one must be present).
    """

    def __init__(
        self,
        keys: KeysCollection,
        margin: int = DEFAULT_ROI_MARGIN,
        output_key: str = "roi",
        allow_missing_keys: bool = True,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.transform = RoiMask(margin)
        self.output_key = output_key

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        masks = [d[k] for k in self.key_iterator(d)]
        if not masks:
            raise KeyError(f"RoiMaskd: none of the keys {list(self.keys)} is present")
        d[self.output_key] = self.transform(*masks)
        return d
