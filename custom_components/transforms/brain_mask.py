"""Brain mask of a skull-stripped image: voxels above the image's minimum (its background value)."""

from __future__ import annotations

from collections.abc import Hashable, Mapping

import numpy as np
import torch
from monai.config import KeysCollection, NdarrayOrTensor
from monai.transforms import MapTransform, Transform
from monai.utils import convert_to_dst_type

from custom_components.transforms.intensity import brain_foreground

__all__ = ["BrainMask", "BrainMaskd"]


class BrainMask(Transform):
    """Brain mask ``(1, *spatial)`` (float32, 0/1) of a ``(C, *spatial)`` skull-stripped image, from its first channel.

    A voxel is brain when it lies above the image's minimum (see
    :func:`~custom_components.transforms.intensity.brain_foreground`).
    """

    def __call__(self, img: NdarrayOrTensor) -> NdarrayOrTensor:
        """Args: img: ``(C, *spatial)`` image. Returns: the mask, of the input's type (metadata kept)."""
        arr = img.detach().cpu().numpy() if isinstance(img, torch.Tensor) else np.asarray(img)
        mask = brain_foreground(arr[0])[None].astype(np.float32)
        return convert_to_dst_type(mask, img, dtype=torch.float32 if isinstance(img, torch.Tensor) else np.float32)[0]


class BrainMaskd(MapTransform):
    """Brain mask of a skull-stripped image: voxels above the image's minimum (first channel).

    Use it before ``RescaleBrainIntensityd`` (which clips the darkest brain voxels to the background value).
    An existing ``output_key`` entry (a brain mask file from the datalist) is kept unless ``overwrite``.

    Args:
        keys: the image key (one key).
        output_key: where to store the mask ``(1, *spatial)``.
        overwrite: replace an existing ``output_key`` entry.
        allow_missing_keys: do nothing when the image is absent.
    """

    def __init__(
        self,
        keys: KeysCollection = "image",
        output_key: str = "brain_mask",
        overwrite: bool = False,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.transform = BrainMask()
        self.output_key = output_key
        self.overwrite = overwrite

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        if self.output_key in d and not self.overwrite:
            return d
        for key in self.key_iterator(d):
            d[self.output_key] = self.transform(d[key])
            break
        return d
