"""TF-GAN's ROI mask ``m_roi``: where the generator may change the coarse image freely (Tumor Fabrication, eq. 2).

``m_roi`` is the tumour (and the ROI that TF-Aug modified, when a datalist item has one), grown by
``margin`` voxels so the generator can blend the tumour boundary and model a little mass effect. The paper
leaves its construction open; the default margin (4 voxels) covers the band that TF-Aug's ROI blur
(Gaussian, sigma 2) alters around the mask (about 2 sigma). The hinge loss
(:class:`~custom_components.losses.HingeL1Loss`) is computed with it.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping

import numpy as np
import torch
from monai.config import KeysCollection, NdarrayOrTensor
from monai.transforms import MapTransform, Transform
from monai.utils import convert_to_dst_type
from scipy import ndimage

__all__ = ["DEFAULT_ROI_MARGIN", "RoiMask", "RoiMaskd", "roi_mask"]

DEFAULT_ROI_MARGIN: int = 4


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
