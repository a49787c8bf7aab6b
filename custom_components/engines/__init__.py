"""Ignite engines and their data where MONAI's do not fit: TF-GAN / Pix2Pix and TF-Aug training, DSMA's
two-phase segmentation training."""

from custom_components.engines.gan_trainer import (
    NanSkippingAverage,
    Pix2PixTrainer,
    TFGANTrainer,
    loss_terms,
    tumour_texture,
)
from custom_components.engines.seg_data import SAMPLING, TwoPhaseDataset, load_synthetic_items
from custom_components.engines.seg_trainer import (
    SegmentationTrainer,
    TwoPhaseLRLambda,
    attach_handlers,
)
from custom_components.engines.tf_aug_trainer import ClasswiseIntensitySaver, TFAugTrainer

__all__ = [
    "SAMPLING",
    "ClasswiseIntensitySaver",
    "NanSkippingAverage",
    "Pix2PixTrainer",
    "SegmentationTrainer",
    "TFAugTrainer",
    "TFGANTrainer",
    "TwoPhaseDataset",
    "TwoPhaseLRLambda",
    "attach_handlers",
    "load_synthetic_items",
    "loss_terms",
    "tumour_texture",
]
