"""TF-Aug training: learn the class-wise intensities a_c, b_c through a frozen feature extractor F.

Tumor Fabrication (section 2.1) optimises ``I(x) = a x + b`` per tumour class by minimising the L1
distance between F's embeddings of a synthetic image and of a real one. Synthetic and real images are
not paired (different anatomy, different tumour), so voxel-aligned feature maps cannot be compared.
The trainer compares **class-wise embeddings** instead, with the same loss as the paper's class-wise
perceptual loss of TF-GAN (Eq. 3, :class:`custom_components.losses.ClasswisePerceptualLoss`): for each
of the first ``levels`` encoder levels and each tumour class, a masked global average pool of the
feature map (the label brought to the level's grid by area averaging, > 0.5), the L1 distance between
the synthetic and the real class vectors (mean over channels), averaged over sample pairs, levels and
the classes present on both sides.

:class:`TFAugTrainer` is a MONAI :class:`~monai.engines.Trainer` (an Ignite engine), so MONAI handlers
(StatsHandler, CheckpointSaver, MLFlowHandler, ...) attach to it. ``engine.state.output`` is a list
with one dict (MONAI's decollated form): ``loss`` and every ``a_<class>_<channel>`` / ``b_...``, and
``engine.state.metrics`` holds the same parameters after every iteration plus ``epoch_loss`` (the mean
loss of the epoch) after every epoch. :class:`ClasswiseIntensitySaver` writes the learned parameters.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from ignite.engine import Engine, Events
from ignite.metrics import Average
from monai.engines import Trainer
from monai.engines.utils import IterationEvents
from monai.inferers import Inferer, SimpleInferer
from monai.utils import CommonKeys as Keys
from torch.utils.data import DataLoader

from custom_components.handlers.checkpoints import guard_loss
from custom_components.networks.classwise_intensity import ClasswiseIntensity

logger = logging.getLogger(__name__)


class TFAugTrainer(Trainer):
    """Ignite/MONAI trainer of TF-Aug's class-wise intensity map.

    Each iteration: the synthetic batch (blurred healthy crops ``image`` with synthetic masks ``label``)
    goes through ``network`` (a :class:`ClasswiseIntensity`, via ``inferer``); ``loss_function`` (holding
    the frozen encoder F) compares it with the real batch (``real_image`` rescaled to [-1, 1],
    ``real_label`` internal) and ``optimizer`` updates a and b.

    Args:
        device: device of the computation.
        max_epochs: number of epochs.
        train_data_loader: yields dicts with ``image_key``, ``label_key``, ``real_image_key``, ``real_label_key``.
        network: the :class:`ClasswiseIntensity` to learn.
        optimizer: optimiser of ``network``'s parameters.
        loss_function: callable ``(synthetic, label, real, real_label) -> loss`` that runs the frozen
            encoder F, e.g. ``ClasswisePerceptualLoss(FrozenEncoder.from_checkpoint(...), levels=3)``.
        inferer: runs ``network(image, label)`` (default ``SimpleInferer``).
        epoch_length: iterations per epoch (default ``len(train_data_loader)``).
        non_blocking: non-blocking host-to-device copies.
        train_handlers: MONAI / Ignite handlers to attach (``attach(engine)``).
        amp: mixed precision on CUDA.
        image_key, label_key, real_image_key, real_label_key: batch keys.
        clip: optional ``(min, max)`` to clamp the synthetic image before F (None: unclamped, so gradients
            reach a and b even when a value leaves [-1, 1]).
        iteration_update, postprocessing, key_train_metric, additional_metrics, metric_cmp_fn, event_names,
            event_to_attr, decollate, to_kwargs, amp_kwargs: as for MONAI's ``Trainer``.
        checkpoint_dir: folder of the run's checkpoints; a non-finite loss stops training (before a and b are
            updated) naming the iteration, the batch's healthy and real cases and the newest checkpoint there.
    """

    def __init__(
        self,
        device: torch.device | str,
        max_epochs: int,
        train_data_loader: Iterable | DataLoader,
        network: ClasswiseIntensity,
        optimizer: torch.optim.Optimizer,
        loss_function: Callable,
        inferer: Inferer | None = None,
        epoch_length: int | None = None,
        non_blocking: bool = False,
        train_handlers: Sequence | None = None,
        amp: bool = False,
        image_key: str = Keys.IMAGE,
        label_key: str = Keys.LABEL,
        real_image_key: str = "real_image",
        real_label_key: str = "real_label",
        clip: Sequence[float] | None = None,
        iteration_update: Callable[[Engine, Any], Any] | None = None,
        postprocessing: Callable | None = None,
        key_train_metric: dict | None = None,
        additional_metrics: dict | None = None,
        metric_cmp_fn: Callable | None = None,
        event_names: list | None = None,
        event_to_attr: dict | None = None,
        decollate: bool = False,
        to_kwargs: dict | None = None,
        amp_kwargs: dict | None = None,
        checkpoint_dir: str | os.PathLike | None = None,
    ) -> None:
        extra = {} if metric_cmp_fn is None else {"metric_cmp_fn": metric_cmp_fn}
        super().__init__(
            device=device,
            max_epochs=max_epochs,
            data_loader=train_data_loader,
            epoch_length=epoch_length,
            non_blocking=non_blocking,
            iteration_update=iteration_update,
            postprocessing=postprocessing,
            key_metric=key_train_metric,
            additional_metrics=additional_metrics,
            handlers=None,  # attached below, after this engine's own epoch bookkeeping
            amp=amp,
            event_names=event_names,
            event_to_attr=event_to_attr,
            decollate=decollate,
            to_kwargs=to_kwargs,
            amp_kwargs=amp_kwargs,
            **extra,
        )
        self.network = network
        self.optimizer = optimizer
        self.loss_function = loss_function
        self.inferer = inferer if inferer is not None else SimpleInferer()
        self.keys = (image_key, label_key, real_image_key, real_label_key)
        self.clip = None if clip is None else (float(clip[0]), float(clip[1]))
        self.checkpoint_dir = None if checkpoint_dir is None else str(checkpoint_dir)
        # the epoch's mean loss: Ignite's Average (over all ranks under torchrun)
        Average(output_transform=_iteration_loss).attach(self, "epoch_loss")
        self.add_event_handler(Events.EPOCH_COMPLETED, self._finish_epoch)
        if train_handlers is not None:
            self._register_handlers(train_handlers)

    def _finish_epoch(self, engine: Engine) -> None:
        engine.state.metrics.update(self.network.scalars())

    def _to_device(self, x: torch.Tensor) -> torch.Tensor:
        return x.to(self.state.device, non_blocking=self.non_blocking, **self.to_kwargs)

    def _iteration(self, engine: TFAugTrainer, batchdata: dict[str, torch.Tensor]) -> list[dict[str, Any]]:
        """One optimisation step of a and b; returns ``[{"loss": ..., "a_<class>_<channel>": ..., ...}]``."""
        if batchdata is None:
            raise ValueError("Must provide batch data for current iteration.")
        missing = [k for k in self.keys if k not in batchdata]
        if missing:
            raise KeyError(f"TF-Aug batch lacks {missing}; expected keys {list(self.keys)}")
        image, label, real, real_label = (self._to_device(batchdata[k]) for k in self.keys)
        # plain tensors: the graph does not need MetaTensor bookkeeping
        image, label, real, real_label = (
            t.as_tensor() if hasattr(t, "as_tensor") else t for t in (image, label, real, real_label)
        )
        engine.network.train()
        engine.optimizer.zero_grad(set_to_none=True)

        def _forward() -> torch.Tensor:
            synthetic = engine.inferer(image.float(), engine.network, label)
            if self.clip is not None:
                synthetic = synthetic.clamp(*self.clip)
            engine.fire_event(IterationEvents.FORWARD_COMPLETED)
            loss = engine.loss_function(synthetic, label, real.float(), real_label)
            guard_loss(loss, engine, _batch_cases(batchdata), self.checkpoint_dir)
            engine.fire_event(IterationEvents.LOSS_COMPLETED)
            return loss

        if engine.amp and engine.scaler is not None:
            with torch.autocast("cuda", **engine.amp_kwargs):
                loss = _forward()
            engine.scaler.scale(loss).backward()
            engine.fire_event(IterationEvents.BACKWARD_COMPLETED)
            engine.scaler.step(engine.optimizer)
            engine.scaler.update()
        else:
            loss = _forward()
            loss.backward()
            engine.fire_event(IterationEvents.BACKWARD_COMPLETED)
            engine.optimizer.step()
        params = engine.network.scalars()
        engine.state.metrics.update(params)
        engine.state.output = [{Keys.LOSS: loss.detach(), **params}]
        engine.fire_event(IterationEvents.MODEL_COMPLETED)
        return engine.state.output


def _iteration_loss(output: Sequence[dict[str, Any]]) -> float:
    """``output_transform`` of the epoch mean: the iteration's loss from ``[{"loss": ..., ...}]``."""
    return float(output[0][Keys.LOSS])


def _rounded(values: Sequence[float]) -> list[float]:
    return [round(float(v), 4) for v in values]


def _batch_cases(batchdata: dict[str, Any]) -> list[str] | None:
    """``healthy+real`` ids of the pairs of a batch (None when the batch does not carry them)."""
    healthy, real = batchdata.get("healthy_id"), batchdata.get("real_id")
    if healthy is None or real is None:
        return None
    return [f"{h}+{r}" for h, r in zip(healthy, real, strict=False)]


class ClasswiseIntensitySaver:
    """Ignite handler: write the learned a, b to ``<output_dir>/<stem>.pt`` and ``.json`` (atomically).

    Args:
        output_dir: folder of the files (the bundle uses ``<output_dir>/models``).
        network: the :class:`ClasswiseIntensity` being trained.
        stem: file name without extension.
        save_interval: also write every this many epochs (0: only when training completes).
    """

    def __init__(
        self,
        output_dir: str | os.PathLike,
        network: ClasswiseIntensity,
        stem: str = "intensity",
        save_interval: int = 1,
    ) -> None:
        self.output_dir, self.network, self.stem, self.save_interval = (
            Path(output_dir),
            network,
            stem,
            int(save_interval),
        )

    def attach(self, engine: Engine) -> None:
        if self.save_interval > 0:
            engine.add_event_handler(Events.EPOCH_COMPLETED(every=self.save_interval), self)
        engine.add_event_handler(Events.COMPLETED, self.completed)

    def __call__(self, engine: Engine) -> None:
        pt, js = self.network.save(self.output_dir, self.stem)
        params = ", ".join(f"{k}={v:.4f}" for k, v in self.network.scalars().items())
        logger.info(f"epoch {engine.state.epoch}: saved class-wise intensities to {pt} and {js} ({params})")

    def completed(self, engine: Engine) -> None:
        """Save, and log where each class's a, b started and where training took them."""
        self(engine)
        start = self.network.initial
        moves = "; ".join(
            f"{name} a {_rounded(start[name]['a'])} -> {_rounded(final['a'])}, "
            f"b {_rounded(start[name]['b'])} -> {_rounded(final['b'])}"
            for name, final in self.network.to_dict().items()
        )
        logger.info(f"class-wise intensities, initial ({start['method']}) -> final: {moves}")
