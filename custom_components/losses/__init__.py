"""Loss functions: TF-GAN's hinge L1 (eq. 2), class-wise perceptual (eq. 3) and adversarial (eq. 4) terms,
and DSMA's per-sample weighted Dice + cross-entropy."""

from custom_components.losses.adversarial import DualHeadAdversarialLoss, bce_with_logits, split_logits
from custom_components.losses.classwise_perceptual import ClasswisePerceptualLoss
from custom_components.losses.hinge_l1 import HingeL1Loss, refinement_change
from custom_components.losses.weighted_dice import SampleWeightedDiceLoss

__all__ = [
    "ClasswisePerceptualLoss",
    "DualHeadAdversarialLoss",
    "HingeL1Loss",
    "SampleWeightedDiceLoss",
    "bce_with_logits",
    "refinement_change",
    "split_logits",
]
