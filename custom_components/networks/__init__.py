from custom_components.networks.frozen_encoder import FrozenEncoder, load_network_weights
from custom_components.networks.segmentation import build_segmentation_network

__all__ = ["FrozenEncoder", "build_segmentation_network", "load_network_weights"]
