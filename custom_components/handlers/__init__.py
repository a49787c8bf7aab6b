"""Ignite handlers: DSMA's MAS sample weights (statistics, real-case evaluator, handler), the label writer, and the checkpoint savers and training guards.

TF-GAN's lambda_c schedule is MONAI's ``ParamSchedulerHandler`` (linear), configured in tf_gan's train.yaml."""

from custom_components.handlers.checkpoints import (
    BestModelSaver,
    SafeCheckpointSaver,
    TrainingGuardError,
    check_output_dir,
    guard_loss,
    last_checkpoint,
    non_finite_tensors,
)
from custom_components.handlers.mas import (
    MASHandler,
    MASStatistics,
    PerCaseRegionDice,
    hard_prediction,
    mas_eta,
    mas_theta,
    mas_weight,
    real_case_evaluator,
    region_dice_per_sample,
)
from custom_components.handlers.save_labels import SegmentationWriter

__all__ = [
    "BestModelSaver",
    "SafeCheckpointSaver",
    "TrainingGuardError",
    "check_output_dir",
    "guard_loss",
    "last_checkpoint",
    "non_finite_tensors",
    "MASHandler",
    "MASStatistics",
    "PerCaseRegionDice",
    "SegmentationWriter",
    "hard_prediction",
    "mas_eta",
    "mas_theta",
    "mas_weight",
    "real_case_evaluator",
    "region_dice_per_sample",
]
