"""Coarse -> refined adversarial training (TF-GAN, section 2.2) and the paired Pix2Pix baseline.

MONAI's ``GanTrainer`` draws latent codes and ``AdversarialTrainer`` treats its input as the real image, so
neither fits TF-GAN, where every iteration needs a batch of coarse synthetic cases (image, synthetic
mask, ``m_roi``) *and* an unpaired batch of real cases (image, mask). :class:`TFGANTrainer` is a MONAI
``Trainer`` (an Ignite engine with MONAI's events, decollation and handler support) that iterates over
the coarse loader and draws real batches from a second loader that it cycles through endlessly.
:class:`Pix2PixTrainer`, the paired baseline, is a variant of it (in the style of nnU-Net's trainer variants) that
overrides the iteration and the terms it reports.

One TF-GAN iteration (:class:`TFGANTrainer`):

1. ``x_s = G([x_s', onehot(m_s)])`` (with ``paste_outside_roi``, ``x_s'`` outside ``m_roi``).
2. D step: ``lambda_a * L_D^patch + lambda_b * L_D^global`` with ``(x_r, onehot(m_r))`` as real and
   ``(x_s.detach(), onehot(m_s))`` as fake.
3. G step (eq. 5): ``lambda_a * L_adv^patch + lambda_b * L_adv^global + lambda_c * L_hinge + lambda_d * L_percep``,
   with ``lambda_c`` read from ``engine.state.lambda_c`` (set by
   MONAI's linear ``ParamSchedulerHandler`` in the bundle config; ``lambda_hinge`` otherwise).

One Pix2Pix iteration (:class:`Pix2PixTrainer`, paired real data): ``c = onehot(m_r) + brain channel``,
``x = G(c)``; D sees ``(x_r, c)`` as real and ``(x, c)`` as fake; G minimises
``lambda_a * L_adv^patch + lambda_b * L_adv^global + lambda_l1 * |x - x_r|``.

``engine.state.output`` holds every loss term as a float (``loss`` is the generator total, so MONAI's default
``--tracking mlflow`` settings log it) and the images of the iteration; :func:`loss_terms` is an
``output_transform`` for ``StatsHandler`` / ``MLFlowHandler`` that returns all terms as a dict; ``d_acc`` is the
discriminator's accuracy on the iteration's real and generated batches (:func:`discriminator_accuracy`). At the end of
every epoch ``engine.state.metrics`` receives the epoch mean of every term (``epoch_<term>``, averaged over all
ranks when training on several processes), the loss weight ``lambda_c`` of the last iteration and the learning
rates ``lr_g`` / ``lr_d``, so the epoch-level log of ``--tracking mlflow`` records them. TF-GAN also reports the
texture inside the tumour classes of the refined and of the real images of each batch (``texture_refined``,
``texture_real``: :func:`tumour_texture`), whether G leaves the blobs flat, matches the real tumours or overshoots them.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from ignite.engine import Engine, Events
from ignite.exceptions import NotComputableError
from ignite.metrics import Average, Metric
from monai.engines.trainer import Trainer
from monai.engines.utils import IterationEvents
from monai.engines.workflow import Workflow
from monai.inferers import Inferer, SimpleInferer
from monai.utils import convert_to_tensor
from torch.optim import Optimizer
from torch.utils.data import DataLoader

from custom_components.data.labels import TUMOUR_CLASSES
from custom_components.handlers.checkpoints import guard_loss
from custom_components.losses.adversarial import DualHeadAdversarialLoss, split_logits
from custom_components.losses.hinge_l1 import HingeL1Loss, refinement_change
from custom_components.networks.tf_gan import condition_channels, keep_coarse_outside_roi, roi_noise
from custom_components.transforms.texture import class_interiors, masked_highpass_std

LOSS_KEYS: tuple[str, ...] = (
    "loss",
    "g_adv_patch",
    "g_adv_global",
    "g_hinge",
    "g_perceptual",
    "g_l1",
    "lambda_c",
    "d_loss",
    "d_patch",
    "d_global",
    "d_acc",
    "d_acc_real",
    "d_acc_fake",
    "change_roi",
    "change_outside",
    "texture_refined",
    "texture_real",
)
# the terms only TF-GAN's iteration has (hinge, perceptual, their schedule, what a refinement changed, the texture of
# the refined and the real tumours)
_TF_GAN_ONLY: tuple[str, ...] = (
    "g_hinge",
    "g_perceptual",
    "lambda_c",
    "change_roi",
    "change_outside",
    "texture_refined",
    "texture_real",
)
# terms that are NaN on a batch without tumour voxels: their epoch mean skips such batches
_TUMOUR_TERMS: tuple[str, ...] = ("texture_refined", "texture_real")


def loss_terms(output: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None) -> dict[str, float] | None:
    """``output_transform`` returning every scalar loss term of a :class:`TFGANTrainer` iteration as a dict.

    Works on the decollated output (a list of dicts, scalars replicated) and on a plain dict.

    Args:
        output: ``engine.state.output``.
    """
    if output is None:
        return None
    if isinstance(output, Sequence) and not isinstance(output, Mapping):
        if not output:
            return None
        output = output[0]
    return {k: float(output[k]) for k in LOSS_KEYS if k in output}


def _term(key: str) -> Callable[[Any], float]:
    """``output_transform`` of the epoch mean of one loss term (decollated or plain output)."""

    def transform(output: Any) -> float:
        return loss_terms(output)[key]  # type: ignore[index]

    return transform


def discriminator_accuracy(real: Any, fake: Any) -> dict[str, float]:
    """Fraction of the discriminator's decisions that are right, averaged over its heads (patch map, global):
    ``d_acc_real`` on real images (logit > 0), ``d_acc_fake`` on generated ones (logit < 0) and ``d_acc``, their
    mean. A ``d_acc`` of 0.5 is a discriminator that cannot tell them apart, 1.0 one that always can; the two
    halves show whether it is at chance or calls everything real (1, 0) or generated (0, 1).

    Args:
        real: the discriminator's output on real images (see :func:`split_logits`).
        fake: its output on generated images.
    """
    heads = [(r, f) for r, f in zip(split_logits(real), split_logits(fake), strict=True) if r is not None]
    acc_real = float(torch.stack([(r.detach() > 0).float().mean() for r, _ in heads]).mean())
    acc_fake = float(torch.stack([(f.detach() < 0).float().mean() for _, f in heads]).mean())
    return {"d_acc": 0.5 * (acc_real + acc_fake), "d_acc_real": acc_real, "d_acc_fake": acc_fake}


def training_change(refined: torch.Tensor, coarse: torch.Tensor, roi: torch.Tensor) -> dict[str, float]:
    """:func:`~custom_components.losses.hinge_l1.refinement_change` of a training batch, averaged over its samples:
    mean |refined - coarse| inside ``m_roi`` (``change_roi``) and on the brain outside it (``change_outside``;
    brain: voxels above the -1 background in any channel).

    Args:
        refined: ``(B, C, *spatial)`` generator output.
        coarse: ``(B, C, *spatial)`` its coarse input image.
        roi: ``(B, 1, *spatial)`` ``m_roi``.
    """
    r, c, m = (t.detach().float().cpu().numpy() for t in (refined, coarse, roi))
    changes = [refinement_change(r[i], c[i], m[i, 0] > 0, c[i].max(0) > -1.0) for i in range(len(r))]
    return {
        "change_roi": float(np.mean([ch["roi_mean_abs"] for ch in changes])),
        "change_outside": float(np.mean([ch["outside_roi_mean_abs"] for ch in changes])),
    }


def tumour_texture(image: torch.Tensor, label: torch.Tensor, sigma: float = 1.0, erode: int = 2) -> float:
    """Texture of a batch's tumours: the spread of the high-pass image (:func:`masked_highpass_std`, the C2ST's
    ``highpass_std``) over the interior of each tumour class (:func:`class_interiors`: ``erode`` voxels inside it, so
    that the steps between classes and at the border, which a flat blob has too, do not count), per sample, combined
    as the root of the samples' variances averaged with their voxel counts as weights; NaN when no sample has such
    voxels.

    Args:
        image: ``(B, C, *spatial)`` images.
        label: ``(B, 1, *spatial)`` label maps.
        sigma: Gaussian sigma in voxels of the smoothing the high-pass part removes.
        erode: voxels left out at each class's border.
    """
    x, lab = image.detach().float().cpu().numpy(), label.detach().cpu().numpy()
    values, counts = [], []
    for i in range(len(x)):
        inside = class_interiors(lab[i, 0], erode)
        if inside.any():
            values.append(masked_highpass_std(x[i], inside, sigma) ** 2)
            counts.append(int(inside.sum()) * x.shape[1])
    if not counts:
        return float("nan")
    return float(np.sqrt(np.average(values, weights=counts)))


class NanSkippingAverage(Average):
    """Ignite's :class:`~ignite.metrics.Average` that leaves out NaN values (a term undefined on some batches) and
    computes NaN when every value of the epoch was NaN."""

    def update(self, output: Any) -> None:
        if not np.isnan(float(output)):
            super().update(output)

    def compute(self) -> float:
        try:
            return float(super().compute())
        except NotComputableError:
            return float("nan")


@contextlib.contextmanager
def _frozen(module: torch.nn.Module) -> Iterator[None]:
    """Stop gradients into ``module``'s parameters for the block (restoring each parameter's flag after)."""
    flags = [(p, p.requires_grad) for p in module.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


class TFGANTrainer(Trainer):
    """Ignite/MONAI trainer for TF-GAN refinement: unpaired coarse + real batches (:class:`Pix2PixTrainer`: the
    paired baseline).

    Args:
        device: device to train on.
        max_epochs: number of epochs; an epoch is one pass over ``train_data_loader`` (or ``epoch_length``
            iterations).
        train_data_loader: coarse synthetic cases (keys image, label, roi).
        g_network: generator G.
        g_optimizer: optimiser of G.
        d_network: discriminator D (``DualHeadDiscriminator``, or any network whose output
            :func:`~custom_components.losses.adversarial.split_logits` understands, e.g. MONAI's
            ``PatchDiscriminator``).
        d_optimizer: optimiser of D.
        real_data_loader: real cases (keys image, label); cycled endlessly (reshuffled on each pass).
        hinge_loss: eq. 2 (default ``HingeL1Loss()``).
        perceptual_loss: eq. 3, called as ``loss(refined, refined_label, real, real_label)``; ``None`` disables it.
        adversarial_loss: eq. 4 (default ``DualHeadAdversarialLoss()``).
        lambda_patch: ``lambda_a`` (patch head weight, 10 in the paper).
        lambda_global: ``lambda_b`` (global head weight, 1 in the paper).
        lambda_hinge: ``lambda_c`` when no schedule sets ``engine.state.lambda_c``.
        lambda_perceptual: ``lambda_d`` (1 in the paper).
        noise_channels: noise channels appended to G's input (:func:`roi_noise`: standard normal inside
            ``m_roi``, drawn from torch's global generator each iteration); the generator must be built with as
            many. 0: the paper's G.
        paste_outside_roi: keep the coarse image outside ``m_roi`` in G's output before D and the losses see it
            (:func:`~custom_components.networks.tf_gan.keep_coarse_outside_roi`; the hinge term is then 0). False:
            the paper's G, held back outside ``m_roi`` by the hinge loss alone.
        classes: tumour label values turned into one-hot channels (internal convention).
        image_key, label_key, roi_key: batch keys.
        epoch_length: iterations per epoch (default ``len(train_data_loader)``).
        g_inferer: runs G (``SimpleInferer`` by default).
        non_blocking: asynchronous host-to-device copies.
        amp: mixed precision on CUDA (autocast + one GradScaler per optimiser); ignored on CPU.
        train_handlers: Ignite handlers (``attach(engine)``).
        key_train_metric, additional_metrics, metric_cmp_fn, postprocessing: as in MONAI's ``Trainer``.
        decollate: decollate ``engine.state.batch`` / ``output`` after each iteration (keep ``True`` for MONAI's
            default MLflow settings, whose ``output_transform`` expects a list).
        optim_set_to_none: ``zero_grad(set_to_none=...)``.
        amp_kwargs: arguments of ``torch.autocast``.
        checkpoint_dir: folder of the run's checkpoints; a non-finite loss stops training (before that network's
            weights are updated) naming the iteration, the batch's cases and the newest checkpoint there.
    """

    #: an unpaired real loader is required
    needs_real_data: bool = True
    #: the scalar terms of every iteration's output (their epoch means become ``epoch_<term>``)
    terms: tuple[str, ...] = tuple(k for k in LOSS_KEYS if k != "g_l1")

    def __init__(
        self,
        device: str | torch.device,
        max_epochs: int,
        train_data_loader: DataLoader,
        g_network: torch.nn.Module,
        g_optimizer: Optimizer,
        d_network: torch.nn.Module,
        d_optimizer: Optimizer,
        real_data_loader: DataLoader | None = None,
        hinge_loss: Callable[..., torch.Tensor] | None = None,
        perceptual_loss: Callable[..., torch.Tensor] | None = None,
        adversarial_loss: DualHeadAdversarialLoss | None = None,
        lambda_patch: float = 10.0,
        lambda_global: float = 1.0,
        lambda_hinge: float = 10.0,
        lambda_perceptual: float = 1.0,
        noise_channels: int = 0,
        paste_outside_roi: bool = False,
        classes: Sequence[int] = TUMOUR_CLASSES,
        image_key: str = "image",
        label_key: str = "label",
        roi_key: str = "roi",
        epoch_length: int | None = None,
        g_inferer: Inferer | None = None,
        non_blocking: bool = False,
        amp: bool = False,
        train_handlers: Sequence | None = None,
        key_train_metric: dict[str, Metric] | None = None,
        additional_metrics: dict[str, Metric] | None = None,
        metric_cmp_fn: Callable | None = None,
        postprocessing: Callable | None = None,
        decollate: bool = True,
        optim_set_to_none: bool = False,
        amp_kwargs: dict | None = None,
        checkpoint_dir: str | os.PathLike | None = None,
    ) -> None:
        if self.needs_real_data and real_data_loader is None:
            raise ValueError(f"{type(self).__name__} needs a real_data_loader (unpaired real tumour cases)")
        extra = {} if metric_cmp_fn is None else {"metric_cmp_fn": metric_cmp_fn}
        super().__init__(
            device=device,
            max_epochs=max_epochs,
            data_loader=train_data_loader,
            epoch_length=epoch_length,
            non_blocking=non_blocking,
            postprocessing=postprocessing,
            key_metric=key_train_metric,
            additional_metrics=additional_metrics,
            handlers=None,  # attached below, after the epoch statistics of this engine
            amp=amp,
            decollate=decollate,
            amp_kwargs=amp_kwargs,
            **extra,
        )
        self.g_network = g_network
        self.g_optimizer = g_optimizer
        self.d_network = d_network
        self.d_optimizer = d_optimizer
        self.real_data_loader = real_data_loader
        self.hinge_loss = HingeL1Loss() if hinge_loss is None else hinge_loss
        self.perceptual_loss = perceptual_loss
        self.adversarial_loss = DualHeadAdversarialLoss() if adversarial_loss is None else adversarial_loss
        self.lambda_patch = float(lambda_patch)
        self.lambda_global = float(lambda_global)
        self.lambda_hinge = float(lambda_hinge)
        self.lambda_perceptual = float(lambda_perceptual)
        self.noise_channels = int(noise_channels)
        self.paste_outside_roi = bool(paste_outside_roi)
        self.checkpoint_dir = None if checkpoint_dir is None else str(checkpoint_dir)
        self.classes = tuple(int(c) for c in classes)
        self.image_key, self.label_key, self.roi_key = image_key, label_key, roi_key
        self.g_inferer = SimpleInferer() if g_inferer is None else g_inferer
        self.optim_set_to_none = optim_set_to_none
        self.g_scaler: torch.amp.GradScaler | None = None
        self.d_scaler: torch.amp.GradScaler | None = None
        self._real_iter: Iterator | None = None
        self._real_passes = 0
        # epoch means of the loss terms: Ignite's Average (summed over all ranks under torchrun)
        for key in sorted(self.terms):
            average = NanSkippingAverage if key in _TUMOUR_TERMS else Average
            average(output_transform=_term(key)).attach(self, f"epoch_{key}")
        self.add_event_handler(Events.EPOCH_COMPLETED, self._epoch_statistics)
        if train_handlers is not None:
            self._register_handlers(train_handlers)

    # -- plumbing ------------------------------------------------------------------------------
    @property
    def use_amp(self) -> bool:
        """Mixed precision is used only on CUDA devices."""
        return bool(self.amp) and torch.device(self.state.device).type == "cuda"

    def run(self) -> None:  # type: ignore[override]
        """Train (continuing from the current state when called again or after a checkpoint was loaded)."""
        self.g_scaler = torch.amp.GradScaler("cuda") if self.use_amp else None
        self.d_scaler = torch.amp.GradScaler("cuda") if self.use_amp else None
        Workflow.run(self)

    def _autocast(self) -> contextlib.AbstractContextManager:
        return torch.autocast("cuda", **self.amp_kwargs) if self.use_amp else contextlib.nullcontext()

    def _tensor(self, batch: Mapping[str, Any], key: str, where: str) -> torch.Tensor:
        if key not in batch:
            raise KeyError(f"{where} batch has no {key!r} entry (keys: {', '.join(map(str, batch))})")
        return convert_to_tensor(batch[key], track_meta=False).to(
            self.state.device, non_blocking=self.non_blocking, dtype=torch.float32
        )

    def next_real_batch(self) -> Mapping[str, Any]:
        """The next batch of the real loader, restarting (and so reshuffling) it when it is exhausted."""
        if self.real_data_loader is None:
            raise RuntimeError("no real_data_loader")
        if self._real_iter is None:
            self._real_iter = self._new_real_pass()
        try:
            return next(self._real_iter)
        except StopIteration:
            self._real_iter = self._new_real_pass()
            return next(self._real_iter)

    def _new_real_pass(self) -> Iterator:
        # a DistributedSampler reshuffles only when told the pass number (MONAI does this for the main loader)
        sampler = getattr(self.real_data_loader, "sampler", None)
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(self._real_passes)
        self._real_passes += 1
        return iter(self.real_data_loader)  # type: ignore[arg-type]

    def _epoch_statistics(self, engine: Engine) -> None:
        """The last ``lambda_c`` and the learning rates (the epoch means of the loss terms are Averages)."""
        if hasattr(engine.state, "lambda_c"):
            engine.state.metrics["lambda_c"] = float(engine.state.lambda_c)
        engine.state.metrics["lr_g"] = float(self.g_optimizer.param_groups[0]["lr"])
        engine.state.metrics["lr_d"] = float(self.d_optimizer.param_groups[0]["lr"])

    def _step(self, loss: torch.Tensor, optimizer: Optimizer, scaler: torch.amp.GradScaler | None) -> None:
        batch = self.state.batch
        cases = batch.get("case_id") if isinstance(batch, Mapping) else None
        guard_loss(loss, self, list(cases) if cases is not None else None, self.checkpoint_dir)
        if scaler is None:
            loss.backward()
            optimizer.step()
        else:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()

    def _output(
        self, image: torch.Tensor, label: torch.Tensor, pred: torch.Tensor, loss: torch.Tensor, **terms: Any
    ) -> dict[str, Any]:
        """An iteration's output: the batch's image and label, the generated image (detached, float) as ``pred``,
        the G loss as ``loss`` and every other term as a number."""
        numbers = {k: v.item() if isinstance(v, torch.Tensor) else v for k, v in terms.items()}
        return {
            self.image_key: image,
            self.label_key: label,
            "pred": pred.detach().float(),
            "loss": loss.item(),
            **numbers,
        }

    def _discriminator_step(self, real_in: torch.Tensor, fake_in: torch.Tensor) -> dict[str, float]:
        self.d_optimizer.zero_grad(set_to_none=self.optim_set_to_none)
        with self._autocast():
            real_out, fake_out = self.d_network(real_in), self.d_network(fake_in)
            d_patch, d_global = self.adversarial_loss.discriminator(real_out, fake_out)
            d_loss = self.lambda_patch * d_patch + self.lambda_global * d_global
        self._step(d_loss, self.d_optimizer, self.d_scaler)
        return {
            "d_loss": d_loss.item(),
            "d_patch": d_patch.item(),
            "d_global": d_global.item(),
            **discriminator_accuracy(real_out, fake_out),
        }

    # -- one iteration ---------------------------------------------------------------------------
    def _iteration(self, engine: Engine, batchdata: Mapping[str, Any]) -> dict[str, Any]:
        """One discriminator step and one generator step; returns (and stores) ``engine.state.output``."""
        if batchdata is None:
            raise ValueError("must provide batch data for current iteration.")
        self.state.output = self._train_step(batchdata)
        self.fire_event(IterationEvents.MODEL_COMPLETED)
        return self.state.output

    def _train_step(self, batchdata: Mapping[str, Any]) -> dict[str, Any]:
        """TF-GAN: refine the coarse batch, then the D step and the G step of eq. 5; returns the output dict."""
        coarse = self._tensor(batchdata, self.image_key, "coarse")
        label = self._tensor(batchdata, self.label_key, "coarse")
        roi = self._tensor(batchdata, self.roi_key, "coarse")
        # no draw without noise channels: the paper's G consumes no random numbers here
        noise = [roi_noise(roi, self.noise_channels)] if self.noise_channels else []
        real_batch = self.next_real_batch()
        real = self._tensor(real_batch, self.image_key, "real")
        real_label = self._tensor(real_batch, self.label_key, "real")
        if real.shape[1] != coarse.shape[1]:
            raise ValueError(f"real images have {real.shape[1]} channels, coarse images {coarse.shape[1]}")
        cond_s = condition_channels(label, self.classes)
        cond_r = condition_channels(real_label, self.classes)

        self.g_network.train()
        self.d_network.train()
        with self._autocast():
            refined = self.g_inferer(torch.cat([coarse, cond_s, *noise], dim=1), self.g_network)
        if self.paste_outside_roi:
            refined = keep_coarse_outside_roi(refined, coarse, roi)
        self.fire_event(IterationEvents.FORWARD_COMPLETED)

        d_terms = self._discriminator_step(torch.cat([real, cond_r], 1), torch.cat([refined.detach(), cond_s], 1))

        lambda_c = float(getattr(self.state, "lambda_c", self.lambda_hinge))
        self.g_optimizer.zero_grad(set_to_none=self.optim_set_to_none)
        with _frozen(self.d_network):
            with self._autocast():
                adv_patch, adv_global = self.adversarial_loss.generator(self.d_network(torch.cat([refined, cond_s], 1)))
                hinge = self.hinge_loss(refined.float(), coarse, roi)
                if self.perceptual_loss is not None:
                    percep = self.perceptual_loss(refined, label, real, real_label)
                else:
                    percep = refined.new_zeros((), dtype=torch.float32)
                g_loss = (
                    self.lambda_patch * adv_patch
                    + self.lambda_global * adv_global
                    + lambda_c * hinge
                    + self.lambda_perceptual * percep
                )
            self.fire_event(IterationEvents.LOSS_COMPLETED)
            self._step(g_loss, self.g_optimizer, self.g_scaler)
        self.fire_event(IterationEvents.BACKWARD_COMPLETED)
        return self._output(
            coarse,
            label,
            refined,
            g_loss,
            g_adv_patch=adv_patch,
            g_adv_global=adv_global,
            g_hinge=hinge,
            g_perceptual=percep,
            lambda_c=lambda_c,
            **d_terms,
            **training_change(refined, coarse, roi),
            texture_refined=tumour_texture(refined, label),
            texture_real=tumour_texture(real, real_label),
        )


class Pix2PixTrainer(TFGANTrainer):
    """The paired Pix2Pix baseline (paper section 3.2.1) as a variant of :class:`TFGANTrainer`: the same plumbing,
    discriminator step and checkpoints, its own iteration (``x = G(c)`` from the label map ``c``, G loss adversarial
    + ``lambda_l1`` * L1 to the paired real image) and its own reported terms.

    Args:
        args: :class:`TFGANTrainer`'s arguments; ``train_data_loader`` holds paired real cases (keys image, label,
            brain_mask). Its TF-GAN-only arguments (``real_data_loader``, ``hinge_loss``, ``perceptual_loss``,
            ``lambda_hinge``, ``lambda_perceptual``, ``noise_channels``, ``paste_outside_roi``, ``roi_key``) are accepted, so that the
            bundle's Pix2Pix config stays an override of the TF-GAN one, and unused.
        lambda_l1: weight of the L1 term (100 as in Pix2Pix).
        brain_key: batch key of the brain mask (the label map's "brain" channel).
        kwargs: :class:`TFGANTrainer`'s keyword arguments.
    """

    needs_real_data = False
    terms = tuple(k for k in LOSS_KEYS if k not in _TF_GAN_ONLY)

    def __init__(self, *args: Any, lambda_l1: float = 100.0, brain_key: str = "brain_mask", **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lambda_l1 = float(lambda_l1)
        self.brain_key = brain_key

    def _train_step(self, batchdata: Mapping[str, Any]) -> dict[str, Any]:
        """Pix2Pix: generate from the label map, then the D step and the G step (adversarial + L1)."""
        real = self._tensor(batchdata, self.image_key, "paired")
        label = self._tensor(batchdata, self.label_key, "paired")
        brain = self._tensor(batchdata, self.brain_key, "paired")
        cond = condition_channels(label, self.classes, brain=brain)

        self.g_network.train()
        self.d_network.train()
        with self._autocast():
            fake = self.g_inferer(cond, self.g_network)
        self.fire_event(IterationEvents.FORWARD_COMPLETED)

        d_terms = self._discriminator_step(torch.cat([real, cond], 1), torch.cat([fake.detach(), cond], 1))

        self.g_optimizer.zero_grad(set_to_none=self.optim_set_to_none)
        with _frozen(self.d_network):
            with self._autocast():
                adv_patch, adv_global = self.adversarial_loss.generator(self.d_network(torch.cat([fake, cond], 1)))
                l1 = (fake.float() - real).abs().mean()
                g_loss = self.lambda_patch * adv_patch + self.lambda_global * adv_global + self.lambda_l1 * l1
            self.fire_event(IterationEvents.LOSS_COMPLETED)
            self._step(g_loss, self.g_optimizer, self.g_scaler)
        self.fire_event(IterationEvents.BACKWARD_COMPLETED)
        return self._output(
            real, label, fake, g_loss, g_adv_patch=adv_patch, g_adv_global=adv_global, g_l1=l1, **d_terms
        )
