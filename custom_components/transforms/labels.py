"""Label transforms: map between BraTS label conventions, and internal labels to ET / TC / WT regions.

Bundles map labels to the internal convention when they load them
(``MapBratsLabelsd(keys="label", source=@label_convention)``) and back when they export
(``MapBratsLabels(source="internal", target="brats2021")``). Metrics use the BraTS regions
(``ConvertToBratsRegionsd`` after ``AsDiscreted(argmax=True)``).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping

import numpy as np
import torch
from monai.config import DtypeLike, KeysCollection, NdarrayOrTensor
from monai.data import MetaTensor
from monai.transforms import ConvertToMultiChannelBasedOnBratsClasses, MapTransform, Transform
from monai.utils import TransformBackends, convert_to_dst_type

from custom_components.data.datalist import source_name
from custom_components.data.labels import REGIONS, TUMOUR_CLASSES, check_convention, from_internal, to_internal


class MapBratsLabels(Transform):
    """Map a label volume from one BraTS label convention to another.

    Conventions (see :mod:`custom_components.data.labels`): ``internal`` and ``brats2023``
    (0, 1 NCR, 2 ED, 3 ET), ``brats2021`` (0, 1 NCR/NET, 2 ED, 4 ET), ``brats2015``
    (0, 1 necrosis, 2 ED, 3 non-enhancing, 4 ET). The mapping goes through the internal convention,
    so mapping ``brats2015`` to anything merges non-enhancing tumour (3) into NCR (1).

    The output has the input's type and dtype (numpy or torch; a MetaTensor keeps its metadata).

    Args:
        source: convention of the input values.
        target: convention of the output values.

    Raises:
        ValueError: on an unknown convention, or (when called) on values that are not labels of
            ``source``; the message names the file when the input is a MetaTensor loaded from one.
    """

    backend = [TransformBackends.NUMPY, TransformBackends.TORCH]

    def __init__(self, source: str = "brats2023", target: str = "internal") -> None:
        self.source = check_convention(source)
        self.target = check_convention(target)

    def __call__(self, img: NdarrayOrTensor) -> NdarrayOrTensor:
        """Args: img: label volume of any shape (typically (1, *spatial))."""
        arr = img.detach().cpu().numpy() if isinstance(img, torch.Tensor) else np.asarray(img)
        try:
            out = from_internal(to_internal(arr, self.source), self.target)
        except ValueError as e:
            name = source_name(img)
            raise ValueError(f"{name}: {e}" if name else str(e)) from e
        return convert_to_dst_type(out, img)[0]


class MapBratsLabelsd(MapTransform):
    """Dictionary version of :class:`MapBratsLabels`.

    Args:
        keys: keys of the label volumes to map.
        source: convention of the input values.
        target: convention of the output values.
        allow_missing_keys: do not raise if a key is absent.
    """

    backend = MapBratsLabels.backend

    def __init__(
        self,
        keys: KeysCollection,
        source: str = "brats2023",
        target: str = "internal",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.mapper = MapBratsLabels(source=source, target=target)

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.mapper(d[key])
        return d


class ConvertToBratsRegions(Transform):
    """Internal labels to three binary channels in the order ET, TC, WT (the BraTS metric regions).

    The regions are MONAI's ``ConvertToMultiChannelBasedOnBratsClasses(et_label=3)`` (ET = {3}, TC = {1, 3},
    WT = {1, 2, 3}); this class adds what MONAI's cannot do: it refuses values outside the internal convention
    (MONAI's silently drops an unmapped BraTS 2021 label 4 from every region), orders the channels ET, TC, WT
    as the project's metrics read them, and converts to ``dtype``. Use it after ``AsDiscrete(argmax=True)`` on
    predictions and on internal ground-truth labels before ``DiceMetric`` / ``HausdorffDistanceMetric``.
    Tensors stay on their device.

    Args:
        dtype: output data type (numpy or torch dtype; converted to the input's type).

    Input: internal label values in a single channel ``(1, *spatial)`` or without a channel
    ``(*spatial)``; a leading dimension of size 1 on an input of 3 or more dimensions is taken as the
    channel. Output: ``(3, *spatial)``.

    Raises:
        ValueError: for a 4D input with more than one channel (take the argmax first) or for values
            that are not internal labels (e.g. an unmapped BraTS 2021 label 4).
    """

    backend = [TransformBackends.NUMPY, TransformBackends.TORCH]
    # MONAI's channels are TC, WT, ET
    _ORDER: tuple[int, ...] = (2, 0, 1)

    def __init__(self, dtype: DtypeLike | torch.dtype = np.float32) -> None:
        self.dtype = dtype
        self.regions = ConvertToMultiChannelBasedOnBratsClasses(et_label=REGIONS["ET"][0])

    def __call__(self, img: NdarrayOrTensor) -> NdarrayOrTensor:
        """Args: img: internal label volume, ``(1, *spatial)`` or ``(*spatial)``."""
        if img.ndim >= 3 and img.shape[0] == 1:
            lab = img[0]
        elif img.ndim == 4:
            raise ValueError(
                f"{source_name(img) or 'label'}: expected a single-channel label, got shape {tuple(img.shape)}; "
                "apply AsDiscrete(argmax=True) to multi-channel predictions first"
            )
        else:
            lab = img
        lab = lab.as_tensor() if isinstance(lab, MetaTensor) else lab
        tc_wt_et = self.regions(lab)
        out = tc_wt_et[list(self._ORDER)]
        if bool(((lab != 0) & ~out[2]).any()):
            values = np.unique(lab.cpu().numpy() if isinstance(lab, torch.Tensor) else np.asarray(lab))
            bad = [
                int(v) if float(v).is_integer() else v for v in values.tolist() if v != 0 and v not in TUMOUR_CLASSES
            ]
            raise ValueError(
                f"{source_name(img) or 'label'}: values {bad} are not internal labels (0, 1, 2, 3); "
                "map the label with MapBratsLabels first"
            )
        return convert_to_dst_type(out, img, dtype=self.dtype)[0]


class ConvertToBratsRegionsd(MapTransform):
    """Dictionary version of :class:`ConvertToBratsRegions`.

    Args:
        keys: keys of the internal label volumes (e.g. ``["pred", "label"]`` after argmax).
        dtype: output data type.
        allow_missing_keys: do not raise if a key is absent.
    """

    backend = ConvertToBratsRegions.backend

    def __init__(
        self,
        keys: KeysCollection,
        dtype: DtypeLike | torch.dtype = np.float32,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.converter = ConvertToBratsRegions(dtype=dtype)

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.converter(d[key])
        return d
