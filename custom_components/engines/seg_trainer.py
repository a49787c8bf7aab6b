"""The dtss_mas_seg trainer: MONAI's SupervisedTrainer with per-sample loss weights and MAS.

:meth:`SegmentationTrainer._iteration` is MONAI's training step (prepare the batch, forward pass, loss, backward
pass, optimizer step, with MONAI's iteration events) with the loss of the DSMA paper written out: after the forward
pass it computes the hard Dice of every sample of the batch on the BraTS regions (detached, from the same forward
pass: no extra network evaluation), asks the :class:`~custom_components.handlers.mas.MASHandler` for the weights
of the synthetic samples (eq. 6, with eta/theta of the model after the previous evaluation of the real cases) and
passes the per-sample weights to the loss (eq. 15). The per-sample entries of the batch and the trainer's
per-sample results are named by :class:`~custom_components.data.SynthesisKeys`; they are returned in
``engine.state.output`` for the MAS handler and any logger. At the start of every epoch the trainer tells the
dataset the epoch (two-phase training) and records the phase in ``engine.state.metrics["phase"]``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from contextlib import nullcontext
from typing import Any

import torch
from ignite.engine import Engine, Events
from monai.engines import SupervisedTrainer
from monai.engines.utils import IterationEvents
from monai.utils import CommonKeys

from custom_components.data.keys import SynthesisKeys
from custom_components.handlers.checkpoints import guard_loss
from custom_components.handlers.mas import MASHandler, hard_prediction, region_dice_per_sample

__all__ = ["SegmentationTrainer", "TwoPhaseLRLambda", "attach_handlers"]


class TwoPhaseLRLambda:
    """``LambdaLR`` factor of the DSMA schedule: ``lr_phase1`` in phase 1, ``lr_phase2`` in phase 2.

    ``schedule="step"`` (the paper, section 4.2) keeps each phase's rate constant. ``schedule="poly"`` decays
    each phase as nnU-Net's ``PolyLRScheduler`` (nnunetv2.training.lr_scheduler.polylr; not imported: nnunetv2
    is an optional extra) does: ``lr * (1 - t / T) ** exponent`` at the phase's 0-based epoch ``t``, over its
    ``T`` epochs (phase 1: ``phase2_start_epoch``; phase 2: ``max_epochs - phase2_start_epoch``, the whole run
    when ``phase2_start_epoch`` is 0). A run then ends at a small but non-zero rate, ``lr / T ** exponent``, and
    settles, instead of ending wherever its last steps at a constant rate (and the floating-point rounding of
    the thread count or SIMD kernels) left it.

    Used with ``LrScheduleHandler(epoch_level=True)`` (one scheduler step per completed epoch), the
    scheduler's epoch counter during engine epoch ``k`` is ``k - 1``, so epochs ``1 .. phase2_start_epoch``
    are phase 1 and later epochs phase 2. Under ``"poly"`` epochs from ``max_epochs`` on keep the last epoch's
    factor: the step after the final epoch (its rate is what the final checkpoint's optimizer holds), and the
    added epochs of a run resumed with a larger ``max_epochs`` (``LambdaLR`` restores this object's attributes,
    ``max_epochs`` included, from the checkpoint). A picklable callable (checkpoints).

    The scheduler is torch's ``LambdaLR``; this is only its factor. torch has no two-phase schedule of this form:
    ``MultiStepLR(milestones=[phase2_start_epoch], gamma=lr_phase2 / lr_phase1)`` is the ``"step"`` schedule but
    cannot decay, and ``SequentialLR`` of two ``PolynomialLR`` restarts phase 2 at the optimizer's initial rate
    (their closed form scales ``base_lrs``) instead of ``lr_phase2``.

    Args:
        phase2_start_epoch: number of phase-1 epochs.
        lr_phase1: learning rate of phase 1 (the optimizer's initial lr).
        lr_phase2: learning rate of phase 2 (its start, for ``"poly"``).
        schedule: ``"step"`` (constant per phase) or ``"poly"`` (polynomial decay within each phase).
        max_epochs: total epochs of the run (required by ``"poly"``).
        exponent: exponent of the polynomial decay (nnU-Net: 0.9).
    """

    SCHEDULES: tuple[str, ...] = ("step", "poly")

    def __init__(
        self,
        phase2_start_epoch: int,
        lr_phase1: float,
        lr_phase2: float,
        schedule: str = "step",
        max_epochs: int | None = None,
        exponent: float = 0.9,
    ) -> None:
        if lr_phase1 <= 0 or lr_phase2 < 0:
            raise ValueError(f"learning rates must be positive, got {lr_phase1}, {lr_phase2}")
        if schedule not in self.SCHEDULES:
            raise ValueError(f"schedule must be one of {self.SCHEDULES}, got {schedule!r}")
        if schedule == "poly" and (max_epochs is None or max_epochs < phase2_start_epoch):
            raise ValueError(
                f"the poly schedule needs max_epochs >= phase2_start_epoch ({phase2_start_epoch}), got {max_epochs}"
            )
        if exponent <= 0:
            raise ValueError(f"exponent must be positive, got {exponent}")
        self.phase2_start_epoch = int(phase2_start_epoch)
        self.ratio = float(lr_phase2) / float(lr_phase1)
        self.schedule = schedule
        self.max_epochs = None if max_epochs is None else int(max_epochs)
        self.exponent = float(exponent)

    def __call__(self, epoch: int) -> float:
        phase1 = epoch < self.phase2_start_epoch
        factor = 1.0 if phase1 else self.ratio
        if self.schedule == "step":
            return factor
        start, end = (0, self.phase2_start_epoch) if phase1 else (self.phase2_start_epoch, self.max_epochs)
        length = max(end - start, 1)
        t = min(epoch - start, length - 1)
        return factor * (1.0 - t / length) ** self.exponent


def attach_handlers(engine: Engine, handlers: Sequence[Any]) -> Engine:
    """Attach handlers to an engine after it exists (for handlers whose arguments refer to the engine itself).

    Args:
        engine: the engine, e.g. the trainer.
        handlers: objects with an ``attach(engine)`` method (``None`` entries, i.e. disabled ones, are skipped).
    """
    for handler in handlers:
        if handler is not None:
            handler.attach(engine)
    return engine


def _batch_values(batch: Any, key: str, n: int, default: float, device: torch.device) -> torch.Tensor:
    """``(n,)`` float values of ``batch[key]`` on ``device``, ``default`` everywhere when the batch lacks the key."""
    value = batch.get(key) if isinstance(batch, Mapping) else None
    if value is None:
        return torch.full((n,), float(default), device=device)
    t = torch.as_tensor(value, dtype=torch.float32).reshape(-1).to(device)
    if t.numel() != n:
        raise ValueError(f"batch[{key!r}] has {t.numel()} values for a batch of {n} samples")
    return t


def sample_flags(batch: Any, n: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-sample flags of a batch of ``n`` samples: synthetic (bool), weighted by MAS (bool), fixed weight (float).

    Missing entries default to a real sample of weight 1; a batch without ``SynthesisKeys.MAS`` lets MAS weight its
    synthetic samples.

    Args:
        batch: the collated batch (a dict with the :class:`~custom_components.data.SynthesisKeys` entries, or not).
        n: number of samples of the batch.
        device: device of the returned tensors.
    """
    synthetic = _batch_values(batch, SynthesisKeys.SYNTHETIC, n, 0.0, device) > 0.5
    has_mas = isinstance(batch, Mapping) and SynthesisKeys.MAS in batch
    apply = _batch_values(batch, SynthesisKeys.MAS, n, 0.0, device) > 0.5 if has_mas else synthetic
    return synthetic, apply, _batch_values(batch, SynthesisKeys.WEIGHT, n, 1.0, device)


class SegmentationTrainer(SupervisedTrainer):
    """SupervisedTrainer whose loss is weighted per sample (fixed weights from the batch, MAS for synthetic samples).

    The batch (a dict) may carry, per sample, the :class:`~custom_components.data.SynthesisKeys` entries
    ``SYNTHETIC`` (bool), ``MAS`` (bool: MAS weights the sample; default: the synthetic flag), ``WEIGHT`` (fixed
    weight; default 1) and ``CASE_ID``. Without them every sample weighs 1 and this is the plain SupervisedTrainer.
    Besides MONAI's ``image``, ``label``, ``pred`` and ``loss``, ``engine.state.output`` holds per sample
    ``SAMPLE_DICE`` (accuracy), ``SAMPLE_WEIGHT`` (loss weight), ``SYNTHETIC``, ``MAS`` and ``CASE_ID``.

    Args:
        device, max_epochs, train_data_loader, network, optimizer: as for ``SupervisedTrainer``.
        loss_function: a loss accepting ``(logits, target, weight=(B,))``, e.g.
            :class:`~custom_components.losses.weighted_dice.SampleWeightedDiceLoss`.
        mas: the MAS handler (attached by the trainer before ``train_handlers`` so its epoch metrics exist
            when ``StatsHandler``/``MLFlowHandler`` log); ``None``: fixed weights only.
        train_handlers: handlers attached after the MAS handler.
        checkpoint_dir: folder of the run's checkpoints; a non-finite loss stops training (before the weights are
            updated) with a message naming the iteration, the batch's cases and the newest checkpoint there.
        kwargs: further ``SupervisedTrainer`` arguments (inferer, amp, epoch_length, accumulation_steps, ...;
            not ``compile``).
    """

    def __init__(
        self,
        device: str | torch.device,
        max_epochs: int,
        train_data_loader: Any,
        network: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        loss_function: Callable[..., torch.Tensor],
        mas: MASHandler | None = None,
        train_handlers: Sequence | None = None,
        checkpoint_dir: str | os.PathLike | None = None,
        **kwargs: Any,
    ) -> None:
        if kwargs.get("compile"):
            raise ValueError("SegmentationTrainer does not support compile=True")
        super().__init__(
            device=device,
            max_epochs=max_epochs,
            train_data_loader=train_data_loader,
            network=network,
            optimizer=optimizer,
            loss_function=loss_function,
            train_handlers=None,
            **kwargs,
        )
        self.checkpoint_dir = None if checkpoint_dir is None else str(checkpoint_dir)
        self.mas = mas
        self.add_event_handler(Events.EPOCH_STARTED, self._epoch_started)
        if mas is not None:
            mas.attach(self)
        if train_handlers:
            self._register_handlers(train_handlers)

    def _epoch_started(self, engine: Engine) -> None:
        dataset = getattr(self.data_loader, "dataset", None)
        if hasattr(dataset, "set_epoch"):
            dataset.set_epoch(engine.state.epoch)
        if hasattr(dataset, "phase"):
            engine.state.metrics["phase"] = float(dataset.phase)

    def _accumulation(self, engine: SegmentationTrainer) -> tuple[bool, bool]:
        """(zero the gradients before this iteration, step the optimizer after it), as MONAI's trainer decides."""
        acc = engine.accumulation_steps
        if acc <= 1:
            return True, True
        length = engine.state.epoch_length
        local = (engine.state.iteration - 1) % length if length is not None else engine.state.iteration - 1
        step = (local + 1) % acc == 0 or (length is not None and local + 1 == length)
        return local % acc == 0, step

    def _iteration(self, engine: SegmentationTrainer, batchdata: dict[str, Any]) -> dict[str, Any]:
        """One training step with the per-sample weighted loss (eqs. 6 and 15); returns ``engine.state.output``.

        Args:
            engine: this trainer.
            batchdata: the collated batch (MONAI's ``prepare_batch`` takes image and label from it; the
                :class:`~custom_components.data.SynthesisKeys` entries are read from it directly).
        """
        if batchdata is None:
            raise ValueError("Must provide batch data for current iteration.")
        batch = engine.prepare_batch(batchdata, engine.state.device, engine.non_blocking, **engine.to_kwargs)
        inputs, targets = batch[0], batch[1]
        args, kwargs = (batch[2], batch[3]) if len(batch) == 4 else ((), {})
        out: dict[str, Any] = {CommonKeys.IMAGE: inputs, CommonKeys.LABEL: targets}
        engine.state.output = out
        zero_grad, step = self._accumulation(engine)
        acc = engine.accumulation_steps
        use_scaler = engine.amp and engine.scaler is not None
        engine.network.train()
        if zero_grad:
            engine.optimizer.zero_grad(set_to_none=engine.optim_set_to_none)
        with torch.autocast("cuda", **engine.amp_kwargs) if use_scaler else nullcontext():
            pred = engine.inferer(inputs, engine.network, *args, **kwargs)
            out[CommonKeys.PRED] = pred
            engine.fire_event(IterationEvents.FORWARD_COMPLETED)
            # the sample accuracies L (hard region Dice of the detached prediction), the batch's flags, the weights
            # (eq. 6 for the samples MAS weights, once it has statistics; the fixed weights elsewhere)
            n, device = pred.shape[0], pred.device
            with torch.no_grad():
                target_idx = targets[:, 0] if targets.ndim == pred.ndim else targets
                dice = region_dice_per_sample(hard_prediction(pred.detach()), target_idx)
            synthetic, apply, weight = sample_flags(batchdata, n, device)
            if self.mas is not None:
                weight = self.mas.weights(dice, weight, apply)
            out[SynthesisKeys.SAMPLE_DICE], out[SynthesisKeys.SAMPLE_WEIGHT] = dice, weight
            out[SynthesisKeys.SYNTHETIC], out[SynthesisKeys.MAS] = synthetic, apply
            cases = batchdata.get(SynthesisKeys.CASE_ID) if isinstance(batchdata, Mapping) else None
            if cases is not None and len(cases) == n:
                out[SynthesisKeys.CASE_ID] = list(cases)
            # eq. 15: the weighted mean of the per-sample losses
            loss = engine.loss_function(pred, targets, weight=weight)
            guard_loss(loss, engine, list(cases) if cases is not None else None, self.checkpoint_dir)
            out[CommonKeys.LOSS] = loss
            engine.fire_event(IterationEvents.LOSS_COMPLETED)
        if use_scaler:
            engine.scaler.scale(loss / acc if acc > 1 else loss).backward()
            engine.fire_event(IterationEvents.BACKWARD_COMPLETED)
            if step:
                engine.scaler.step(engine.optimizer)
                engine.scaler.update()
        else:
            (loss / acc if acc > 1 else loss).backward()
            engine.fire_event(IterationEvents.BACKWARD_COMPLETED)
            if step:
                engine.optimizer.step()
        engine.fire_event(IterationEvents.MODEL_COMPLETED)
        # MONAI's handler of MODEL_COMPLETED may have replaced the output by its decollated form
        return engine.state.output
