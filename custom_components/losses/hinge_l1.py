"""Hinge reconstruction loss of TF-GAN (eq. 2), computed with the ROI mask ``m_roi``.

``m_roi`` (:class:`~custom_components.transforms.RoiMaskd`) is the region where the generator may change the
coarse image freely; outside it the loss keeps the refined image close to the coarse one.
:func:`refinement_change` measures what eq. 2 constrains (the change outside ``m_roi``) and the change inside it, for
a refined case (refinement's provenance) and for a training batch (TF-GAN's per-iteration ``change_*`` terms).
"""

from __future__ import annotations

import numpy as np
import torch
from torch.nn.modules.loss import _Loss

__all__ = ["DEFAULT_HINGE_MARGIN", "HingeL1Loss", "refinement_change"]

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


def refinement_change(
    refined: np.ndarray, coarse: np.ndarray, roi: np.ndarray, brain: np.ndarray, margin: float = DEFAULT_HINGE_MARGIN
) -> dict[str, float | int]:
    """What a refinement changed: ``|refined - coarse|`` on the brain outside ``m_roi`` (where eq. 2 asks for the
    anatomy to stay) and inside it (where the tumour is refined).

    Args:
        refined: refined volume ``(C, *spatial)``.
        coarse: its coarse input, same shape.
        roi: ``m_roi`` (spatial, bool).
        brain: brain mask (spatial, bool).
        margin: the hinge margin (changes up to it cost nothing in eq. 2).

    Returns:
        ``outside_roi_mean_abs`` (mean over brain voxels outside m_roi and channels), ``outside_roi_beyond_margin``
        (fraction of those voxel values that moved by more than ``margin``), ``roi_mean_abs`` (mean inside m_roi,
        brain voxels), and the voxel counts ``outside_roi_voxels`` / ``roi_voxels``.
    """
    diff = np.abs(np.asarray(refined, dtype=np.float64) - np.asarray(coarse, dtype=np.float64))
    outside = brain & ~roi
    inside = brain & roi
    out_diff, in_diff = diff[:, outside], diff[:, inside]
    return {
        "outside_roi_mean_abs": float(out_diff.mean()) if out_diff.size else 0.0,
        "outside_roi_beyond_margin": float((out_diff > margin).mean()) if out_diff.size else 0.0,
        "roi_mean_abs": float(in_diff.mean()) if in_diff.size else 0.0,
        "outside_roi_voxels": int(outside.sum()),
        "roi_voxels": int(inside.sum()),
    }
