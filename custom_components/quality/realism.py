"""How real do synthetic tumours look? Distances between synthetic and real tumour cases, with floors.

Three measures, each per tumour class (internal NCR=1, ED=2, ET=3) unless said otherwise:

- **Class-wise Frechet distance of frozen-encoder features.** The features are those of TF's
  class-wise perceptual loss (its eq. 3): the first ``levels`` encoder levels of F (the encoder of
  a segmentation model trained on real data), average-pooled over the voxels of the class (masked
  global average pooling, :meth:`ClasswisePerceptualLoss.class_vectors`). Each case gives one vector
  per level and class; the Frechet distance ``|mu_s - mu_r|^2 + tr(S_s + S_r - 2 (S_s S_r)^(1/2))``
  between the synthetic and the real vectors is computed per level and averaged over levels.
- **Intensity distribution distance.** 1-D Wasserstein distance (``scipy.stats.wasserstein_distance``)
  between the brain-normalised intensities (``RescaleBrainIntensity``: brain 0.5-99.5 percentiles to
  [-1, 1], as every model input) of the class's voxels, pooled over cases, per modality.
- **Boundary sharpness.** Mean gradient magnitude (per mm, brain-normalised intensities) over the
  voxels on the whole tumour's border (inside and outside neighbours of the boundary), per modality,
  averaged over cases; reported for synthetic and real and as their ratio (1 = as sharp as real; a
  pasted tumour is typically too sharp, a blurred one too soft).

- **Frechet Radiomics Distance (FRD v1, package ``frd-score`` 1.0.1).** Per modality: frd-score's own
  radiomic feature extraction (PyRadiomics, its 3-D v1 configuration: Original, LoG and wavelet images;
  first-order, GLCM, GLRLM, GLSZM and NGTDM features plus numeric diagnostics, about 1000 per case) of the
  brain-normalised image inside the **whole-tumour mask** (label > 0), then its distance: features z-scored on
  the reference set (the real cases), columns that are not finite dropped, the Frechet distance ``d2`` of
  Gaussians fitted to both sets (computed exactly in the span of the cases, see :func:`frd_from_features`),
  reported as ``ln(d2)`` (so it can be negative; identical sets give -inf).
  Before extraction PyRadiomics z-scores each image over all its voxels (x100) and resamples it to 2 mm.
  Features are extracted once per case; every split of the floor reuses them. It needs at least two cases
  with features on each side (the reference's z-score and both covariances), else None with a reason.
  Whole tumour rather than per class: three times the extraction time, and the NCR core and ED shell are
  often too small or thin for stable texture features. The z-score uses the reference's standard deviations;
  distance and floor share the reference (the real half ``B`` below).

The **floor** of each distance is the same distance between two halves of the real cases, ``A`` and ``B``
(averaged over ``n_splits`` random splits): what two samples of real tumours differ by. **Equal set sizes:**
distances between sets depend on the sets' sizes (a Frechet distance of 2 cases against 2 is not one of 8 against
4, and covariances of two cases are degenerate), so the distance is measured where the floor is: a random subset
``S`` of the synthetic cases as large as ``A``, against ``B`` (:func:`matched_splits`), averaged over the same
splits; ``set_sizes`` records the sizes. A synthetic set at the floor is as close to real as real tumours are to
each other, and one below it is not "more real than real": at these sizes the distance cannot see the difference,
which :func:`below_floor` says in a line. The floor needs at least two real cases; with one it is None and the
distance compares all cases.

The **classifier two-sample test** (:mod:`custom_components.quality.c2st`, ``result["c2st"]``) comes first: can a
classifier tell the synthetic tumours' patches from real ones (AUC, interval, p-value, beside the same test
between two halves of real cases)? It answers the question the distances only approach.

Choices where the paper is silent (written down in docs/architecture.md): the unit of the Frechet
distance is the case (one masked-GAP vector per case, level and class, as the loss pools); with a
single case on a side its covariance is taken as zero; per-case features are computed on the tumour's
bounding box plus ``margin`` voxels (beyond the first levels' receptive field) to keep CPU time low.
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch
import torch.nn.functional as F
from scipy import linalg, ndimage, stats

from custom_components.data.atomic import save_nifti
from custom_components.data.datalist import label_convention_of, read_datalist, select_modalities
from custom_components.data.labels import INTERNAL_CLASSES, TUMOUR_CLASSES, to_internal
from custom_components.data.parallel import fork_map
from custom_components.quality.c2st import C2STSettings, c2st_scores, content_digest, mask_box
from custom_components.transforms.intensity import RescaleBrainIntensity

logger = logging.getLogger(__name__)


@dataclass
class RealismCase:
    """One case in memory: brain-normalised image ``(C, X, Y, Z)``, internal label, voxel size (mm)."""

    case_id: str
    image: np.ndarray
    label: np.ndarray
    zooms: tuple[float, float, float]


def load_cases(
    datalist: str | os.PathLike,
    modalities: Sequence[str] | None = None,
    section: str = "training",
    max_cases: int | None = None,
) -> tuple[list[RealismCase], list[str]]:
    """Read the cases of a datalist section (images rescaled to [-1, 1] on the brain, labels internal).

    Args:
        datalist: datalist JSON.
        modalities: modalities to use, in channel order (default: the datalist's ``modalities``).
        section: datalist section.
        max_cases: read at most this many (in datalist order).

    Raises:
        FileNotFoundError / ValueError naming the datalist or file on missing files, missing modalities or
        labels without tumour.
    """
    data = read_datalist(datalist)
    if section not in data:
        raise ValueError(f"{datalist}: no section {section!r} (has: {', '.join(sorted(data))})")
    convention = label_convention_of(data, source=str(datalist))
    available = data.get("modalities")
    mods = list(modalities or available or [])
    items = data[section][:max_cases] if max_cases else data[section]
    if not items:
        raise ValueError(f"{datalist}: section {section!r} is empty")
    cases = []
    for k, item in enumerate(items):
        cid = str(item.get("case_id", k))
        images = item["image"] if isinstance(item["image"], list) else [item["image"]]
        wanted = mods or [f"channel{i}" for i in range(len(images))]
        files = select_modalities(images, available, wanted, f"{datalist} case {cid}")
        vols = []
        for f in files:
            if not Path(f).is_file():
                raise FileNotFoundError(f"{f}: image of case {cid} in {datalist} not found")
            img = nib.as_closest_canonical(nib.load(f))
            vols.append(np.asarray(img.dataobj, dtype=np.float32))
        zooms = tuple(float(z) for z in img.header.get_zooms()[:3])
        if not Path(item["label"]).is_file():
            raise FileNotFoundError(f"{item['label']}: label of case {cid} in {datalist} not found")
        lab = to_internal(np.asarray(nib.as_closest_canonical(nib.load(item["label"])).dataobj), convention)
        if lab.shape != vols[0].shape:
            raise ValueError(f"{item['label']}: label shape {lab.shape} differs from the image's {vols[0].shape}")
        if not (lab > 0).any():
            raise ValueError(f"{item['label']}: no tumour voxels (case {cid} in {datalist})")
        brain = None
        if item.get("brain_mask"):  # the item's brain mask wins over the inferred one
            brain = np.asarray(nib.as_closest_canonical(nib.load(item["brain_mask"])).dataobj)[None] > 0
        image = np.asarray(RescaleBrainIntensity()(np.stack(vols), brain), dtype=np.float32)
        cases.append(RealismCase(cid, image, lab.astype(np.uint8), zooms))
    return cases, (mods or wanted)


# ---- distances ------------------------------------------------------------------------------------
def _sqrt_psd(m: np.ndarray) -> np.ndarray:
    w, v = linalg.eigh(m)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Frechet distance between Gaussians fitted to two samples of vectors ``(n, d)`` and ``(m, d)``.

    ``|mu_a - mu_b|^2 + tr(S_a) + tr(S_b) - 2 tr((S_a^(1/2) S_b S_a^(1/2))^(1/2))``, covariances with
    ``ddof=1`` (zero for a single vector). The trace term is computed from symmetric eigen-decompositions,
    so rank-deficient covariances (fewer cases than feature channels) are fine.
    """
    a = np.atleast_2d(np.asarray(a, dtype=np.float64))
    b = np.atleast_2d(np.asarray(b, dtype=np.float64))
    if a.shape[1] != b.shape[1] or len(a) == 0 or len(b) == 0:
        raise ValueError(f"need non-empty samples of equal dimension, got {a.shape} and {b.shape}")

    def cov(x: np.ndarray) -> np.ndarray:
        return (
            np.cov(x, rowvar=False, ddof=1).reshape(x.shape[1], x.shape[1])
            if len(x) > 1
            else np.zeros((x.shape[1],) * 2)
        )

    ca, cb = cov(a), cov(b)
    root_a = _sqrt_psd(ca)
    cross = np.sqrt(np.clip(linalg.eigvalsh(root_a @ cb @ root_a), 0.0, None)).sum()
    dist = float(((a.mean(0) - b.mean(0)) ** 2).sum() + np.trace(ca) + np.trace(cb) - 2.0 * cross)
    return max(dist, 0.0)


def wasserstein(a: Sequence[np.ndarray], b: Sequence[np.ndarray]) -> float | None:
    """1-D Wasserstein distance between the pooled values of two lists of per-case arrays (None if empty)."""
    u = np.concatenate([np.ravel(x) for x in a]) if a else np.zeros(0)
    v = np.concatenate([np.ravel(x) for x in b]) if b else np.zeros(0)
    if u.size == 0 or v.size == 0:
        return None
    return float(stats.wasserstein_distance(u, v))


def matched_splits(
    n_real: int, n_synthetic: int, n_splits: int, seed: int
) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """``(A, B, S)`` index triples of equal-size comparisons: real half ``A`` (``min(n_real // 2, n_synthetic)``
    cases) and the disjoint real half ``B`` (the last ``n_real - n_real // 2`` of a random permutation) give the
    floor ``d(A, B)``; a random subset ``S`` of the synthetic cases, as large as ``A``, gives the distance
    ``d(S, B)``. The real halves are drawn from ``seed`` alone, the subsets from ``[seed, 1]``, so the floor
    depends on the real set (and the size of ``A``) only. Empty with fewer than two real cases."""
    if n_real < 2:
        return []
    rng, rng_synthetic = np.random.default_rng(seed), np.random.default_rng([seed, 1])
    size = min(n_real // 2, n_synthetic)
    out = []
    for _ in range(n_splits):
        perm = rng.permutation(n_real)
        out.append((perm[:size], perm[n_real // 2 :], rng_synthetic.choice(n_synthetic, size, replace=False)))
    return out


# ---- per-case measurements --------------------------------------------------------------------------
def encoder_class_vectors(
    cases: Sequence[RealismCase],
    encoder: torch.nn.Module,
    levels: int = 3,
    classes: Sequence[int] = TUMOUR_CLASSES,
    margin: int = 16,
    device: str | torch.device = "cpu",
) -> list[dict[int, list[np.ndarray | None]]]:
    """Masked-GAP feature vectors per case, class and level: ``[case]{class: [level vector or None]}``
    (None where the class is absent at that level).

    Args:
        cases: the cases.
        encoder: frozen feature extractor (``FrozenEncoder``) returning at least ``levels`` feature maps.
        levels: encoder levels used (TF's perceptual loss: 3).
        classes: internal class values.
        margin: voxels of context kept around the tumour's bounding box.
        device: where the encoder runs.
    """
    from custom_components.losses.classwise_perceptual import ClasswisePerceptualLoss

    pooler = ClasswisePerceptualLoss(encoder, levels=levels, classes=classes).to(device)
    multiple = 2 ** (levels - 1)
    out = []
    with torch.no_grad():
        for case in cases:
            box = mask_box(case.label > 0, margin)
            img = torch.from_numpy(np.ascontiguousarray(case.image[(slice(None), *box)]))[None]
            lab = torch.from_numpy(case.label[box].astype(np.int64))[None, None]
            pad = []
            for s in reversed(img.shape[2:]):
                pad += [0, (-s) % multiple]
            img = F.pad(img, pad, value=-1.0).to(device)
            lab = F.pad(lab, pad, value=0).to(device)
            vectors: dict[int, list[np.ndarray | None]] = {c: [] for c in classes}
            for vec, present in pooler.class_vectors(img, lab):
                for k, c in enumerate(classes):
                    vectors[c].append(vec[0, k].double().cpu().numpy() if bool(present[0, k]) else None)
            out.append(vectors)
    return out


def class_intensities(
    cases: Sequence[RealismCase], classes: Sequence[int] = TUMOUR_CLASSES
) -> dict[int, list[list[np.ndarray]]]:
    """Brain-normalised intensities of each class's voxels: ``{class: [modality][case arrays]}``."""
    n_mod = cases[0].image.shape[0] if cases else 0
    return {c: [[case.image[m][case.label == c] for case in cases] for m in range(n_mod)] for c in classes}


def boundary_sharpness(case: RealismCase) -> np.ndarray:
    """Mean gradient magnitude (per mm) per modality over the whole tumour's border voxels: tumour voxels
    with a non-tumour 6-neighbour and non-tumour voxels with a tumour 6-neighbour."""
    box = mask_box(case.label > 0, 2)
    tumour = case.label[box] > 0
    border = ndimage.binary_dilation(tumour) & ~ndimage.binary_erosion(tumour)
    out = []
    for channel in case.image[(slice(None), *box)]:
        grads = np.gradient(channel.astype(np.float64), *case.zooms)
        out.append(float(np.sqrt(sum(g**2 for g in grads))[border].mean()))
    return np.array(out)


def _mean_or_none(values: Sequence[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return float(np.mean(vals)) if vals else None


# ---- Frechet Radiomics Distance (frd-score) -------------------------------------------------------
FRD_PACKAGE = "frd-score"


def frd_package() -> str:
    """``"frd-score <version>"``, after importing frd-score and PyRadiomics.

    Raises:
        ImportError: one of them is not installed (or does not import).
    """
    import frd_score  # noqa: F401
    import radiomics  # noqa: F401

    return f"{FRD_PACKAGE} {importlib.metadata.version(FRD_PACKAGE)}"


# FRD feature vectors already extracted in this process, by case content (:func:`frd_case_features`)
_FRD_CACHE: dict[str, list[np.ndarray | None]] = {}
_FRD_CACHE_SIZE = 256


def frd_case_features(cases: Sequence[RealismCase]) -> list[list[np.ndarray | None]]:
    """frd-score's FRD v1 radiomic feature vector of every case and modality inside the whole-tumour mask
    (label > 0): ``[case][modality]``, None (with a warning) where PyRadiomics cannot measure the mask (one voxel
    or fewer, also after its resampling to 2 mm).

    frd-score reads files: each channel and the mask are written as temporary NIfTI files with the case's voxel
    size and passed to its ``process_image_mask_pair`` with its v1 3-D extractor (``get_feature_extractor``).
    A case's vectors are computed once per process (keyed by its content: a report compares every method with the
    same held-out cases, and the extraction takes about a second a case and modality), the new cases in processes
    forked from this one, one per CPU (:func:`~custom_components.data.parallel.fork_map`).

    Args:
        cases: the cases (brain-normalised images, internal labels).

    Raises:
        ImportError: frd-score or PyRadiomics is not installed.
    """
    import radiomics
    from frd_score import frd as frd_lib

    # PyRadiomics logs every step at INFO, to its own stderr handler and to any handler of the root logger
    logging.getLogger("radiomics").setLevel(logging.ERROR)
    radiomics.setVerbosity(logging.ERROR)
    extractor = frd_lib.get_feature_extractor(frd_version=frd_lib.FRD_VERSION_V1, image_dim=3)
    keys = [content_digest([c.image, (c.label > 0).astype(np.uint8), np.asarray(c.zooms, np.float64)]) for c in cases]
    found = {key: _FRD_CACHE[key] for key in keys if key in _FRD_CACHE}
    todo = [keys.index(key) for key in dict.fromkeys(keys) if key not in found]  # each new content once

    with tempfile.TemporaryDirectory(prefix="frd_") as tmp:

        def extract(j: int) -> list[np.ndarray | None]:
            case = cases[todo[j]]
            folder = Path(tmp) / str(j)
            folder.mkdir()
            affine = np.diag([*case.zooms, 1.0])
            mask = save_nifti((case.label > 0).astype(np.uint8), affine, folder / "mask.nii")
            vectors: list[np.ndarray | None] = []
            for channel in case.image:
                image = save_nifti(channel, affine, folder / "image.nii")
                try:
                    res = frd_lib.process_image_mask_pair(
                        (image, mask), feature_extractor=extractor, frd_version=frd_lib.FRD_VERSION_V1
                    )
                except ValueError as e:  # PyRadiomics' mask checks
                    logger.warning("FRD: no radiomic features for case %s: %s", case.case_id, e)
                    res = None
                vectors.append(None if res is None else np.asarray(res[0], dtype=np.float64))
            return vectors

        # one case a call, on every CPU (PyRadiomics runs one thread a case); the vectors are the serial ones
        for i, vectors in zip(todo, fork_map(extract, len(todo)), strict=True):
            found[keys[i]] = vectors
            if len(_FRD_CACHE) >= _FRD_CACHE_SIZE:
                _FRD_CACHE.pop(next(iter(_FRD_CACHE)))
            _FRD_CACHE[keys[i]] = vectors
    return [list(found[key]) for key in keys]


def frd_from_features(
    reference: Sequence[np.ndarray | None], other: Sequence[np.ndarray | None]
) -> tuple[float | None, str | None]:
    """FRD v1 between two samples of per-case feature vectors (:func:`frd_case_features`), the steps of
    frd-score's ``compute_frd`` after its extraction (``calculate_feature_statistics`` with the v1 defaults,
    its ``z_score_normalize`` and ``calculate_frechet_distance``): cases with a NaN feature dropped, float32,
    z-score on the reference set (D1), feature columns with a non-finite value on either side dropped,
    Frechet distance ``d2`` of the fitted Gaussians, FRD = ``ln(d2)`` (-inf for ``d2 <= 0``).

    One change of basis, exact: both Gaussians live in the span of the centred cases and the difference of
    the means (at most ``n_reference + n_other`` dimensions), and the Frechet distance does not change under a
    rotation, so ``calculate_frechet_distance`` gets the features in an orthonormal basis of that span. Its
    ``sqrtm`` of the ~1000x1000 covariance product takes 5-25 s per distance on a 2-core machine, in the
    span milliseconds (same ``d2`` to 1e-6 relative; float32 rounding).

    Args:
        reference: the reference (real) cases' vectors, None for a case without features.
        other: the compared cases' vectors.

    Returns:
        ``(FRD, None)``, or ``(None, reason)`` when a side has fewer than two cases with features (the
        reference's standard deviations and each side's covariance need two) or no feature is usable.
    """
    from frd_score import frd as frd_lib

    sides = [[v for v in side if v is not None and not np.isnan(v).any()] for side in (reference, other)]
    if min(len(side) for side in sides) < 2:
        return None, (
            f"FRD needs at least 2 cases with features on each side, got {len(sides[0])} (reference) "
            f"and {len(sides[1])}"
        )
    feats = [np.stack(side).astype(np.float32) for side in sides]
    low, high = frd_lib.V1_DEFAULT_NORM_RANGE
    normed = [
        frd_lib.z_score_normalize(f, low, high, base_distribution=feats[0], replace_nan=False, handle_std_zero=False)
        for f in feats
    ]
    keep = np.all([np.isfinite(n).all(axis=0) for n in normed], axis=0)
    if not keep.any():
        return None, "no radiomic feature varies across the reference cases"
    normed = [n[:, keep] for n in normed]
    span = np.vstack([n - n.mean(axis=0) for n in normed] + [normed[0].mean(axis=0) - normed[1].mean(axis=0)])
    basis = np.linalg.qr(span.T.astype(np.float64))[0]  # orthonormal columns spanning the rows of span
    rotated = [n @ basis for n in normed]
    d2 = float(
        frd_lib.calculate_frechet_distance(
            np.mean(rotated[0], axis=0),
            np.cov(rotated[0], rowvar=False),
            np.mean(rotated[1], axis=0),
            np.cov(rotated[1], rowvar=False),
        )
    )
    return (float(np.log(d2)) if d2 > 0 else float("-inf")), None


def _frd_entries(
    synthetic: Sequence[RealismCase],
    real: Sequence[RealismCase],
    modalities: Sequence[str],
    splits: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]],
    enabled: bool,
) -> tuple[dict[str, dict[str, Any]], str | None]:
    """``({modality: {"distance", "floor", "reason"}}, package)`` for :func:`realism_scores`: per split ``(A, B,
    S)`` of :func:`matched_splits` the FRD of the synthetic subset ``S`` and the floor's real half ``A`` against
    the reference ``B``, averaged over splits (without splits: all synthetic against all real cases, no floor),
    from features extracted once per case; None values with the reason when disabled or not installed."""
    package, reason = None, "disabled (frd=False)"
    if enabled:
        try:
            package = frd_package()
        except ImportError as e:
            reason = f"{FRD_PACKAGE} not importable: {e}"
    if package is None:
        return {mod: {"distance": None, "floor": None, "reason": reason} for mod in modalities}, None
    fs, fr = frd_case_features(synthetic), frd_case_features(real)
    entries = {}
    for m, mod in enumerate(modalities):
        pairs = [(b, s) for _, b, s in splits] or [(range(len(fr)), range(len(fs)))]
        distances = [frd_from_features([fr[i][m] for i in b], [fs[i][m] for i in s]) for b, s in pairs]
        floors = [frd_from_features([fr[i][m] for i in b], [fr[i][m] for i in a]) for a, b, _ in splits]
        distance, floor = _mean_or_none([v for v, _ in distances]), _mean_or_none([v for v, _ in floors])
        reasons = [] if distance is not None else [distances[0][1]]
        if floor is None:
            reasons.append(f"floor: {floors[0][1] if floors else 'one real case, no split'}")
        entries[mod] = {"distance": distance, "floor": floor, "reason": "; ".join(reasons) or None}
    return entries, package


# ---- the score ------------------------------------------------------------------------------------
def _frechet_entries(
    synthetic: Sequence[RealismCase],
    real: Sequence[RealismCase],
    encoder: torch.nn.Module,
    levels: int,
    classes: Sequence[int],
    splits: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]],
    device: str | torch.device,
) -> dict[str, Any]:
    """``{class: {"distance", "floor", "per_level"}}``: per split ``(A, B, S)`` the Frechet distance of ``S``
    against ``B`` and of ``A`` against ``B``, per level, averaged over levels and splits (no splits: all against
    all, no floor); ``per_level`` averages over splits."""
    ps = encoder_class_vectors(synthetic, encoder, levels, classes, device=device)
    pr = encoder_class_vectors(real, encoder, levels, classes, device=device)

    def per_level(side: list, idx: Sequence[int], ref: Sequence[int], c: int) -> list[float | None]:
        out = []
        for level in range(levels):
            va = [side[i][c][level] for i in idx if side[i][c][level] is not None]
            vb = [pr[i][c][level] for i in ref if pr[i][c][level] is not None]
            out.append(frechet_distance(np.stack(va), np.stack(vb)) if va and vb else None)
        return out

    pairs = [(s, b) for _, b, s in splits] or [(range(len(ps)), range(len(pr)))]
    entries = {}
    for c in classes:
        levels_s = [per_level(ps, s, b, c) for s, b in pairs]
        floor = _mean_or_none([_mean_or_none(per_level(pr, a, b, c)) for a, b, _ in splits])
        entries[INTERNAL_CLASSES.get(c, str(c))] = {
            "distance": _mean_or_none([_mean_or_none(v) for v in levels_s]),
            "floor": floor,
            "per_level": [_mean_or_none(list(v)) for v in zip(*levels_s, strict=True)],
        }
    return entries


def _wasserstein_entries(
    synthetic: Sequence[RealismCase],
    real: Sequence[RealismCase],
    modalities: Sequence[str],
    classes: Sequence[int],
    splits: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]],
) -> dict[str, Any]:
    """``{class: {modality: {"distance", "floor"}}}``: per split ``(A, B, S)`` W1 of ``S`` and of ``A`` against
    ``B``, averaged over splits (no splits: all against all, no floor)."""
    ins, inr = class_intensities(synthetic, classes), class_intensities(real, classes)
    pairs = [(s, b) for _, b, s in splits] or [(range(len(synthetic)), range(len(real)))]
    entries: dict[str, Any] = {}
    for c in classes:
        entries[INTERNAL_CLASSES.get(c, str(c))] = {
            mod: {
                "distance": _mean_or_none(
                    [wasserstein([ins[c][m][i] for i in s], [inr[c][m][i] for i in b]) for s, b in pairs]
                ),
                "floor": _mean_or_none(
                    [wasserstein([inr[c][m][i] for i in a], [inr[c][m][i] for i in b]) for a, b, _ in splits]
                ),
            }
            for m, mod in enumerate(modalities)
        }
    return entries


def _sharpness_entries(
    synthetic: Sequence[RealismCase],
    real: Sequence[RealismCase],
    modalities: Sequence[str],
    splits: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]],
) -> dict[str, Any]:
    """``{modality: {"synthetic", "real", "ratio", "floor_ratio"}}``: mean boundary sharpness of all cases per side
    (a ratio of means does not grow with set size), the floor the ratio of the splits' real halves."""
    ss = np.stack([boundary_sharpness(case) for case in synthetic])
    sr = np.stack([boundary_sharpness(case) for case in real])
    return {
        mod: {
            "synthetic": float(ss[:, m].mean()),
            "real": float(sr[:, m].mean()),
            "ratio": float(ss[:, m].mean() / sr[:, m].mean()),
            "floor_ratio": _mean_or_none([float(sr[a, m].mean() / sr[b, m].mean()) for a, b, _ in splits]),
        }
        for m, mod in enumerate(modalities)
    }


def _summary(result: dict[str, Any]) -> dict[str, float | None]:
    """Means over classes (and modalities) of every distance and floor; the C2ST's headline AUC and its null."""
    frechet, wass, frd = result["frechet"], result["wasserstein"], result["frd"]
    c2st = result.get("c2st") or {}
    return {
        "c2st_auc": c2st.get("auc"),
        "c2st_null_auc": (c2st.get("null") or {}).get("auc"),
        "frechet": _mean_or_none([v["distance"] for v in frechet.values()]),
        "frechet_floor": _mean_or_none([v["floor"] for v in frechet.values()]),
        "wasserstein": _mean_or_none([w["distance"] for v in wass.values() for w in v.values()]),
        "wasserstein_floor": _mean_or_none([w["floor"] for v in wass.values() for w in v.values()]),
        "sharpness_ratio": _mean_or_none([v["ratio"] for v in result["sharpness"].values()]),
        "frd": _mean_or_none([v["distance"] for v in frd.values()]),
        "frd_floor": _mean_or_none([v["floor"] for v in frd.values()]),
    }


def realism_scores(
    synthetic: Sequence[RealismCase],
    real: Sequence[RealismCase],
    modalities: Sequence[str],
    encoder: torch.nn.Module | None = None,
    levels: int = 3,
    classes: Sequence[int] = TUMOUR_CLASSES,
    n_splits: int = 10,
    seed: int = 0,
    device: str | torch.device = "cpu",
    frd: bool = True,
    c2st: C2STSettings | None = C2STSettings(),
    null_real: Sequence[RealismCase] | None = None,
) -> dict[str, Any]:
    """Realism of ``synthetic`` against ``real`` (see the module docstring) as a JSON-ready dict.

    Returns ``{"n_synthetic", "n_real", "set_sizes", "modalities", "classes", "c2st": (see
    :func:`~custom_components.quality.c2st.c2st_scores`; None when off), "frechet": {class: {"distance", "floor",
    "per_level"}}, "wasserstein": {class: {modality: {"distance", "floor"}}}, "sharpness": {modality: {"synthetic",
    "real", "ratio", "floor_ratio"}}, "frd": {modality: {"distance", "floor", "reason"}}, "frd_package", "summary":
    {...}}``. Distances and floors compare sets of ``set_sizes`` ``[synthetic or real half A, real half B]`` cases
    (:func:`matched_splits`); a distance is None where a class is absent on a side; floors are None with fewer than
    two real cases (FRD: fewer than four, and FRD values are None with fewer than two cases on a side, when disabled
    or when frd-score is not installed; ``reason`` says why, ``frd_package`` names the version used). ``summary``:
    the C2ST's ``c2st_auc`` and ``c2st_null_auc``, and the means over classes (and modalities) ``frechet``,
    ``frechet_floor``, ``wasserstein``, ``wasserstein_floor``, ``sharpness_ratio``, ``frd``, ``frd_floor``.

    Args:
        synthetic, real: the cases (same modalities, brain-normalised).
        modalities: their names.
        encoder: frozen feature extractor (None: no Frechet distance).
        levels: encoder levels.
        classes: internal class values.
        n_splits: random real-vs-real splits (with synthetic subsets) averaged for distances and floors.
        seed: seed of the splits.
        device: device of the encoder.
        frd: compute the Frechet Radiomics Distance (frd-score; about a second per case and modality).
        c2st: settings of the classifier two-sample test (None: not computed).
        null_real: real cases for the C2ST's real-vs-real null (default: ``real``).
    """
    if not synthetic or not real:
        raise ValueError(f"need synthetic and real cases, got {len(synthetic)} and {len(real)}")
    if synthetic[0].image.shape[0] != real[0].image.shape[0]:
        raise ValueError(
            f"synthetic cases have {synthetic[0].image.shape[0]} channels, real ones {real[0].image.shape[0]}"
        )
    splits = matched_splits(len(real), len(synthetic), n_splits, seed)
    result: dict[str, Any] = {
        "n_synthetic": len(synthetic),
        "n_real": len(real),
        "set_sizes": [len(splits[0][0]), len(splits[0][1])] if splits else [len(synthetic), len(real)],
        "modalities": list(modalities),
        "classes": [INTERNAL_CLASSES.get(c, str(c)) for c in classes],
        "levels": levels,
        "n_splits": len(splits),
        "c2st": None if c2st is None else c2st_scores(synthetic, real, modalities, classes, null_real, c2st),
        "frechet": {}
        if encoder is None
        else _frechet_entries(synthetic, real, encoder, levels, classes, splits, device),
        "wasserstein": _wasserstein_entries(synthetic, real, modalities, classes, splits),
        "sharpness": _sharpness_entries(synthetic, real, modalities, splits),
    }
    result["frd"], result["frd_package"] = _frd_entries(synthetic, real, modalities, splits, frd)
    result["summary"] = _summary(result)
    return result


def below_floor(result: dict[str, Any]) -> list[str]:
    """One sentence per summary distance (Frechet, W1, FRD) that lies below its real-vs-real floor: at these set
    sizes the distance cannot tell the synthetic cases from real ones, whatever they look like."""
    s = result["summary"]
    sizes = result.get("set_sizes") or [result["n_synthetic"], result["n_real"]]
    out = []
    for key, name in (("frechet", "Frechet"), ("wasserstein", "W1"), ("frd", "FRD")):
        value, floor = s.get(key), s.get(f"{key}_floor")
        if value is not None and floor is not None and value < floor:
            out.append(
                f"{name} {_fmt(value)} is below its floor {_fmt(floor)} (sets of {sizes[0]} vs {sizes[1]} cases): "
                "it does not separate these cases from real ones; see the C2ST"
            )
    return out


def _fmt(x: float | None, digits: int = 4) -> str:
    return "-" if x is None else f"{x:.{digits}g}"


def _c2st_cell(entry: dict[str, Any]) -> str:
    if entry.get("auc") is None:
        return f"- ({entry.get('reason')})"
    if entry.get("ci_low") is None:  # a class without resampling (C2STSettings.per_class_intervals)
        return f"{entry['auc']:.3f}"
    return f"{entry['auc']:.3f} [{entry['ci_low']:.3f}, {entry['ci_high']:.3f}] p={entry['p_value']:.3f}"


def c2st_lines(c2st: dict[str, Any] | None) -> list[str]:
    """The C2ST as text lines: the whole tumour and each class, each beside its real-vs-real null."""
    if c2st is None:
        return ["C2ST: not computed"]
    s = c2st["settings"]
    lines = [
        f"C2ST (AUC of a classifier telling synthetic from real tumour patches, 0.5 = cannot; {s['n_patches']} "
        f"patches of {s['patch']}^3 voxels per case, cross-validated by case; [95 % CI] p=permutation p-value):"
    ]
    for name, entry in [("all", c2st), *c2st["per_class"].items()]:
        null = entry["null"]
        lines.append(
            f"  {name}: {_c2st_cell(entry)} at {entry['n_cases_per_side']} cases per side; real vs real "
            f"{_c2st_cell(null)} at {null['n_cases_per_side']}"
        )
    means = c2st.get("feature_means") or {}
    if means.get("synthetic") and means.get("real"):
        pairs = ", ".join(
            f"{f} {a:.3f} / {b:.3f}"
            for f, a, b in zip(c2st["features"], means["synthetic"], means["real"], strict=True)
        )
        lines.append(f"  what it sees (whole tumour, case-averaged feature means, synthetic / real): {pairs}")
    if c2st.get("note"):
        lines.append(f"  note: {c2st['note']}")
    return lines


def format_table(result: dict[str, Any]) -> str:
    """The realism result as plain text: the C2ST first, then the distances (one row per class), sharpness, FRD and
    a line for each distance below its floor."""
    mods = result["modalities"]
    head = ["class", "Frechet", "floor"] + [f"W1 {m}" for m in mods] + [f"W1 floor {m}" for m in mods]
    rows = [head]
    for name in result["classes"]:
        fr = result["frechet"].get(name, {})
        w = result["wasserstein"][name]
        rows.append(
            [name, _fmt(fr.get("distance")), _fmt(fr.get("floor"))]
            + [_fmt(w[m]["distance"]) for m in mods]
            + [_fmt(w[m]["floor"]) for m in mods]
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = c2st_lines(result.get("c2st"))
    lines += ["  ".join(c.rjust(wd) for c, wd in zip(r, widths, strict=True)) for r in rows]
    lines.append("boundary sharpness (mean |grad| per mm on the tumour border; ratio synthetic/real, floor real/real):")
    for m in mods:
        s = result["sharpness"][m]
        lines.append(
            f"  {m}: synthetic {_fmt(s['synthetic'])}, real {_fmt(s['real'])}, ratio {_fmt(s['ratio'])}, "
            f"floor {_fmt(s['floor_ratio'])}"
        )
    lines.append(
        f"FRD v1 (radiomics in the whole tumour, {result['frd_package'] or 'frd-score'}; ln Frechet distance):"
    )
    for m in mods:
        f = result["frd"][m]
        why = f" ({f['reason']})" if f["reason"] else ""
        lines.append(f"  {m}: {_fmt(f['distance'])}, floor {_fmt(f['floor'])}{why}")
    sizes = result.get("set_sizes") or [result["n_synthetic"], result["n_real"]]
    lines.append(
        f"({result['n_synthetic']} synthetic vs {result['n_real']} real cases; distances and floors compare sets of "
        f"{sizes[0]} vs {sizes[1]} cases, averaged over {result['n_splits']} splits)"
    )
    lines += below_floor(result)
    return "\n".join(lines)
