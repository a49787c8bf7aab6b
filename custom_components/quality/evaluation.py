"""BraTS region metrics per case (Dice, HD95) and an Ignite handler writing them as CSV and JSON.

HD95 is computed as the BraTS evaluation does (``hd95_mode="brats"``, the default; the ``hd95`` of
medpy that the BraTS toolkits call): the surface voxels of prediction and reference (each mask minus its
binary erosion), the distance in mm (voxel spacing of the image) from every surface voxel of one to the
nearest surface voxel of the other, in both directions, and the 95th percentile of the two directions'
distances pooled together. ``hd95_mode="monai"`` gives MONAI's ``compute_hausdorff_distance(percentile=95)``
instead: the larger of the two directed 95th percentiles, which is never smaller than the pooled one
(it weighs a few far-off false positives as much as a whole missed boundary).

Conventions for empty regions (those of the BraTS challenge): when a region is absent from both the
ground truth and the prediction, Dice is 1 and HD95 is 0; when it is absent from exactly one of them,
Dice is 0 and HD95 is ``BRATS_HD95_EMPTY`` = 373.13 mm, the diagonal of the BraTS 240x240x155 1-mm grid
(sqrt(240^2 + 240^2 + 155^2) = 373.1287) that the BraTS toolkits return, so values stay comparable with
published BraTS numbers whatever the image size (``hd95_empty=None`` uses this image's own diagonal
instead). Every case thus has finite values and the means are over all cases.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ignite.engine import Engine, Events
from monai.data import MetaTensor
from monai.metrics import compute_hausdorff_distance
from monai.metrics.utils import get_mask_edges, get_surface_distance

from custom_components.data.atomic import atomic_write_text
from custom_components.data.datalist import case_id_of, source_name
from custom_components.data.labels import REGION_NAMES, REGIONS

__all__ = [
    "BRATS_HD95_EMPTY",
    "HD95_MODES",
    "RegionSelector",
    "SegmentationMetricsWriter",
    "hd95",
    "region_metrics",
]

# HD95 (mm) when a region is in exactly one of prediction and reference: the BraTS toolkits' value, the
# diagonal of the 240x240x155 1-mm BraTS grid
BRATS_HD95_EMPTY = 373.13
HD95_MODES: tuple[str, ...] = ("brats", "monai")


def _spacing(img: Any, ndim: int) -> tuple[float, ...]:
    if isinstance(img, MetaTensor):
        return tuple(float(s) for s in img.pixdim[:ndim])
    return (1.0,) * ndim


def hd95(
    pred: np.ndarray | torch.Tensor, ref: np.ndarray | torch.Tensor, spacing: Sequence[float], mode: str = "brats"
) -> float:
    """95th-percentile Hausdorff distance (mm) between two non-empty binary masks.

    Args:
        pred: binary mask ``(*spatial)``.
        ref: binary reference mask, same shape.
        spacing: voxel size in mm per axis.
        mode: ``"brats"``: 95th percentile of the surface distances of both directions pooled (BraTS,
            medpy); ``"monai"``: the larger of the two directed 95th percentiles (MONAI's
            ``compute_hausdorff_distance``).

    Raises:
        ValueError: unknown ``mode``, or an empty mask (see the module's conventions for those).
    """
    if mode not in HD95_MODES:
        raise ValueError(f"hd95 mode must be one of {HD95_MODES}, got {mode!r}")
    p = torch.as_tensor(np.asarray(pred) if isinstance(pred, np.ndarray) else pred.detach().cpu()) > 0.5
    g = torch.as_tensor(np.asarray(ref) if isinstance(ref, np.ndarray) else ref.detach().cpu()) > 0.5
    if not bool(p.any()) or not bool(g.any()):
        raise ValueError("hd95 needs two non-empty masks; empty regions follow the BraTS conventions")
    spacing = tuple(float(s) for s in spacing)
    if mode == "monai":
        return float(
            compute_hausdorff_distance(
                p[None, None].float(), g[None, None].float(), include_background=True, percentile=95, spacing=spacing
            ).item()
        )
    edges_pred, edges_ref = get_mask_edges(p.numpy(), g.numpy(), crop=True)
    forward = np.asarray(get_surface_distance(edges_pred, edges_ref, spacing=spacing), dtype=np.float64)
    backward = np.asarray(get_surface_distance(edges_ref, edges_pred, spacing=spacing), dtype=np.float64)
    return float(np.percentile(np.concatenate([forward, backward]), 95))


def region_metrics(
    pred: torch.Tensor | np.ndarray,
    label: torch.Tensor | np.ndarray,
    spacing: Sequence[float] | None = None,
    regions: Sequence[str] = REGION_NAMES,
    hd95_mode: str = "brats",
    hd95_empty: float | None = BRATS_HD95_EMPTY,
) -> dict[str, float]:
    """Dice and HD95 (mm) of every region channel of one case.

    Args:
        pred: binary region channels ``(R, *spatial)`` (ET, TC, WT after ``ConvertToBratsRegions``).
        label: ground-truth region channels, same shape.
        spacing: voxel size in mm (default: the MetaTensor's ``pixdim``, else 1).
        regions: channel names.
        hd95_mode: ``"brats"`` (pooled surface distances, the default) or ``"monai"`` (see :func:`hd95`).
        hd95_empty: HD95 when a region is in exactly one of ``pred`` and ``label``
            (default ``BRATS_HD95_EMPTY``, 373.13 mm); None: the diagonal of this volume in mm.

    Returns:
        ``{"dice_ET": ..., "hd95_ET": ..., ...}``.
    """
    if hd95_mode not in HD95_MODES:
        raise ValueError(f"hd95_mode must be one of {HD95_MODES}, got {hd95_mode!r}")
    if tuple(pred.shape) != tuple(label.shape):
        raise ValueError(f"prediction and label shapes differ: {tuple(pred.shape)} vs {tuple(label.shape)}")
    if pred.shape[0] != len(regions):
        raise ValueError(f"expected {len(regions)} region channels, got {pred.shape[0]}")
    ndim = pred.ndim - 1
    spacing = tuple(float(s) for s in spacing) if spacing is not None else _spacing(label, ndim)
    p = torch.as_tensor(np.asarray(pred) if isinstance(pred, np.ndarray) else pred.detach().cpu()) > 0.5
    g = torch.as_tensor(np.asarray(label) if isinstance(label, np.ndarray) else label.detach().cpu()) > 0.5
    if hd95_empty is None:
        hd95_empty = float(math.sqrt(sum((n * s) ** 2 for n, s in zip(p.shape[1:], spacing, strict=True))))
    out: dict[str, float] = {}
    for k, name in enumerate(regions):
        pk, gk = p[k], g[k]
        np_, ng = int(pk.sum()), int(gk.sum())
        if np_ == 0 and ng == 0:
            dice, hd = 1.0, 0.0
        elif np_ == 0 or ng == 0:
            dice, hd = 0.0, float(hd95_empty)
        else:
            dice = 2.0 * float((pk & gk).sum()) / (np_ + ng)
            hd = hd95(pk, gk, spacing, hd95_mode)
        out[f"dice_{name}"] = dice
        out[f"hd95_{name}"] = hd
    return out


class RegionSelector:
    """Output transform for Ignite metrics that keeps one region channel of ``pred`` and ``label``.

    ``MeanDice(output_transform=RegionSelector(0))`` gives the ET Dice of a validation run.

    Args:
        index: channel index (0 ET, 1 TC, 2 WT).
        pred_key, label_key: keys of the decollated engine output.
    """

    def __init__(self, index: int, pred_key: str = "pred", label_key: str = "label") -> None:
        self.index, self.pred_key, self.label_key = int(index), pred_key, label_key

    def __call__(self, output: Sequence[dict]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        i = self.index
        return [o[self.pred_key][i : i + 1] for o in output], [o[self.label_key][i : i + 1] for o in output]


def _case_ids(engine: Engine, n: int, key: str) -> list[str]:
    batch = engine.state.batch
    ids: list[str] = []
    for i in range(n):
        item = batch[i] if isinstance(batch, list) else None
        cid = item.get(key) if isinstance(item, dict) else None
        if cid is None and isinstance(item, dict):
            img = item.get("image")
            name = source_name(img)
            # the items come from load_datalist and carry case_id; else the project's one id rule
            cid = case_id_of({"image": str(name)}) if name else None
        ids.append(str(cid) if cid is not None else f"case{engine.state.iteration:04d}_{i}")
    return ids


class SegmentationMetricsWriter:
    """Ignite handler: per-case Dice and HD95 of ET, TC, WT, written as CSV and JSON when the epoch completes.

    Custom rather than MONAI's ``MetricsSaver``: that writes CSVs only (not atomically), and the pipeline reads
    the JSON summary written here.

    Attach it to a ``SupervisedEvaluator`` whose postprocessing turns ``pred`` and ``label`` into region
    channels (``AsDiscreted(argmax=True)`` then ``ConvertToBratsRegionsd``). Files, all written atomically:

    * ``<output_dir>/metrics_per_case.csv``: ``case_id, dice_ET, dice_TC, dice_WT, dice_mean, hd95_ET, ...``;
    * ``<output_dir>/metrics_summary.csv``: mean, std, median, min, max of every column;
    * ``<output_dir>/metrics.json``: ``{"n_cases", "mean", "summary", "per_case", "conventions"}``.

    The means are also put in ``engine.state.metrics`` (``eval_dice_ET``, ..., ``eval_hd95_mean``) for
    ``StatsHandler`` / ``MLFlowHandler``.

    Args:
        output_dir: folder for the files.
        pred_key, label_key: keys of the decollated engine output.
        case_key: key of the case id in the decollated batch.
        metric_prefix: prefix of the ``engine.state.metrics`` entries.
        extra: extra JSON-serialisable information stored in ``metrics.json`` (e.g. the model path).
        hd95_mode: ``"brats"`` (pooled surface distances, default) or ``"monai"`` (see :func:`hd95`).
        hd95_empty: HD95 (mm) of a region in exactly one of prediction and label (default 373.13,
            BraTS); None: the volume's diagonal.
    """

    def __init__(
        self,
        output_dir: str | os.PathLike,
        pred_key: str = "pred",
        label_key: str = "label",
        case_key: str = "case_id",
        metric_prefix: str = "eval_",
        extra: dict[str, Any] | None = None,
        hd95_mode: str = "brats",
        hd95_empty: float | None = BRATS_HD95_EMPTY,
    ) -> None:
        if hd95_mode not in HD95_MODES:
            raise ValueError(f"hd95_mode must be one of {HD95_MODES}, got {hd95_mode!r}")
        self.hd95_mode, self.hd95_empty = hd95_mode, hd95_empty
        self.output_dir = Path(output_dir)
        self.pred_key, self.label_key, self.case_key = pred_key, label_key, case_key
        self.prefix = metric_prefix
        self.extra = dict(extra or {})
        self.rows: list[dict[str, Any]] = []
        self.logger = logging.getLogger(__name__)

    @property
    def columns(self) -> list[str]:
        """Metric columns of the per-case table."""
        return [f"dice_{r}" for r in REGION_NAMES] + ["dice_mean"] + [f"hd95_{r}" for r in REGION_NAMES] + ["hd95_mean"]

    def attach(self, engine: Engine) -> None:
        """Register on ``engine``."""
        engine.add_event_handler(Events.EPOCH_STARTED, self.reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.iteration_completed)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.epoch_completed)

    def reset(self, engine: Engine | None = None) -> None:  # noqa: ARG002 - ignite signature
        """Forget the rows of a previous run."""
        self.rows = []

    def iteration_completed(self, engine: Engine) -> None:
        """Compute the metrics of every case of the iteration."""
        output = engine.state.output
        if isinstance(output, dict):
            raise ValueError("SegmentationMetricsWriter needs a decollated engine output (decollate=True)")
        ids = _case_ids(engine, len(output), self.case_key)
        for cid, item in zip(ids, output, strict=True):
            m = region_metrics(
                item[self.pred_key], item[self.label_key], hd95_mode=self.hd95_mode, hd95_empty=self.hd95_empty
            )
            m["dice_mean"] = float(np.mean([m[f"dice_{r}"] for r in REGION_NAMES]))
            m["hd95_mean"] = float(np.mean([m[f"hd95_{r}"] for r in REGION_NAMES]))
            self.rows.append({"case_id": cid, **{c: m[c] for c in self.columns}})

    def summary(self) -> dict[str, dict[str, float]]:
        """Mean, std, median, min and max of every metric column over the cases."""
        table = np.asarray([[r[c] for c in self.columns] for r in self.rows], dtype=np.float64)
        stats: dict[str, Callable[..., np.ndarray]] = {
            "mean": np.mean,
            "std": np.std,
            "median": np.median,
            "min": np.min,
            "max": np.max,
        }
        return {s: {c: float(v) for c, v in zip(self.columns, f(table, axis=0), strict=True)} for s, f in stats.items()}

    def epoch_completed(self, engine: Engine) -> None:
        """Write the files and publish the means."""
        if not self.rows:
            raise RuntimeError("SegmentationMetricsWriter: no case was evaluated")
        summary = self.summary()
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=["case_id", *self.columns], lineterminator="\n")
        writer.writeheader()
        for row in self.rows:
            writer.writerow({k: (f"{v:.6f}" if isinstance(v, float) else v) for k, v in row.items()})
        atomic_write_text(self.output_dir / "metrics_per_case.csv", buf.getvalue())
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(["statistic", *self.columns])
        for name, values in summary.items():
            writer.writerow([name, *(f"{values[c]:.6f}" for c in self.columns)])
        atomic_write_text(self.output_dir / "metrics_summary.csv", buf.getvalue())
        report = {
            "n_cases": len(self.rows),
            "mean": summary["mean"],
            "summary": summary,
            "per_case": self.rows,
            "conventions": {
                "regions": {name: list(REGIONS[name]) for name in REGION_NAMES},
                "empty_both": "dice 1, hd95 0",
                "empty_one": "dice 0, hd95 = "
                + ("volume diagonal (mm)" if self.hd95_empty is None else f"{self.hd95_empty} mm (BraTS)"),
                "hd95_units": "mm",
                "hd95_mode": self.hd95_mode,
                "hd95": "95th percentile of the surface distances of both directions pooled (BraTS, medpy)"
                if self.hd95_mode == "brats"
                else "max of the two directed 95th percentiles (MONAI compute_hausdorff_distance)",
            },
            **self.extra,
        }
        atomic_write_text(self.output_dir / "metrics.json", json.dumps(report, indent=2) + "\n")
        engine.state.metrics.update({f"{self.prefix}{c}": v for c, v in summary["mean"].items()})
        self.logger.info(
            "evaluated %d cases: %s",
            len(self.rows),
            ", ".join(f"{c}={summary['mean'][c]:.4f}" for c in self.columns),
        )
