"""The dtss_mas_seg trainer: MONAI's SupervisedTrainer with per-sample loss weights and MAS.

Every iteration, after the forward pass, the trainer computes the hard Dice of every sample of the batch
on the BraTS regions (detached, from the same forward pass: no extra network evaluation), asks the
:class:`~custom_components.handlers.mas.MASHandler` for the weights of the synthetic samples (eq. 6, with
eta/theta of the model after the previous epoch, or, in the first epoch of a run that starts in phase 2, of
the model it starts from: the handler evaluates the real cases at the start of that epoch, before the first
iteration) and passes the per-sample weights to the loss (eq. 15).
Per-sample accuracies, weights and flags are returned in ``engine.state.output`` for the MAS handler and
any logger. At the start of every epoch it tells the dataset the epoch (two-phase training) and records
the phase in ``engine.state.metrics["phase"]``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

import torch
from ignite.engine import Engine, Events
from monai.engines import SupervisedTrainer

from custom_components.handlers.checkpoints import check_output_dir, guard_loss
from custom_components.handlers.mas import MASHandler, hard_prediction, region_dice_per_sample

__all__ = ["SegmentationTrainer", "TwoPhaseLRLambda", "attach_handlers", "check_output_dir"]


class TwoPhaseLRLambda:
    """``LambdaLR`` factor of the DSMA schedule: ``lr_phase1`` for the phase-1 epochs, ``lr_phase2`` afterwards.

    Used with ``LrScheduleHandler(epoch_level=True)`` (one scheduler step per completed epoch), the
    scheduler's epoch counter during engine epoch ``k`` is ``k - 1``, so epochs ``1 .. phase2_start_epoch``
    train with ``lr_phase1`` and later epochs with ``lr_phase2``. A picklable callable (checkpoints).

    Args:
        phase2_start_epoch: number of phase-1 epochs.
        lr_phase1: learning rate of phase 1 (the optimizer's initial lr).
        lr_phase2: learning rate of phase 2.
    """

    def __init__(self, phase2_start_epoch: int, lr_phase1: float, lr_phase2: float) -> None:
        if lr_phase1 <= 0 or lr_phase2 < 0:
            raise ValueError(f"learning rates must be positive, got {lr_phase1}, {lr_phase2}")
        self.phase2_start_epoch = int(phase2_start_epoch)
        self.ratio = float(lr_phase2) / float(lr_phase1)

    def __call__(self, epoch: int) -> float:
        return 1.0 if epoch < self.phase2_start_epoch else self.ratio


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
    value = batch.get(key) if isinstance(batch, dict) else None
    if value is None:
        return torch.full((n,), float(default), device=device)
    t = torch.as_tensor(value, dtype=torch.float32).reshape(-1).to(device)
    if t.numel() != n:
        raise ValueError(f"batch[{key!r}] has {t.numel()} values for a batch of {n} samples")
    return t


class SegmentationTrainer(SupervisedTrainer):
    """SupervisedTrainer whose loss is weighted per sample (fixed weights from the batch, MAS for synthetic samples).

    The batch (a dict) may carry, per sample, ``synthetic_key`` (bool), ``mas_key`` (bool: MAS weights the
    sample; default: the synthetic flag), ``weight_key`` (fixed weight; default 1) and ``case_key``. Without them
    every sample weighs 1 and this is the plain SupervisedTrainer.

    Args:
        device, max_epochs, train_data_loader, network, optimizer: as for ``SupervisedTrainer``.
        loss_function: a loss accepting ``(logits, target, weight=(B,))``, e.g.
            :class:`~custom_components.losses.weighted_dice.SampleWeightedDiceLoss`.
        mas: the MAS handler (attached by the trainer before ``train_handlers`` so its epoch metrics exist
            when ``StatsHandler``/``MLFlowHandler`` log); ``None``: fixed weights only.
        train_handlers: handlers attached after the MAS handler.
        synthetic_key, mas_key, weight_key, case_key: per-sample keys of the batch.
        checkpoint_dir: folder of the run's checkpoints; a non-finite loss stops training (before the weights are
            updated) with a message naming the iteration, the batch's cases and the newest checkpoint there.
        kwargs: further ``SupervisedTrainer`` arguments (inferer, amp, epoch_length, ...).
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
        synthetic_key: str = "is_synthetic",
        mas_key: str = "mas",
        weight_key: str = "weight",
        case_key: str = "case_id",
        checkpoint_dir: str | os.PathLike | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            device=device,
            max_epochs=max_epochs,
            train_data_loader=train_data_loader,
            network=network,
            optimizer=optimizer,
            loss_function=self._weighted_loss,
            train_handlers=None,
            **kwargs,
        )
        self.criterion = loss_function
        self.checkpoint_dir = None if checkpoint_dir is None else str(checkpoint_dir)
        self.mas = mas
        self.synthetic_key, self.mas_key, self.weight_key, self.case_key = synthetic_key, mas_key, weight_key, case_key
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

    def _weighted_loss(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Per-sample accuracies and weights for the batch being processed, then the weighted loss."""
        batch = self.state.batch
        n, device = pred.shape[0], pred.device
        target_idx = target[:, 0] if target.ndim == pred.ndim else target
        with torch.no_grad():
            dice = region_dice_per_sample(hard_prediction(pred.detach()), target_idx)
        synthetic = _batch_values(batch, self.synthetic_key, n, 0.0, device) > 0.5
        has_mas = isinstance(batch, dict) and self.mas_key in batch
        apply = _batch_values(batch, self.mas_key, n, 0.0, device) > 0.5 if has_mas else synthetic
        weight = _batch_values(batch, self.weight_key, n, 1.0, device)
        if self.mas is not None:
            weight = self.mas.weights(dice, weight, apply)
        out = self.state.output
        out["sample_dice"], out["sample_weight"] = dice, weight
        out[self.synthetic_key], out[self.mas_key] = synthetic, apply
        cases = batch.get(self.case_key) if isinstance(batch, dict) else None
        if cases is not None and len(cases) == n:
            out[self.case_key] = list(cases)
        loss = self.criterion(pred, target, weight=weight)
        guard_loss(loss, self, list(cases) if cases is not None else None, self.checkpoint_dir)
        return loss
