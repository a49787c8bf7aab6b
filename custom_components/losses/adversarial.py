"""Adversarial losses of TF-GAN (eq. 4) for a discriminator with a patch head and a global head.

Eq. 4 is the standard GAN objective ``E[log D(x_r, m)] + E[log(1 - D(G(x_s'), m))]``. It is implemented
in its usual numerically stable form on raw logits (``binary_cross_entropy_with_logits``, safe under
autocast, unlike MONAI's ``PatchAdversarialLoss(criterion="bce")`` which applies a sigmoid and
``BCELoss``):

- discriminator, per head: ``0.5 * (BCE(D(real), 1) + BCE(D(fake), 0))`` (halved as in Pix2Pix);
- generator, per head, the non-saturating form: ``BCE(D(fake), 1)``.

BCE is averaged over all logits of a head (every patch of the patch map, every sample of the global head).
The head weights (``lambda_a``, ``lambda_b`` of eq. 5) are applied by the trainer.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def bce_with_logits(logits: torch.Tensor, target_is_real: bool) -> torch.Tensor:
    """Mean binary cross-entropy of ``logits`` against an all-real (1) or all-fake (0) target."""
    target = torch.ones_like(logits) if target_is_real else torch.zeros_like(logits)
    return F.binary_cross_entropy_with_logits(logits.float(), target.float())


def split_logits(output: torch.Tensor | Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Normalise a discriminator output to ``(patch_logits, global_logits or None)``.

    Accepts the ``(patch, global)`` tuple of :class:`~custom_components.networks.tf_gan.DualHeadDiscriminator`,
    the list of intermediate features of MONAI's ``PatchDiscriminator`` (the last entry is the patch map) and a
    bare tensor (a patch map).
    """
    if isinstance(output, torch.Tensor):
        return output, None
    if isinstance(output, tuple) and len(output) == 2:
        return output[0], output[1]
    if isinstance(output, list | tuple) and output:
        return output[-1], None
    raise TypeError(f"unsupported discriminator output {type(output).__name__}")


class DualHeadAdversarialLoss(nn.Module):
    """BCE-with-logits adversarial terms for both heads of a dual-head discriminator.

    A head whose logits are ``None`` (a patch-only discriminator) contributes a zero term.
    """

    @staticmethod
    def _zero(ref: torch.Tensor) -> torch.Tensor:
        return ref.new_zeros((), dtype=torch.float32)

    def generator(self, fake: torch.Tensor | Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Non-saturating generator terms ``(patch, global)`` for the discriminator's output on generated images."""
        patch, glob = split_logits(fake)
        return bce_with_logits(patch, True), (bce_with_logits(glob, True) if glob is not None else self._zero(patch))

    def discriminator(
        self,
        real: torch.Tensor | Sequence[torch.Tensor],
        fake: torch.Tensor | Sequence[torch.Tensor],
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Discriminator terms ``(patch, global)`` for its outputs on real and on generated images."""
        patch_r, glob_r = split_logits(real)
        patch_f, glob_f = split_logits(fake)
        patch = 0.5 * (bce_with_logits(patch_r, True) + bce_with_logits(patch_f, False))
        if glob_r is None or glob_f is None:
            return patch, self._zero(patch)
        return patch, 0.5 * (bce_with_logits(glob_r, True) + bce_with_logits(glob_f, False))
