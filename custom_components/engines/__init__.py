"""Ignite engines where MONAI's do not fit (TF-GAN coarse -> refined training, Pix2Pix baseline)."""

from custom_components.engines.gan_trainer import TFGANTrainer, loss_terms

__all__ = ["TFGANTrainer", "loss_terms"]
