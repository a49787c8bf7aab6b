"""The frozen feature extractor F of Tumor Fabrication: the encoder of a trained segmentation model."""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
from monai.networks.nets import BasicUNet, DynUNet
from torch import nn

from custom_components.networks.segmentation import build_segmentation_network


def load_network_weights(network: nn.Module, checkpoint: str | os.PathLike | None) -> nn.Module:
    """Load weights saved by dtss_mas_seg into ``network``.

    Accepts a plain ``state_dict`` (``models/model.pt``) or a checkpoint dictionary with a ``model``
    or ``network`` entry (``CheckpointSaver`` output).

    Args:
        network: the network to load into (returned).
        checkpoint: the weight file; None leaves ``network`` as it is (a training without ``init_checkpoint``).

    Raises:
        FileNotFoundError naming a missing checkpoint; ValueError naming it when the weights do not fit.
    """
    if checkpoint is None:
        return network
    if not os.path.isfile(checkpoint):
        raise FileNotFoundError(f"{checkpoint}: segmentation checkpoint not found")
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    for key in ("model", "network", "state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    try:
        network.load_state_dict(state)
    except RuntimeError as e:
        raise ValueError(f"{checkpoint}: weights do not fit the configured network ({e})") from e
    return network


class FrozenEncoder(nn.Module):
    """Multi-scale encoder features of a segmentation network, with frozen weights.

    Gradients flow to the input (so TF-Aug and TF-GAN can optimise what they feed it) but never into
    the encoder's weights, and the module stays in eval mode even when its parent calls ``train()``.

    Args:
        network: a ``DynUNet`` or ``BasicUNet`` (as built by ``build_segmentation_network``).
        levels: how many encoder levels to return, shallow first (the TF paper uses the first three).
    """

    def __init__(self, network: nn.Module, levels: int = 3) -> None:
        super().__init__()
        if isinstance(network, DynUNet):
            stages: list[nn.Module] = [network.input_block, *network.downsamples, network.bottleneck]
        elif isinstance(network, BasicUNet):
            stages = [network.conv_0, network.down_1, network.down_2, network.down_3, network.down_4]
        else:
            raise TypeError(f"FrozenEncoder supports DynUNet and BasicUNet, got {type(network).__name__}")
        if not 1 <= levels <= len(stages):
            raise ValueError(f"levels must be in [1, {len(stages)}] for this network, got {levels}")
        self.stages = nn.ModuleList(stages[:levels])
        self.levels = levels
        for p in self.parameters():
            p.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> FrozenEncoder:  # noqa: ARG002 - always eval
        return super().train(False)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Return the feature maps of the first ``levels`` encoder stages (B, C_i, *spatial_i)."""
        features = []
        for stage in self.stages:
            x = stage(x)
            features.append(x)
        return features

    @classmethod
    def from_checkpoint(
        cls,
        checkpoint: str | os.PathLike,
        levels: int = 3,
        name: str = "dynunet",
        in_channels: int = 1,
        out_channels: int = 4,
        filters: Sequence[int] = (16, 32, 64, 128, 256),
        patch_size: Sequence[int] | None = None,
    ) -> FrozenEncoder:
        """Build the segmentation network as dtss_mas_seg did, load its weights, keep the encoder.

        Args:
            checkpoint: ``models/model.pt`` (or a checkpoint dict) written by dtss_mas_seg.
            levels: encoder levels to return.
            name, in_channels, out_channels, filters: the network settings used for training.
            patch_size: the training crop size (needed by ``nnunet``, whose stages follow it).
        """
        network = build_segmentation_network(name, in_channels, out_channels, filters, patch_size=patch_size)
        return cls(load_network_weights(network, checkpoint), levels)
