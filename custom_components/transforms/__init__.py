"""MONAI transforms (each an array transform and its dictionary ``d`` version) for tumour synthesis,
label conventions and intensity handling."""

from custom_components.transforms.brain_mask import BrainMask, BrainMaskd
from custom_components.transforms.carvemix import (
    CarveMix,
    CarveMixCaseInvariants,
    CarveMixd,
    carve_lambda,
    carve_region,
    signed_distance,
    signed_distance_box,
)
from custom_components.transforms.case_cache import CaseCache
from custom_components.transforms.dtss import (
    DeformationTumorSynthesis,
    DeformationTumorSynthesisd,
    DTSSCaseInvariants,
    deformation_area,
    fuse_image,
    monomer_mask,
)
from custom_components.transforms.intensity import RescaleBrainIntensity, RescaleBrainIntensityd
from custom_components.transforms.labels import (
    ConvertToBratsRegions,
    ConvertToBratsRegionsd,
    MapBratsLabels,
    MapBratsLabelsd,
)
from custom_components.transforms.mask_augment import MaskPool, SourceMask, TumorMaskAugment, TumorMaskAugmentd
from custom_components.transforms.mass_effect import MassEffect, MassEffectd, MassEffectField, mass_effect_field
from custom_components.transforms.roi_blur import RoiGaussianBlur, RoiGaussianBlurd, gaussian_kernel
from custom_components.transforms.roi_mask import RoiMask, RoiMaskd, roi_mask
from custom_components.transforms.seeded import ApplySeeded, ApplySeededd
from custom_components.transforms.texture import class_interiors, highpass, masked_highpass_std

__all__ = [
    "BrainMask",
    "BrainMaskd",
    "CarveMix",
    "CarveMixCaseInvariants",
    "CarveMixd",
    "CaseCache",
    "ConvertToBratsRegions",
    "ConvertToBratsRegionsd",
    "DeformationTumorSynthesis",
    "DeformationTumorSynthesisd",
    "DTSSCaseInvariants",
    "ApplySeeded",
    "ApplySeededd",
    "MapBratsLabels",
    "MapBratsLabelsd",
    "MassEffect",
    "MassEffectField",
    "MassEffectd",
    "MaskPool",
    "RescaleBrainIntensity",
    "RescaleBrainIntensityd",
    "RoiGaussianBlur",
    "RoiGaussianBlurd",
    "RoiMask",
    "RoiMaskd",
    "SourceMask",
    "TumorMaskAugment",
    "TumorMaskAugmentd",
    "carve_lambda",
    "carve_region",
    "class_interiors",
    "deformation_area",
    "fuse_image",
    "gaussian_kernel",
    "highpass",
    "mass_effect_field",
    "masked_highpass_std",
    "monomer_mask",
    "roi_mask",
    "signed_distance",
    "signed_distance_box",
]
