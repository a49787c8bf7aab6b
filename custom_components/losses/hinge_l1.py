"""Hinge reconstruction loss of TF-GAN (eq. 2), computed with the ROI mask ``m_roi``.

``m_roi`` (:class:`~custom_components.transforms.RoiMaskd`) is the region where the generator may change the
coarse image freely; outside it the loss keeps the refined image close to the coarse one.
"""

from __future__ import annotations

import torch
from torch.nn.modules.loss import _Loss

__all__ = ["DEFAULT_HINGE_MARGIN", "HingeL1Loss"]

DEFAULT_HINGE_MARGIN: float = 0.05


class HingeL1Loss(_Loss):
    """Hinge L1 loss outside the ROI (TF-GAN eq. 2).

    ``loss = mean(max(0, (1 - m_roi) * |x_s - x_s'| - margin))`` over every element (batch, channels and
    voxels, ROI voxels included with value 0: inside the ROI the term is ``max(0, -margin) = 0``). Outside the
    ROI, differences up to ``margin`` cost nothing and larger ones grow linearly with slope 1.

    Args:
        margin: tolerated absolute difference (in image units; images are in [-1, 1], so the default 0.05 is
            2.5 % of the range).
        reduction: ``"mean"`` (default), ``"sum"`` or ``"none"`` (element-wise map).
    """

    def __init__(self, margin: float = DEFAULT_HINGE_MARGIN, reduction: str = "mean") -> None:
        super().__init__(reduction=reduction)
        if margin < 0:
            raise ValueError(f"margin must be non-negative, got {margin}")
        if reduction not in ("mean", "sum", "none"):
            raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
        self.margin = float(margin)

    def forward(self, refined: torch.Tensor, coarse: torch.Tensor, roi: torch.Tensor) -> torch.Tensor:
        """Args:
        refined: generator output ``x_s`` ``(B, C, *spatial)``.
        coarse: coarse input ``x_s'``, same shape.
        roi: ``m_roi`` (1 inside, 0 outside), ``(B, 1, *spatial)`` or broadcastable to ``refined``.
        """
        if refined.shape != coarse.shape:
            raise ValueError(f"refined {tuple(refined.shape)} and coarse {tuple(coarse.shape)} shapes differ")
        outside = 1.0 - (roi > 0).to(refined.dtype)
        term = torch.clamp(outside * (refined - coarse).abs() - self.margin, min=0.0)
        if self.reduction == "mean":
            return term.mean()
        if self.reduction == "sum":
            return term.sum()
        return term
