"""Ignite handler writing predicted label maps as NIfTI, atomically, in a chosen BraTS label convention."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import torch
from ignite.engine import Engine, Events
from monai.data import MetaTensor

from custom_components.data.atomic import save_nifti
from custom_components.data.datalist import case_id_of, source_name
from custom_components.data.labels import check_convention, from_internal

__all__ = ["SegmentationWriter"]


class SegmentationWriter:
    """Write ``<output_dir>/<case_id><suffix>`` for every case an evaluator processes.

    Custom rather than MONAI's ``SaveImaged``: that writes in place (no temporary file + rename), cannot refuse
    to replace an input file, and names files after the input file instead of the case id.

    Expects the decollated output ``pred`` to hold internal labels ``(1, *spatial)`` already mapped back
    to the input's grid (``AsDiscreted(argmax=True)`` then ``Invertd`` of the preprocessing), as a
    MetaTensor whose affine is the input's. The labels are converted with
    :func:`custom_components.data.labels.from_internal` to ``convention`` and saved as uint8 with that affine,
    through :func:`custom_components.data.atomic.save_nifti` (temporary file, then rename). A file that would
    replace one of the case's input files is refused.

    Args:
        output_dir: folder of the label files.
        convention: label convention of the written files (``brats2023``, ``brats2021``, ``brats2015``, ``internal``).
        pred_key: key of the prediction in the decollated output.
        case_key: key of the case id in the decollated batch (else the first input file's name is used).
        image_key, label_key: keys whose source files the writer must never replace.
        suffix: file name suffix.
    """

    def __init__(
        self,
        output_dir: str | os.PathLike,
        convention: str = "brats2023",
        pred_key: str = "pred",
        case_key: str = "case_id",
        image_key: str = "image",
        label_key: str = "label",
        suffix: str = ".nii.gz",
    ) -> None:
        self.output_dir = Path(output_dir)
        self.convention = check_convention(convention)
        self.pred_key, self.case_key = pred_key, case_key
        self.image_key, self.label_key = image_key, label_key
        self.suffix = suffix
        self.written: list[Path] = []
        self.logger = logging.getLogger(__name__)

    def attach(self, engine: Engine) -> None:
        """Register on ``engine`` (every completed iteration writes its cases)."""
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        output = engine.state.output
        batch = engine.state.batch
        if isinstance(output, dict):
            raise ValueError("SegmentationWriter needs a decollated engine output (decollate=True)")
        for i, item in enumerate(output):
            src = batch[i] if isinstance(batch, list) else {}
            pred = item[self.pred_key]
            inputs = [n for n in (source_name(src.get(k)) for k in (self.image_key, self.label_key)) if n]
            case_id = src.get(self.case_key) or (case_id_of({"image": inputs[0]}) if inputs else None)
            if case_id is None:
                raise ValueError("SegmentationWriter: no case id and no input file name to name the output after")
            self.write(pred, str(case_id), inputs)

    def write(self, pred: torch.Tensor, case_id: str, inputs: list[str] | None = None) -> Path:
        """Write one prediction; returns the file.

        Args:
            pred: internal labels ``(1, *spatial)`` or ``(*spatial)``, a MetaTensor carrying the affine.
            case_id: output file stem.
            inputs: the case's input files, which must not be replaced.
        """
        path = self.output_dir / f"{case_id}{self.suffix}"
        resolved = path.resolve()
        for f in inputs or []:
            if Path(f).resolve() == resolved:
                raise FileExistsError(f"{path}: refusing to overwrite an input file of case {case_id}")
        if not isinstance(pred, MetaTensor):
            raise TypeError(f"case {case_id}: the prediction has no affine (expected a MetaTensor)")
        arr = pred.detach().cpu().numpy()
        if arr.ndim == 4:
            if arr.shape[0] != 1:
                raise ValueError(f"case {case_id}: expected one label channel, got shape {arr.shape}")
            arr = arr[0]
        labels = from_internal(np.rint(arr).astype(np.uint8), self.convention)
        affine = pred.affine.detach().cpu().numpy().astype(np.float64)
        save_nifti(labels, affine, path, dtype=np.uint8)
        self.written.append(path)
        self.logger.info("wrote %s", path)
        return path
