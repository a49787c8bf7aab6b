"""Apply TF-Aug's learned class-wise intensities I(x) = a_c x + b_c during synthesis (Tumor Fabrication, 2.1).

:class:`ApplyClasswiseIntensity` / :class:`ApplyClasswiseIntensityd` apply the parameters of the trainable
:class:`~custom_components.networks.ClasswiseIntensity` (or a JSON/``.pt`` file it wrote) to an image.
"""

from __future__ import annotations

import os
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection, NdarrayOrTensor
from monai.data import MetaTensor
from monai.transforms import MapTransform, Transform
from monai.utils import convert_to_dst_type

from custom_components.networks.classwise_intensity import ClasswiseIntensity

__all__ = ["ApplyClasswiseIntensity", "ApplyClasswiseIntensityd"]


class ApplyClasswiseIntensity(Transform):
    """Apply (learned) class-wise intensities to one image: the synthesis form of :class:`ClasswiseIntensity`.

    Args:
        params: a :class:`ClasswiseIntensity`, a JSON/``.pt`` file written by the training, or a dict
            ``{class: {"a": [...], "b": [...]}}``.
        num_channels: image channels (when ``params`` is a file or dict).
        clip: ``(min, max)`` to clip the result to (the data range, [-1, 1]); None keeps the values.
    """

    def __init__(
        self,
        params: ClasswiseIntensity | str | os.PathLike | Mapping[str, Any],
        num_channels: int = 1,
        clip: Sequence[float] | None = (-1.0, 1.0),
    ) -> None:
        if isinstance(params, ClasswiseIntensity):
            self.module = params
        elif isinstance(params, Mapping):
            self.module = ClasswiseIntensity(num_channels).load_dict(params)
        else:
            self.module = ClasswiseIntensity.from_file(params, num_channels)
        self.clip = None if clip is None else (float(clip[0]), float(clip[1]))

    def __call__(self, img: NdarrayOrTensor, label: NdarrayOrTensor) -> NdarrayOrTensor:
        """
        Args:
            img: ``(C, *spatial)`` image.
            label: ``(1, *spatial)`` or ``(*spatial)`` internal labels.

        Returns:
            float32 image of the input's type (MetaTensor metadata kept).
        """
        x = img.as_tensor() if isinstance(img, MetaTensor) else torch.as_tensor(img)
        lab = label.as_tensor() if isinstance(label, MetaTensor) else torch.as_tensor(label)
        if lab.ndim == x.ndim - 1:
            lab = lab[None]
        param = self.module.a
        with torch.no_grad():
            out = self.module(x.to(device=param.device, dtype=torch.float32)[None], lab.to(param.device)[None])[0]
            if self.clip is not None:
                out = out.clamp(self.clip[0], self.clip[1])
        return convert_to_dst_type(out, img, dtype=torch.float32 if isinstance(img, torch.Tensor) else np.float32)[0]


class ApplyClasswiseIntensityd(MapTransform):
    """Dictionary version of :class:`ApplyClasswiseIntensity`.

    Args:
        keys: image keys.
        params, num_channels, clip: see :class:`ApplyClasswiseIntensity`.
        label_key: key of the internal label volume (the synthetic mask m_s).
        allow_missing_keys: do not raise if a key is absent.
    """

    def __init__(
        self,
        keys: KeysCollection,
        params: ClasswiseIntensity | str | os.PathLike | Mapping[str, Any],
        num_channels: int = 1,
        clip: Sequence[float] | None = (-1.0, 1.0),
        label_key: str = "label",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.apply = ApplyClasswiseIntensity(params, num_channels, clip)
        self.label_key = label_key

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.apply(d[key], d[self.label_key])
        return d
