"""Ignite handlers: DSMA's MAS sample weights, the label writer, and the checkpoint savers and training guards.

TF-GAN's lambda_c schedule is MONAI's ``ParamSchedulerHandler`` (linear), configured in tf_gan's train.yaml."""

from custom_components.handlers.checkpoints import (
    OutputExistsError,
    SafeCheckpointSaver,
    TrainingGuardError,
    check_output_dir,
    guard_loss,
    latest_checkpoint,
    non_finite_tensors,
)
from custom_components.handlers.mas import (
    MASHandler,
    hard_prediction,
    mas_eta,
    mas_theta,
    mas_weight,
    region_dice_per_sample,
)
from custom_components.handlers.save_labels import SegmentationWriter

__all__ = [
    "OutputExistsError",
    "SafeCheckpointSaver",
    "TrainingGuardError",
    "check_output_dir",
    "guard_loss",
    "latest_checkpoint",
    "non_finite_tensors",
    "MASHandler",
    "SegmentationWriter",
    "hard_prediction",
    "mas_eta",
    "mas_theta",
    "mas_weight",
    "region_dice_per_sample",
]
