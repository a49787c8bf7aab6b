"""Data side of the tf_gan bundle: datalist loading, network inputs, and writing refined / synthesised cases.

- inputs are read with :func:`custom_components.data.load_datalist` (the project's one loader);
- :class:`GeneratorInputs` is the ``prepare_batch`` of the refinement / synthesis evaluator: it builds the
  generator input (coarse image + one-hot tumour mask for TF-GAN; one-hot tumour mask + brain channel for
  Pix2Pix);
- :func:`check_outputs` refuses to overwrite a previous run or an input before anything is written;
- :class:`SyntheticDatalistWriter` is an Ignite handler that writes each generated volume (NIfTI, the
  input's affine and header, atomically), copies the label / ROI / brain mask beside it and finally writes a
  datalist (``training`` section, ``labels: internal``) ready for dtss_mas_seg.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch
from ignite.engine import Engine, Events
from monai.utils import convert_to_numpy, convert_to_tensor

from custom_components.data.atomic import atomic_path, save_nifti
from custom_components.data.brain_mask import infer_brain_mask
from custom_components.data.datalist import write_datalist
from custom_components.data.labels import TUMOUR_CLASSES, check_convention, to_internal
from custom_components.losses.hinge_l1 import DEFAULT_HINGE_MARGIN, refinement_change
from custom_components.networks.tf_gan import condition_channels, keep_coarse_outside_roi, roi_noise

logger = logging.getLogger(__name__)

ITEM_KEYS: tuple[str, ...] = ("case_id", "image", "label", "roi", "brain_mask")
STAGES: tuple[str, ...] = ("tf_gan", "pix2pix")


# -- datalists ---------------------------------------------------------------------------------------
def dataset_items(items: Sequence[Mapping[str, Any]], keys: Sequence[str] = ITEM_KEYS) -> list[dict[str, Any]]:
    """The fields of ``items`` a MONAI dataset needs (drops ``provenance`` and other metadata that cannot be
    collated)."""
    return [{k: item[k] for k in keys if k in item} for item in items]


# -- transforms --------------------------------------------------------------------------------------
def case_noise_seed(seed: int, case_id: str) -> int:
    """The seed of one case's generator noise: the first 8 bytes of sha256("<seed>:<case_id>")."""
    return int.from_bytes(hashlib.sha256(f"{int(seed)}:{case_id}".encode()).digest()[:8], "little")


class GeneratorInputs:
    """``prepare_batch`` for a MONAI evaluator running the TF-GAN / Pix2Pix generator.

    Returns ``(inputs, label)``: for ``stage="tf_gan"`` the inputs are the coarse image channels followed by the
    one-hot tumour channels (and ``noise_channels`` of :func:`~custom_components.networks.roi_noise` over the whole
    volume, so every sliding window sees the same draw); for ``"pix2pix"`` the one-hot tumour channels followed by
    the brain channel.

    Args:
        stage: ``"tf_gan"`` or ``"pix2pix"``.
        classes: tumour label values (internal convention).
        image_key, label_key, brain_key, roi_key: batch keys (``roi``: ``m_roi``, for the noise).
        noise_channels: noise channels of the generator (``tf_gan``; 0: none, the paper's G).
        seed: with the case id, seeds each case's noise (:func:`case_noise_seed`): a case's refinement does not
            depend on the other cases or their order.
    """

    def __init__(
        self,
        stage: str = "tf_gan",
        classes: Sequence[int] = TUMOUR_CLASSES,
        image_key: str = "image",
        label_key: str = "label",
        brain_key: str = "brain_mask",
        roi_key: str = "roi",
        noise_channels: int = 0,
        seed: int = 0,
    ) -> None:
        if stage not in STAGES:
            raise ValueError(f"stage must be one of {STAGES}, got {stage!r}")
        self.stage = stage
        self.classes = tuple(int(c) for c in classes)
        self.image_key, self.label_key, self.brain_key, self.roi_key = image_key, label_key, brain_key, roi_key
        self.noise_channels = int(noise_channels)
        self.seed = int(seed)

    def _noise(self, batchdata: Mapping[str, Any], roi: torch.Tensor) -> torch.Tensor:
        """Each case's noise channels, drawn from a generator seeded by (seed, case id)."""
        cases = batchdata.get("case_id")
        if cases is None:
            raise KeyError("a generator with noise channels needs the batch's case_id (it seeds each case's noise)")
        draws = [
            roi_noise(roi[i : i + 1], self.noise_channels, torch.Generator().manual_seed(case_noise_seed(self.seed, c)))
            for i, c in enumerate(cases)
        ]
        return torch.cat(draws, 0)

    def __call__(
        self,
        batchdata: Mapping[str, Any],
        device: str | torch.device | None = None,
        non_blocking: bool = False,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        def get(key: str) -> torch.Tensor:
            if key not in batchdata:
                raise KeyError(f"batch has no {key!r} entry (keys: {', '.join(map(str, batchdata))})")
            return convert_to_tensor(batchdata[key], track_meta=False).to(
                device, non_blocking=non_blocking, dtype=torch.float32, **kwargs
            )

        label = get(self.label_key)
        if self.stage == "tf_gan":
            inputs = [get(self.image_key), condition_channels(label, self.classes)]
            if self.noise_channels:
                inputs.append(self._noise(batchdata, get(self.roi_key)))
            return torch.cat(inputs, dim=1), label
        return condition_channels(label, self.classes, brain=get(self.brain_key)), label


# -- outputs -----------------------------------------------------------------------------------------
def output_paths(
    items: Sequence[Mapping[str, Any]],
    output_dir: str | os.PathLike,
    modalities: Sequence[str],
    copy_keys: Sequence[str] = ("label", "roi", "brain_mask"),
) -> dict[str, dict[str, Path]]:
    """Where each case's files go: ``images/<case>_<modality>.nii.gz`` and ``labels/<case>_<key>.nii[.gz]``.

    Copied files keep their source's compression (a ``.nii`` copied under a ``.nii.gz`` name is unreadable).
    """
    out = Path(output_dir)
    suffix = {"label": "seg", "roi": "roi", "brain_mask": "brain"}
    paths: dict[str, dict[str, Path]] = {}
    for item in items:
        cid = str(item["case_id"])
        p = {f"image:{m}": out / "images" / f"{cid}_{m}.nii.gz" for m in modalities}
        for key in copy_keys:
            if key in item:
                ext = ".nii.gz" if str(item[key]).endswith(".gz") else ".nii"
                p[key] = out / "labels" / f"{cid}_{suffix.get(key, key)}{ext}"
        paths[cid] = p
    return paths


def check_outputs(
    items: Sequence[Mapping[str, Any]],
    output_dir: str | os.PathLike,
    datalist_path: str | os.PathLike,
    modalities: Sequence[str],
    checkpoint: str | os.PathLike | None = None,
    overwrite: bool = False,
) -> bool:
    """Refuse (before anything is written) to mix with a previous run, to overwrite an input or to run without weights.

    Args:
        items: the input items (absolute paths).
        output_dir: output folder.
        datalist_path: the datalist that will be written.
        modalities: output modalities.
        checkpoint: generator weights that must exist.
        overwrite: allow replacing a previous run's datalist and volumes.

    Returns:
        True (so the check can sit in a bundle's ``initialize`` list).
    """
    if checkpoint is not None and not os.path.isfile(checkpoint):
        raise FileNotFoundError(f"{checkpoint}: generator checkpoint not found (train the bundle first or set it)")
    if os.path.exists(datalist_path) and not overwrite:
        raise FileExistsError(
            f"{datalist_path}: output datalist exists from a previous run; remove it or set overwrite"
        )
    inputs = {
        os.path.realpath(v)
        for item in items
        for k in ITEM_KEYS[1:]
        if k in item
        for v in (item[k] if isinstance(item[k], list) else [item[k]])
    }
    for case_paths in output_paths(items, output_dir, modalities).values():
        for path in case_paths.values():
            if os.path.realpath(path) in inputs:
                raise ValueError(f"{path}: output would overwrite an input file; choose another output directory")
    if os.path.realpath(datalist_path) in inputs:
        raise ValueError(f"{datalist_path}: output datalist would overwrite an input file")
    return True


def summarise_change(items: Sequence[Mapping[str, Any]]) -> dict[str, float | int] | None:
    """Medians over cases of :func:`refinement_change`'s figures, from the items' provenance ``change`` (None when
    no item carries one, e.g. Pix2Pix or a datalist written before the figures existed).

    Args:
        items: refined datalist items.
    """
    changes = [it["provenance"]["change"] for it in items if "change" in it.get("provenance", {})]
    if not changes:
        return None
    keys = ("outside_roi_mean_abs", "outside_roi_beyond_margin", "roi_mean_abs")
    return {"cases": len(changes), **{k: float(np.median([c[k] for c in changes])) for k in keys}}


def _copy(src: str | os.PathLike, dst: Path) -> Path:
    with atomic_path(dst) as tmp:
        shutil.copyfile(src, tmp)
    return dst


class SyntheticDatalistWriter:
    """Ignite handler: write generated volumes and their labels, then the datalist of the run.

    On every iteration of the evaluator it takes the decollated ``pred`` (``(C, *spatial)``, in the grid of the
    input files), optionally keeps the coarse voxels outside ``m_roi`` (``paste_outside_roi``, TF-GAN only) and
    sets voxels outside the brain to ``background`` (``mask_background``: the brain mask of the item, else the
    coarse image's voxels above its minimum), then writes one NIfTI per modality with the affine and header of
    the item's reference file (the coarse image; the label for Pix2Pix). The label, ROI and brain mask files are
    copied byte for byte. When the evaluator completes, the datalist is written (items in input order).

    Args:
        items: the full input items (absolute paths, with ``case_id``; their ``provenance`` is kept as ``parent``).
        output_dir: folder for ``images/``, ``labels/``.
        datalist_path: datalist JSON to write.
        modalities: names of the output channels (one file each).
        stage: ``"tf_gan"`` (refinement) or ``"pix2pix"`` (label-to-image synthesis); recorded in provenance.
        checkpoint: generator weights used (recorded in provenance).
        seed: seed of the run (recorded).
        parameters: other settings to record in provenance (e.g. sliding-window settings).
        paste_outside_roi: keep the coarse image exactly outside ``m_roi`` (TF-GAN only).
        mask_background: set voxels outside the brain to ``background``.
        background: background intensity (-1, the minimum of the [-1, 1] range).
        roi_key: batch key of ``m_roi`` (after ``RoiMaskd``).
        brain_key: batch key of a brain mask (used for ``mask_background`` when present).
        pred_key: output key of the generated image.
        copy_keys: item keys whose files are copied beside the images.
        labels: label convention of the input label files; labels in another convention than ``internal`` are
            written mapped to ``internal`` instead of copied.
        description: datalist description.
        qc_cases: the first ``qc_cases`` cases (input order) get a QC montage ``<output_dir>/qc/<case_id>.png``:
            the output as it is and with label contours, the coarse input and their absolute difference.
        margin: the hinge margin of TF-GAN's eq. 2; :func:`refinement_change` counts the voxels outside ``m_roi``
            that moved by more than it (recorded per case as provenance ``change``; TF-GAN only).
    """

    def __init__(
        self,
        items: Sequence[Mapping[str, Any]],
        output_dir: str | os.PathLike,
        datalist_path: str | os.PathLike,
        modalities: Sequence[str] = ("t1n",),
        stage: str = "tf_gan",
        checkpoint: str | os.PathLike | None = None,
        seed: int | None = None,
        parameters: Mapping[str, Any] | None = None,
        paste_outside_roi: bool = False,
        mask_background: bool = True,
        background: float = -1.0,
        roi_key: str = "roi",
        brain_key: str = "brain_mask",
        pred_key: str = "pred",
        copy_keys: Sequence[str] = ("label", "roi", "brain_mask"),
        labels: str = "internal",
        description: str | None = None,
        qc_cases: int = 0,
        margin: float = DEFAULT_HINGE_MARGIN,
    ) -> None:
        if stage not in STAGES:
            raise ValueError(f"stage must be one of {STAGES}, got {stage!r}")
        self.items = {str(it["case_id"]): dict(it) for it in items}
        self.order = [str(it["case_id"]) for it in items]
        self.output_dir = Path(output_dir)
        self.datalist_path = Path(datalist_path)
        self.modalities = [str(m) for m in modalities]
        self.stage = stage
        self.checkpoint = None if checkpoint is None else str(checkpoint)
        self.seed = seed
        self.parameters = dict(parameters or {})
        self.paste_outside_roi = bool(paste_outside_roi) and stage == "tf_gan"
        self.mask_background = bool(mask_background)
        self.background = float(background)
        self.roi_key = roi_key
        self.brain_key = brain_key
        self.pred_key = pred_key
        self.copy_keys = tuple(copy_keys)
        self.labels = check_convention(labels)
        self.description = description or f"{stage} synthetic cases"
        self.qc_cases = int(qc_cases)
        self.margin = float(margin)
        self.paths = output_paths(items, output_dir, self.modalities, self.copy_keys)
        self.written: dict[str, dict[str, Any]] = {}

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.iteration_completed)
        engine.add_event_handler(Events.COMPLETED, self.completed)

    # one case -----------------------------------------------------------------------------------
    def _reference(self, item: Mapping[str, Any]) -> str:
        return item["image"][0] if self.stage == "tf_gan" else item["label"]

    def compose(
        self,
        pred: np.ndarray,
        item: Mapping[str, Any],
        roi: np.ndarray | None = None,
        brain: np.ndarray | None = None,
        coarse: np.ndarray | None = None,
    ) -> np.ndarray:
        """Final volume ``(C, *spatial)`` from the generator output: paste outside ``m_roi``, mask the background.

        Args:
            pred: generator output ``(C, *spatial)`` in the input grid.
            item: the input item.
            roi: ``m_roi`` (any shape with the spatial size), needed for ``paste_outside_roi``.
            brain: brain mask from the batch; default: the item's ``brain_mask`` file, else the coarse image's
                voxels above its minimum.
            coarse: the coarse input ``(C, *spatial)`` when the caller has read it already (TF-GAN; default: read).
        """
        ref = self._reference(item)
        shape = tuple(nib.load(ref).shape[:3])
        if tuple(pred.shape[1:]) != shape:
            raise ValueError(f"{ref}: generated volume {tuple(pred.shape[1:])} does not match the input grid {shape}")
        if len(pred) != len(self.modalities):
            raise ValueError(f"generator produced {len(pred)} channels for modalities {self.modalities}")
        out = np.clip(pred.astype(np.float32), -1.0, 1.0)
        if coarse is None and self.stage == "tf_gan":
            coarse = self._coarse(item, shape)
        if self.paste_outside_roi:
            if roi is None:
                raise ValueError(f"{item['case_id']}: paste_outside_roi needs the {self.roi_key!r} mask in the batch")
            out = keep_coarse_outside_roi(out, coarse, roi.reshape((1, *shape)))
        if self.mask_background:
            out = np.where(self._brain(item, shape, brain, coarse)[None], out, np.float32(self.background))
        return out.astype(np.float32)

    @staticmethod
    def _coarse(item: Mapping[str, Any], shape: tuple[int, ...]) -> np.ndarray:
        """The coarse input volume ``(C, *spatial)`` as written by tf_aug."""
        return np.stack([np.asarray(nib.load(f).dataobj, dtype=np.float32).reshape(shape) for f in item["image"]])

    def _brain(
        self, item: Mapping[str, Any], shape: tuple[int, ...], brain: np.ndarray | None, coarse: np.ndarray | None
    ) -> np.ndarray:
        """The case's brain: the batch's mask, else the item's ``brain_mask`` file, else inferred from the coarse
        image."""
        if brain is not None:
            return brain.reshape(shape) > 0
        if "brain_mask" in item:
            return np.asarray(nib.load(item["brain_mask"]).dataobj).reshape(shape) > 0
        if coarse is not None:
            return infer_brain_mask(coarse[0], name=str(item["image"][0]))
        raise ValueError(f"{item['case_id']}: no brain mask (the item has no brain_mask and no coarse image)")

    def write_case(
        self, case_id: str, pred: np.ndarray, roi: np.ndarray | None = None, brain: np.ndarray | None = None
    ) -> dict[str, Any]:
        """Write one case (see :meth:`compose`) and return its datalist item."""
        if case_id not in self.items:
            raise KeyError(f"case {case_id!r} is not among the items given to the writer")
        item = self.items[case_id]
        ref = nib.load(self._reference(item))
        coarse = brain_mask = None
        if self.stage == "tf_gan":  # read the coarse input and the brain once, for compose and the change figures
            coarse = self._coarse(item, tuple(ref.shape[:3]))
            if self.mask_background or roi is not None:
                brain_mask = self._brain(item, tuple(ref.shape[:3]), brain, coarse)
        volume = self.compose(pred, item, roi, brain if brain_mask is None else brain_mask, coarse)
        paths = self.paths[case_id]
        images = []
        for channel, modality in zip(volume, self.modalities, strict=True):
            images.append(
                str(
                    save_nifti(
                        channel, ref.affine, paths[f"image:{modality}"], dtype=np.float32, header=ref.header.copy()
                    )
                )
            )
        out: dict[str, Any] = {"case_id": case_id, "image": images}
        for key in self.copy_keys:
            if key not in item:
                continue
            if key == "label" and self.labels != "internal":
                src = nib.load(item[key])
                mapped = to_internal(np.asarray(src.dataobj), self.labels)
                out[key] = str(save_nifti(mapped, src.affine, paths[key], dtype=np.uint8, header=src.header.copy()))
            else:
                out[key] = str(_copy(item[key], paths[key]))
        provenance: dict[str, Any] = {
            "stage": self.stage,
            "generator_checkpoint": self.checkpoint,
            "seed": self.seed,
            "parameters": self.parameters,
        }
        if self.stage == "tf_gan":
            provenance["coarse_image"] = list(item["image"])
            if roi is not None:
                provenance["change"] = refinement_change(
                    volume, coarse, roi.reshape(volume.shape[1:]) > 0, brain_mask, self.margin
                )
        provenance["source_label"] = item.get("label")
        if "provenance" in item:
            provenance["parent"] = item["provenance"]
        out["synthetic"] = True
        out["provenance"] = provenance
        self.written[case_id] = out
        if self.order.index(case_id) < self.qc_cases:
            self._qc(case_id, out, item)
        return out

    def _qc(self, case_id: str, out: Mapping[str, Any], item: Mapping[str, Any]) -> Path:
        from custom_components.quality.qc import save_montage

        name = "refined" if self.stage == "tf_gan" else "pix2pix"
        return save_montage(
            out["image"][0],
            out.get("label"),
            self.output_dir / "qc" / f"{case_id}.png",
            title=f"{case_id}: {self.stage} ({self.modalities[0]}) vs its coarse TF-Aug input",
            source=item["image"][0],
            row_titles=[name, "coarse input", f"|{name} - coarse|"],
        )

    # events ---------------------------------------------------------------------------------------
    def iteration_completed(self, engine: Engine) -> None:
        batch, output = engine.state.batch, engine.state.output
        if isinstance(batch, Mapping) or isinstance(output, Mapping):
            raise TypeError("SyntheticDatalistWriter needs a decollating evaluator (decollate=True)")
        for b, o in zip(batch, output, strict=True):
            pred, roi, brain = (
                convert_to_numpy(x, wrap_sequence=True)
                for x in (o[self.pred_key], b.get(self.roi_key), b.get(self.brain_key))
            )
            self.write_case(str(b["case_id"]), pred, roi, brain)
            logger.info(f"{self.stage}: wrote {b['case_id']}")

    def completed(self, engine: Engine | None = None) -> Path:
        """Write the datalist of every case written so far (input order); for TF-GAN, log what the refinement
        changed (:func:`summarise_change`) and warn when it rewrote the anatomy outside the ROI."""
        items = [self.written[c] for c in self.order if c in self.written]
        summary = summarise_change(items)
        if summary is not None:
            logger.info(
                f"tf_gan: refinement changed brain voxels outside m_roi by a mean |refined - coarse| of "
                f"{summary['outside_roi_mean_abs']:.4f} (median over {summary['cases']} cases), "
                f"{100 * summary['outside_roi_beyond_margin']:.1f} % of them beyond the hinge margin {self.margin}; "
                f"inside m_roi by {summary['roi_mean_abs']:.4f}"
            )
            rewritten = [it["case_id"] for it in items if it["provenance"]["change"]["outside_roi_beyond_margin"] > 0.5]
            if rewritten:
                logger.warning(
                    f"tf_gan: the refinement moved more than half of the brain outside m_roi beyond the hinge margin "
                    f"in {len(rewritten)} of {len(items)} cases ({', '.join(rewritten[:5])}"
                    f"{', ...' if len(rewritten) > 5 else ''}): the generator rewrites the anatomy (train longer, "
                    "or use residual: true)"
                )
        data = {
            "description": self.description,
            "labels": "internal",
            "modalities": self.modalities,
            "training": items,
        }
        return write_datalist(self.datalist_path, data)
