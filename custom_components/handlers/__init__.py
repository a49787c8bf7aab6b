"""Ignite handlers: DSMA's MAS sample weights, the lambda_c schedule and the label writer."""

from custom_components.handlers.lambda_schedule import LinearLambdaSchedule
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
    "LinearLambdaSchedule",
    "MASHandler",
    "SegmentationWriter",
    "hard_prediction",
    "mas_eta",
    "mas_theta",
    "mas_weight",
    "region_dice_per_sample",
]
