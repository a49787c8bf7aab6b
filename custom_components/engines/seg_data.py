"""Training data of dtss_mas_seg: synthetic datalist items, and the two-phase dataset.

Real items are read with :func:`custom_components.data.load_datalist`, the project's one loader.

Phase 1 of DSMA trains on the real cases only; phase 2 adds, every epoch, a freshly derived synthetic
case per real case (DTSS, or any other online synthesis transform) and optionally cases from synthetic
datalists (TF-Aug / TF-GAN outputs). :class:`TwoPhaseDataset` keeps one index per real case in both
phases, so an epoch always has the same number of iterations (Ignite's ``epoch_length`` and checkpoint
resumption stay valid). Phase 2 samples in one of two ways (``sampling``):

* ``"companion"`` (DSMA's scheme, the default): an index yields the real sample *and* its synthetic companions,
  so the batches grow (``batch_size`` real samples plus their synthetic samples). ``real_per_case`` adds
  further, independently augmented crops of the same real case instead: the real-only control that sees as many
  samples per step as a synthetic arm.
* ``"union"`` (the TF paper's nnU-Net: fixed-size batches drawn from the union of the real and synthetic cases):
  an index yields one sample, taken from the union of the real and synthetic-dataset items, so adding synthetic
  cases changes what a batch holds, not how much it holds.
"""

from __future__ import annotations

import copy
import math
import os
from collections.abc import Callable, Sequence
from typing import Any

from monai.data import MetaTensor
from torch.utils.data import Dataset

from custom_components.data.datalist import label_convention_of
from custom_components.data.keys import SynthesisKeys
from custom_components.data.labels import check_convention
from custom_components.data.loader import load_datalist

__all__ = [
    "SAMPLING",
    "TwoPhaseDataset",
    "load_synthetic_items",
]

# how phase 2 adds synthetic samples (TwoPhaseDataset's ``sampling``; see the module docstring)
SAMPLING: tuple[str, ...] = ("companion", "union")


def load_synthetic_items(
    datalists: Sequence[str | os.PathLike],
    section: str = "training",
    modalities: Sequence[str] | None = None,
    label_convention: str = "internal",
) -> list[dict[str, Any]]:
    """Items of synthetic datalists (e.g. TF-GAN's refined output), for phase 2.

    Every datalist must declare (or default to) ``label_convention``: they share one label mapping.
    Case ids are prefixed with the datalist's index when two datalists reuse one.

    Args:
        datalists: synthetic datalist files (empty: no items).
        section: section to read from each.
        modalities: modality names to stack, as for the real data.
        label_convention: convention the ``label`` files must be in.
    """
    items: list[dict[str, Any]] = []
    seen: set[str] = set()
    for n, path in enumerate(datalists or ()):
        convention = label_convention_of(path)
        if convention != check_convention(label_convention):
            raise ValueError(
                f"{path}: synthetic datalist labels are {convention!r}, expected {label_convention!r} "
                "(every synthetic datalist must use the synthetic label convention)"
            )
        for item in load_datalist(
            path, section, modalities, require=["label"], keys=["label", "brain_mask"], check="exists"
        ):
            cid = SynthesisKeys.CASE_ID
            if item[cid] in seen:
                item[cid] = f"{n}:{item[cid]}"
            seen.add(item[cid])
            items.append(item)
    return items


def _plain(value: Any) -> Any:
    """MetaTensor -> plain tensor (batches mix sources whose metadata differ)."""
    if isinstance(value, MetaTensor):
        return value.as_tensor()
    return value


class TwoPhaseDataset(Dataset):
    """Real cases, plus synthetic companions per case in phase 2 (see the module docstring).

    Index ``i`` yields a list of samples (MONAI's ``list_data_collate`` flattens them into the batch):

    * phase 1 (epochs ``1 .. phase2_start_epoch``): ``augment(real[i])``;
    * phase 2, ``sampling="companion"``: additionally ``augment(t(real[i]))`` for every online synthesis transform
      ``t`` (e.g. DTSS, drawn afresh every epoch) and items of ``synthetic``, ``synthetic_per_case`` per real case
      on average, taken cyclically so that every synthetic item is used equally often across epochs. A fractional
      ``synthetic_per_case`` ``r`` gives index ``i`` ``floor((i + 1) r) - floor(i r)`` items, so an epoch uses
      ``floor(n r)`` synthetic items for ``n`` real cases (0.5: every other index; the TF paper's Syn50 with
      100 real cases = 50 synthetic samples per 100 real ones). ``real_per_case`` adds, by the same rule, further
      ``augment(real[i])`` (independent crops and flips of the same case; real samples: weight 1, never MAS):
      with ``real_per_case = synthetic_per_case`` a real-only run sees a synthetic run's samples per step.
    * phase 2, ``sampling="union"``: one sample, ``augment(u[p])``, of the union ``u`` of the ``n`` real and ``m``
      synthetic items, at ``p = ((epoch - 1) n + i) mod (n + m)``: an epoch walks ``n`` consecutive positions of
      ``u`` (the baseline's samples per epoch and per step) and the next epoch walks on, so every item of ``u`` is
      used equally often. ``u`` interleaves the two kinds evenly: with ``s(p) = floor(p m / (n + m))``, position
      ``p`` is synthetic item ``s(p)`` where ``s(p + 1) > s(p)``, else real item ``p - s(p)``, so any ``n``
      consecutive positions hold ``floor`` or ``ceil`` of ``n m / (n + m)`` synthetic items, and with no synthetic
      items position ``p`` is real item ``i`` (phase 1's sampling). The DataLoader shuffles the indices. The
      synthetic dataset's size sets the mix (``synthetic_per_case`` does not apply); online transforms (derived
      from each real case every epoch: companions by nature) and ``real_per_case`` are refused.

    Every sample carries ``image``, ``label`` (plain tensors) and the :class:`~custom_components.data.SynthesisKeys`
    entries ``CASE_ID``, ``SYNTHETIC`` (bool), ``MAS`` (bool: MAS weights this sample) and ``WEIGHT`` (its fixed
    loss weight: 1 for real samples, ``synthetic_weight`` for synthetic ones). An online transform that flags its
    output with ``SynthesisKeys.SYNTHETIC`` (as ``DeformationTumorSynthesisd`` and ``CarveMixd`` do) is trusted: an
    output it left unflagged (e.g. ``prob < 1``) counts as a real sample of the same case.

    The phase follows :meth:`set_epoch`, which :class:`~custom_components.engines.seg_trainer.SegmentationTrainer`
    calls at the start of every epoch, before the epoch's data iterator (and its worker processes) is created.
    Do not use ``persistent_workers``: workers would keep the phase of the epoch they were created in (and the
    synthesis caches warmed when phase 2 starts reach every epoch's fresh workers by the fork).

    Args:
        real: dataset of preprocessed (loaded, oriented, label-mapped, rescaled) real cases, e.g. a ``CacheDataset``.
        augment: random transforms applied to every sample (crop, flips); may return a list of samples.
        online: online synthesis transforms applied to a copy of the real case before ``augment`` in phase 2.
        synthetic: dataset of preprocessed synthetic cases used in phase 2 (``None``: none).
        phase2_start_epoch: number of phase-1 epochs; phase 2 starts at epoch ``phase2_start_epoch + 1``
            (0: the whole run is phase 2).
        synthetic_per_case: synthetic-dataset items per real case per epoch in phase 2 (may be fractional;
            companion sampling).
        real_per_case: extra crops of the same real case per index in phase 2 (may be fractional; companion
            sampling): the real-only control of the synthetic arms' samples per step.
        sampling: ``"companion"`` or ``"union"`` (see above; :data:`SAMPLING`).
        synthetic_weight: fixed loss weight of synthetic samples (used where MAS does not weight them).
        online_mas: MAS weights the online-synthesised samples.
        synthetic_mas: MAS weights the synthetic-dataset samples.
        keys: keys kept from every sample besides the flags (image and label).
    """

    def __init__(
        self,
        real: Dataset | Sequence[dict],
        augment: Callable[[dict], dict | list[dict]],
        online: Sequence[Callable[[dict], dict]] = (),
        synthetic: Dataset | Sequence[dict] | None = None,
        phase2_start_epoch: int = 0,
        synthetic_per_case: float = 1,
        real_per_case: float = 0,
        sampling: str = "companion",
        synthetic_weight: float = 1.0,
        online_mas: bool = True,
        synthetic_mas: bool = True,
        keys: Sequence[str] = ("image", "label"),
    ) -> None:
        if len(real) == 0:
            raise ValueError("TwoPhaseDataset needs at least one real case")
        if phase2_start_epoch < 0:
            raise ValueError(f"phase2_start_epoch must be >= 0, got {phase2_start_epoch}")
        if synthetic_per_case < 0:
            raise ValueError(f"synthetic_per_case must be >= 0, got {synthetic_per_case}")
        if real_per_case < 0:
            raise ValueError(f"real_per_case must be >= 0, got {real_per_case}")
        if synthetic_weight < 0:
            raise ValueError(f"synthetic_weight must be >= 0, got {synthetic_weight}")
        _check_sampling(sampling, bool(online), real_per_case)
        self.real = real
        self.augment = augment
        self.online = list(online or ())
        self.synthetic = synthetic if synthetic is not None and len(synthetic) > 0 else None
        self.phase2_start_epoch = int(phase2_start_epoch)
        self.synthetic_per_case = float(synthetic_per_case)
        self.real_per_case = float(real_per_case)
        self.sampling = sampling
        self.synthetic_weight = float(synthetic_weight)
        self.online_mas = bool(online_mas)
        self.synthetic_mas = bool(synthetic_mas)
        self.keys = tuple(keys)
        self.epoch = 1
        self._warmed = False

    def set_epoch(self, epoch: int) -> None:
        """Set the (1-based) training epoch; decides the phase and the synthetic items used. Entering phase 2, the
        online transforms' per-case caches are filled (:meth:`warm_synthesis_caches`)."""
        self.epoch = int(epoch)
        if self.phase == 2 and not self._warmed:
            self.warm_synthesis_caches()

    def warm_synthesis_caches(self) -> int:
        """Fill the per-case caches of the online synthesis transforms (those with a ``warm`` method: DTSS,
        CarveMix) with every real case, in this process and without drawing. The DataLoader forks its workers
        after :meth:`set_epoch` every epoch, so each worker starts with these entries and draws only what is
        random; outputs are the same as without the caches.

        Returns:
            The number of (transform, case) entries filled.
        """
        warmers = [t for t in _flatten_transforms(self.online) if callable(getattr(t, "warm", None))]
        self._warmed = True
        for index in range(len(self.real) if warmers else 0):
            case = self.real[index]
            for transform in warmers:
                transform.warm(case)
        return len(warmers) * len(self.real)

    @property
    def phase(self) -> int:
        """1 during the first ``phase2_start_epoch`` epochs, 2 afterwards."""
        return 2 if self.epoch > self.phase2_start_epoch else 1

    def _union_item(self, index: int) -> tuple[int, bool]:
        """(item, is synthetic) that index ``index`` yields this epoch under union sampling (class docstring)."""
        n, m = len(self.real), 0 if self.synthetic is None else len(self.synthetic)
        p = ((self.epoch - 1) * n + index) % (n + m)
        before = p * m // (n + m)
        if (p + 1) * m // (n + m) > before:
            return before, True
        return p - before, False

    def synthetic_per_epoch(self) -> int:
        """Synthetic-dataset items used per phase-2 epoch: ``floor(n_real * synthetic_per_case)`` (companion
        sampling); those of the current epoch (``floor`` or ``ceil`` of ``n_real m / (n_real + m)``, union)."""
        if self.synthetic is None:
            return 0
        if self.sampling == "union":
            return sum(self._union_item(i)[1] for i in range(len(self.real)))
        return _slots(len(self.real), self.synthetic_per_case)[0]

    def samples_per_case(self, phase: int | None = None, index: int = 0) -> int:
        """Samples index ``index`` yields per ``augment`` output in ``phase`` (default: the current phase):
        1 in phase 1 and under union sampling; with companions, the real crops plus the synthetic samples."""
        if (phase or self.phase) == 1 or self.sampling == "union":
            return 1
        synthetic = _slots(index, self.synthetic_per_case)[1] if self.synthetic is not None else 0
        return 1 + _slots(index, self.real_per_case)[1] + len(self.online) + synthetic

    def __len__(self) -> int:
        return len(self.real)

    def _finish(self, data: dict | list[dict], case_id: str, synthetic: bool, mas: bool) -> list[dict]:
        out = []
        for d in data if isinstance(data, list) else [data]:
            is_syn = bool(d.get(SynthesisKeys.SYNTHETIC, synthetic)) if synthetic else False
            sample = {k: _plain(d[k]) for k in self.keys}
            sample[SynthesisKeys.CASE_ID] = case_id if is_syn or not synthetic else case_id.rsplit("#", 1)[0]
            sample[SynthesisKeys.SYNTHETIC] = is_syn
            sample[SynthesisKeys.MAS] = is_syn and mas
            sample[SynthesisKeys.WEIGHT] = self.synthetic_weight if is_syn else 1.0
            out.append(sample)
        return out

    def _real_case(self, index: int) -> tuple[dict, str]:
        """Real case ``index`` and its case id."""
        base = self.real[index]
        return base, str(base.get(SynthesisKeys.CASE_ID, f"case{index}"))

    def _real_crops(self, base: dict, case_id: str, count: int) -> list[dict]:
        """``count`` independently augmented samples of one real case."""
        samples = []
        for _ in range(count):
            samples += self._finish(self.augment(copy.deepcopy(base)), case_id, synthetic=False, mas=False)
        return samples

    def _synthetic_samples(self, j: int) -> list[dict]:
        """The augmented synthetic-dataset item ``j``."""
        item = self.synthetic[j]
        sid = str(item.get(SynthesisKeys.CASE_ID, f"synthetic{j}"))
        return self._finish(self.augment(item), sid, synthetic=True, mas=self.synthetic_mas)

    def __getitem__(self, index: int) -> list[dict]:
        if self.phase == 2 and self.sampling == "union":
            j, synthetic = self._union_item(index)
            return self._synthetic_samples(j) if synthetic else self._real_crops(*self._real_case(j), 1)
        base, case_id = self._real_case(index)
        if self.phase == 1:
            return self._real_crops(base, case_id, 1)
        samples = self._real_crops(base, case_id, 1 + _slots(index, self.real_per_case)[1])
        for k, transform in enumerate(self.online):
            derived = transform(copy.deepcopy(base))
            samples += self._finish(self.augment(derived), f"{case_id}#online{k}", synthetic=True, mas=self.online_mas)
        if self.synthetic is not None:
            m, total = len(self.synthetic), self.synthetic_per_epoch()
            first, count = _slots(index, self.synthetic_per_case)
            for k in range(count):
                samples += self._synthetic_samples(((self.epoch - 1) * total + first + k) % m)
        return samples


def _slots(index: int, ratio: float) -> tuple[int, int]:
    """(first slot, number of slots) of index ``index`` among an epoch's ``floor(n ratio)`` slots of ``n`` indices:
    index ``i`` gets ``floor((i + 1) ratio) - floor(i ratio)``."""
    first = math.floor(index * ratio + 1e-9)
    return first, math.floor((index + 1) * ratio + 1e-9) - first


def _check_sampling(sampling: str, online: bool, real_per_case: float) -> None:
    """Refuse an unknown phase-2 sampling, and what union sampling cannot draw (class docstring)."""
    if sampling not in SAMPLING:
        raise ValueError(f"sampling must be one of {list(SAMPLING)}, got {sampling!r}")
    if sampling == "union" and online:
        raise ValueError(
            "union sampling draws from fixed real and synthetic-dataset items; online synthesis (DTSS, CarveMix) "
            "derives a companion of every real case each epoch: use sampling='companion' with it"
        )
    if sampling == "union" and real_per_case > 0:
        raise ValueError(
            f"real_per_case {real_per_case:g} adds crops per index, union sampling yields one sample per index (every "
            "arm already sees the baseline's samples per step): use sampling='companion' with real_per_case"
        )


def _flatten_transforms(transforms: Sequence[Any]) -> list[Any]:
    """The transforms of a list, with every ``Compose`` replaced by its own transforms (recursively)."""
    flat: list[Any] = []
    for transform in transforms:
        inner = getattr(transform, "transforms", None)
        flat += (
            _flatten_transforms(list(inner))
            if isinstance(inner, Sequence) and not isinstance(inner, str)
            else [transform]
        )
    return flat
