"""Per-sample weighted Dice loss of the DSMA paper (section 3.3, eqs. 14-15)."""

from __future__ import annotations

import torch
from monai.losses import DiceLoss
from torch import nn
from torch.nn import functional as F


class SampleWeightedDiceLoss(nn.Module):
    """Dice loss computed per sample (eq. 14), multiplied by a per-sample weight (eq. 15), averaged over the batch.

    ``loss = mean_b( w_b * L_dice(b) )`` where ``L_dice(b) = 1 - 2 sum(P G) / sum(P + G)`` is the soft Dice of
    sample ``b`` (softmax probabilities against the one-hot label), averaged over the tumour classes NCR, ED,
    ET (background excluded by default: it dominates every crop and would dilute the tumour classes).
    With ``w = 1`` for every sample this is MONAI's ``DiceLoss`` with the same settings. The average divides
    by the batch size, not by the sum of weights, so a down-weighted synthetic sample really contributes
    less (a batch of discarded samples gives a zero loss).

    Optionally a cross-entropy term, computed and weighted per sample in the same way, is added with
    factor ``lambda_ce`` (0 by default: the paper uses Dice only).

    Args:
        include_background: include the background channel in the Dice average.
        softmax: apply a softmax to the network output (False when it already gives probabilities).
        squared_pred: use squared terms in the denominator (MONAI ``DiceLoss`` option).
        smooth_nr: numerator smoothing (keeps the loss defined for classes absent from a sample).
        smooth_dr: denominator smoothing.
        lambda_ce: weight of the optional per-sample cross-entropy term.
    """

    def __init__(
        self,
        include_background: bool = False,
        softmax: bool = True,
        squared_pred: bool = False,
        smooth_nr: float = 1e-5,
        smooth_dr: float = 1e-5,
        lambda_ce: float = 0.0,
    ) -> None:
        super().__init__()
        if lambda_ce < 0:
            raise ValueError(f"lambda_ce must be >= 0, got {lambda_ce}")
        self.dice = DiceLoss(
            include_background=include_background,
            to_onehot_y=True,
            softmax=softmax,
            squared_pred=squared_pred,
            smooth_nr=smooth_nr,
            smooth_dr=smooth_dr,
            reduction="none",
        )
        self.softmax = softmax
        self.lambda_ce = float(lambda_ce)

    def per_sample(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Unweighted loss of every sample, ``(B,)``.

        Args:
            logits: network output ``(B, C, *spatial)``.
            target: class indices ``(B, 1, *spatial)``.
        """
        if target.ndim != logits.ndim or target.shape[1] != 1:
            raise ValueError(
                f"target must be class indices of shape (B, 1, *spatial) for logits {tuple(logits.shape)}, "
                f"got {tuple(target.shape)}"
            )
        loss = self.dice(logits, target).reshape(logits.shape[0], -1).mean(1)
        if self.lambda_ce > 0:
            log_p = F.log_softmax(logits, 1) if self.softmax else torch.log(logits.clamp_min(1e-8))
            ce = F.nll_loss(log_p, target[:, 0].long(), reduction="none")
            loss = loss + self.lambda_ce * ce.reshape(logits.shape[0], -1).mean(1)
        return loss

    def forward(self, logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
        """Weighted mean of the per-sample losses.

        Args:
            logits: network output ``(B, C, *spatial)``.
            target: class indices ``(B, 1, *spatial)``.
            weight: ``(B,)`` per-sample weights (``None``: all 1).

        Returns:
            scalar loss.
        """
        loss = self.per_sample(logits, target)
        if weight is None:
            return loss.mean()
        weight = torch.as_tensor(weight, dtype=loss.dtype, device=loss.device).reshape(-1)
        if weight.numel() != loss.numel():
            raise ValueError(f"expected {loss.numel()} sample weights, got {weight.numel()}")
        return (weight * loss).mean()
