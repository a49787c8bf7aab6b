"""Demo data without downloads: deformed MNI152 "healthy subjects" and PHANTOM glioma cases.

Everything here derives from the MNI ICBM152 2009a T1 template that the nilearn wheel ships
(``nilearn/datasets/data/mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz``), so a fresh machine
without network access can run every bundle end to end.

* Healthy subjects: the template resampled onto a ``spacing`` mm RAS grid cropped to the brain,
  with a random affine jitter and a smooth random deformation (a few mm), random gain, gamma,
  multiplicative bias field and noise; skull-stripped (background 0) and written with a brain
  mask. They are deliberately left "raw" (positive scanner-like intensities, slightly misaligned)
  so that they go through ``prepare-healthy`` like real healthy scans would.
* Tumour cases: another deformed variant of the template per case, four modalities (t1n, t1c,
  t2w, t2f) derived from the T1 tissue contrast (T2 bright CSF, FLAIR dark CSF, ...), and a
  procedural glioma **phantom** of one to three lesions of varied size, shape and location, each a
  noise-perturbed ellipsoid with a necrotic core (label 1), an enhancing rim (label 3) and an oedema
  halo (label 2), with a mild mass effect. Each class's intensity per modality is calibrated against
  white matter on a real glioma (``_TUMOUR_INTENSITY``): on T1 the necrosis is markedly and the oedema
  mildly hypointense, the rim iso-to-hypointense; on T1c the rim enhances; on T2 and FLAIR oedema and
  necrosis are bright. Labels are in the internal convention (0, 1, 2, 3).

The tumours are phantoms: they exercise shapes, classes and pipelines, they are not real
pathology and no accuracy measured on them means anything clinically.

Every array is drawn from ``numpy.random.default_rng([seed, kind, index])``, so a seed gives
byte-identical files (nibabel writes gzip with mtime 0 and no file name) and case ``i`` does not
depend on how many cases are generated: the cases are made in processes forked from the caller, one per CPU
(:func:`~custom_components.data.parallel.fork_map`), and the files are those of a serial loop.
"""

from __future__ import annotations

import importlib.util
import math
import os
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from scipy import ndimage

from custom_components.data.atomic import atomic_write_text, save_nifti
from custom_components.data.datalist import write_datalist
from custom_components.data.labels import INTERNAL_CLASSES, TUMOUR_CLASSES
from custom_components.data.parallel import fork_map

TEMPLATE_NAME = "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"
DEMO_MODALITIES: tuple[str, ...] = ("t1n", "t1c", "t2w", "t2f")

# template T1 intensity of white matter (median of voxels with WM probability > 0.9); the template's
# CSF is ~0.31 and grey matter ~0.75 of it.
_TEMPLATE_WM = 222.0
# contrast per modality as a piecewise-linear function of the normalised T1 value (WM = 1):
# (T1 knots, modality values), values relative to the modality's white matter.
_CONTRAST: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "t1n": ((0.0, 0.31, 0.75, 1.0, 1.3), (0.0, 0.31, 0.75, 1.0, 1.3)),
    "t1c": ((0.0, 0.31, 0.75, 1.0, 1.3), (0.0, 0.33, 0.72, 1.0, 1.25)),
    "t2w": ((0.0, 0.31, 0.75, 1.0, 1.3), (2.3, 2.3, 1.35, 1.0, 0.9)),
    "t2f": ((0.0, 0.31, 0.75, 1.0, 1.3), (0.3, 0.3, 1.2, 1.0, 0.95)),
}
# scanner gain per modality (intensity of white matter), similar to raw BraTS values
_GAIN: dict[str, float] = {"t1n": 330.0, "t1c": 360.0, "t2w": 260.0, "t2f": 180.0}
# Phantom tissue intensity per class and modality, relative to the modality's white matter (WM = 1).
# Calibrated on the real glioma TCGA-FG-6692 in ../shared/data (BraTS 2021 labels): class mean over the
# mean of its normal-appearing white matter (brain >= 10 voxels from the tumour and >= 5 from the brain
# edge, brightest of three k-means T1 clusters). Measured (class mean / WM):
#            NCR    ED     ET     (GM)
#   t1n      0.66   0.73   0.68   0.79
#   t1c      0.99   1.01   1.22   0.98
#   t2w      1.65   1.38   1.62   1.16
#   t2f      1.55   1.38   1.54   1.04
# The phantom keeps these values except where the case departs from the textbook high-grade pattern the
# demo teaches (docs: bundles/dtss_mas_seg/docs/README.md, "Demo data"):
# * t1n: necrosis markedly hypointense (0.45; real 0.66); oedema at the real oedema/grey-matter ratio
#   (0.73 / 0.79 = 0.92 of grey matter, the template's grey matter being 0.75: 0.70), i.e. mildly hypointense,
#   just below grey matter; the enhancing rim iso-to-mildly hypointense (0.85; real 0.68, an LGG case whose
#   labels come from a model), so that on T1 the rim is a brighter shell between dark core and dark oedema;
# * t1c: necrosis dark (0.55; the real "NCR" is mostly non-enhancing tumour, 0.99), oedema hypointense as on
#   T1 (0.85), the rim enhancing (1.40; real 1.22);
# * t2w, t2f: the real values (oedema and necrosis bright).
_TUMOUR_INTENSITY: dict[int, dict[str, float]] = {
    1: {"t1n": 0.45, "t1c": 0.55, "t2w": 1.65, "t2f": 1.55},  # NCR
    2: {"t1n": 0.70, "t1c": 0.85, "t2w": 1.38, "t2f": 1.38},  # ED
    3: {"t1n": 0.85, "t1c": 1.40, "t2w": 1.62, "t2f": 1.54},  # ET
}
# relative standard deviation of the band-limited texture inside each class (real T1: 0.07-0.09)
_TEXTURE: dict[int, float] = {1: 0.08, 2: 0.06, 3: 0.07}
# per-case, per-class and per-modality gain of the levels above: uniform in [1 - j, 1 + j]
_LEVEL_JITTER = 0.06
# oedema is infiltrated tissue: its level is multiplied by (healthy / WM) ** _OEDEMA_ANATOMY, so it keeps
# part of the grey/white contrast underneath and equals the level above in white matter
_OEDEMA_ANATOMY = 0.3
# number of lesions per case (1, 2 or 3, multifocal glioma) and their probabilities
_LESION_COUNT_P = (0.6, 0.3, 0.1)
_KIND = {"healthy": 1, "tumour": 2}


def mni152_template_path() -> Path:
    """Path of the MNI152 2009a skull-stripped T1 template inside the installed nilearn package.

    Raises:
        FileNotFoundError: when nilearn or the template file is not installed.
    """
    spec = importlib.util.find_spec("nilearn")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("nilearn is not installed; it ships the MNI152 template the demo data needs")
    path = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data" / TEMPLATE_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path}: MNI152 template not found in the nilearn package")
    return path


def demo_grid(spacing: float = 2.0, margin: float = 2.0, template: nib.Nifti1Image | None = None) -> tuple:
    """The demo's RAS grid: the template's brain bounding box plus ``margin`` mm, in ``spacing`` mm voxels.

    The shape is rounded up to a multiple of 8 voxels (networks downsample by 2 several times):
    80x96x80 at 2 mm, 40x48x40 at 4 mm.

    Args:
        spacing: isotropic voxel size in mm.
        margin: minimum margin around the template brain in mm.
        template: the template image (default: the nilearn MNI152 T1).

    Returns:
        ``(shape, affine)``: a tuple of three ints and a 4x4 voxel-to-world (RAS) matrix.
    """
    if spacing <= 0:
        raise ValueError(f"spacing must be positive, got {spacing}")
    template = template if template is not None else nib.load(str(mni152_template_path()))
    brain = np.asarray(template.dataobj) > 0
    idx = np.argwhere(brain)
    corners = nib.affines.apply_affine(template.affine, np.stack([idx.min(0) - 0.5, idx.max(0) + 0.5]))
    lo, hi = corners.min(0), corners.max(0)
    extent = hi - lo + 2 * margin
    shape = tuple(int(math.ceil(e / spacing / 8.0) * 8) for e in extent)
    centre = (lo + hi) / 2
    affine = np.diag([spacing, spacing, spacing, 1.0])
    affine[:3, 3] = centre - (np.asarray(shape) - 1) / 2 * spacing
    return shape, affine


def _smooth_field(rng: np.random.Generator, shape: tuple[int, ...], n_ctrl: int | tuple[int, ...]) -> np.ndarray:
    """Standard-normal values on a coarse grid of control points, cubic-upsampled to ``shape``."""
    ctrl = (n_ctrl,) * len(shape) if isinstance(n_ctrl, int) else tuple(n_ctrl)
    coarse = rng.standard_normal(ctrl)
    field = ndimage.zoom(coarse, [s / c for s, c in zip(shape, ctrl, strict=True)], order=3, mode="nearest")
    return field[tuple(slice(0, s) for s in shape)]


def _texture(rng: np.random.Generator, shape: tuple[int, ...], sigma: float) -> np.ndarray:
    """Band-limited noise with unit standard deviation."""
    noise = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma)
    return noise / max(float(noise.std()), 1e-6)


def _rotation(angles: np.ndarray) -> np.ndarray:
    """Rotation matrix from three angles in radians (x, then y, then z)."""
    cx, cy, cz = np.cos(angles)
    sx, sy, sz = np.sin(angles)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


class _Template:
    """The template T1 (normalised so that white matter is 1) and its brain mask, with the demo grid."""

    def __init__(self, spacing: float) -> None:
        img = nib.load(str(mni152_template_path()))
        self.t1 = np.asarray(img.dataobj, dtype=np.float32) / _TEMPLATE_WM
        self.mask = (self.t1 > 0).astype(np.float32)
        self.affine = img.affine
        self.inv_affine = np.linalg.inv(img.affine)
        self.shape, self.grid_affine = demo_grid(spacing, template=img)
        self.spacing = spacing
        idx = np.indices(self.shape, dtype=np.float32).reshape(3, -1)
        self.world = (self.grid_affine[:3, :3] @ idx + self.grid_affine[:3, 3:4]).astype(np.float32)
        self.centre = self.world.mean(1, keepdims=True)

    def draw_warp(self, rng: np.random.Generator) -> dict[str, Any]:
        """Draw a subject's deformation: small affine jitter plus a smooth displacement field (mm)."""
        n_ctrl = tuple(max(3, round(s * self.spacing / 32.0) + 1) for s in self.shape)
        elastic_mm = rng.uniform(1.5, 3.0)
        return {
            "rotation_deg": rng.uniform(-3.0, 3.0, 3),
            "scale": rng.uniform(0.93, 1.01, 3),
            "shift_mm": rng.uniform(-2.5, 2.5, 3),
            "elastic_mm": elastic_mm,
            "displacement": np.stack([_smooth_field(rng, self.shape, n_ctrl).reshape(-1) for _ in range(3)])
            * elastic_mm,
        }

    def warp(self, deform: dict[str, Any], mass: list[tuple[np.ndarray, float, float]] | None = None) -> tuple:
        """A deformed copy of the template on the demo grid.

        Args:
            deform: deformation from :meth:`draw_warp`.
            mass: optional mass effects, one ``(centre_mm, radius_mm, strength)`` per lesion, each
                pushing tissue away from its ``centre_mm``.

        Returns:
            ``(t1, brain)``: normalised T1 (0 outside the brain) and the bool brain mask.
        """
        world = self.world
        for c, radius, strength in mass or []:
            rel = world - np.asarray(c, dtype=np.float32).reshape(3, 1)
            r2 = (rel**2).sum(0) / radius**2
            world = world - rel * (strength * np.exp(-0.5 * r2))
        m = _rotation(np.deg2rad(deform["rotation_deg"])) @ np.diag(1.0 / deform["scale"])
        src = m @ (world - self.centre) + self.centre - deform["shift_mm"].reshape(3, 1) + deform["displacement"]
        vox = (self.inv_affine[:3, :3] @ src + self.inv_affine[:3, 3:4]).astype(np.float32)
        t1 = ndimage.map_coordinates(self.t1, vox, order=1, mode="constant", cval=0.0).reshape(self.shape)
        weight = ndimage.map_coordinates(self.mask, vox, order=1, mode="constant", cval=0.0).reshape(self.shape)
        brain = weight > 0.5
        # normalised interpolation: no dark rim where the brain meets the zero background
        t1 = np.where(brain, t1 / np.maximum(weight, 1e-3), 0.0).astype(np.float32)
        return t1, brain


def _warp_params(deform: dict[str, Any]) -> dict[str, Any]:
    """JSON-friendly summary of a deformation (for provenance)."""
    return {
        "rotation_deg": np.round(deform["rotation_deg"], 3).tolist(),
        "scale": np.round(deform["scale"], 4).tolist(),
        "shift_mm": np.round(deform["shift_mm"], 3).tolist(),
        "elastic_mm": round(float(deform["elastic_mm"]), 3),
    }


def _scanner(
    rng: np.random.Generator, relative: np.ndarray, brain: np.ndarray, modality: str, bias: np.ndarray
) -> np.ndarray:
    """Relative intensities (WM = 1) -> raw-like int16 scan: gain, bias field, noise, background 0."""
    gain = _GAIN[modality] * rng.uniform(0.85, 1.2)
    noise = rng.standard_normal(brain.shape).astype(np.float32) * 0.02
    img = (relative * bias + noise) * gain
    img = np.where(brain, np.clip(img, 1.0, 32000.0), 0.0)
    return np.rint(img).astype(np.int16)


def _contrast(t1: np.ndarray, modality: str, gamma: float = 1.0) -> np.ndarray:
    knots, values = _CONTRAST[modality]
    return np.interp(np.power(np.clip(t1, 0, None), gamma), knots, values).astype(np.float32)


def _lesion(
    rng: np.random.Generator, candidates: np.ndarray, shape: tuple[int, ...], spacing: float, scale: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
    """One lesion: its core and oedema "radius" fields (< 1 inside) and parameters.

    The shape is an ellipsoid (axes 0.7-1.35, random orientation) whose boundary is perturbed by smooth
    noise, so lesions range from round to lobulated; core and oedema sizes and the necrotic fraction are
    drawn per lesion (``scale`` < 1 for the satellites of a multifocal case).
    """
    r_core = max(scale * rng.uniform(8.0, 20.0), 2.5 * spacing)
    r_oedema = r_core + max(scale * rng.uniform(3.0, 14.0), 2.0 * spacing)
    f_ncr = min(rng.uniform(0.5, 0.8), 1.0 - 1.5 * spacing / r_core)
    centre = candidates[rng.integers(len(candidates))].astype(np.float64)
    axes = rng.uniform(0.7, 1.35, 3)
    rot = _rotation(rng.uniform(-np.pi, np.pi, 3))
    rel = (np.indices(shape, dtype=np.float32).reshape(3, -1) - centre.reshape(3, 1).astype(np.float32)) * spacing
    ell = (rot.astype(np.float32) @ rel) / axes.reshape(3, 1).astype(np.float32)
    r = np.sqrt((ell**2).sum(0)).reshape(shape)
    sigma_vox = max(4.0 / spacing, 0.8)
    rho_core = r / r_core + rng.uniform(0.10, 0.25) * _texture(rng, shape, sigma_vox)
    rho_ed = r / r_oedema + rng.uniform(0.10, 0.30) * _texture(rng, shape, 1.5 * sigma_vox)
    params = {
        "centre_voxel": centre.astype(int).tolist(),
        "core_radius_mm": round(float(r_core), 2),
        "oedema_radius_mm": round(float(r_oedema), 2),
        "necrosis_fraction": round(float(f_ncr), 3),
        "axes": np.round(axes, 3).tolist(),
    }
    return rho_core, rho_ed, np.asarray(f_ncr), params


def _phantom(rng: np.random.Generator, t1: np.ndarray, brain: np.ndarray, spacing: float) -> tuple | None:
    """Draw a glioma phantom inside ``brain``: internal labels and its parameters.

    One to three lesions (``_LESION_COUNT_P``; satellites smaller), each centred in white matter with its
    core inside the brain: a necrotic core (1) inside an enhancing rim (3) inside an oedema halo (2) that
    spares CSF.

    Returns:
        ``(label, params)`` or ``None`` when a draw misses a class (the caller draws again).
    """
    shape = brain.shape
    depth = ndimage.distance_transform_edt(brain) * spacing
    n_lesions = 1 + int(rng.choice(len(_LESION_COUNT_P), p=_LESION_COUNT_P))
    csf = t1 < 0.5
    grid = np.indices(shape, dtype=np.float32)
    label = np.zeros(shape, dtype=np.uint8)
    lesions = []
    for k in range(n_lesions):
        scale = 1.0 if k == 0 else rng.uniform(0.45, 0.8)
        # centre: white matter deep enough for the largest core of this scale, away from earlier lesions
        ok = (depth > scale * 20.0 + spacing) & (t1 > 0.85)
        for other in lesions:
            offset = grid - np.asarray(other["centre_voxel"], dtype=np.float32).reshape(3, 1, 1, 1)
            ok &= np.sqrt((offset**2).sum(0)) * spacing > 1.35 * other["oedema_radius_mm"] + 20.0
        candidates = np.argwhere(ok)
        if len(candidates) == 0:
            if k == 0:
                candidates = np.argwhere(depth >= depth.max() * 0.8)
            else:
                break
        rho_core, rho_ed, f_ncr, params = _lesion(rng, candidates, shape, spacing, scale)
        oedema = (rho_ed < 1.0) & ~csf & (label == 0)
        label[oedema] = 2
        label[rho_core < 1.0] = 3
        label[rho_core < f_ncr] = 1
        lesions.append(params)
    label[~brain] = 0
    # keep the connected parts that hold a lesion centre (noise can leave specks)
    comps, _ = ndimage.label(label > 0)
    keep = sorted({int(comps[tuple(p["centre_voxel"])]) for p in lesions} - {0})
    label[~np.isin(comps, keep)] = 0
    counts = {c: int((label == c).sum()) for c in TUMOUR_CLASSES}
    if min(counts.values()) == 0:
        return None
    voxels = {INTERNAL_CLASSES[c]: n for c, n in counts.items()}
    # "lesions": the drawn lesions; "n_lesions": the separate tumours in the image (drawn ones may touch)
    return label, {"n_lesions": len(keep), "lesions": lesions, "voxels": voxels}


def _healthy_case(tpl: _Template, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    deform = tpl.draw_warp(rng)
    t1, brain = tpl.warp(deform)
    params = _warp_params(deform)
    gamma = rng.uniform(0.85, 1.15)
    bias = np.exp(0.12 * _smooth_field(rng, tpl.shape, 3)).astype(np.float32)
    img = _scanner(rng, _contrast(t1, "t1n", gamma), brain, "t1n", bias)
    params.update({"gamma": round(float(gamma), 4)})
    return img, brain, params


def _tumour_case(
    tpl: _Template, rng: np.random.Generator
) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray, dict]:
    strength = 0.3
    for _ in range(50):
        deform = tpl.draw_warp(rng)
        t1, brain = tpl.warp(deform)
        drawn = _phantom(rng, t1, brain, tpl.spacing)
        if drawn is None:
            continue
        label, tumour = drawn
        # mass effect: the same subject again with the tissue pushed away from each lesion's centre
        mass = [
            (
                nib.affines.apply_affine(tpl.grid_affine, np.asarray(lesion["centre_voxel"], dtype=float)),
                lesion["core_radius_mm"],
                strength,
            )
            for lesion in tumour["lesions"]
        ]
        t1, brain = tpl.warp(deform, mass=mass)
        label[~brain] = 0
        tumour["n_lesions"] = int(ndimage.label(label > 0)[1])
        if min(int((label == c).sum()) for c in TUMOUR_CLASSES) > 0:
            break
    else:  # pragma: no cover - 50 failed draws would mean a broken template
        raise RuntimeError("could not place a phantom tumour with all three classes inside the brain")
    params = _warp_params(deform)
    params.update(tumour, mass_effect=strength)
    params["voxels"] = {INTERNAL_CLASSES[c]: int((label == c).sum()) for c in TUMOUR_CLASSES}
    shape = tpl.shape
    onehot = np.stack([(label == c).astype(np.float32) for c in TUMOUR_CLASSES])
    # partial volume at the class borders: a 1.2 mm Gaussian
    soft = np.stack([ndimage.gaussian_filter(o, 1.2 / tpl.spacing) for o in onehot])
    soft *= brain
    healthy_w = np.clip(1.0 - soft.sum(0), 0.0, 1.0)
    gamma = rng.uniform(0.9, 1.1)
    bias = np.exp(0.1 * _smooth_field(rng, shape, 3)).astype(np.float32)
    textures = {c: _texture(rng, shape, max(2.0 / tpl.spacing, 0.6)) for c in TUMOUR_CLASSES}
    jitter = {
        c: {m: rng.uniform(1.0 - _LEVEL_JITTER, 1.0 + _LEVEL_JITTER) for m in DEMO_MODALITIES} for c in TUMOUR_CLASSES
    }
    images = {}
    for m in DEMO_MODALITIES:
        healthy = _contrast(t1, m, gamma)
        img = healthy_w * healthy
        for k, c in enumerate(TUMOUR_CLASSES):
            level = _TUMOUR_INTENSITY[c][m] * jitter[c][m] * (1.0 + _TEXTURE[c] * textures[c])
            if c == 2:
                level = level * np.power(np.clip(healthy, 0.3, None), _OEDEMA_ANATOMY)
            img = img + soft[k] * level
        images[m] = _scanner(rng, img, brain, m, bias)
    params["gamma"] = round(float(gamma), 4)
    return images, label, brain, params


def _check_existing(path: Path, generator: dict[str, Any], overwrite: bool) -> None:
    if overwrite or not path.is_file():
        return
    import json

    try:
        previous = json.loads(path.read_text()).get("generator")
    except (OSError, ValueError):
        previous = None
    if previous != generator:
        raise FileExistsError(
            f"{path}: demo data made with other settings ({previous}) is already there; "
            "choose another --out or pass overwrite=True"
        )


def _write_healthy_case(tpl: _Template, folder: Path, seed: int, i: int) -> dict[str, Any]:
    """Write healthy scan ``i`` (its own generator ``[seed, healthy, i]``) and return its datalist item."""
    case = f"demo-healthy-{i:03d}"
    img, brain, params = _healthy_case(tpl, np.random.default_rng([seed, _KIND["healthy"], i]))
    image = save_nifti(img, tpl.grid_affine, folder / f"{case}_t1n.nii.gz")
    mask = save_nifti(brain.astype(np.uint8), tpl.grid_affine, folder / f"{case}_brainmask.nii.gz")
    return {
        "case_id": case,
        "image": [str(image.resolve())],
        "brain_mask": str(mask.resolve()),
        "provenance": {"stage": "demo", "source": TEMPLATE_NAME, "seed": int(seed), "index": i, **params},
    }


def _write_tumour_case(tpl: _Template, folder: Path, seed: int, i: int) -> dict[str, Any]:
    """Write PHANTOM tumour case ``i`` (its own generator ``[seed, tumour, i]``) and return its datalist item."""
    case = f"demo-tumour-{i:03d}"
    images, label, brain, params = _tumour_case(tpl, np.random.default_rng([seed, _KIND["tumour"], i]))
    affine = tpl.grid_affine
    files = [str(save_nifti(images[m], affine, folder / f"{case}_{m}.nii.gz").resolve()) for m in images]
    seg = save_nifti(label, affine, folder / f"{case}_seg.nii.gz", dtype=np.uint8)
    mask = save_nifti(brain.astype(np.uint8), affine, folder / f"{case}_brainmask.nii.gz")
    return {
        "case_id": case,
        "image": files,
        "label": str(seg.resolve()),
        "brain_mask": str(mask.resolve()),
        "phantom": True,
        "provenance": {"stage": "demo", "source": TEMPLATE_NAME, "seed": int(seed), "index": i, **params},
    }


def _write_healthy(tpl: _Template, folder: Path, n_healthy: int, seed: int, generator: dict[str, Any]) -> Path:
    """Write the demo healthy scans and their datalist; returns the datalist path."""
    healthy_items = fork_map(lambda i: _write_healthy_case(tpl, folder, seed, i), n_healthy)
    healthy_path = write_datalist(
        folder / "datalist.json",
        {
            "description": "Demo healthy T1 scans: randomly deformed and intensity-altered copies of the MNI152 "
            "2009a template shipped with nilearn; raw intensities, run prepare-healthy before use.",
            "labels": "internal",
            "modalities": ["t1n"],
            "generator": generator,
            "training": healthy_items,
        },
    )
    return healthy_path


def _write_tumours(
    tpl: _Template, folder: Path, n_tumour: int, n_val: int, seed: int, generator: dict[str, Any]
) -> tuple[Path, list[dict[str, Any]]]:
    """Write the demo PHANTOM tumour cases and their datalist (the last ``n_val`` held out as "validation");
    returns its path and the items."""
    tumour_items = fork_map(lambda i: _write_tumour_case(tpl, folder, seed, i), n_tumour)
    tumour_path = write_datalist(
        folder / "datalist.json",
        {
            "description": "Demo tumour cases. The tumours are PROCEDURAL PHANTOMS (noise-perturbed blobs with a "
            "necrotic core, enhancing rim and oedema halo) in deformed copies of the MNI152 template, not real "
            "pathology: for testing pipelines only, never for quoting accuracy.",
            "labels": "internal",
            "modalities": list(DEMO_MODALITIES),
            "generator": generator,
            "training": tumour_items[: n_tumour - n_val],
            "validation": tumour_items[n_tumour - n_val :],
        },
    )
    return tumour_path, tumour_items


def make_demo_data(
    out: str | os.PathLike,
    n_healthy: int = 4,
    n_tumour: int = 6,
    spacing: float = 2.0,
    seed: int = 0,
    overwrite: bool = False,
    verbose: bool = True,
    n_held_out: int | None = None,
) -> dict[str, Path]:
    """Write demo healthy scans and PHANTOM tumour cases derived from the MNI152 template; no downloads.

    Layout::

        out/healthy/datalist.json            {"training": [{case_id, image: [t1n], brain_mask}], ...}
        out/healthy/<case>_t1n.nii.gz, <case>_brainmask.nii.gz
        out/tumour/datalist.json             {"training": [...], "validation": [...], ...}
        out/tumour/<case>_{t1n,t1c,t2w,t2f}.nii.gz, <case>_seg.nii.gz, <case>_brainmask.nii.gz

    All volumes share one RAS grid of ``spacing`` mm (80x96x80 at 2 mm). Images are int16 raw-like
    intensities with background 0; labels are uint8 in the internal convention (1 NCR, 2 ED,
    3 ET), every class present in every case. The tumours are procedural phantoms, not pathology.
    A rerun with the same arguments rewrites byte-identical files; a different setting in an
    existing folder is refused unless ``overwrite``.

    Args:
        out: output folder.
        n_healthy: number of healthy subjects (>= 1).
        n_tumour: number of phantom tumour cases (>= 2).
        spacing: isotropic voxel size in mm (2 for the demo, 4 for fast tests).
        seed: random seed.
        overwrite: replace demo data made with other settings.
        verbose: print a summary.
        n_held_out: the last ``n_held_out`` phantoms go to "validation" (1 .. ``n_tumour - 1``); None:
            ``max(1, n_tumour // 3)`` (the datalist then records no ``n_held_out``: data made before the
            argument existed stay byte-identical).

    Returns:
        ``{"healthy": healthy datalist path, "tumour": tumour datalist path}``.
    """
    if n_healthy < 1:
        raise ValueError(f"n_healthy must be >= 1, got {n_healthy}")
    if n_tumour < 2:
        raise ValueError(f"n_tumour must be >= 2 (training and validation), got {n_tumour}")
    if n_held_out is not None and not 1 <= n_held_out < n_tumour:
        raise ValueError(f"n_held_out must be between 1 and n_tumour - 1 = {n_tumour - 1}, got {n_held_out}")
    out = Path(out)
    generator = {
        "name": "custom_components.data.demo",
        "template": TEMPLATE_NAME,
        "n_healthy": int(n_healthy),
        "n_tumour": int(n_tumour),
        "spacing": float(spacing),
        "seed": int(seed),
        **({} if n_held_out is None else {"n_held_out": int(n_held_out)}),
    }
    n_val = max(1, n_tumour // 3) if n_held_out is None else int(n_held_out)
    healthy_dir, tumour_dir = out / "healthy", out / "tumour"
    _check_existing(healthy_dir / "datalist.json", generator, overwrite)
    _check_existing(tumour_dir / "datalist.json", generator, overwrite)
    tpl = _Template(float(spacing))
    healthy_path = _write_healthy(tpl, healthy_dir, n_healthy, seed, generator)
    tumour_path, tumour_items = _write_tumours(tpl, tumour_dir, n_tumour, n_val, seed, generator)
    atomic_write_text(
        out / "README.txt",
        "Demo data made by custom_components.data.demo (python -m custom_components demo-data).\n"
        f"Grid: {'x'.join(map(str, tpl.shape))} voxels of {spacing} mm, RAS. Seed {seed}.\n"
        "healthy/: raw deformed MNI152 T1 scans (prepare them with prepare-healthy).\n"
        "tumour/: four modalities with PHANTOM tumours (labels 1 NCR, 2 ED, 3 ET); not real pathology.\n",
    )
    if verbose:
        print(
            f"demo data in {out}: grid {'x'.join(map(str, tpl.shape))} at {spacing} mm, seed {seed}\n"
            f"  healthy: {n_healthy} raw T1 scans -> {healthy_path}\n"
            f"  tumour: {n_tumour} PHANTOM cases ({n_tumour - n_val} training, {n_val} validation) -> {tumour_path}"
        )
        for item in tumour_items:
            v = item["provenance"]["voxels"]
            print(f"    {item['case_id']}: NCR {v['NCR']}, ED {v['ED']}, ET {v['ET']} voxels")
    return {"healthy": healthy_path, "tumour": tumour_path}
