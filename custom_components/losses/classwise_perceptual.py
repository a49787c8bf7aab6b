"""Class-wise perceptual loss of TF-GAN (eq. 3).

For every feature level ``i`` of a frozen encoder ``F`` and every tumour class ``c``, the feature maps of
the refined image and of a (random, unpaired) real image are average-pooled over the voxels of class
``c`` in the respective label map (masked global average pooling), and the two class vectors are
compared with the mean absolute difference over feature channels. The loss is the mean over every
(sample pair, level, class) with class ``c`` present on *both* sides at that level; when no class is
present anywhere it is 0 (still connected to the refined image, so ``backward`` works).

Label maps are brought to each level's grid by area averaging of the class indicator followed by a
``> 0.5`` threshold (a feature voxel belongs to class ``c`` when most of the input voxels it summarises
do), or by nearest-neighbour sampling (``mask_mode="nearest"``). Thin classes may vanish at coarse
levels; that level-class pair is then skipped.

The comparison is restricted to voxels of each class, but a convolutional encoder's features near a mask
boundary also see voxels outside it (receptive field): the loss is independent of voxels outside every
tumour mask only up to the encoder's receptive field (exactly so for a 1x1x1-convolution encoder).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.loss import _Loss

from custom_components.data.labels import TUMOUR_CLASSES

MASK_MODES: tuple[str, ...] = ("area", "nearest")


class ClasswisePerceptualLoss(_Loss):
    """Masked-GAP feature distance per tumour class between refined and real images (TF-GAN eq. 3).

    Args:
        encoder: frozen feature extractor returning a list of feature maps ``(B, C_i, *spatial_i)``, shallow
            first (e.g. :class:`custom_components.networks.FrozenEncoder`). Gradients flow through it to the
            refined image; its own parameters are not trained (freeze them, as ``FrozenEncoder`` does).
        levels: number of (shallowest) feature levels used (3 in the paper).
        classes: label values of the tumour classes (internal convention NCR=1, ED=2, ET=3).
        mask_mode: ``"area"`` (area-average of the class indicator > ``threshold``) or ``"nearest"``.
        threshold: fraction of a feature voxel's input voxels that must be of the class (``"area"`` only).
    """

    def __init__(
        self,
        encoder: Callable[[torch.Tensor], Sequence[torch.Tensor]],
        levels: int = 3,
        classes: Sequence[int] = TUMOUR_CLASSES,
        mask_mode: str = "area",
        threshold: float = 0.5,
    ) -> None:
        super().__init__()
        if levels < 1:
            raise ValueError(f"levels must be positive, got {levels}")
        if not classes:
            raise ValueError("classes must not be empty")
        if mask_mode not in MASK_MODES:
            raise ValueError(f"mask_mode must be one of {MASK_MODES}, got {mask_mode!r}")
        if not 0.0 <= threshold < 1.0:
            raise ValueError(f"threshold must be in [0, 1), got {threshold}")
        if isinstance(encoder, nn.Module):
            self.encoder = encoder  # registered so that .to(device) moves it
        else:
            self._encoder_fn = encoder
        self.levels = int(levels)
        self.classes = tuple(int(c) for c in classes)
        self.mask_mode = mask_mode
        self.threshold = float(threshold)

    def _features(self, x: torch.Tensor) -> list[torch.Tensor]:
        encoder = self.encoder if "encoder" in self._modules else self._encoder_fn
        feats = list(encoder(x))
        if len(feats) < self.levels:
            raise ValueError(f"encoder returned {len(feats)} feature levels, the loss needs {self.levels}")
        return feats[: self.levels]

    def _masks(self, label: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
        """Class masks ``(B, K, *size)`` of 0/1 from a label map ``(B, 1, *spatial)``."""
        onehot = torch.cat([(label == c) for c in self.classes], dim=1).float()
        if tuple(onehot.shape[2:]) == tuple(size):
            return onehot
        if self.mask_mode == "nearest":
            return F.interpolate(onehot, size=tuple(size), mode="nearest")
        return (F.interpolate(onehot, size=tuple(size), mode="area") > self.threshold).float()

    @staticmethod
    def _pooled(feat: torch.Tensor, masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Masked global average pooling: ``(B, K, C)`` class vectors and ``(B, K)`` presence flags."""
        # float32 even under autocast: sums over ~10^6 voxels overflow float16
        with torch.autocast(device_type=feat.device.type, enabled=False):
            feat = feat.float().flatten(2)  # B, C, N
            masks = masks.float().flatten(2)  # B, K, N
            count = masks.sum(-1)  # B, K
            pooled = torch.einsum("bkn,bcn->bkc", masks, feat) / count.clamp(min=1.0).unsqueeze(-1)
        return pooled, count > 0

    def class_vectors(self, image: torch.Tensor, label: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per level, the masked-GAP class vectors ``(B, K, C_i)`` and presence flags ``(B, K)`` of images.

        The same features the loss compares (used by :mod:`custom_components.quality.realism` for Frechet distances).

        Args:
            image: ``(B, C, *spatial)``.
            label: ``(B, 1, *spatial)`` label map.
        """
        return [self._pooled(f, self._masks(label, f.shape[2:])) for f in self._features(image)]

    def forward(
        self,
        refined: torch.Tensor,
        refined_label: torch.Tensor,
        real: torch.Tensor,
        real_label: torch.Tensor,
    ) -> torch.Tensor:
        """Args:
        refined: generator output ``(B, C, *spatial)``; gradients flow back to it.
        refined_label: its label map ``(B, 1, *spatial)`` (the synthetic mask ``m_s``).
        real: real images ``(B_r, C, *spatial_r)``; sample ``b`` of ``refined`` is compared with sample
            ``b % B_r`` of ``real``.
        real_label: their label maps ``(B_r, 1, *spatial_r)``.
        """
        for name, lab, img in (("refined", refined_label, refined), ("real", real_label, real)):
            if (
                lab.ndim != img.ndim
                or lab.shape[1] != 1
                or lab.shape[0] != img.shape[0]
                or lab.shape[2:] != img.shape[2:]
            ):
                raise ValueError(f"{name}_label must have shape (B, 1, *spatial) of its image, got {tuple(lab.shape)}")
        feats_s = self._features(refined)
        with torch.no_grad():
            feats_r = self._features(real)
        pair = torch.arange(refined.shape[0], device=refined.device) % real.shape[0]
        total = refined.new_zeros((), dtype=torch.float32)
        count = 0
        for fs, fr in zip(feats_s, feats_r, strict=True):
            ps, present_s = self._pooled(fs, self._masks(refined_label, fs.shape[2:]))
            pr, present_r = self._pooled(fr, self._masks(real_label, fr.shape[2:]))
            pr, present_r = pr[pair], present_r[pair]
            valid = present_s & present_r  # B, K
            if valid.any():
                dist = (ps - pr).abs().mean(-1)  # B, K
                total = total + dist[valid].sum()
                count += int(valid.sum())
        if count == 0:
            return refined.sum() * 0.0
        return total / count
