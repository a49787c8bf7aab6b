"""Checkpoints that survive interruptions: one overwrite rule, the best model kept across resumes, no NaN model.

- :func:`check_output_dir` is the one overwrite rule of every training workflow and of dtss_mas_seg's evaluation and
  inference: a run into a folder that already holds an earlier run's models (metrics, label maps) is refused
  unless it resumes (``resume_checkpoint``, training) or ``overwrite`` is set.
- :class:`SafeCheckpointSaver` is MONAI's ``CheckpointSaver`` that writes atomically, keeps exactly the newest
  ``n_saved`` ``checkpoint_epoch=*.pt`` (also counting those left by the run before a resume; ``None``: every one)
  and never writes non-finite weights
  (neither at an interval, nor as the best model, nor as the final checkpoint MONAI writes when training stops on
  an error). As the best-model saver (``save_key_metric=True, key_metric_filename="model.pt"``, an evaluator
  handler) it writes ``model.pt`` (a plain ``state_dict``) when the key metric beats the best so far; its state
  (Ignite's list of saved scores) goes into the training checkpoint, so a resumed run replaces ``model.pt`` only
  when it beats the best from before the interruption. Ignite's ``DiskSaver`` under it writes on rank 0 only.
- :class:`TrainingGuardError` (a ``SystemExit``) stops training with a message naming what went wrong and the
  last good checkpoint; MONAI's config parser does not wrap it in a traceback.
"""

from __future__ import annotations

import logging
import math
import os
import re
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from ignite.engine import Engine
from monai.handlers import CheckpointSaver

logger = logging.getLogger(__name__)

_EPOCH_FILE = re.compile(r"^(?P<prefix>.*)_epoch=(?P<epoch>\d+)\.pt$")


class TrainingGuardError(SystemExit):
    """Training stopped by a guard (non-finite loss or weights); the message says where and what to resume from.

    A ``SystemExit`` (status 1, message printed last to stderr) so ``python -m monai.bundle run`` ends with it.
    """

    def __init__(self, message: str) -> None:
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        super().__init__(message)


class OutputExistsError(SystemExit):
    """A run would write into a folder holding an earlier run's files; the message names the folder and its first file.

    A ``SystemExit`` (status 1, message printed last to stderr), like ``InputCheckError``: MONAI wraps every
    ``Exception`` of a config expression in a "Failed to evaluate" traceback, so ``python -m monai.bundle run``
    would otherwise end with that instead of the refusal.

    Args:
        folder: the output folder.
        first: its first file (sorted by name).
        count: how many files it holds.
        what: what the files are, for the message (``"models"``: a training run, which can also resume).
    """

    def __init__(self, folder: Path, first: Path, count: int, what: str = "models") -> None:
        self.folder, self.first = folder, first
        others = f" and {count - 1} more" if count > 1 else ""
        resume = "set resume_checkpoint to continue it, " if what == "models" else "set "
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        super().__init__(
            f"{folder}: an earlier run's {what} are there ({first}{others}); {resume}"
            "overwrite=true to replace it, or choose another output folder"
        )


def check_output_dir(
    output_dir: str | os.PathLike,
    resume_checkpoint: str | None = None,
    overwrite: bool = False,
    models: str | os.PathLike | None = "models",
    what: str = "models",
) -> Path:
    """Refuse to write into a folder that already holds an earlier run's files, unless resuming or told to overwrite.

    The one overwrite rule of every bundle (``custom_components.handlers.check_output_dir`` in their configs):
    training (its models), dtss_mas_seg evaluation (its metrics) and inference (its label maps). Call it in
    ``initialize``, before anything is written.

    Args:
        output_dir: the run's output folder.
        resume_checkpoint: checkpoint the run resumes from (then the folder may hold models).
        overwrite: allow replacing the files of an earlier run.
        models: the sub-folder holding the files (None: ``output_dir`` itself).
        what: what the files are, for the message (``"models"``: a training run, which can also resume).

    Returns:
        ``output_dir`` as a Path.

    Raises:
        OutputExistsError: (a ``SystemExit``) naming the folder and its first file.
        FileNotFoundError: when ``resume_checkpoint`` is not a file.
    """
    out = Path(output_dir)
    folder = out / models if models else out
    if resume_checkpoint:
        if not Path(resume_checkpoint).is_file():
            raise FileNotFoundError(f"{resume_checkpoint}: resume checkpoint not found")
        return out
    # files only: a sub-folder may hold another workflow's models (tf_gan's models/pix2pix)
    files = sorted(p for p in folder.iterdir() if p.is_file()) if folder.is_dir() else []
    if not overwrite and files:
        raise OutputExistsError(folder, files[0], len(files), what)
    return out


def _module(obj: Any) -> Any:
    return obj.module if isinstance(obj, torch.nn.parallel.DistributedDataParallel | torch.nn.DataParallel) else obj


def non_finite_tensors(objects: Mapping[str, Any] | torch.nn.Module) -> list[str]:
    """Names of the floating-point parameters / buffers holding NaN or inf in ``objects`` (modules are checked)."""
    items = {"": objects} if isinstance(objects, torch.nn.Module) else dict(objects)
    bad = []
    for name, obj in items.items():
        obj = _module(obj)
        if not isinstance(obj, torch.nn.Module):
            continue
        for key, t in obj.state_dict().items():
            if torch.is_tensor(t) and t.is_floating_point() and not bool(torch.isfinite(t).all()):
                bad.append(f"{name}.{key}" if name else key)
    return bad


def latest_checkpoint(directory: str | os.PathLike | None, pattern: str = "checkpoint*.pt") -> str:
    """The most recently written checkpoint in ``directory`` (``""`` when there is none), where a rerun resumes.

    ``CheckpointSaver`` names interval checkpoints ``checkpoint_epoch=N.pt`` and the final (or on-error) one
    ``checkpoint_final.pt``.

    Args:
        directory: checkpoint folder (None or a missing folder: none).
        pattern: glob of resumable checkpoints.
    """
    if directory is None or not Path(directory).is_dir():
        return ""
    found = sorted(Path(directory).glob(pattern), key=lambda p: (p.stat().st_mtime_ns, p.name))
    return str(found[-1]) if found else ""


class SafeCheckpointSaver(CheckpointSaver):
    """MONAI's ``CheckpointSaver`` that writes atomically, keeps only the newest interval checkpoint, never
    writes NaN weights and puts its best key metric in the training checkpoint.

    It adds what MONAI's cannot: atomic files, pruning across resumes, the non-finite guard, a best model replaced
    without a moment in which it is missing, and ``state_dict`` (MONAI's has only ``load_state_dict``).

    Every file is written to a temporary file and renamed (Ignite's ``DiskSaver(atomic=True)``, which also gives
    the file group/other read permission; MONAI turns atomic writes off), so a kill never leaves a partial file.
    A fixed-name best model (``key_metric_filename``) is replaced by that rename, never deleted first.

    After each interval save, the ``*_epoch=N.pt`` files in ``save_dir`` beyond the newest ``n_saved`` epochs are
    deleted (MONAI's ``n_saved`` only counts the files of the current process, so a resumed run would leave the old
    ones); ``n_saved=None`` keeps every one. Before saving, the
    modules of ``save_dict`` are checked for non-finite weights: an interval save then stops training with
    :class:`TrainingGuardError`, and the final checkpoint MONAI writes when training stops on an error is skipped.

    Args: as for ``monai.handlers.CheckpointSaver``.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.n_saved: int | None = kwargs.get("n_saved")
        for checkpoint in (self._final_checkpoint, self._key_metric_checkpoint, self._interval_checkpoint):
            if checkpoint is not None and hasattr(checkpoint.save_handler, "_atomic"):
                checkpoint.save_handler._atomic = True
        self._best_filename = kwargs.get("key_metric_filename")
        if self._key_metric_checkpoint is not None and self._best_filename:
            self._key_metric_checkpoint.save_handler.remove = _keep_file

    def state_dict(self) -> dict[str, Any]:
        """The best key metric so far (Ignite's list of saved ``(score, file)``), for the training checkpoint."""
        return dict(self._key_metric_checkpoint.state_dict()) if self._key_metric_checkpoint is not None else {}

    def load_state_dict(self, state_dict: dict) -> None:
        """Restore the best key metric (also from a checkpoint of the former ``BestModelSaver``: ``best_metric``)."""
        if "best_metric" in state_dict:
            state_dict = {"_saved": [(float(state_dict["best_metric"]), self._best_filename or "model.pt")]}
        super().load_state_dict(state_dict)

    def metrics_completed(self, engine: Engine) -> None:
        """Save the best model when the key metric improves; a non-finite metric is never a best, and non-finite
        weights stop training (the best model is kept)."""
        if self._key_metric_checkpoint is None or not math.isfinite(self._key_metric_checkpoint.score_function(engine)):
            return
        best = Path(self.save_dir) / (self._best_filename or "best model")
        self._stop_if_non_finite(f"{best}: not written, ", f" at epoch {engine.state.epoch}; the best model is kept")
        super().metrics_completed(engine)

    def _finite_or_reason(self) -> str | None:
        bad = non_finite_tensors({k: v for k, v in self.save_dict.items() if isinstance(v, torch.nn.Module)})
        return f"non-finite weights in {', '.join(bad[:3])}" if bad else None

    def _stop_if_non_finite(self, before: str, after: str = "") -> None:
        """Raise :class:`TrainingGuardError` (``before + reason + after``) when ``save_dict`` has non-finite weights."""
        reason = self._finite_or_reason()
        if reason:
            raise TrainingGuardError(f"{before}{reason}{after}")

    def interval_completed(self, engine: Engine) -> None:
        self._stop_if_non_finite(
            f"training stopped at epoch {engine.state.epoch}: ",
            f"; no checkpoint written. Last good checkpoint: {latest_checkpoint(self.save_dir) or 'none'}",
        )
        super().interval_completed(engine)
        self.prune()

    def completed(self, engine: Engine) -> None:
        self._stop_if_non_finite("final checkpoint not written: ")
        super().completed(engine)

    def exception_raised(self, engine: Engine, e: BaseException) -> None:
        reason = "training stopped by a guard" if isinstance(e, TrainingGuardError) else self._finite_or_reason()
        if reason:
            logger.warning(f"final checkpoint not written after the error ({reason})")
            raise e
        super().exception_raised(engine, e)  # type: ignore[arg-type]

    def prune(self) -> list[str]:
        """Delete the interval checkpoints in ``save_dir`` beyond the newest ``n_saved`` epochs (none when ``n_saved``
        is None); returns the deleted files."""
        if self.n_saved is None:
            return []
        found: dict[str, list[tuple[int, Path]]] = {}
        for p in Path(self.save_dir).glob("*_epoch=*.pt"):
            m = _EPOCH_FILE.match(p.name)
            if m:
                found.setdefault(m["prefix"], []).append((int(m["epoch"]), p))
        removed = []
        for files in found.values():
            files.sort()
            for _, p in files[: -self.n_saved]:
                p.unlink(missing_ok=True)
                removed.append(str(p))
        return removed


def _keep_file(filename: str) -> None:
    """``remove`` of a fixed-name best model's saver: the atomic write of the new best replaces the file."""


def guard_loss(loss: torch.Tensor, engine: Engine, cases: Sequence[str] | None, checkpoint_dir: str | None) -> None:
    """Stop training with :class:`TrainingGuardError` when ``loss`` is not finite (before any weight update).

    Args:
        loss: the iteration's loss.
        engine: the trainer (for the epoch and iteration).
        cases: case ids of the batch (None: unknown).
        checkpoint_dir: folder of the run's checkpoints (to name the last good one).
    """
    if bool(torch.isfinite(loss.detach()).all()):
        return
    ids = ", ".join(str(c) for c in cases) if cases else "unknown"
    raise TrainingGuardError(
        f"training stopped: non-finite loss ({float(loss.detach().float().mean())}) at epoch {engine.state.epoch}, "
        f"iteration {engine.state.iteration}; batch cases: {ids}. No weights were updated or written. "
        f"Last good checkpoint: {latest_checkpoint(checkpoint_dir) or 'none'}"
    )
