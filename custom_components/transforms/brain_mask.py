"""Brain mask of a skull-stripped image, inferred and checked by
:func:`custom_components.data.brain_mask.infer_brain_mask` (an implausible mask raises, naming the file)."""

from __future__ import annotations

from collections.abc import Hashable, Mapping

import numpy as np
import torch
from monai.config import KeysCollection, NdarrayOrTensor
from monai.transforms import MapTransform, Transform
from monai.utils import convert_to_dst_type

from custom_components.data.brain_mask import infer_brain_mask
from custom_components.data.datalist import source_name

__all__ = ["BrainMask", "BrainMaskd"]


class BrainMask(Transform):
    """Brain mask ``(1, *spatial)`` (float32, 0/1) of a ``(C, *spatial)`` skull-stripped image, from its first channel,
    by :func:`~custom_components.data.brain_mask.infer_brain_mask` (which raises, naming the file, on an
    implausible mask)."""

    def __call__(self, img: NdarrayOrTensor) -> NdarrayOrTensor:
        """Args: img: ``(C, *spatial)`` image. Returns: the mask, of the input's type (metadata kept)."""
        arr = img.detach().cpu().numpy() if isinstance(img, torch.Tensor) else np.asarray(img)
        mask = infer_brain_mask(arr[0], name=source_name(img))[None].astype(np.float32)
        return convert_to_dst_type(mask, img, dtype=torch.float32 if isinstance(img, torch.Tensor) else np.float32)[0]


class BrainMaskd(MapTransform):
    """Dictionary version of :class:`BrainMask`.

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
            if isinstance(d[self.output_key], str):
                raise ValueError(f"{d[self.output_key]}: brain mask not loaded; add '{self.output_key}' to LoadImaged")
            return d
        for key in self.key_iterator(d):
            d[self.output_key] = self.transform(d[key])
            break
        return d
