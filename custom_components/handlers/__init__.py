"""Ignite handlers: DSMA's MAS sample weights (statistics, real-case evaluator, handler), the label writer, the
checkpoint savers and training guards, and TF-GAN's lambda_c schedule (MONAI's linear ``ParamSchedulerHandler``,
built by ``hinge_weight_schedule``), and per-epoch metric curves as CSV (``EpochMetricsWriter``)."""

from custom_components.handlers.checkpoints import (
    OutputExistsError,
    SafeCheckpointSaver,
    TrainingGuardError,
    check_output_dir,
    guard_loss,
    latest_checkpoint,
    non_finite_tensors,
)
from custom_components.handlers.epoch_log import EPOCH_METRICS_FILE, EpochMetricsWriter, read_epoch_metrics
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
from custom_components.handlers.schedules import hinge_weight_schedule

__all__ = [
    "EPOCH_METRICS_FILE",
    "EpochMetricsWriter",
    "read_epoch_metrics",
    "OutputExistsError",
    "SafeCheckpointSaver",
    "TrainingGuardError",
    "check_output_dir",
    "guard_loss",
    "latest_checkpoint",
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
    "hinge_weight_schedule",
]
