"""Networks: TF-GAN generator and dual-head discriminator, TF-Aug's trainable class-wise intensity,
the segmentation networks and the frozen feature encoder."""

from custom_components.networks.classwise_intensity import CLASS_NAMES, ClasswiseIntensity
from custom_components.networks.frozen_encoder import FrozenEncoder, load_network_weights
from custom_components.networks.segmentation import NETWORKS, build_segmentation_network
from custom_components.networks.tf_gan import (
    BRAIN_CHANNEL,
    DualHeadDiscriminator,
    TFGANGenerator,
    check_spatial_size,
    condition_channels,
    keep_coarse_outside_roi,
    roi_noise,
)

__all__ = [
    "BRAIN_CHANNEL",
    "CLASS_NAMES",
    "NETWORKS",
    "ClasswiseIntensity",
    "DualHeadDiscriminator",
    "FrozenEncoder",
    "TFGANGenerator",
    "build_segmentation_network",
    "check_spatial_size",
    "condition_channels",
    "keep_coarse_outside_roi",
    "load_network_weights",
    "roi_noise",
]
