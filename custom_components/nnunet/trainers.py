"""nnU-Net v2 trainers with the DSMA paper's online methods: DTSS (section 3.1) and DTSS + MAS (section 3.2).

* :class:`nnUNetTrainerDTSS`: nnU-Net's own trainer whose training dataset replaces each real case it loads, with
  probability ``$TUMORFAB_DTSS_PROB`` (default 0.5), by its DTSS-derived case (:class:`PreprocessedDTSS`, the
  dtss_mas_seg bundle's settings), on the preprocessed arrays, before nnU-Net crops the patch and runs its spatial
  augmentation. Every batch carries ``batch["synthetic"]``, which samples were synthesised.
* :class:`nnUNetTrainerDTSSMAS`: also weights each sample's loss (every deep-supervision level: the sample's whole
  deep-supervision loss) by MAS, eq. 6 with eq. 13 (:class:`~custom_components.handlers.mas.MASStatistics`):
  synthetic samples by their accuracy ``L`` (hard ET / TC / WT Dice of the training prediction), relative to
  ``eta`` / ``theta`` (eqs. 7-8) of the real training cases, each case's mean accuracy over its real samples of the
  previous epoch (the bundle's statistics without an evaluator: no extra network pass, lagging one epoch; the first
  epoch weighs synthetic samples ``synthetic_weight``). The batch loss is the mean of the weighted per-sample losses
  (eq. 15).

nnU-Net finds trainers by name inside its own package only: run them through ``python -m custom_components
nnunet-train`` / ``nnunet-predict`` (:mod:`custom_components.nnunet.launcher`). ``$TUMORFAB_NUM_EPOCHS`` and
``$TUMORFAB_ITERATIONS`` (iterations per epoch, training and validation) shorten a run (tests, benchmarks).
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from nnunetv2.training.dataloading.data_loader import nnUNetDataLoader
from nnunetv2.training.nnUNetTrainer import nnUNetTrainer as trainer_module
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from custom_components.data.keys import SynthesisKeys
from custom_components.handlers.mas import MASStatistics
from custom_components.nnunet.synthesis import (
    PreprocessedDTSS,
    bundle_settings,
    check_brats_regions,
    sample_region_dice,
)

__all__ = [
    "ENV_ITERATIONS",
    "ENV_NUM_EPOCHS",
    "FlaggingDataLoader",
    "SampleWeightedLoss",
    "SynthesisingDataset",
    "nnUNetTrainerDTSS",
    "nnUNetTrainerDTSSMAS",
]

ENV_NUM_EPOCHS = "TUMORFAB_NUM_EPOCHS"
ENV_ITERATIONS = "TUMORFAB_ITERATIONS"


class SynthesisingDataset:
    """An nnU-Net training dataset whose ``load_case`` returns the DTSS-derived case with the synthesis' probability.

    Everything else is the wrapped dataset's. ``applied`` lists, per ``load_case`` since it was last cleared, whether
    the case was synthesised (the data loader turns it into the batch's flags). Each case's seed is drawn from
    numpy's global generator, which nnU-Net's augmentation draws from too (its workers seed it per process).

    Args:
        dataset: nnU-Net's training dataset (``nnUNetDatasetBlosc2`` / ``nnUNetDatasetNumpy``).
        synthesis: the DTSS step.
    """

    def __init__(self, dataset: Any, synthesis: Callable[[Any, Any, int], tuple[Any, Any, bool]]) -> None:
        self.dataset = dataset
        self.synthesis = synthesis
        self.applied: list[bool] = []

    def __getattr__(self, name: str) -> Any:
        if name in ("dataset", "synthesis", "applied"):  # not yet set (unpickling)
            raise AttributeError(name)
        return getattr(self.dataset, name)

    def load_case(self, identifier: str) -> tuple[Any, Any, Any, dict]:
        """nnU-Net's ``(data, seg, seg_prev, properties)`` of a case, synthesised with the synthesis' probability."""
        data, seg, seg_prev, properties = self.dataset.load_case(identifier)
        data, seg, applied = self.synthesis(data, seg, int(np.random.randint(2**31 - 1)))
        self.applied.append(applied)
        return data, seg, seg_prev, properties


class FlaggingDataLoader(nnUNetDataLoader):
    """nnU-Net's data loader whose batches also carry ``batch["synthetic"]``: ``(B,)`` bool, the synthesised samples.

    All False for a dataset that does not synthesise (validation).
    """

    def generate_train_batch(self) -> dict:
        applied = getattr(self._data, "applied", None)
        if applied is not None:
            applied.clear()
        batch = super().generate_train_batch()
        flags = list(applied) if applied is not None else [False] * len(batch["keys"])
        batch[SynthesisKeys.SYNTHETIC] = torch.tensor(flags, dtype=torch.bool)
        return batch


@contextmanager
def _data_loader_class(cls: type) -> Iterator[None]:
    """nnU-Net's trainer builds its data loaders with ``cls`` inside the context."""
    original = trainer_module.nnUNetDataLoader
    trainer_module.nnUNetDataLoader = cls
    try:
        yield
    finally:
        trainer_module.nnUNetDataLoader = original


class nnUNetTrainerDTSS(nnUNetTrainer):
    """nnU-Net's trainer with DTSS applied to the real training cases it loads (module docstring)."""

    def __init__(
        self,
        plans: dict,
        configuration: str,
        fold: int,
        dataset_json: dict,
        device: torch.device = torch.device("cuda"),
    ) -> None:
        super().__init__(plans, configuration, fold, dataset_json, device)
        check_brats_regions(dataset_json)
        self.dtss_synthesis = PreprocessedDTSS.from_bundle()
        if os.environ.get(ENV_NUM_EPOCHS):
            self.num_epochs = int(os.environ[ENV_NUM_EPOCHS])
        if os.environ.get(ENV_ITERATIONS):
            self.num_iterations_per_epoch = self.num_val_iterations_per_epoch = int(os.environ[ENV_ITERATIONS])

    def get_tr_and_val_datasets(self) -> tuple[Any, Any]:
        """nnU-Net's datasets, the training one synthesising (:class:`SynthesisingDataset`)."""
        dataset_tr, dataset_val = super().get_tr_and_val_datasets()
        return SynthesisingDataset(dataset_tr, self.dtss_synthesis), dataset_val

    def get_dataloaders(self) -> tuple[Any, Any]:
        """nnU-Net's data pipeline with :class:`FlaggingDataLoader` loaders."""
        with _data_loader_class(FlaggingDataLoader):
            return super().get_dataloaders()

    def on_train_start(self) -> None:
        super().on_train_start()
        self.print_to_log_file(
            f"DTSS on real training cases with probability {self.dtss_synthesis.prob}: "
            f"radius_range {self.dtss_synthesis.dtss.radius_range}, "
            f"iterations_range {self.dtss_synthesis.dtss.iterations_range}, sigma {self.dtss_synthesis.dtss.sigma}"
        )


class SampleWeightedLoss(torch.nn.Module):
    """nnU-Net's (deep-supervision) loss per sample, weighted by MAS, averaged over the batch (eq. 15).

    Outside :meth:`batch` (validation) it is the wrapped loss unchanged.

    Args:
        loss: nnU-Net's loss (``DeepSupervisionWrapper`` or the plain loss), called on one sample at a time.
        stats: the MAS statistics (eqs. 7-8) that give the weights.
        synthetic_weight: fixed weight of synthetic samples before statistics exist.
        regions_class_order: the nnU-Net label value of each region channel.
    """

    def __init__(
        self, loss: Callable, stats: MASStatistics, synthetic_weight: float, regions_class_order: Sequence[int]
    ) -> None:
        super().__init__()
        self.loss = loss
        self.stats = stats
        self.synthetic_weight = float(synthetic_weight)
        self.regions_class_order = list(regions_class_order)
        self.synthetic: torch.Tensor | None = None
        self.last: dict[str, torch.Tensor] = {}

    @contextmanager
    def batch(self, synthetic: torch.Tensor) -> Iterator[None]:
        """Weight the losses computed inside the context by MAS, ``synthetic`` ``(B,)`` the batch's flags."""
        self.synthetic = synthetic.to(torch.bool).reshape(-1)
        try:
            yield
        finally:
            self.synthetic = None

    def weights(self, dice: torch.Tensor, synthetic: torch.Tensor) -> torch.Tensor:
        """``(B,)`` loss weights: eq. 6 of ``dice`` for synthetic samples (once statistics exist), else fixed.

        Args:
            dice: ``(B,)`` accuracies ``L`` (NaN where undefined).
            synthetic: ``(B,)`` bool flags.
        """
        base = torch.where(synthetic.cpu(), torch.tensor(self.synthetic_weight), torch.tensor(1.0))
        return self.stats.weights(dice.cpu(), base, synthetic.cpu())

    def forward(self, output: Any, target: Any) -> torch.Tensor:
        if self.synthetic is None:
            return self.loss(output, target)
        outputs = output if isinstance(output, list | tuple) else [output]
        targets = target if isinstance(target, list | tuple) else [target]
        per_sample = torch.stack([self._sample_loss(output, target, b) for b in range(outputs[0].shape[0])])
        dice = sample_region_dice(outputs[0], targets[0], self.regions_class_order)
        weight = self.weights(dice, self.synthetic)
        self.last = {"dice": dice, "weight": weight, "loss": per_sample.detach()}
        return (weight.to(per_sample) * per_sample).mean()

    def _sample_loss(self, output: Any, target: Any, b: int) -> torch.Tensor:
        """The wrapped loss of sample ``b`` alone (all deep-supervision levels)."""
        if isinstance(output, list | tuple):
            return self.loss([o[b : b + 1] for o in output], [t[b : b + 1] for t in target])
        return self.loss(output[b : b + 1], target[b : b + 1])


class nnUNetTrainerDTSSMAS(nnUNetTrainerDTSS):
    """:class:`nnUNetTrainerDTSS` with MAS loss weights (module docstring)."""

    # the arguments spelled out, not *args: nnUNetTrainer.__init__ records them from this signature
    # (inspect.signature(self.__init__) read back from its locals) for its checkpoints
    def __init__(
        self,
        plans: dict,
        configuration: str,
        fold: int,
        dataset_json: dict,
        device: torch.device = torch.device("cuda"),
    ) -> None:
        super().__init__(plans, configuration, fold, dataset_json, device)
        settings = bundle_settings()
        self.mas = MASStatistics(beta=settings["mas_beta"], c=settings["mas_c"])
        self.synthetic_weight = float(settings["synthetic_weight"])
        self.real_dice: dict[str, list[float]] = defaultdict(list)

    def _build_loss(self) -> SampleWeightedLoss:
        order = self.label_manager.regions_class_order
        return SampleWeightedLoss(super()._build_loss(), self.mas, self.synthetic_weight, order)

    def on_train_epoch_start(self) -> None:
        super().on_train_epoch_start()
        self.real_dice = defaultdict(list)

    def train_step(self, batch: dict) -> dict:
        """nnU-Net's step with the MAS-weighted loss; keeps the real samples' accuracies for the next statistics."""
        synthetic = batch.get(SynthesisKeys.SYNTHETIC, torch.zeros(len(batch["keys"]), dtype=torch.bool))
        with self.loss.batch(synthetic):
            out = super().train_step(batch)
        last = self.loss.last
        for key, dice, syn in zip(batch["keys"], last["dice"].tolist(), synthetic.tolist(), strict=True):
            if not syn and np.isfinite(dice):
                self.real_dice[key].append(dice)
        out[SynthesisKeys.SAMPLE_WEIGHT] = last["weight"].numpy()
        out["synthetic"] = synthetic.numpy()
        return out

    def on_train_epoch_end(self, train_outputs: list[dict]) -> None:
        """nnU-Net's epoch end; then eta / theta (eqs. 7-8) from this epoch's real cases weigh the next epoch."""
        super().on_train_epoch_end(train_outputs)
        weights = np.concatenate([o[SynthesisKeys.SAMPLE_WEIGHT] for o in train_outputs])
        synthetic = np.concatenate([o["synthetic"] for o in train_outputs])
        per_case = {case: float(np.mean(v)) for case, v in self.real_dice.items()}
        stats = self.mas.update(per_case)
        mean_w = float(weights[synthetic].mean()) if synthetic.any() else float("nan")
        self.print_to_log_file(
            f"MAS: {int(synthetic.sum())} synthetic samples, mean weight {mean_w:.4f}; "
            f"eta {stats.get('eta', self.mas.eta)}, theta {stats.get('theta', self.mas.theta)} "
            f"from {len(per_case)} real cases"
        )
