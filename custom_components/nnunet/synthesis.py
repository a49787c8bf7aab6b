"""DTSS and MAS on nnU-Net's own data: what the nnU-Net trainers need, without importing nnU-Net.

nnU-Net's preprocessed training cases are channel-first float arrays (z-scored per channel) and a segmentation
``(1, *spatial)`` in the raw label values of the dataset: for the datasets ``export-nnunet`` writes, nnU-Net's
region-based BraTS setup (1 oedema, 2 necrosis / non-enhancing core, 3 enhancing tumour; regions whole tumour
(1, 2, 3), tumour core (2, 3), enhancing (3)), and ``-1`` outside the brain's bounding crop where nnU-Net's
``crop_to_nonzero`` found no signal. :class:`PreprocessedDTSS` maps that to what DTSS needs (the internal labels
0 bg, 1 NCR, 2 ED, 3 ET; the outside of the brain below every channel's brain minimum, so DTSS's brain rule keeps
monomers inside the brain), runs :class:`~custom_components.transforms.DeformationTumorSynthesis` and maps the
result back: image and segmentation stay consistent (every grown voxel is labelled, the rest bit-identical).

:func:`sample_region_dice` is MAS's accuracy ``L`` (the hard region Dice of
:func:`~custom_components.handlers.mas.region_dice_per_sample`) of nnU-Net's region outputs (one sigmoid channel per
region in ``regions_class_order``), and :func:`bundle_settings` reads the dtss_mas_seg bundle's DTSS and MAS settings.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from custom_components.export.nnunet import (
    NNUNET_LABELS,
    NNUNET_TO_INTERNAL,
    REGIONS_CLASS_ORDER,
    internal_to_nnunet,
    nnunet_to_internal,
)
from custom_components.handlers.mas import region_dice_per_sample
from custom_components.transforms.dtss import DeformationTumorSynthesis

__all__ = [
    "DEFAULT_DTSS_PROB",
    "ENV_BUNDLE",
    "ENV_DTSS_PROB",
    "PreprocessedDTSS",
    "bundle_settings",
    "check_brats_regions",
    "regions_to_internal",
    "sample_region_dice",
]

# the dtss_mas_seg bundle folder whose configs/train.yaml gives the settings (default: the repository's)
ENV_BUNDLE = "TUMORFAB_BUNDLE"
# probability that a real training sample is replaced by its DTSS-derived case
ENV_DTSS_PROB = "TUMORFAB_DTSS_PROB"
# the bundle trains on one real and one DTSS-derived sample per real case (companion sampling): half synthetic
DEFAULT_DTSS_PROB = 0.5
SETTINGS: tuple[str, ...] = (
    "dtss_radius_range",
    "dtss_iterations_range",
    "dtss_sigma",
    "synthesis_cache_size",
    "mas_beta",
    "mas_c",
    "synthetic_weight",
)
# nnU-Net value -> internal value, as a lookup table over 0-3
_TO_INTERNAL = np.array([NNUNET_TO_INTERNAL[v] for v in range(4)], dtype=np.uint8)


def bundle_settings(bundle_root: str | os.PathLike | None = None) -> dict[str, Any]:
    """The dtss_mas_seg bundle's DTSS and MAS settings (``configs/common.yaml`` + ``configs/train.yaml``).

    Args:
        bundle_root: the bundle folder; default ``$TUMORFAB_BUNDLE``, else ``dtss_mas_seg`` in the bundles folder
            (:func:`~custom_components.export.zoo_bundle.find_bundles_dir`).

    Returns:
        ``dtss_radius_range``, ``dtss_iterations_range``, ``dtss_sigma``, ``synthesis_cache_size``, ``mas_beta``,
        ``mas_c`` and ``synthetic_weight`` as the configs set them.
    """
    from monai.bundle import ConfigParser

    from custom_components.export.zoo_bundle import find_bundles_dir

    root = Path(bundle_root or os.environ.get(ENV_BUNDLE) or find_bundles_dir() / "dtss_mas_seg")
    parser = ConfigParser()
    parser.read_config([str(root / "configs" / name) for name in ("common.yaml", "train.yaml")])
    return {key: parser.get_parsed_content(key) for key in SETTINGS}


def check_brats_regions(dataset_json: Mapping[str, Any]) -> None:
    """Refuse a dataset whose labels are not the region-based BraTS setup of ``export-nnunet`` (ValueError).

    Args:
        dataset_json: nnU-Net's ``dataset.json`` of the dataset.
    """
    labels = {k: (sorted(v) if isinstance(v, list | tuple) else v) for k, v in dataset_json.get("labels", {}).items()}
    order = list(dataset_json.get("regions_class_order", []))
    if labels != NNUNET_LABELS or order != REGIONS_CLASS_ORDER:
        raise ValueError(
            f"the DTSS / MAS trainers need the BraTS regions of export-nnunet (labels {NNUNET_LABELS}, "
            f"regions_class_order {REGIONS_CLASS_ORDER}); this dataset has labels {dataset_json.get('labels')}, "
            f"regions_class_order {dataset_json.get('regions_class_order')}"
        )


class PreprocessedDTSS:
    """DTSS with probability ``prob`` on one nnU-Net preprocessed training case.

    Args:
        prob: probability of synthesising a case (drawn per call from its seed).
        radius_range: monomer semi-axes range in voxels (the bundle's ``dtss_radius_range``).
        iterations_range: number of monomers (``dtss_iterations_range``).
        sigma: prototype blur (``dtss_sigma``).
        cache_size: cases whose synthesis invariants are kept (``synthesis_cache_size``).
    """

    def __init__(
        self,
        prob: float,
        radius_range: Sequence[float],
        iterations_range: Sequence[int],
        sigma: float,
        cache_size: int = 16,
    ) -> None:
        if not 0.0 <= prob <= 1.0:
            raise ValueError(f"DTSS probability must lie in [0, 1], got {prob}")
        self.prob = float(prob)
        self.dtss = DeformationTumorSynthesis(
            prob=1.0, radius_range=radius_range, iterations_range=iterations_range, sigma=sigma, cache_size=cache_size
        )

    @classmethod
    def from_bundle(cls, prob: float | None = None, bundle_root: str | os.PathLike | None = None) -> PreprocessedDTSS:
        """The bundle's DTSS settings (:func:`bundle_settings`) at ``prob`` (default ``$TUMORFAB_DTSS_PROB`` or 0.5).

        Args:
            prob: probability of synthesising a case.
            bundle_root: the dtss_mas_seg bundle folder (see :func:`bundle_settings`).
        """
        s = bundle_settings(bundle_root)
        if prob is None:
            prob = float(os.environ.get(ENV_DTSS_PROB, DEFAULT_DTSS_PROB))
        return cls(prob, s["dtss_radius_range"], s["dtss_iterations_range"], s["dtss_sigma"], s["synthesis_cache_size"])

    def __call__(self, data: Any, seg: Any, seed: int) -> tuple[Any, Any, bool]:
        """Synthesise a derived case from a real one, with probability ``prob``.

        Args:
            data: image ``(C, *spatial)`` (numpy or nnU-Net's blosc2 array).
            seg: segmentation ``(1, *spatial)`` in nnU-Net export values, ``-1`` outside the brain crop.
            seed: seed of the draw (whether to synthesise) and of the synthesis.

        Returns:
            ``(data, seg, applied)``: numpy arrays of the input dtypes when applied, else the inputs themselves
            (also for a case without tumour, which DTSS cannot derive from).
        """
        rng = np.random.RandomState(seed)
        if rng.uniform() >= self.prob:
            return data, seg, False
        seg_np = np.asarray(seg[:])
        if not (seg_np > 0).any():
            return data, seg, False
        image = np.array(data[:], dtype=np.float32)
        original = image.copy()
        outside = seg_np[0] < 0
        if outside.any():
            # DTSS's brain is "above the channel minimum": put the outside below every brain voxel
            low = image[:, ~outside].min(axis=1) - 1.0
            image[:, outside] = low[:, None]
        self.dtss.set_random_state(state=rng)
        image, label = self.dtss(image, nnunet_to_internal(np.maximum(seg_np, 0)), randomize=True)
        image[:, outside] = original[:, outside]
        out_seg = internal_to_nnunet(label).astype(seg_np.dtype)
        out_seg[(seg_np < 0) & (out_seg == 0)] = -1
        return image.astype(original.dtype, copy=False), out_seg, True


def regions_to_internal(
    regions: torch.Tensor, regions_class_order: Sequence[int] = REGIONS_CLASS_ORDER
) -> torch.Tensor:
    """Binary region maps ``(B, R, *spatial)`` to internal labels ``(B, *spatial)`` (uint8).

    As nnU-Net turns region predictions into labels: each region, in ``regions_class_order``, writes its label value,
    later regions over earlier ones; the export's values are then mapped to the internal convention.

    Args:
        regions: boolean (or 0/1) region maps, one channel per region.
        regions_class_order: the nnU-Net label value of each region channel.
    """
    labels = torch.zeros((regions.shape[0], *regions.shape[2:]), dtype=torch.long, device=regions.device)
    for channel, value in enumerate(regions_class_order):
        labels[regions[:, channel].bool()] = int(value)
    return torch.as_tensor(_TO_INTERNAL, device=regions.device)[labels]


def sample_region_dice(
    logits: torch.Tensor, target: torch.Tensor, regions_class_order: Sequence[int] = REGIONS_CLASS_ORDER
) -> torch.Tensor:
    """MAS accuracy ``L`` of every sample of a region-based nnU-Net batch (hard ET / TC / WT Dice, NaN without tumour).

    Args:
        logits: full-resolution network output ``(B, R, *spatial)`` (one sigmoid logit per region).
        target: nnU-Net's region target ``(B, R, *spatial)`` (0 / 1).
        regions_class_order: the nnU-Net label value of each region channel.
    """
    with torch.no_grad():
        pred = regions_to_internal(logits.detach() > 0, regions_class_order)
        truth = regions_to_internal(target > 0.5, regions_class_order)
        return region_dice_per_sample(pred, truth)
