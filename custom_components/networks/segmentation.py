"""Segmentation networks used by dtss_mas_seg (and as the frozen feature extractor F of TF)."""

from __future__ import annotations

from collections.abc import Sequence

from monai.networks.nets import BasicUNet, DynUNet
from torch import nn

NETWORKS: tuple[str, ...] = ("dynunet", "unet3d")


def build_segmentation_network(
    name: str = "dynunet",
    in_channels: int = 1,
    out_channels: int = 4,
    filters: Sequence[int] = (16, 32, 64, 128, 256),
    dropout: float = 0.0,
) -> nn.Module:
    """Build a 3D segmentation network.

    Args:
        name: ``dynunet`` (nnU-Net-like DynUNet, the TF paper's downstream model; one level per entry
            of ``filters``, stride 2 between levels) or ``unet3d`` (the 3D U-Net of Cicek et al. used
            by the DSMA paper, MONAI's BasicUNet: five levels, ``filters`` must have five entries).
        in_channels: number of input modalities.
        out_channels: number of output classes (background + NCR, ED, ET = 4).
        filters: feature widths per resolution level, shallow to deep.
        dropout: dropout probability.
    """
    filters = [int(f) for f in filters]
    if name == "dynunet":
        n = len(filters)
        if n < 2:
            raise ValueError(f"dynunet needs at least two levels, got filters={filters}")
        strides = [1] + [2] * (n - 1)
        return DynUNet(
            spatial_dims=3,
            in_channels=in_channels,
            out_channels=out_channels,
            kernel_size=[3] * n,
            strides=strides,
            upsample_kernel_size=strides[1:],
            filters=filters,
            dropout=dropout or None,
            norm_name="instance",
            res_block=True,
        )
    if name == "unet3d":
        if len(filters) != 5:
            raise ValueError(f"unet3d (BasicUNet) needs exactly five filters, got {filters}")
        return BasicUNet(
            spatial_dims=3,
            in_channels=in_channels,
            out_channels=out_channels,
            features=(*filters, filters[0]),
            dropout=dropout,
        )
    raise ValueError(f"unknown segmentation network {name!r}; expected one of {NETWORKS}")
