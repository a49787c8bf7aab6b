"""Model-Data Adaptive Supervision (MAS) of the DSMA paper (section 3.2, eqs. 6-13).

MAS weights the loss of every synthetic sample by how well the current model segments it, relative
to how well it segments the real training data:

* ``eta_k`` (eq. 7) is the mean segmentation accuracy of the model on the real training cases,
* ``theta_k`` (eq. 8) is half their range plus a small constant ``c`` (the paper's 2e-5),
* a synthetic sample with accuracy ``L`` gets weight ``w(L)`` (eq. 6): 1 on the plateau
  ``[eta - theta, eta + theta]``, a downward parabola (eq. 13) on the flanks of width ``beta`` on each
  side, 0 beyond the discard points ``eta - theta - beta`` and ``eta + theta + beta``.

Choices where the paper is silent (documented in bundles/dtss_mas_seg/docs/README.md):

* **Accuracy** ``L``: the hard Dice of the detached training prediction (argmax) on the BraTS regions
  ET, TC and WT, averaged over the regions present in the sample's ground truth. A sample without
  tumour in its ground truth has no accuracy (NaN): a real one does not enter ``eta``/``theta``, a
  synthetic one keeps its fixed weight. The per-case accuracy of a real case is the mean over its
  samples in the epoch (one crop per case and epoch by default).
* **When**: the paper's ``L'_j`` is "the accuracy of the model on the j-th real data after the k-th epoch".
  With an evaluator (:func:`real_case_evaluator`, the bundle's default) the model is evaluated (eval mode, no
  gradients) on every real training case at the end of every phase-2 epoch and, when a run starts in phase 2
  without statistics, before its first epoch, so the weights of epoch ``k + 1`` use the model after epoch ``k``
  and MAS weights the first synthetic sample already. Without one, the statistics come from the real samples of
  the epoch's training forward passes (no extra cost, lagging one epoch; the first epoch keeps the fixed weights).
* **Fewer than two real cases**: eq. 8 gives ``theta = c`` (a plateau of width ``2c``); the handler warns in
  the log and records ``theta_degenerate`` so the report says so.
* **Borders**: for ``L`` in ``[0, 1]`` the quadratic branch covers the open flanks
  ``(eta - theta - beta, eta - theta)`` and ``(eta + theta, eta + theta + beta)``. When a discard point
  lies outside ``[0, 1]`` (``eta - theta - beta < 0`` or ``eta + theta + beta > 1``), the paper's
  ``max(0, .)`` / ``min(., 1)`` only clip the flank to the domain of a Dice score and the discard
  point is never reached, so a Dice of exactly 0 (or 1) takes the parabola's value there, keeping
  ``w`` continuous on ``[0, 1]``. At a discard point inside ``[0, 1]`` the weight is exactly 0.
* ``beta`` (the flank width, left open by the paper) defaults to 0.1 Dice.

The parts: :func:`mas_weight` (eq. 6, a pure function), :class:`MASStatistics` (eta/theta from per-case accuracies,
and the weights they give), :func:`real_case_evaluator` (the pass over the real cases: a MONAI
``SupervisedEvaluator`` whose :class:`PerCaseRegionDice` metric leaves the per-case accuracies in
``state.metric_details``) and :class:`MASHandler` (wires them to the trainer's events and writes the log). The
per-sample entries they exchange with the trainer are named by :class:`~custom_components.data.SynthesisKeys`.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import ignite.distributed as idist
import numpy as np
import torch
from ignite.engine import Engine, Events
from ignite.metrics import Metric
from monai.engines import SupervisedEvaluator
from monai.handlers import from_engine
from monai.inferers import Inferer, SimpleInferer
from monai.utils import CommonKeys
from torch.utils.data import DataLoader

from custom_components.data.atomic import atomic_write_text
from custom_components.data.keys import SynthesisKeys
from custom_components.data.labels import REGION_NAMES, REGIONS

DEFAULT_BETA = 0.1
DEFAULT_C = 2e-5
# name of the per-case accuracy metric of the real-case evaluator (engine.state.metrics / metric_details)
REAL_DICE_METRIC = "mas_real_dice"

ArrayT = TypeVar("ArrayT", float, np.ndarray, torch.Tensor)


def _check_params(eta: float, theta: float, beta: float) -> None:
    if not (math.isfinite(eta) and math.isfinite(theta) and math.isfinite(beta)):
        raise ValueError(f"MAS parameters must be finite, got eta={eta}, theta={theta}, beta={beta}")
    if theta < 0:
        raise ValueError(f"MAS theta must be >= 0, got {theta}")
    if beta <= 0:
        raise ValueError(f"MAS beta must be > 0, got {beta}")


def mas_weight(dice: ArrayT, eta: float, theta: float, beta: float = DEFAULT_BETA) -> ArrayT:
    """MAS loss weight of synthetic samples from their segmentation accuracy (eq. 6 with eq. 13).

    ``w = 1`` for ``L`` in ``[eta - theta, eta + theta]``;
    ``w = -[L - (eta - theta - beta)] [L - (eta + theta + beta)] / (beta (2 theta + beta))`` for ``L`` in
    ``(eta - theta - beta, eta - theta)`` or ``(eta + theta, eta + theta + beta)``; ``w = 0`` otherwise.
    Values are in ``[0, 1]``; the function is continuous and symmetric about ``eta``. A Dice of exactly
    0 or 1 follows the same formula (see the module docstring for the border convention).

    Args:
        dice: accuracies ``L`` in ``[0, 1]``: a float, a numpy array or a torch tensor of any shape.
        eta: centre of the plateau (eq. 7: mean accuracy on the real data).
        theta: half-width of the plateau (eq. 8), ``>= 0``.
        beta: width of each quadratic flank, ``> 0``.

    Returns:
        Weights of the same type and shape as ``dice`` (floating point; a tensor stays on its device).

    Raises:
        ValueError: when ``theta < 0``, ``beta <= 0``, a parameter is not finite, or a Dice value is NaN
            or outside ``[0, 1]``.
    """
    eta, theta, beta = float(eta), float(theta), float(beta)
    _check_params(eta, theta, beta)
    lo, hi = eta - theta, eta + theta
    q1, q2 = lo - beta, hi + beta
    a = -1.0 / (beta * (2.0 * theta + beta))  # eq. 12
    if isinstance(dice, torch.Tensor):
        x = dice if dice.is_floating_point() else dice.double()
        if x.numel() and bool(((x < 0) | (x > 1) | torch.isnan(x)).any()):
            raise ValueError("MAS Dice values must lie in [0, 1]")
        quad = a * (x - q1) * (x - q2)  # eq. 13
        flank = torch.where((x > q1) & (x < q2), quad, torch.zeros_like(x))
        return torch.where((x >= lo) & (x <= hi), torch.ones_like(x), flank)
    scalar = np.ndim(dice) == 0 and not isinstance(dice, np.ndarray)
    x = np.asarray(dice, dtype=np.result_type(np.asarray(dice).dtype, np.float32))
    if x.size and bool(((x < 0) | (x > 1) | np.isnan(x)).any()):
        raise ValueError("MAS Dice values must lie in [0, 1]")
    quad = a * (x - q1) * (x - q2)
    w = np.where((x >= lo) & (x <= hi), 1.0, np.where((x > q1) & (x < q2), quad, 0.0)).astype(x.dtype)
    return float(w) if scalar else w


def _as_numpy_1d(values: Iterable[float] | np.ndarray | torch.Tensor, name: str) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().numpy()
    arr = np.asarray(list(values) if not isinstance(values, np.ndarray) else values, dtype=np.float64).ravel()
    if arr.size == 0:
        raise ValueError(f"{name} needs at least one real-case accuracy")
    if np.isnan(arr).any() or (arr < 0).any() or (arr > 1).any():
        raise ValueError(f"{name}: real-case accuracies must lie in [0, 1] (no NaN)")
    return arr


def mas_eta(real_dice: Iterable[float] | np.ndarray | torch.Tensor) -> float:
    """Eq. 7: ``eta_k``, the mean accuracy of the model on the ``n`` real training cases.

    Args:
        real_dice: per-case accuracies in ``[0, 1]``.
    """
    return float(_as_numpy_1d(real_dice, "mas_eta").mean())


def mas_theta(real_dice: Iterable[float] | np.ndarray | torch.Tensor, c: float = DEFAULT_C) -> float:
    """Eq. 8: ``theta_k = (L_max - L_min) / 2 + c`` over the real training cases.

    Args:
        real_dice: per-case accuracies in ``[0, 1]``.
        c: widening constant (the paper uses 2e-5), ``>= 0``.
    """
    if c < 0:
        raise ValueError(f"MAS c must be >= 0, got {c}")
    arr = _as_numpy_1d(real_dice, "mas_theta")
    return float((arr.max() - arr.min()) / 2.0 + c)


def hard_prediction(logits: torch.Tensor) -> torch.Tensor:
    """Argmax over the channel axis, ``(B, C, *spatial) -> (B, *spatial)`` uint8 labels (ties: lowest channel).

    Equal to ``logits.argmax(1)`` but computed with element-wise comparisons, several times faster than
    ``torch.argmax`` over a strided channel axis on CPU.

    Args:
        logits: network output (any real dtype), at most 256 channels.
    """
    if logits.shape[1] > 256:
        raise ValueError(f"hard_prediction supports up to 256 channels, got {logits.shape[1]}")
    best = logits[:, 0]
    labels = torch.zeros(best.shape, dtype=torch.uint8, device=logits.device)
    for c in range(1, logits.shape[1]):
        channel = logits[:, c]
        labels.masked_fill_(channel > best, c)
        best = torch.maximum(best, channel)
    return labels


def region_dice_per_sample(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Hard Dice per sample on the BraTS regions ET, TC, WT, averaged over the regions present in the target.

    One pass over the voxels builds each sample's confusion matrix of internal labels (``bincount``), from
    which every region's overlap and sizes follow.

    Args:
        pred: predicted internal labels ``(B, *spatial)`` or ``(B, 1, *spatial)`` (e.g. :func:`hard_prediction`).
        target: ground-truth internal labels, same shape as ``pred``.

    Returns:
        ``(B,)`` float tensor on the input's device; NaN for a sample whose target has no tumour voxel.

    Raises:
        ValueError: on different shapes or values outside the internal labels 0-3.
    """
    if pred.shape != target.shape:
        raise ValueError(f"pred and target shapes differ: {tuple(pred.shape)} vs {tuple(target.shape)}")
    k = 4
    b = pred.shape[0]
    p = pred.reshape(b, -1).long()
    t = target.reshape(b, -1).long()
    if p.numel() and bool(((p < 0) | (p >= k) | (t < 0) | (t >= k)).any()):
        raise ValueError("region_dice_per_sample needs internal labels (0 background, 1 NCR, 2 ED, 3 ET)")
    offset = torch.arange(b, device=p.device).unsqueeze(1) * (k * k)
    conf = torch.bincount((p * k + t + offset).reshape(-1), minlength=b * k * k).reshape(b, k, k).double()
    scores = []
    for name in REGION_NAMES:
        r = list(REGIONS[name])
        inter = conf[:, r][:, :, r].sum((1, 2))
        size_p = conf[:, r, :].sum((1, 2))
        size_g = conf[:, :, r].sum((1, 2))
        dice = torch.where(
            size_g > 0, 2.0 * inter / (size_p + size_g).clamp_min(1.0), torch.full_like(inter, float("nan"))
        )
        scores.append(dice)
    return torch.nanmean(torch.stack(scores, 1), dim=1).float()


def _per_sample(output: Any, key: str) -> list[Any] | None:
    """Values of ``key`` per sample from an engine output (a batch dict or a decollated list of dicts)."""
    if isinstance(output, Mapping):
        if key not in output:
            return None
        value = output[key]
        if isinstance(value, torch.Tensor):
            return value.detach().reshape(-1).cpu().tolist()
        return list(value)
    if isinstance(output, Sequence) and output and isinstance(output[0], Mapping):
        if key not in output[0]:
            return None
        values = []
        for item in output:
            v = item[key]
            values.append(v.detach().reshape(-1).cpu().tolist()[0] if isinstance(v, torch.Tensor) else v)
        return values
    return None


class MASStatistics:
    """``eta_k`` and ``theta_k`` (eqs. 7-8) of the model on the real training cases, and the weights they give (eq. 6).

    Args:
        beta: flank width of the weight function (eq. 6), ``> 0``.
        c: widening constant of ``theta`` (eq. 8), ``>= 0``.
    """

    def __init__(self, beta: float = DEFAULT_BETA, c: float = DEFAULT_C) -> None:
        _check_params(0.5, 0.0, float(beta))
        if c < 0:
            raise ValueError(f"MAS c must be >= 0, got {c}")
        self.beta = float(beta)
        self.c = float(c)
        self.eta: float | None = None
        self.theta: float | None = None

    @property
    def ready(self) -> bool:
        """Whether statistics exist (MAS weights are applied from then on)."""
        return self.eta is not None and self.theta is not None

    def update(self, per_case: Mapping[str, float]) -> dict[str, float]:
        """Set ``eta`` (eq. 7) and ``theta`` (eq. 8) from per-case accuracies; ``{}`` (unchanged) when there are none.

        Args:
            per_case: accuracy in ``[0, 1]`` of every real case with tumour, by case id.

        Returns:
            ``eta``, ``theta``, ``real_cases`` (number of cases) and ``theta_degenerate`` (1.0 with fewer than two
            cases: eq. 8 gives ``theta = c``).
        """
        if not per_case:
            return {}
        values = list(per_case.values())
        self.eta, self.theta = mas_eta(values), mas_theta(values, self.c)
        return {
            "eta": self.eta,
            "theta": self.theta,
            "real_cases": float(len(values)),
            "theta_degenerate": float(len(values) < 2),
        }

    def weights(self, dice: torch.Tensor, base: torch.Tensor, apply: torch.Tensor) -> torch.Tensor:
        """Loss weights of the samples of a batch.

        Args:
            dice: ``(B,)`` accuracies (NaN where undefined).
            base: ``(B,)`` fixed weights (1 for real samples, the configured weight for synthetic ones).
            apply: ``(B,)`` bool, the samples MAS weights (synthetic samples subject to MAS).

        Returns:
            ``(B,)`` weights: ``mas_weight(dice)`` where ``apply`` and the accuracy is defined once statistics exist,
            ``base`` elsewhere.
        """
        base = base.to(torch.float32)
        if not self.ready:
            return base
        sel = apply.to(torch.bool) & torch.isfinite(dice)
        if not bool(sel.any()):
            return base
        clean = torch.nan_to_num(dice.to(torch.float32), nan=0.0).clamp(0.0, 1.0)
        w = mas_weight(clean, self.eta, self.theta, self.beta)  # type: ignore[arg-type]
        return torch.where(sel, w.to(base.dtype), base)

    def state_dict(self) -> dict[str, float | None]:
        """``eta`` and ``theta`` (saved in checkpoints for resuming)."""
        return {"eta": self.eta, "theta": self.theta}

    def load_state_dict(self, state: Mapping[str, float | None]) -> None:
        """Restore :meth:`state_dict`."""
        eta, theta = state.get("eta"), state.get("theta")
        self.eta = None if eta is None else float(eta)
        self.theta = None if theta is None else float(theta)


class PerCaseRegionDice(Metric):
    """Ignite metric: the MAS accuracy of every case of an evaluation (hard region Dice, :func:`region_dice_per_sample`).

    Each iteration takes ``(logits, label)`` from the engine's output (``output_transform``) and the case ids from
    ``engine.state.batch[SynthesisKeys.CASE_ID]`` (``case<k>`` when absent). At the end of the run
    ``engine.state.metrics[name]`` holds the mean over the cases and ``engine.state.metric_details[name]`` the
    per-case accuracies ``{case_id: dice}`` (cases without tumour, whose accuracy is undefined, are left out).

    Args:
        output_transform: ``engine.state.output -> (logits (B, C, ...), label (B, 1, ...))``; default: MONAI's
            ``pred`` and ``label`` of an undecollated output.
    """

    def __init__(self, output_transform: Callable[[Any], Any] = from_engine([CommonKeys.PRED, CommonKeys.LABEL])):
        self._per_case: dict[str, float] = {}
        super().__init__(output_transform=output_transform)

    def reset(self) -> None:
        """Forget the cases of the previous run."""
        self._per_case = {}

    def update(self, output: Any) -> None:
        """Add the cases of one batch: ``output`` is ``(logits, label, case_ids)``."""
        logits, label, cases = output
        dice = region_dice_per_sample(hard_prediction(logits), label[:, 0])
        cases = cases or [f"case{len(self._per_case) + i}" for i in range(len(dice))]
        for cid, d in zip(cases, dice.cpu().tolist(), strict=True):
            if math.isfinite(d):
                self._per_case[str(cid)] = float(d)

    def iteration_completed(self, engine: Engine) -> None:
        """Update with the iteration's prediction and label and the batch's case ids."""
        logits, label = self._output_transform(engine.state.output)
        batch = engine.state.batch
        cases = batch.get(SynthesisKeys.CASE_ID) if isinstance(batch, Mapping) else None
        self.update((logits, label, cases))

    def compute(self) -> float:
        """Mean accuracy over the cases (NaN when none had tumour)."""
        return float(np.mean(list(self._per_case.values()))) if self._per_case else float("nan")

    def completed(self, engine: Engine, name: str) -> None:
        """Store the mean in ``engine.state.metrics[name]`` and the per-case values in ``metric_details[name]``."""
        engine.state.metrics[name] = self.compute()
        if not hasattr(engine.state, "metric_details") or engine.state.metric_details is None:
            engine.state.metric_details = {}
        engine.state.metric_details[name] = dict(self._per_case)


def real_case_evaluator(
    network: torch.nn.Module,
    loader: Iterable,
    device: str | torch.device = "cpu",
    inferer: Inferer | Callable[..., torch.Tensor] | None = None,
    amp: bool = False,
) -> SupervisedEvaluator:
    """MONAI ``SupervisedEvaluator`` of MAS's pass over the real training cases (eval mode, no gradients).

    Its :class:`PerCaseRegionDice` metric ``REAL_DICE_METRIC`` leaves the per-case accuracies in
    ``evaluator.state.metric_details[REAL_DICE_METRIC]``. It logs on its own logger
    (``custom_components.handlers.mas.real_cases``, warnings only), not on the validator's.

    Args:
        network: the trained network (the trainer's).
        loader: the real training cases (``image``, ``label`` (B, 1, ...), ``case_id``): whole volumes or crops.
        device: device of the pass.
        inferer: e.g. ``SlidingWindowInferer`` for whole volumes, or any ``(inputs, network) -> logits`` callable;
            default: ``SimpleInferer`` (call the network).
        amp: mixed precision (``torch.autocast("cuda")``, MONAI's evaluator option: effective on CUDA only).
    """
    evaluator = SupervisedEvaluator(
        device=torch.device(device),
        val_data_loader=loader,
        # MONAI takes a DataLoader's length itself; any other iterable must give it
        epoch_length=None if isinstance(loader, DataLoader) else len(loader),  # type: ignore[arg-type]
        network=network,
        inferer=inferer or SimpleInferer(),
        key_val_metric={REAL_DICE_METRIC: PerCaseRegionDice()},
        amp=amp,
        decollate=False,
    )
    evaluator.logger = logging.getLogger(f"{__name__}.real_cases")
    evaluator.logger.setLevel(logging.WARNING)
    return evaluator


class MASHandler:
    """Ignite handler wiring MAS to the trainer: statistics from the real-case evaluator, weights, per-epoch log.

    ``eta_k`` and ``theta_k`` (a :class:`MASStatistics`) are the mean and half range (+ ``c``) of the model's accuracy
    on the real training cases "after epoch k" (eqs. 7-8). With an ``evaluator`` (:func:`real_case_evaluator`, the
    bundle's default) they come from its per-case accuracies (eval mode, no gradients; whole volumes or
    tumour-centred crops):

    * at the end of every epoch ``k >= start_epoch`` (the statistics used by epoch ``k + 1``, the first phase-2
      epoch included when phase 1 and phase 2 run in one job), or of every ``eval_interval``-th one, the last
      statistics being reused in between;
    * at the start of an epoch ``k > start_epoch`` when no statistics exist yet: a run that starts in phase 2
      (``init_checkpoint`` with ``phase2_start_epoch 0``) or resumes from a checkpoint without MAS state. The
      statistics saved in a checkpoint are those of the model it holds, so a resumed run continues with them.

    So MAS weights every synthetic sample from the first one on. Without an evaluator the statistics come
    from the real samples of the training forward passes of epoch ``k`` (free, but one random crop per case and
    training mode) and the first epoch of a run keeps the fixed weights.

    It observes the trainer's per-sample outputs (the :class:`~custom_components.data.SynthesisKeys` entries
    ``SAMPLE_DICE``, ``SAMPLE_WEIGHT``, ``SYNTHETIC``, ``MAS``, ``CASE_ID``, as written by
    :class:`custom_components.engines.seg_trainer.SegmentationTrainer`) and writes per epoch (after gathering the
    samples of every rank under ``torchrun``) into ``engine.state.metrics`` (``StatsHandler`` prints them,
    ``MLFlowHandler`` records them): ``mas_eta``, ``mas_theta``, ``mas_real_cases`` (statistics for the next epoch),
    ``mas_eta_applied``/``mas_theta_applied`` (used in this epoch), ``mas_theta_degenerate`` (1 when fewer than two
    real cases had tumour: eq. 8 gives ``theta = c``), ``mas_eval_seconds`` (time of the evaluation pass), and over
    the epoch's synthetic samples their number, mean/min/max weight and the fractions weighted 0
    (``mas_discarded_fraction``), 1 (``mas_full_fraction``) and in between (``mas_partial_fraction``). With
    ``log_dir`` it also writes ``epoch_<NNNN>.csv`` (four-digit epoch) per epoch and ``summary.json`` (one entry
    per computation of the statistics and per epoch, and ``degenerate``), which the pipeline's report reads.

    Args:
        beta: flank width of the weight function (eq. 6), ``> 0``.
        c: widening constant of ``theta`` (eq. 8).
        enabled: when False, statistics are still computed and logged but :meth:`weights` returns the
            fixed weights (the "synthetic data without MAS" arm of the ablation).
        evaluator: the pass over the real training cases (:func:`real_case_evaluator`); ``None``: statistics from
            the training forward passes.
        start_epoch: number of epochs before MAS weights are needed (the bundle's ``phase2_start_epoch``); the
            evaluation pass runs from the end of this epoch on (never during phase 1).
        eval_interval: the evaluator runs after epochs ``start_epoch``, ``start_epoch + eval_interval``, ...
            only, and the last statistics are reused in between (1: after every epoch, the paper's definition;
            ``N`` divides the cost of the statistics by ``N``). A missing-statistics start evaluation still runs.
        log_dir: optional folder for one CSV per epoch (``epoch_0001.csv``: case id, source (``train`` for the
            training samples, ``real_eval`` for the evaluation pass), synthetic flag, MAS flag, accuracy,
            weight) and ``summary.json``, written atomically.
        metric_prefix: prefix of the entries written to ``engine.state.metrics``.
    """

    def __init__(
        self,
        beta: float = DEFAULT_BETA,
        c: float = DEFAULT_C,
        enabled: bool = True,
        evaluator: SupervisedEvaluator | None = None,
        start_epoch: int = 0,
        eval_interval: int = 1,
        log_dir: str | os.PathLike | None = None,
        metric_prefix: str = "mas_",
    ) -> None:
        if start_epoch < 0:
            raise ValueError(f"MAS start_epoch must be >= 0, got {start_epoch}")
        if eval_interval < 1:
            raise ValueError(f"MAS eval_interval must be >= 1, got {eval_interval}")
        self.eval_interval = int(eval_interval)
        self.stats = MASStatistics(beta, c)
        self.enabled = bool(enabled)
        self.evaluator = evaluator
        self.start_epoch = int(start_epoch)
        self.log_dir = Path(log_dir) if log_dir else None
        self.prefix = metric_prefix
        self.logger = logging.getLogger(__name__)
        self.history: list[dict[str, Any]] = []
        self._real: dict[str, list[float]] = defaultdict(list)
        self._records: list[tuple[str, bool, bool, float, float]] = []
        self._eval: dict[str, float] = {}
        self._eval_seconds = 0.0
        self._started_stats: dict[str, float] = {}

    # ------------------------------------------------------------------ statistics and weights
    @property
    def beta(self) -> float:
        """Flank width of the weight function."""
        return self.stats.beta

    @property
    def c(self) -> float:
        """Widening constant of ``theta``."""
        return self.stats.c

    @property
    def eta(self) -> float | None:
        """``eta`` of the statistics in use (``None`` before the first computation)."""
        return self.stats.eta

    @property
    def theta(self) -> float | None:
        """``theta`` of the statistics in use (``None`` before the first computation)."""
        return self.stats.theta

    @property
    def ready(self) -> bool:
        """Whether statistics exist (MAS weights are applied from then on)."""
        return self.stats.ready

    def weights(self, dice: torch.Tensor, base: torch.Tensor, apply: torch.Tensor) -> torch.Tensor:
        """Loss weights of a batch's samples: :meth:`MASStatistics.weights` when enabled, else ``base`` (as float32).

        Args:
            dice: ``(B,)`` accuracies (NaN where undefined).
            base: ``(B,)`` fixed weights.
            apply: ``(B,)`` bool, the samples MAS weights.
        """
        return self.stats.weights(dice, base, apply) if self.enabled else base.to(torch.float32)

    # ------------------------------------------------------------------ ignite
    def attach(self, engine: Engine) -> None:
        """Register the handler's callbacks on ``engine`` (attach it before ``StatsHandler`` / ``MLFlowHandler``)."""
        engine.add_event_handler(Events.EPOCH_STARTED, self.epoch_started)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.iteration_completed)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.epoch_completed)

    def epoch_started(self, engine: Engine) -> None:
        """Reset the epoch's accumulators; evaluate the model when MAS weights are needed and none exist yet."""
        self._real = defaultdict(list)
        self._records = []
        self._eval, self._eval_seconds, self._started_stats = {}, 0.0, {}
        if self.evaluator is not None and engine.state.epoch > self.start_epoch and not self.ready:
            self._eval, self._eval_seconds = self.evaluate(engine.state.epoch - 1)
            self._started_stats = self._set_statistics(self._eval, engine.state.epoch - 1, "start")

    def iteration_completed(self, engine: Engine) -> None:
        """Record the accuracy of every real sample and the weight of every sample of the iteration."""
        output = engine.state.output
        dice = _per_sample(output, SynthesisKeys.SAMPLE_DICE)
        if dice is None:
            return
        n = len(dice)
        synthetic = _per_sample(output, SynthesisKeys.SYNTHETIC) or [False] * n
        apply = _per_sample(output, SynthesisKeys.MAS) or list(synthetic)
        weight = _per_sample(output, SynthesisKeys.SAMPLE_WEIGHT) or [1.0] * n
        cases = _per_sample(output, SynthesisKeys.CASE_ID) or [f"sample{engine.state.iteration}_{i}" for i in range(n)]
        for cid, d, syn, mas, w in zip(cases, dice, synthetic, apply, weight, strict=True):
            d, syn = float(d), bool(syn)
            if not syn and math.isfinite(d):
                self._real[str(cid)].append(d)
            self._records.append((str(cid), syn, bool(mas), d, float(w)))

    def epoch_completed(self, engine: Engine) -> None:
        """Gather the epoch's samples, compute ``eta_k`` and ``theta_k`` for epoch k+1, log the epoch."""
        epoch = engine.state.epoch
        applied = (self.eta, self.theta)
        # under torchrun every rank saw part of the data: combine the ranks' samples (identity in one process)
        self._records = [r for part in idist.all_gather(self._records) for r in part]
        metrics: dict[str, float] = dict(self._started_stats)
        metrics.update(self._end_of_epoch_statistics(epoch))
        if self._started_stats:
            applied = (self._started_stats[f"{self.prefix}eta"], self._started_stats[f"{self.prefix}theta"])
        if applied[0] is not None:
            metrics[f"{self.prefix}eta_applied"] = float(applied[0])
            metrics[f"{self.prefix}theta_applied"] = float(applied[1])
        metrics.update(self._synthetic_metrics())
        engine.state.metrics.update(metrics)
        if metrics:
            self.logger.info("epoch %d MAS: %s", epoch, ", ".join(f"{k}={v:.4g}" for k, v in metrics.items()))
        self.history.append({"epoch": epoch, **{k[len(self.prefix) :]: v for k, v in metrics.items()}})
        if self.log_dir is not None and idist.get_rank() == 0:
            self._write_log(epoch)

    # ------------------------------------------------------------------ the steps of an epoch's end
    def _end_of_epoch_statistics(self, epoch: int) -> dict[str, float]:
        """The statistics after ``epoch`` (metrics entries): from the evaluator, or from the training samples."""
        if self.evaluator is None:
            real: dict[str, list[float]] = defaultdict(list)
            for per_rank in idist.all_gather(dict(self._real)):
                for cid, values in per_rank.items():
                    real[str(cid)].extend(float(v) for v in values)
            per_case = {cid: float(np.mean(v)) for cid, v in real.items() if v}
            return self._set_statistics(per_case, epoch, "end") if per_case else {}
        metrics: dict[str, float] = {}
        seconds = 0.0
        if self.evaluates_after(epoch):
            self._eval, seconds = self.evaluate(epoch)
            metrics.update(self._set_statistics(self._eval, epoch, "end"))
        metrics[f"{self.prefix}eval_seconds"] = self._eval_seconds + seconds
        return metrics

    def evaluates_after(self, epoch: int) -> bool:
        """Whether the evaluator runs at the end of ``epoch`` (every ``eval_interval``-th epoch from ``start_epoch``).

        Args:
            epoch: the trainer's epoch (1-based).
        """
        return epoch >= self.start_epoch and (epoch - self.start_epoch) % self.eval_interval == 0

    def _synthetic_metrics(self) -> dict[str, float]:
        """Number, weights and accuracy of the epoch's synthetic samples (metrics entries; ``{}`` without any)."""
        synth = [r for r in self._records if r[1]]
        if not synth:
            return {}
        w = np.asarray([r[4] for r in synth], dtype=np.float64)
        d = np.asarray([r[3] for r in synth], dtype=np.float64)
        p = self.prefix
        metrics = {
            f"{p}synthetic_samples": float(len(synth)),
            f"{p}weight_mean": float(w.mean()),
            f"{p}weight_min": float(w.min()),
            f"{p}weight_max": float(w.max()),
            f"{p}discarded_fraction": float((w == 0).mean()),
            f"{p}full_fraction": float((w == 1).mean()),
            f"{p}partial_fraction": float(((w > 0) & (w < 1)).mean()),
        }
        if np.isfinite(d).any():
            metrics[f"{p}synthetic_dice"] = float(np.nanmean(d))
        return metrics

    def _set_statistics(self, per_case: Mapping[str, float], after_epoch: int, when: str) -> dict[str, float]:
        """Eqs. 7-8 over per-case accuracies (metrics entries); warns when fewer than two cases make ``theta = c``."""
        stats = self.stats.update(per_case)
        if not stats:
            self.logger.warning(
                "MAS after epoch %d: no real training case with tumour was evaluated; eta/theta unchanged",
                after_epoch,
            )
            return {}
        # the statistics weight samples from epoch start_epoch + 1 on, when MAS is enabled
        used = self.enabled and after_epoch >= self.start_epoch
        if stats["theta_degenerate"] and used:
            self.logger.warning(
                "MAS after epoch %d: only %d real case(s) with tumour, so eq. 8 degenerates to theta = c = %g: "
                "the weight-1 plateau has width 2c around eta = %.4f and almost every synthetic sample is weighted "
                "by the quadratic flanks (train with at least two real cases for the paper's behaviour)",
                after_epoch,
                int(stats["real_cases"]),
                self.c,
                self.eta,
            )
        self.history.append({"after_epoch": after_epoch, "when": when, "used": used, **stats})
        return {f"{self.prefix}{k}": v for k, v in stats.items()}

    @property
    def degenerate(self) -> bool:
        """Whether eq. 8 degenerated (fewer than two real cases) in a computation whose statistics weighted samples."""
        return any(h.get("theta_degenerate") and h.get("used") for h in self.history if "after_epoch" in h)

    def evaluate(self, after_epoch: int = 1) -> tuple[dict[str, float], float]:
        """Run the evaluator over the real cases; their accuracies ``{case_id: dice}`` and the seconds it took.

        Args:
            after_epoch: the trainer's epoch the model has completed (the evaluator's global epoch, at least 1).
        """
        if self.evaluator is None:
            raise RuntimeError("MASHandler.evaluate needs an evaluator")
        start = time.perf_counter()
        self.evaluator.run(max(int(after_epoch), 1))
        per_case = dict(self.evaluator.state.metric_details[REAL_DICE_METRIC])
        return per_case, time.perf_counter() - start

    def _write_log(self, epoch: int) -> None:
        lines = ["case_id,source,synthetic,mas,dice,weight"]
        lines += [f"{c},train,{int(s)},{int(m)},{d:.6f},{w:.6f}" for c, s, m, d, w in self._records]
        lines += [f"{c},real_eval,0,0,{d:.6f},1.000000" for c, d in self._eval.items()]
        atomic_write_text(self.log_dir / f"epoch_{epoch:04d}.csv", "\n".join(lines) + "\n")  # type: ignore[operator]
        summary = {"beta": self.beta, "c": self.c, "enabled": self.enabled, "degenerate": self.degenerate}
        summary["history"] = self.history
        atomic_write_text(self.log_dir / "summary.json", json.dumps(summary, indent=1) + "\n")  # type: ignore[operator]

    # ------------------------------------------------------------------ checkpointing
    def state_dict(self) -> dict[str, float | None]:
        """The statistics carried to the next epoch (saved in checkpoints for resuming)."""
        return self.stats.state_dict()

    def load_state_dict(self, state: Mapping[str, float | None]) -> None:
        """Restore :meth:`state_dict`."""
        self.stats.load_state_dict(state)
