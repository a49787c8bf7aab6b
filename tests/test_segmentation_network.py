"""The segmentation networks of dtss_mas_seg, nnU-Net's 3D full-resolution topology in particular."""

from __future__ import annotations

import pytest
import torch
from monai.networks.nets import DynUNet

from custom_components.networks import build_segmentation_network
from custom_components.networks.segmentation import nnunet_kernels_strides


def test_nnunet_plan_for_the_tf_papers_patch() -> None:
    # 128^3 isotropic: pool while the map is >= 8 voxels: 128 -> 64 -> 32 -> 16 -> 8 -> 4, 6 stages, 4^3 bottleneck
    kernels, strides = nnunet_kernels_strides([128, 128, 128])
    assert strides == [[1, 1, 1]] + [[2, 2, 2]] * 5
    assert kernels == [[3, 3, 3]] * 6
    net = build_segmentation_network("nnunet", 1, 4, [32], patch_size=[128, 128, 128])
    assert isinstance(net, DynUNet)
    # nnU-Net's widths: 32 doubling per stage, capped at 320
    assert net.filters == [32, 64, 128, 256, 320, 320]
    assert len(net.downsamples) == 4 and not net.deep_supervision


def test_nnunet_plan_anisotropic_and_small_patches() -> None:
    # spacing 1 x 1 x 3 mm, patch 128 x 128 x 32 (hand-traced through the planner's rule): z is neither pooled nor
    # convolved (kernel 1) until in-plane spacing reaches half of it, and stops pooling below 8 voxels
    kernels, strides = nnunet_kernels_strides([128, 128, 32], spacing=[1.0, 1.0, 3.0])
    assert strides == [[1, 1, 1], [2, 2, 1], [2, 2, 2], [2, 2, 2], [2, 2, 2], [2, 2, 1]]
    assert kernels == [[3, 3, 1]] + [[3, 3, 3]] * 5
    # a 32^3 CPU patch: 32 -> 16 -> 8 -> 4, four stages
    assert nnunet_kernels_strides([32, 32, 32])[1] == [[1, 1, 1]] + [[2, 2, 2]] * 3
    with pytest.raises(ValueError, match="not divisible"):
        nnunet_kernels_strides([36, 36, 36])
    with pytest.raises(ValueError, match="needs the training patch_size"):
        build_segmentation_network("nnunet", 1, 4, [8])


def test_nnunet_forward_shape() -> None:
    net = build_segmentation_network("nnunet", 2, 4, [4], patch_size=[32, 32, 32])
    out = net(torch.zeros(1, 2, 32, 32, 32))
    assert out.shape == (1, 4, 32, 32, 32)
    assert net.filters == [4, 8, 16, 32]
