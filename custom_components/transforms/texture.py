"""Texture of an image inside a mask: the spread of its high-pass part (the image minus its Gaussian smoothing).

The one definition shared by the C2ST's ``highpass_std`` feature (:mod:`~custom_components.quality.c2st`) and TF-GAN's
per-epoch texture curves (:class:`~custom_components.engines.gan_trainer.TFGANTrainer`): a flat, blurred blob has
almost none, a tumour with band-limited noise (the demo phantoms: relative spread 0.07-0.09 at about one voxel) has
more, and a generator that paints streaks has more than the real tumours.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def highpass(channel: np.ndarray, sigma: float) -> np.ndarray:
    """``channel - gaussian_filter(channel, sigma)`` (edges: nearest), in float64.

    Args:
        channel: one image channel (any dimensionality).
        sigma: Gaussian sigma in voxels.
    """
    channel = np.asarray(channel, dtype=np.float64)
    return channel - ndimage.gaussian_filter(channel, sigma, mode="nearest")


def class_interiors(label: np.ndarray, erode: int) -> np.ndarray:
    """The voxels of each tumour class (label > 0, class by class) that lie at least ``erode`` voxels (26-connected
    erosion) inside it: a class's texture without the steps between classes and at the tumour's border.

    Args:
        label: ``spatial`` label map.
        erode: erosions of each class mask (0: the whole tumour).
    """
    label = np.asarray(label)
    inside = np.zeros(label.shape, dtype=bool)
    structure = ndimage.generate_binary_structure(label.ndim, label.ndim)
    for value in np.unique(label[label > 0]):
        mask = label == value
        inside |= ndimage.binary_erosion(mask, structure, iterations=erode) if erode > 0 else mask
    return inside


def masked_highpass_std(image: np.ndarray, mask: np.ndarray, sigma: float = 1.0) -> float:
    """Standard deviation of the high-pass part of ``image`` over the voxels of ``mask``, every channel's voxels
    pooled; NaN when the mask is empty.

    Args:
        image: ``(C, *spatial)`` image.
        mask: ``spatial`` boolean mask (e.g. the tumour of one case).
        sigma: Gaussian sigma in voxels of the smoothing that the high-pass part removes.
    """
    image = np.asarray(image)
    mask = np.asarray(mask, dtype=bool)
    if mask.shape != image.shape[1:]:
        raise ValueError(f"mask {mask.shape} must have the image's spatial shape {image.shape[1:]}")
    if not mask.any():
        return float("nan")
    return float(np.concatenate([highpass(channel, sigma)[mask] for channel in image]).std())
