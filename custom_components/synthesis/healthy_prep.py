"""Bring healthy scans into the real tumour data's space (the TF paper's preprocessing, section 2).

For every healthy, skull-stripped scan: register it to one reference image of the real data
(rigid, then affine), resample it onto exactly the reference's voxel grid, brain-mask it and
rescale brain intensities to [-1, 1] (background -1), then write the prepared scan, its brain
mask, a QC PNG and a healthy datalist whose provenance records the source, the reference, the
registration parameters, the final metric value and the brain-mask Dice with the reference.

Registration quality is a gate: a scan whose registered brain overlaps the reference brain with a
Dice below ``min_brain_dice`` (default 0.80) fails the run (:class:`RegistrationQualityError`, naming
the scan, the reference and the QC PNG to look at). Every scan is registered and checked first; the
prepared volumes are written to a staging folder and moved into place only when all of them pass, so a
failed run leaves no prepared case (only the QC PNGs that show what went wrong). Measured brain Dice:
the demo pipeline's four MNI152 variants against the phantom reference 0.941-0.953; the real MNI152 /
Colin27 brains against TCGA-FG-6692's t1n 0.942 / 0.926 (0.936 / 0.922 when all three are z-scored with
a zero-padded field of view, where the former corner-value brain rule gave 0.28). 0.80 leaves room for
real anatomical differences between subjects under a global (affine) transform and still stops a
registration that is off by a flip, a large shift or a wrong brain mask.

The reference space is chosen, not assumed: given the real datalist instead of an image,
:func:`choose_reference` takes the first training case's T1-weighted image (``t1n``, else ``t1c``,
else its first modality), because healthy scans are T1 and mutual information aligns like with like
most reliably; the reference item's ``brain_mask`` (when present) is its brain.

Why SimpleITK: it ships manylinux/macOS/Windows wheels with no compiled dependencies to build, and
it exposes ITK's well-kept registration framework (centred moment initialiser, Euler3D/affine
transforms, Mattes mutual information, multi-resolution pyramids, regular-step gradient descent,
masks, random sampling with a seed). ANTsPy gives the same building blocks but is a much heavier
install; nothing here needs deformable registration.

Brain masks: the scan's ``brain_mask`` when one is given (a datalist item's ``brain_mask``, or a
``<scan>{_brainmask,_brain_mask,_mask,-mask}.nii.gz`` file beside a scan in a folder), else the mask
:func:`custom_components.data.brain_mask.infer_brain_mask` infers and checks (an implausible one
stops the run before anything is written, naming the file).

Orientation: arrays and affines come from nibabel (RAS world) and are handed to SimpleITK (LPS
world) by flipping the first two world axes, so the prepared volumes carry the reference file's
nibabel affine exactly, whatever its axis codes.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import SimpleITK as sitk

from custom_components.data.atomic import atomic_path, save_nifti
from custom_components.data.brain_mask import infer_brain_mask
from custom_components.data.datalist import case_id_of, is_nifti, nifti_stem, read_datalist, write_datalist
from custom_components.data.discovery import BRAIN_MASK_SUFFIXES
from custom_components.data.validation import check_brain_mask_grid
from custom_components.quality.qc import save_montage
from custom_components.transforms.intensity import RescaleBrainIntensity

logger = logging.getLogger(__name__)

MASK_SUFFIXES = BRAIN_MASK_SUFFIXES
# default minimum brain Dice between a registered healthy scan and the reference brain
MIN_BRAIN_DICE: float = 0.80
# modalities preferred as the reference space, in order (healthy scans are T1-weighted)
REFERENCE_MODALITIES: tuple[str, ...] = ("t1n", "t1c")


class RegistrationQualityError(ValueError):
    """A healthy scan registered to the reference with a brain Dice below ``min_brain_dice``."""


_LPS = np.diag([-1.0, -1.0, 1.0])


@dataclass
class RegistrationSettings:
    """Parameters of the rigid + affine registration.

    The pyramid is given in mm, so the same settings fit 1 mm real data (shrink factors 4, 2) and
    2 or 4 mm demo data (2, 1 and 1, 1). The defaults stop at 2 mm: on the 1 mm real data a
    full-resolution level tripled the time (10-30 s per scan on one core) without a better brain
    overlap (MNI152 -> TCGA-FG-6692: Dice 0.944 with shrink (4, 2), 0.941 with (4, 2, 1)); a
    12-parameter global transform is well determined by 2 mm images.

    Args:
        resolutions_mm: voxel size of each pyramid level (coarse to fine); the shrink factor of a
            level is ``max(1, round(resolution / reference voxel size))``.
        smoothing_sigmas: Gaussian smoothing per level, in mm.
        sampling_fraction: fraction of fixed-mask voxels sampled (random, seeded) for the metric.
        min_samples: at least this many samples per level (small or coarse images), when available.
        histogram_bins: Mattes mutual information histogram bins.
        iterations: maximum optimiser iterations per level.
        learning_rate: initial step of the regular-step gradient descent (mm, after scaling).
        min_step: step size at which the optimiser stops.
        affine: run the affine stage after the rigid one.
        seed: sampling seed, >= 0 (a seed gives the same result on the same machine and thread
            count; ITK receives ``seed + 1`` because SimpleITK reads 0 as "use the clock").
        threads: ITK threads (1 keeps the result independent of the machine's core count).
    """

    resolutions_mm: Sequence[float] = (4.0, 2.0)
    smoothing_sigmas: Sequence[float] = (2.0, 1.0)
    sampling_fraction: float = 0.05
    min_samples: int = 3000
    histogram_bins: int = 32
    iterations: int = 200
    learning_rate: float = 2.0
    min_step: float = 1e-3
    affine: bool = True
    seed: int = 0
    threads: int = 1

    def pyramid(self, fixed_mask: sitk.Image) -> tuple[list[int], list[float]]:
        """Shrink factors and sampling fractions per level for a fixed image and its brain mask."""
        spacing = min(fixed_mask.GetSpacing())
        n_mask = float(sitk.GetArrayViewFromImage(fixed_mask).sum())
        shrink = [max(1, int(round(r / spacing))) for r in self.resolutions_mm]
        fractions = [min(1.0, max(self.sampling_fraction, self.min_samples / max(n_mask / f**3, 1.0))) for f in shrink]
        return shrink, fractions

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly parameters (for provenance)."""
        return {
            "method": "SimpleITK: moments initialiser, Euler3D" + (" then affine" if self.affine else ""),
            "metric": "Mattes mutual information",
            "optimizer": "regular-step gradient descent",
            "resolutions_mm": [float(s) for s in self.resolutions_mm],
            "smoothing_sigmas_mm": [float(s) for s in self.smoothing_sigmas],
            "sampling_fraction": float(self.sampling_fraction),
            "min_samples": int(self.min_samples),
            "histogram_bins": int(self.histogram_bins),
            "iterations": int(self.iterations),
            "learning_rate": float(self.learning_rate),
            "min_step": float(self.min_step),
            "seed": int(self.seed),
        }


@dataclass
class _Volume:
    path: Path
    data: np.ndarray
    affine: np.ndarray
    brain: np.ndarray
    mask_path: Path | None = None


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice overlap of two binary masks (1.0 when both are empty)."""
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    total = a.sum() + b.sum()
    return 1.0 if total == 0 else float(2.0 * (a & b).sum() / total)


def to_sitk(data: np.ndarray, affine: np.ndarray) -> sitk.Image:
    """A SimpleITK image of a nibabel-ordered array (x, y, z) with its RAS affine.

    Raises:
        ValueError: when the affine has shear (ITK images need orthogonal directions).
    """
    lin = np.asarray(affine, dtype=np.float64)[:3, :3]
    spacing = np.sqrt((lin**2).sum(0))
    direction = lin / spacing
    if not np.allclose(direction.T @ direction, np.eye(3), atol=1e-4):
        raise ValueError("affine has shear; resample the image to an orthogonal grid first")
    img = sitk.GetImageFromArray(np.ascontiguousarray(np.asarray(data).transpose(2, 1, 0)))
    img.SetSpacing([float(s) for s in spacing])
    img.SetDirection([float(v) for v in (_LPS @ direction).ravel()])
    img.SetOrigin([float(v) for v in _LPS @ np.asarray(affine, dtype=np.float64)[:3, 3]])
    return img


def _cropped_sitk(vol: _Volume, margin_mm: float = 8.0) -> tuple[sitk.Image, sitk.Image]:
    """Image and brain mask cropped to the brain's bounding box plus a margin (registration only)."""
    zooms = np.sqrt((vol.affine[:3, :3] ** 2).sum(0))
    margin = np.ceil(margin_mm / zooms).astype(int)
    idx = np.argwhere(vol.brain)
    lo = np.maximum(idx.min(0) - margin, 0)
    hi = np.minimum(idx.max(0) + margin + 1, vol.data.shape)
    box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))
    affine = vol.affine.copy()
    affine[:3, 3] = vol.affine[:3, :3] @ lo + vol.affine[:3, 3]
    return to_sitk(vol.data[box], affine), to_sitk(vol.brain[box].astype(np.uint8), affine)


def from_sitk(img: sitk.Image) -> np.ndarray:
    """The voxel array of a SimpleITK image in nibabel order (x, y, z)."""
    return sitk.GetArrayFromImage(img).transpose(2, 1, 0)


def _load(path: Path, what: str) -> tuple[np.ndarray, np.ndarray]:
    """Load a 3D NIfTI as float32 with its affine; errors name the file."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: {what} not found")
    try:
        img = nib.load(str(path))
        data = np.asarray(img.dataobj, dtype=np.float32)
    except Exception as e:  # nibabel raises several types for broken files
        raise ValueError(f"{path}: cannot read {what} as NIfTI ({e})") from e
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise ValueError(f"{path}: {what} must be a 3D volume, got shape {img.shape}")
    if not np.isfinite(data).all():
        raise ValueError(f"{path}: {what} contains NaN or infinite values")
    return data, img.affine


def _load_volume(path: Path, what: str, mask_path: Path | None = None) -> _Volume:
    data, affine = _load(path, what)
    if mask_path is not None:
        mask, mask_affine = _load(mask_path, f"brain mask of {path.name}")
        check_brain_mask_grid(data.shape, affine, mask.shape, mask_affine, str(path), str(mask_path), atol=1e-3)
        brain = mask > 0
    else:
        brain = infer_brain_mask(data, name=str(path))
    if brain.sum() < 1000:
        raise ValueError(f"{mask_path or path}: {what} has an almost empty brain ({int(brain.sum())} voxels)")
    return _Volume(path, data, affine, brain, mask_path)


def _healthy_inputs(healthy: Path) -> list[dict[str, Any]]:
    """Items ``{case_id, image, brain_mask}`` from a folder of scans or a healthy datalist."""
    if healthy.is_dir():
        files = sorted(
            p
            for p in healthy.iterdir()
            if is_nifti(p) and not nifti_stem(p).endswith(MASK_SUFFIXES) and not p.name.startswith(".")
        )
        if not files:
            raise FileNotFoundError(f"{healthy}: no NIfTI scans (*.nii, *.nii.gz) in this folder")
        items = []
        for p in files:
            masks = [p.with_name(nifti_stem(p) + s + ".nii.gz") for s in MASK_SUFFIXES]
            mask = next((m for m in masks if m.is_file()), None)
            items.append({"case_id": nifti_stem(p), "image": p, "brain_mask": mask})
        return items
    if healthy.is_file() and healthy.suffix == ".json":
        data = read_datalist(healthy)
        raw = [it for key, value in data.items() if isinstance(value, list) for it in value if isinstance(it, dict)]
        if not raw:
            raise ValueError(f"{healthy}: healthy datalist has no items")
        items = []
        for k, it in enumerate(raw):
            image = it.get("image")
            if isinstance(image, list | tuple):
                image = image[0] if image else None
            if not isinstance(image, str):
                raise ValueError(f"{healthy}: item {k} has no image")
            mask = it.get("brain_mask")
            items.append(
                {
                    "case_id": case_id_of(it),
                    "image": Path(image),
                    "brain_mask": Path(mask) if mask else None,
                }
            )
        return items
    raise FileNotFoundError(f"{healthy}: expected a folder of healthy scans or a healthy datalist (.json)")


@contextlib.contextmanager
def _itk_threads(threads: int) -> Iterator[None]:
    """Set ITK's process-wide default thread count for the block (the metric's threads follow it,
    not ``ImageRegistrationMethod.SetNumberOfThreads``; one thread makes results bit-reproducible)."""
    previous = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(int(threads))
    try:
        yield
    finally:
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(previous)


def _register_stage(
    fixed: sitk.Image,
    moving: sitk.Image,
    fixed_mask: sitk.Image,
    initial: sitk.Transform,
    settings: RegistrationSettings,
) -> tuple[sitk.Transform, float, int]:
    reg = sitk.ImageRegistrationMethod()
    reg.SetNumberOfThreads(settings.threads)
    reg.SetMetricAsMattesMutualInformation(numberOfHistogramBins=settings.histogram_bins)
    reg.SetMetricSamplingStrategy(reg.RANDOM)
    shrink, fractions = settings.pyramid(fixed_mask)
    # SimpleITK reads seed 0 as "seed from the wall clock": shift by one so every seed is fixed
    reg.SetMetricSamplingPercentagePerLevel(fractions, int(settings.seed) + 1)
    reg.SetMetricFixedMask(fixed_mask)
    # gradients by central differences at the sampled points: precomputing gradient images of
    # the whole volumes at every level costs several seconds per stage for no accuracy gain
    reg.MetricUseFixedImageGradientFilterOff()
    reg.MetricUseMovingImageGradientFilterOff()
    reg.SetInterpolator(sitk.sitkLinear)
    reg.SetOptimizerAsRegularStepGradientDescent(
        learningRate=settings.learning_rate,
        minStep=settings.min_step,
        numberOfIterations=settings.iterations,
        relaxationFactor=0.5,
        gradientMagnitudeTolerance=1e-6,
    )
    reg.SetOptimizerScalesFromPhysicalShift()
    reg.SetShrinkFactorsPerLevel(shrink)
    reg.SetSmoothingSigmasPerLevel([float(s) for s in settings.smoothing_sigmas])
    reg.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
    reg.SetInitialTransform(initial, inPlace=False)
    with _itk_threads(settings.threads):
        transform = reg.Execute(fixed, moving)
    return transform, float(reg.GetMetricValue()), int(reg.GetOptimizerIteration())


def register(
    fixed: sitk.Image,
    moving: sitk.Image,
    fixed_mask: sitk.Image,
    moving_mask: sitk.Image,
    settings: RegistrationSettings,
) -> tuple[sitk.Transform, dict[str, Any]]:
    """Rigid (Euler3D) then affine registration of ``moving`` to ``fixed``.

    Args:
        fixed: reference image (float32).
        moving: image to align (float32).
        fixed_mask: reference brain (uint8, fixed's grid); the metric samples inside it.
        moving_mask: moving brain (uint8), used with ``fixed_mask`` for the moments initialiser.
        settings: registration parameters.

    Returns:
        ``(transform, info)``: the transform mapping fixed physical points to moving ones, and the
        final metric values, iterations and the transform's matrix (LPS, as ITK) for provenance.
    """
    with _itk_threads(settings.threads):
        initial = sitk.CenteredTransformInitializer(
            sitk.Cast(fixed_mask, sitk.sitkFloat32),
            sitk.Cast(moving_mask, sitk.sitkFloat32),
            sitk.Euler3DTransform(),
            sitk.CenteredTransformInitializerFilter.MOMENTS,
        )
    rigid, rigid_metric, rigid_iters = _register_stage(fixed, moving, fixed_mask, initial, settings)
    rigid = sitk.CompositeTransform(rigid).GetNthTransform(0) if rigid.GetName() == "CompositeTransform" else rigid
    rigid = sitk.Euler3DTransform(rigid)
    shrink, fractions = settings.pyramid(fixed_mask)
    info: dict[str, Any] = {
        "shrink_factors": shrink,
        "sampling_fractions": [round(f, 4) for f in fractions],
        "rigid_metric": rigid_metric,
        "rigid_iterations": rigid_iters,
    }
    final: sitk.Transform = rigid
    if settings.affine:
        affine = sitk.AffineTransform(3)
        affine.SetCenter(rigid.GetCenter())
        affine.SetMatrix(rigid.GetMatrix())
        affine.SetTranslation(rigid.GetTranslation())
        result, metric, iters = _register_stage(fixed, moving, fixed_mask, affine, settings)
        if result.GetName() == "CompositeTransform":
            result = sitk.CompositeTransform(result).GetNthTransform(0)
        final = sitk.AffineTransform(result)
        info.update(affine_metric=metric, affine_iterations=iters)
    matrix = np.asarray(final.GetMatrix()).reshape(3, 3)
    info.update(
        final_metric=info.get("affine_metric", rigid_metric),
        transform={
            "type": final.GetName(),
            "space": "ITK physical (LPS) coordinates, maps reference points to source points",
            "matrix": np.round(matrix, 6).tolist(),
            "translation": np.round(final.GetTranslation(), 4).tolist(),
            "center": np.round(final.GetCenter(), 4).tolist(),
        },
    )
    return final, info


def _resample(
    image: sitk.Image, reference: sitk.Image, transform: sitk.Transform, nearest: bool, threads: int
) -> sitk.Image:
    """Resample ``image`` onto ``reference``'s grid (linear or nearest), 0 outside its field of view."""
    f = sitk.ResampleImageFilter()
    f.SetNumberOfThreads(threads)
    f.SetReferenceImage(reference)
    f.SetTransform(transform)
    f.SetInterpolator(sitk.sitkNearestNeighbor if nearest else sitk.sitkLinear)
    f.SetDefaultPixelValue(0.0)
    f.SetOutputPixelType(image.GetPixelID())
    return f.Execute(image)


def choose_reference(real_datalist: str | os.PathLike, section: str = "training") -> dict[str, Any]:
    """The reference image of a real datalist: the first case's T1-weighted image.

    ``t1n`` is preferred, then ``t1c`` (:data:`REFERENCE_MODALITIES`), chosen by name from the datalist's
    top-level ``modalities``; without a T1-weighted modality (or without ``modalities``) the first image.

    Args:
        real_datalist: the real tumour datalist.
        section: section whose first item is used.

    Returns:
        ``{"image": Path, "brain_mask": Path | None, "modality": str | None, "case_id": str}``.
    """
    data = read_datalist(real_datalist)
    items = data.get(section)
    if not isinstance(items, list) or not items or not isinstance(items[0], dict) or not items[0].get("image"):
        raise ValueError(f"{real_datalist}: no {section!r} item with an image to use as the registration reference")
    item = items[0]
    images = item["image"] if isinstance(item["image"], list) else [item["image"]]
    modalities = data.get("modalities")
    index, modality = 0, None
    if isinstance(modalities, list) and len(modalities) == len(images):
        preferred = [m for m in REFERENCE_MODALITIES if m in modalities]
        modality = preferred[0] if preferred else str(modalities[0])
        index = modalities.index(modality)
    mask = item.get("brain_mask")
    return {
        "image": Path(images[index]),
        "brain_mask": Path(mask) if mask else None,
        "modality": modality,
        "case_id": case_id_of(item),
    }


def _stage_file(staging: Path, out: Path, name: str) -> tuple[Path, Path]:
    """(where a prepared file is written first, where it ends up)."""
    return staging / name, out / name


def _check_settings(settings: RegistrationSettings, min_brain_dice: float) -> None:
    """Refuse registration settings and a Dice gate that cannot work."""
    if len(settings.resolutions_mm) != len(settings.smoothing_sigmas):
        raise ValueError("settings.resolutions_mm and settings.smoothing_sigmas need one value per level")
    if settings.seed < 0:
        raise ValueError(f"settings.seed must be >= 0, got {settings.seed}")
    if not 0 < settings.sampling_fraction <= 1:
        raise ValueError(f"settings.sampling_fraction must be in (0, 1], got {settings.sampling_fraction}")
    if not 0 <= min_brain_dice <= 1:
        raise ValueError(f"min_brain_dice must be in [0, 1], got {min_brain_dice}")


def _resolve_reference(
    reference: Path, reference_mask: str | os.PathLike | None, verbose: bool
) -> tuple[Path, str | os.PathLike | None]:
    """The reference image (a real datalist's choice, see :func:`choose_reference`) and its mask; logs the choice."""
    if reference.suffix == ".json":
        chosen = choose_reference(reference)
        what = f"{chosen['modality'] or 'first image'} of case {chosen['case_id']} in {reference}"
        reference = chosen["image"]
        if reference_mask is None:
            reference_mask = chosen["brain_mask"]
    else:
        what = "given"
    message = f"prepare-healthy: reference image {reference} ({what})"
    logger.info(message)
    if verbose:
        print(message)
    return reference, reference_mask


def _plan(
    healthy: Path, reference: Path, reference_mask: str | os.PathLike | None, out: Path
) -> tuple[_Volume, list[dict[str, Any]], list[_Volume]]:
    """Load and validate the reference, every healthy scan and the output names, before anything is written.

    Returns:
        The reference volume, the healthy items and their loaded scans.
    """
    ref = _load_volume(reference, "reference image", None if reference_mask is None else Path(reference_mask))
    items = _healthy_inputs(healthy)
    ids = [it["case_id"] for it in items]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise ValueError(f"{healthy}: duplicate case ids {duplicates}")
    inputs = {reference.resolve()}
    scans = []
    for it in items:
        scans.append(_load_volume(it["image"], "healthy scan", it["brain_mask"]))
        inputs.add(it["image"].resolve())
        if it["brain_mask"] is not None:
            inputs.add(it["brain_mask"].resolve())
    for case in ids:
        for name in (f"{case}_t1n.nii.gz", f"{case}_brainmask.nii.gz"):
            if (out / name).resolve() in inputs:
                raise ValueError(f"{out / name}: output would overwrite an input; choose another out folder")
    return ref, items, scans


class _Gate:
    """Registers one healthy scan to the reference, checks its brain Dice (the gate) and stages its files.

    Args:
        ref: the reference volume.
        reference: its file.
        out: the output folder (QC PNGs are written there at once; a failed case always gets its PNG).
        settings, min_brain_dice, lower, upper, qc, verbose: as for :func:`prepare_healthy`.
    """

    def __init__(
        self,
        ref: _Volume,
        reference: Path,
        out: Path,
        settings: RegistrationSettings,
        min_brain_dice: float,
        lower: float,
        upper: float,
        qc: bool,
        verbose: bool,
    ) -> None:
        self.ref, self.reference, self.out, self.settings = ref, reference, out, settings
        self.min_brain_dice, self.lower, self.upper, self.qc, self.verbose = min_brain_dice, lower, upper, qc, verbose
        self.fixed = to_sitk(ref.data, ref.affine)
        self.fixed_crop, self.fixed_crop_mask = _cropped_sitk(ref)
        self.rescale = RescaleBrainIntensity(lower, upper)

    def prepare(self, case: str, scan: _Volume, staging: Path) -> tuple[dict[str, Any] | None, str | None]:
        """Register ``scan``; returns its datalist entry (files staged in ``staging``) or the reason it failed."""
        start = time.perf_counter()
        settings, ref, reference, min_brain_dice = self.settings, self.ref, self.reference, self.min_brain_dice
        moving = to_sitk(scan.data, scan.affine)
        moving_mask = to_sitk(scan.brain.astype(np.uint8), scan.affine)
        moving_crop, moving_crop_mask = _cropped_sitk(scan)
        transform, info = register(self.fixed_crop, moving_crop, self.fixed_crop_mask, moving_crop_mask, settings)
        warped = from_sitk(_resample(moving, self.fixed, transform, False, settings.threads))
        brain = from_sitk(_resample(moving_mask, self.fixed, transform, True, settings.threads)) > 0
        overlap = dice(brain, ref.brain)
        passed = overlap >= min_brain_dice
        png = self.out / f"{case}_qc.png"
        if brain.sum() < 1000:
            return None, (
                f"{scan.path}: registration to {reference} moved the brain out of the reference grid "
                f"(brain Dice {overlap:.3f})"
            )
        prepared = self.rescale(warped[None].astype(np.float32), brain[None])[0]
        lo, hi = np.percentile(warped[brain], [self.lower, self.upper])
        if self.qc or not passed:
            save_montage(
                prepared,
                None,
                png,
                title=f"{case} registered to {reference.name}: brain Dice {overlap:.3f}"
                + ("" if passed else f" < {min_brain_dice:.2f} FAILED"),
                extra_images=[ref.data],
                row_titles=["prepared", "reference"],
                outline=ref.brain,
                affine=ref.affine,
                outline_name="reference brain",
            )
        seconds = time.perf_counter() - start
        if self.verbose:
            print(
                f"{case}: registered to {reference.name} in {seconds:.1f} s, "
                f"Mattes MI {info['final_metric']:.4f}, brain Dice vs reference {overlap:.3f}"
                + ("" if passed else f" < min_brain_dice {min_brain_dice:.2f}: FAILED")
            )
        if not passed:
            return None, (
                f"{scan.path}: registration to the reference {reference} failed the quality gate: brain Dice "
                f"{overlap:.3f} < min_brain_dice {min_brain_dice:.2f}; look at {png}. Check the scan's brain "
                "mask (pass 'brain_mask' when the inferred one is wrong), its orientation and field of view, "
                "or lower min_brain_dice if the brains really differ this much"
            )
        image_tmp, image_path = _stage_file(staging, self.out, f"{case}_t1n.nii.gz")
        mask_tmp, mask_path = _stage_file(staging, self.out, f"{case}_brainmask.nii.gz")
        save_nifti(prepared, ref.affine, image_tmp, dtype=np.float32)
        save_nifti(brain.astype(np.uint8), ref.affine, mask_tmp)
        with atomic_path(staging / f"{case}_affine.tfm", suffix=".tfm") as tmp:
            sitk.WriteTransform(transform, str(tmp))
        entry: dict[str, Any] = {
            "case_id": case,
            "image": [str(image_path.resolve())],
            "brain_mask": str(mask_path.resolve()),
            "provenance": {
                "stage": "prepare-healthy",
                "source": str(scan.path.resolve()),
                "source_brain_mask": None if scan.mask_path is None else str(scan.mask_path.resolve()),
                "reference": str(reference.resolve()),
                "reference_brain_mask": None if ref.mask_path is None else str(ref.mask_path.resolve()),
                "registration": {**settings.as_dict(), **info},
                "transform_file": f"{case}_affine.tfm",
                "dice_brain_vs_reference": round(overlap, 4),
                "min_brain_dice": float(min_brain_dice),
                "intensity": {
                    "lower_percentile": self.lower,
                    "upper_percentile": self.upper,
                    "lo": float(lo),
                    "hi": float(hi),
                },
            },
        }
        if self.qc:
            entry["provenance"]["qc"] = png.name
        return entry, None


def _commit(staging: Path, out: Path) -> None:
    """Move every staged file into ``out`` (after every scan passed the gate)."""
    for staged in sorted(staging.iterdir()):
        os.replace(staged, out / staged.name)


def prepare_healthy(
    healthy: str | os.PathLike,
    reference: str | os.PathLike,
    out: str | os.PathLike,
    qc: bool = True,
    lower: float = 0.5,
    upper: float = 99.5,
    settings: RegistrationSettings | None = None,
    overwrite: bool = False,
    verbose: bool = True,
    min_brain_dice: float = MIN_BRAIN_DICE,
    reference_mask: str | os.PathLike | None = None,
) -> Path:
    """Register healthy scans to a reference tumour image, resample, brain-mask, rescale to [-1, 1].

    Writes ``<out>/<case_id>_t1n.nii.gz`` (float32, reference grid and affine, brain in [-1, 1],
    background -1), ``<out>/<case_id>_brainmask.nii.gz`` (uint8), ``<out>/<case_id>_affine.tfm``
    (the ITK transform), ``<out>/<case_id>_qc.png`` (when ``qc``) and ``<out>/datalist.json``.
    Every input is validated before anything is written; inputs are never modified. Every scan is
    registered and its brain Dice with the reference checked before any prepared file is moved into
    ``out``: when one fails, nothing but the QC PNGs is written (a failed case always gets its PNG).

    Args:
        healthy: folder of skull-stripped scans (``*_brainmask`` / ``*_brain_mask`` / ``*_mask`` /
            ``*-mask`` files beside a scan are used as its brain mask) or a healthy datalist (items with
            ``image`` and optional ``brain_mask``).
        reference: one image of the real tumour data, whose grid and affine define the target space;
            or the real datalist (``.json``), whose first training case's T1-weighted image is used
            (see :func:`choose_reference`).
        out: output folder.
        qc: write a QC PNG per case (prepared scan over the reference, reference brain outlined).
        lower: lower brain percentile mapped to -1.
        upper: upper brain percentile mapped to 1.
        settings: registration parameters (default :class:`RegistrationSettings`).
        overwrite: replace an existing ``<out>/datalist.json`` (otherwise refuse).
        verbose: print one line per case (time, metric, Dice).
        min_brain_dice: a registered scan whose brain Dice with the reference brain is below this fails
            the run (0 disables the gate).
        reference_mask: brain mask of the reference image (default: the reference datalist item's
            ``brain_mask``, else inferred).

    Returns:
        The written datalist path.

    Raises:
        FileNotFoundError / ValueError / FileExistsError naming the offending file;
        :class:`RegistrationQualityError` when a registration fails the Dice gate.
    """
    settings = settings or RegistrationSettings()
    _check_settings(settings, min_brain_dice)
    healthy, out = Path(healthy), Path(out)
    reference, reference_mask = _resolve_reference(Path(reference), reference_mask, verbose)
    datalist_path = out / "datalist.json"
    if datalist_path.exists() and not overwrite:
        raise FileExistsError(f"{datalist_path}: prepared healthy data already there; choose another out or overwrite")
    ref, items, scans = _plan(healthy, reference, reference_mask, out)  # every input validated, nothing written
    gate = _Gate(ref, reference, out, settings, min_brain_dice, lower, upper, qc, verbose)
    entries, failures = [], []
    out.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".prepare-healthy-", dir=out))
    try:
        for it, scan in zip(items, scans, strict=True):
            entry, failure = gate.prepare(it["case_id"], scan, staging)
            if failure is not None:
                failures.append(failure)
            else:
                entries.append(entry)
        if failures:
            raise RegistrationQualityError(
                f"prepare-healthy: {len(failures)} of {len(items)} healthy scan(s) failed; no prepared case was "
                "written:\n" + "\n".join(failures)
            )
        _commit(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    write_datalist(
        datalist_path,
        {
            "description": f"Healthy scans registered (rigid + affine) to {reference.name}, resampled to its grid, "
            "brain-masked and rescaled to [-1, 1] (background -1).",
            "labels": "internal",
            "modalities": ["t1n"],
            "reference": str(reference.resolve()),
            "training": entries,
        },
    )
    return datalist_path
