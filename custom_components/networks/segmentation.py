"""Segmentation networks used by dtss_mas_seg (and as the frozen feature extractor F of TF)."""

from __future__ import annotations

from collections.abc import Sequence

from monai.networks.nets import BasicUNet, DynUNet
from torch import nn

NETWORKS: tuple[str, ...] = ("dynunet", "unet3d", "nnunet")
# nnU-Net's planner (Isensee et al. 2021): pool an axis while its feature map stays >= 2 * 4 voxels and its
# spacing is at most twice the finest; widths double per stage from the base, capped at 320 for 3D
NNUNET_MIN_FEATURE_MAP = 4
NNUNET_MAX_FILTERS = 320


def nnunet_kernels_strides(
    patch_size: Sequence[int], spacing: Sequence[float] | None = None, max_stages: int = 6
) -> tuple[list[list[int]], list[list[int]]]:
    """Kernel sizes and strides of nnU-Net's 3D full-resolution U-Net for a patch size (its planner's rule).

    Stage 0 has stride 1; every further stage halves each axis whose feature map is still at least
    ``2 * NNUNET_MIN_FEATURE_MAP`` voxels and whose spacing is at most twice the finest (anisotropic axes
    are pooled only once the others have caught up, and get kernel 1 until then), up to ``max_stages`` stages
    (nnU-Net's default for 3D: 5 poolings, 6 stages). A 128^3 isotropic patch gives 6 stages, strides
    ``[1, 2, 2, 2, 2, 2]``, a 4^3 bottleneck and 3^3 kernels: the TF paper's downstream network.

    Args:
        patch_size: training patch size (voxels per axis).
        spacing: voxel spacing per axis (default isotropic).
        max_stages: at most this many stages.

    Returns:
        ``(kernels, strides)``: one ``[k, k, k]`` and one ``[s, s, s]`` per stage.
    """
    sizes = [int(p) for p in patch_size]
    spacings = [float(s) for s in (spacing or [1.0] * len(sizes))]
    if len(spacings) != len(sizes) or min(sizes) < 1 or min(spacings) <= 0:
        raise ValueError(f"bad patch_size {patch_size} / spacing {spacing}")
    kernels: list[list[int]] = []
    strides: list[list[int]] = [[1] * len(sizes)]
    while len(strides) < max_stages:
        ratio = [sp / min(spacings) for sp in spacings]
        stride = [2 if r <= 2 and n >= 2 * NNUNET_MIN_FEATURE_MAP else 1 for r, n in zip(ratio, sizes, strict=True)]
        if all(s == 1 for s in stride):
            break
        if any(n % s for n, s in zip(sizes, stride, strict=True)):
            raise ValueError(
                f"patch_size {patch_size} is not divisible by the strides {stride} of stage {len(strides)}"
            )
        kernels.append([3 if r <= 2 else 1 for r in ratio])
        sizes = [n // s for n, s in zip(sizes, stride, strict=True)]
        spacings = [sp * s for sp, s in zip(spacings, stride, strict=True)]
        strides.append(stride)
    kernels.append([3] * len(sizes))
    return kernels, strides


def build_segmentation_network(
    name: str = "dynunet",
    in_channels: int = 1,
    out_channels: int = 4,
    filters: Sequence[int] = (16, 32, 64, 128, 256),
    dropout: float = 0.0,
    patch_size: Sequence[int] | None = None,
    spacing: Sequence[float] | None = None,
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
        patch_size: ``nnunet`` only (required): the training patch, from which nnU-Net's planner rule
            (:func:`nnunet_kernels_strides`) sets the stages, kernels and strides.
        spacing: ``nnunet`` only: voxel spacing (default isotropic).

    ``nnunet`` mirrors nnU-Net's 3D full-resolution topology as MONAI's DynUNet: the planner's stages (6 for
    a 128^3 patch), two 3x3x3 conv-InstanceNorm-LeakyReLU blocks per stage (no residual blocks), widths
    ``filters[0] * 2^i`` capped at 320 (``filters[0]`` = 32 is nnU-Net's), transposed-conv upsampling. nnU-Net's
    deep supervision is not used (the loss sees the full-resolution output only).
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
    if name == "nnunet":
        if patch_size is None:
            raise ValueError("nnunet needs the training patch_size (crop_size) to plan its stages")
        kernels, strides = nnunet_kernels_strides(patch_size, spacing)
        widths = [min(filters[0] * 2**i, NNUNET_MAX_FILTERS) for i in range(len(strides))]
        return DynUNet(
            spatial_dims=3,
            in_channels=in_channels,
            out_channels=out_channels,
            kernel_size=kernels,
            strides=strides,
            upsample_kernel_size=strides[1:],
            filters=widths,
            dropout=dropout or None,
            norm_name=("instance", {"affine": True}),
            act_name=("leakyrelu", {"negative_slope": 0.01, "inplace": True}),
            res_block=False,
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
