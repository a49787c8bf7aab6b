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
  With a ``real_loader`` (the bundle's default) the model is evaluated (eval mode, no gradients) on every real
  training case at the end of every phase-2 epoch and, when a run starts in phase 2 without statistics, before
  its first epoch, so the weights of epoch ``k + 1`` use the model after epoch ``k`` and MAS weights the first
  synthetic sample already. Without a loader, the statistics come from the real samples of the epoch's training
  forward passes (no extra cost, lagging one epoch; the first epoch keeps the fixed weights).
* **Fewer than two real cases**: eq. 8 gives ``theta = c`` (a plateau of width ``2c``); the handler warns in
  the log and records ``theta_degenerate`` so the report says so.
* **Borders**: for ``L`` in ``[0, 1]`` the quadratic branch covers the open flanks
  ``(eta - theta - beta, eta - theta)`` and ``(eta + theta, eta + theta + beta)``. When a discard point
  lies outside ``[0, 1]`` (``eta - theta - beta < 0`` or ``eta + theta + beta > 1``), the paper's
  ``max(0, .)`` / ``min(., 1)`` only clip the flank to the domain of a Dice score and the discard
  point is never reached, so a Dice of exactly 0 (or 1) takes the parabola's value there, keeping
  ``w`` continuous on ``[0, 1]``. At a discard point inside ``[0, 1]`` the weight is exactly 0.
* ``beta`` (the flank width, left open by the paper) defaults to 0.1 Dice.
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

import numpy as np
import torch
from ignite.engine import Engine, Events

from custom_components.data.atomic import atomic_write_text
from custom_components.data.labels import REGIONS
from custom_components.distributed import all_gather_objects, get_rank, merge_case_values

__all__ = [
    "DEFAULT_BETA",
    "DEFAULT_C",
    "MASHandler",
    "hard_prediction",
    "mas_eta",
    "mas_theta",
    "mas_weight",
    "region_dice_per_sample",
]

DEFAULT_BETA = 0.1
DEFAULT_C = 2e-5
REGION_NAMES: tuple[str, ...] = ("ET", "TC", "WT")

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


class MASHandler:
    """Ignite handler computing MAS statistics and giving synthetic samples their weights.

    ``eta_k`` and ``theta_k`` are the mean and half range (+ ``c``) of the model's accuracy on the real training
    cases "after epoch k" (eqs. 7-8). With ``real_loader`` (the bundle's default) they come from an evaluation of
    the model (eval mode, no gradients) over the real training cases, whole volumes or tumour-centred crops:

    * at the end of every epoch ``k >= start_epoch`` (the statistics used by epoch ``k + 1``, the first phase-2
      epoch included when phase 1 and phase 2 run in one job);
    * at the start of an epoch ``k > start_epoch`` when no statistics exist yet: a run that starts in phase 2
      (``init_checkpoint`` with ``phase2_start_epoch 0``) or resumes from a checkpoint without MAS state. The
      statistics saved in a checkpoint are those of the model it holds, so a resumed run continues with them.

    So MAS weights every synthetic sample from the first one on. Without ``real_loader`` the statistics come
    from the real samples of the training forward passes of epoch ``k`` (free, but one random crop per case and
    training mode) and the first epoch of a run keeps the fixed weights.

    It observes the trainer's per-sample outputs (``dice_key``, ``weight_key``, ``synthetic_key``, ``mas_key``,
    ``case_key``, as written by :class:`custom_components.engines.seg_trainer.SegmentationTrainer`) and writes
    per epoch (after gathering the samples of every rank under ``torchrun``) into ``engine.state.metrics``
    (``StatsHandler`` prints them, ``MLFlowHandler`` records them): ``mas_eta``, ``mas_theta``,
    ``mas_real_cases`` (statistics for the next epoch), ``mas_eta_applied``/``mas_theta_applied`` (used in this
    epoch), ``mas_theta_degenerate`` (1 when fewer than two real cases had tumour: eq. 8 gives ``theta = c``),
    ``mas_eval_seconds`` (time of the evaluation pass), and over the epoch's synthetic samples their number,
    mean/min/max weight and the fractions weighted 0 (``mas_discarded_fraction``), 1 (``mas_full_fraction``) and
    in between (``mas_partial_fraction``). With ``log_dir`` it also writes ``epoch_<NNNN>.csv`` (four-digit epoch) per epoch and
    ``summary.json`` (one entry per computation of the statistics and per epoch, and ``degenerate``), which
    the pipeline's report reads.

    Args:
        beta: flank width of the weight function (eq. 6), ``> 0``.
        c: widening constant of ``theta`` (eq. 8).
        enabled: when False, statistics are still computed and logged but :meth:`weights` returns the
            fixed weights (the "synthetic data without MAS" arm of the ablation).
        real_loader: loader over the real training cases (validation preprocessing: whole volumes or
            tumour-centred crops, ``batch_size`` any); ``None``: statistics from the training forward passes.
        real_inferer: inferer of the evaluation pass (e.g. ``SlidingWindowInferer``); default: call the network.
        start_epoch: number of epochs before MAS weights are needed (the bundle's ``phase2_start_epoch``); the
            evaluation pass runs from the end of this epoch on (never during phase 1).
        log_dir: optional folder for one CSV per epoch (``epoch_0001.csv``: case id, source (``train`` for the
            training samples, ``real_eval`` for the evaluation pass), synthetic flag, MAS flag, accuracy,
            weight) and ``summary.json``, written atomically.
        dice_key, weight_key, synthetic_key, mas_key, case_key: keys of the trainer's per-sample outputs.
        image_key, label_key: keys of the evaluation batches.
        metric_prefix: prefix of the entries written to ``engine.state.metrics``.
    """

    def __init__(
        self,
        beta: float = DEFAULT_BETA,
        c: float = DEFAULT_C,
        enabled: bool = True,
        real_loader: Iterable | None = None,
        real_inferer: Callable[..., torch.Tensor] | None = None,
        start_epoch: int = 0,
        log_dir: str | os.PathLike | None = None,
        dice_key: str = "sample_dice",
        weight_key: str = "sample_weight",
        synthetic_key: str = "is_synthetic",
        mas_key: str = "mas",
        case_key: str = "case_id",
        image_key: str = "image",
        label_key: str = "label",
        metric_prefix: str = "mas_",
    ) -> None:
        _check_params(0.5, 0.0, float(beta))
        if c < 0:
            raise ValueError(f"MAS c must be >= 0, got {c}")
        if start_epoch < 0:
            raise ValueError(f"MAS start_epoch must be >= 0, got {start_epoch}")
        self.beta = float(beta)
        self.c = float(c)
        self.enabled = bool(enabled)
        self.real_loader = real_loader
        self.real_inferer = real_inferer
        self.start_epoch = int(start_epoch)
        self.log_dir = Path(log_dir) if log_dir else None
        self.dice_key, self.weight_key = dice_key, weight_key
        self.synthetic_key, self.mas_key, self.case_key = synthetic_key, mas_key, case_key
        self.image_key, self.label_key = image_key, label_key
        self.prefix = metric_prefix
        self.eta: float | None = None
        self.theta: float | None = None
        self.logger = logging.getLogger(__name__)
        self.history: list[dict[str, Any]] = []
        self._real: dict[str, list[float]] = defaultdict(list)
        self._records: list[tuple[str, bool, bool, float, float]] = []
        self._eval: dict[str, float] = {}
        self._eval_seconds = 0.0
        self._started_stats: dict[str, float] = {}

    # ------------------------------------------------------------------ weights
    @property
    def ready(self) -> bool:
        """Whether statistics of a previous epoch exist (MAS weights are applied from then on)."""
        return self.eta is not None and self.theta is not None

    def weights(self, dice: torch.Tensor, base: torch.Tensor, apply: torch.Tensor) -> torch.Tensor:
        """Loss weights of the samples of a batch.

        Args:
            dice: ``(B,)`` accuracies (NaN where undefined).
            base: ``(B,)`` fixed weights (1 for real samples, the configured weight for synthetic ones).
            apply: ``(B,)`` bool, the samples MAS weights (synthetic samples subject to MAS).

        Returns:
            ``(B,)`` weights: ``mas_weight(dice)`` where ``apply`` and the accuracy is defined and the handler
            is enabled and ready, ``base`` elsewhere.
        """
        base = base.to(torch.float32)
        if not (self.enabled and self.ready):
            return base
        sel = apply.to(torch.bool) & torch.isfinite(dice)
        if not bool(sel.any()):
            return base
        clean = torch.nan_to_num(dice.to(torch.float32), nan=0.0).clamp(0.0, 1.0)
        w = mas_weight(clean, self.eta, self.theta, self.beta)
        return torch.where(sel, w.to(base.dtype), base)

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
        if self.real_loader is not None and engine.state.epoch > self.start_epoch and not self.ready:
            per_case, seconds = self.evaluate(engine)
            self._eval, self._eval_seconds = per_case, seconds
            self._started_stats = self._set_statistics(per_case, engine.state.epoch - 1, "start")

    def iteration_completed(self, engine: Engine) -> None:
        """Record the accuracy of every real sample and the weight of every sample of the iteration."""
        output = engine.state.output
        dice = _per_sample(output, self.dice_key)
        if dice is None:
            return
        n = len(dice)
        synthetic = _per_sample(output, self.synthetic_key) or [False] * n
        apply = _per_sample(output, self.mas_key) or list(synthetic)
        weight = _per_sample(output, self.weight_key) or [1.0] * n
        cases = _per_sample(output, self.case_key) or [f"sample{engine.state.iteration}_{i}" for i in range(n)]
        for cid, d, syn, mas, w in zip(cases, dice, synthetic, apply, weight, strict=True):
            d, syn = float(d), bool(syn)
            if not syn and math.isfinite(d):
                self._real[str(cid)].append(d)
            self._records.append((str(cid), syn, bool(mas), d, float(w)))

    def _set_statistics(self, per_case: Mapping[str, float], after_epoch: int, when: str) -> dict[str, float]:
        """Eqs. 7-8 over per-case accuracies; warns when fewer than two cases make ``theta = c``."""
        if not per_case:
            self.logger.warning(
                "MAS after epoch %d: no real training case with tumour was evaluated; eta/theta unchanged",
                after_epoch,
            )
            return {}
        values = list(per_case.values())
        self.eta, self.theta = mas_eta(values), mas_theta(values, self.c)
        degenerate = len(values) < 2
        # the statistics weight samples from epoch start_epoch + 1 on, when MAS is enabled
        used = self.enabled and after_epoch >= self.start_epoch
        if degenerate and used:
            self.logger.warning(
                "MAS after epoch %d: only %d real case(s) with tumour, so eq. 8 degenerates to theta = c = %g: "
                "the weight-1 plateau has width 2c around eta = %.4f and almost every synthetic sample is weighted "
                "by the quadratic flanks (train with at least two real cases for the paper's behaviour)",
                after_epoch,
                len(values),
                self.c,
                self.eta,
            )
        stats = {
            f"{self.prefix}eta": self.eta,
            f"{self.prefix}theta": self.theta,
            f"{self.prefix}real_cases": float(len(values)),
            f"{self.prefix}theta_degenerate": float(degenerate),
        }
        entry = {"after_epoch": after_epoch, "when": when, "used": used}
        self.history.append({**entry, **{k[len(self.prefix) :]: v for k, v in stats.items()}})
        return stats

    def epoch_completed(self, engine: Engine) -> None:
        """Log the epoch's weights; compute ``eta_k`` and ``theta_k`` for epoch k+1 and log them."""
        applied = (self.eta, self.theta)
        # under torchrun every rank saw part of the data: combine the ranks' samples (identity in one process)
        self._records = [r for part in all_gather_objects(self._records) for r in part]
        epoch = engine.state.epoch
        metrics: dict[str, float] = dict(self._started_stats)
        eval_seconds = self._eval_seconds
        if self.real_loader is not None:
            if epoch >= self.start_epoch:
                per_case, seconds = self.evaluate(engine)
                self._eval, eval_seconds = per_case, eval_seconds + seconds
                metrics.update(self._set_statistics(per_case, epoch, "end"))
        else:
            real = merge_case_values(all_gather_objects(dict(self._real)))
            per_case = {cid: float(np.mean(v)) for cid, v in real.items() if v}
            metrics.update(self._set_statistics(per_case, epoch, "end") if per_case else {})
        if self.real_loader is not None:
            metrics[f"{self.prefix}eval_seconds"] = eval_seconds
        if self._started_stats:
            applied = (self._started_stats[f"{self.prefix}eta"], self._started_stats[f"{self.prefix}theta"])
        if applied[0] is not None:
            metrics[f"{self.prefix}eta_applied"] = float(applied[0])
            metrics[f"{self.prefix}theta_applied"] = float(applied[1])
        synth = [r for r in self._records if r[1]]
        if synth:
            w = np.asarray([r[4] for r in synth], dtype=np.float64)
            d = np.asarray([r[3] for r in synth], dtype=np.float64)
            metrics[f"{self.prefix}synthetic_samples"] = float(len(synth))
            metrics[f"{self.prefix}weight_mean"] = float(w.mean())
            metrics[f"{self.prefix}weight_min"] = float(w.min())
            metrics[f"{self.prefix}weight_max"] = float(w.max())
            metrics[f"{self.prefix}discarded_fraction"] = float((w == 0).mean())
            metrics[f"{self.prefix}full_fraction"] = float((w == 1).mean())
            metrics[f"{self.prefix}partial_fraction"] = float(((w > 0) & (w < 1)).mean())
            if np.isfinite(d).any():
                metrics[f"{self.prefix}synthetic_dice"] = float(np.nanmean(d))
        engine.state.metrics.update(metrics)
        if metrics:
            self.logger.info("epoch %d MAS: %s", epoch, ", ".join(f"{k}={v:.4g}" for k, v in metrics.items()))
        self.history.append({"epoch": epoch, **{k[len(self.prefix) :]: v for k, v in metrics.items()}})
        if self.log_dir is not None and get_rank() == 0:
            self._write_log(epoch)

    @property
    def degenerate(self) -> bool:
        """Whether eq. 8 degenerated (fewer than two real cases) in a computation whose statistics weighted samples."""
        return any(h.get("theta_degenerate") and h.get("used") for h in self.history if "after_epoch" in h)

    def evaluate(self, engine: Engine) -> tuple[dict[str, float], float]:
        """Accuracy of the model (eval mode, no gradients) on every real case of ``real_loader``, and its seconds."""
        network: torch.nn.Module = engine.network  # type: ignore[attr-defined]
        device = getattr(engine.state, "device", None) or next(network.parameters()).device
        was_training = network.training
        start = time.perf_counter()
        network.eval()
        per_case: dict[str, float] = {}
        try:
            with torch.no_grad():
                for batch in self.real_loader:  # type: ignore[union-attr]
                    image = torch.as_tensor(batch[self.image_key]).to(device)
                    label = torch.as_tensor(batch[self.label_key]).to(device)
                    logits = self.real_inferer(image, network) if self.real_inferer else network(image)
                    dice = region_dice_per_sample(hard_prediction(logits), label[:, 0])
                    cases = batch.get(self.case_key) or [f"case{len(per_case) + i}" for i in range(len(dice))]
                    for cid, d in zip(cases, dice.cpu().tolist(), strict=True):
                        if math.isfinite(d):
                            per_case[str(cid)] = float(d)
        finally:
            network.train(was_training)
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
        return {"eta": self.eta, "theta": self.theta}

    def load_state_dict(self, state: Mapping[str, float | None]) -> None:
        """Restore :meth:`state_dict`."""
        eta, theta = state.get("eta"), state.get("theta")
        self.eta = None if eta is None else float(eta)
        self.theta = None if theta is None else float(theta)
