"""Build datalists from folders: BraTS case folders and folders of healthy scans.

BraTS 2023 naming: ``<root>/<case>/<case>-{t1n,t1c,t2w,t2f,seg}.nii.gz``.
BraTS 2021 naming: ``<root>/<case>/<case>_{t1,t1ce,t2,flair,seg}.nii.gz``.
Modalities are always requested by their 2023 names; each case folder is read in whichever naming
it uses (``.nii.gz`` or ``.nii``).

Brain masks: a case folder's brain mask is the one NIfTI file whose name (without extension, case
ignored) contains ``brainmask`` or ``brain_mask``, or ends with ``_mask`` or ``-mask``
(:data:`BRAIN_MASK_PATTERNS`), e.g. ``<case>_brainmask.nii.gz`` or ``<case>-mask.nii.gz``; it becomes
the item's ``brain_mask``. A healthy scan's brain mask is the file beside it named
``<scan><suffix>.nii.gz`` / ``.nii`` with a suffix of :data:`BRAIN_MASK_SUFFIXES`
(``_brainmask``, ``_brain_mask``, ``_mask``, ``-mask``); such files are not scans themselves. Paths in the returned datalists are absolute (symlinks are kept,
not followed); ``write_datalist`` stores them relative to the datalist file.
"""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from custom_components.data.datalist import NIFTI_SUFFIXES, is_nifti, nifti_stem
from custom_components.data.labels import check_convention

MODALITIES: tuple[str, ...] = ("t1n", "t1c", "t2w", "t2f")
# 2023 modality name -> 2021 file suffix
BRATS2021_NAMES: dict[str, str] = {"t1n": "t1", "t1c": "t1ce", "t2w": "t2", "t2f": "flair", "seg": "seg"}
# file-name stems (lower case) that mark a brain mask in a case folder: fnmatch patterns
BRAIN_MASK_PATTERNS: tuple[str, ...] = ("*brainmask*", "*brain_mask*", "*_mask", "*-mask")
# a healthy scan's brain mask beside it: <scan stem><suffix>.nii(.gz)
BRAIN_MASK_SUFFIXES: tuple[str, ...] = ("_brainmask", "_brain_mask", "_mask", "-mask")


def is_brain_mask_name(stem: str) -> bool:
    """Whether a NIfTI file stem names a brain mask (see :data:`BRAIN_MASK_PATTERNS`)."""
    return any(fnmatch.fnmatchcase(stem.lower(), p) for p in BRAIN_MASK_PATTERNS)


def _case_brain_mask(folder: Path) -> Path | None:
    """The case folder's brain mask file, if any; more than one is an error naming the folder."""
    found = sorted(
        f for f in folder.iterdir() if f.is_file() and is_brain_mask_name(nifti_stem(f) if is_nifti(f) else "")
    )
    if len(found) > 1:
        raise ValueError(f"{folder}: several brain mask files ({', '.join(f.name for f in found)}); keep one")
    return found[0] if found else None


def _find(folder: Path, stem: str) -> Path | None:
    """``folder/stem.nii.gz`` or ``folder/stem.nii``, whichever exists (in that order)."""
    for suffix in NIFTI_SUFFIXES:
        p = folder / f"{stem}{suffix}"
        if p.is_file():
            return p
    return None


def _parse_modalities(modalities: str | Sequence[str]) -> tuple[str, ...]:
    mods = tuple(m.strip() for m in modalities.split(",")) if isinstance(modalities, str) else tuple(modalities)
    if not mods:
        raise ValueError("modalities: at least one modality is needed")
    unknown = [m for m in mods if m not in MODALITIES]
    if unknown:
        raise ValueError(f"modalities: unknown {unknown}; use the BraTS 2023 names {', '.join(MODALITIES)}")
    if len(set(mods)) != len(mods):
        raise ValueError(f"modalities: {list(mods)} names a modality twice")
    return mods


def _case_naming(folder: Path) -> dict[str, str] | None:
    """Map 2023 names to the file stems this case folder uses, or None if it follows neither naming."""
    case = folder.name
    names: list[dict[str, str]] = [
        {k: f"{case}-{k}" for k in (*MODALITIES, "seg")},
        {k: f"{case}_{v}" for k, v in BRATS2021_NAMES.items()},
    ]
    counts = [sum(_find(folder, stem) is not None for stem in n.values()) for n in names]
    if max(counts) == 0:
        return None
    return names[int(np.argmax(counts))]  # the naming with the most files present (2023 on a tie)


def make_brats_datalist(
    root: str | os.PathLike,
    modalities: str | Sequence[str] = ("t1n",),
    val_fraction: float = 0.0,
    seed: int = 0,
    labels: str = "brats2023",
    require_label: bool = True,
) -> dict[str, Any]:
    """Datalist of the BraTS case folders under ``root``: one item per case.

    Items are ``{"case_id", "image": [one file per modality, in order], "label"}``, plus ``brain_mask``
    when the case folder holds a brain mask file (see the module docstring). A seeded shuffle
    moves ``round(val_fraction * n)`` cases (at least one when ``val_fraction > 0`` and at least one
    case stays for training) to ``validation``; both sections are sorted by case id.
    Sub-folders without any NIfTI file are ignored.

    Args:
        root: folder of case folders.
        modalities: BraTS 2023 names (t1n, t1c, t2w, t2f) as a sequence or a comma-separated string.
        val_fraction: fraction of cases for the ``validation`` section, in ``[0, 1)``.
        seed: seed of the split.
        labels: label convention of the seg files, recorded as the datalist's ``labels``.
        require_label: raise when a case has no seg file; when False such cases get no ``label``.

    Raises:
        FileNotFoundError: ``root`` is not a folder, or a case folder lacks a requested file
            (the message names the folder and the file expected).
        ValueError: bad arguments, a folder that follows neither naming, or no cases at all.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: BraTS folder not found")
    mods = _parse_modalities(modalities)
    check_convention(labels)
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")

    items: list[dict[str, Any]] = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if not any(is_nifti(f.name) for f in folder.iterdir() if f.is_file()):
            continue
        naming = _case_naming(folder)
        if naming is None:
            raise ValueError(
                f"{folder}: NIfTI files do not follow BraTS naming "
                f"({folder.name}-t1n.nii.gz ... or {folder.name}_t1.nii.gz ...)"
            )
        files = {k: _find(folder, stem) for k, stem in naming.items()}
        missing = [naming[k] for k in (*mods, "seg") if files[k] is None and (k != "seg" or require_label)]
        if missing:
            raise FileNotFoundError(f"{folder}: case folder lacks {', '.join(missing)} (.nii.gz or .nii)")
        item: dict[str, Any] = {
            "case_id": folder.name,
            "image": [str(files[m].absolute()) for m in mods],
        }
        if files["seg"] is not None:
            item["label"] = str(files["seg"].absolute())
        mask = _case_brain_mask(folder)
        if mask is not None:
            item["brain_mask"] = str(mask.absolute())
        items.append(item)
    if not items:
        raise ValueError(f"{root}: no BraTS case folders found (expected <case>/<case>-t1n.nii.gz ...)")

    n = len(items)
    n_val = int(round(val_fraction * n))
    if val_fraction > 0:
        n_val = min(max(n_val, 1), n - 1)
    order = np.random.default_rng(seed).permutation(n)
    val_idx = set(order[:n_val].tolist())
    return {
        "description": f"BraTS cases from {root.absolute()} ({', '.join(mods)}; split seed {seed})",
        "labels": labels,
        "modalities": list(mods),
        "training": [it for i, it in enumerate(items) if i not in val_idx],
        "validation": [it for i, it in enumerate(items) if i in val_idx],
    }


def make_healthy_datalist(root: str | os.PathLike, mask_dir: str | os.PathLike | None = None) -> dict[str, Any]:
    """Datalist of the healthy scans in ``root``: one item per NIfTI file, all in ``training``.

    Items are ``{"case_id": file name without extension, "image": [file]}``, plus ``"brain_mask"``:
    from ``mask_dir`` when given (the mask has the scan's file name), else the file beside the scan named
    ``<scan><suffix>`` with a suffix of :data:`BRAIN_MASK_SUFFIXES` (such files are not listed as scans).

    Args:
        root: folder of healthy scans (``.nii.gz`` / ``.nii``; sub-folders are not searched).
        mask_dir: optional folder of brain masks named like the scans.

    Raises:
        FileNotFoundError: ``root`` or ``mask_dir`` is not a folder, or a scan has no mask.
        ValueError: ``root`` holds no NIfTI file.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: healthy scan folder not found")
    masks = Path(mask_dir) if mask_dir is not None else None
    if masks is not None and not masks.is_dir():
        raise FileNotFoundError(f"{masks}: brain mask folder not found")
    files = [p for p in root.iterdir() if p.is_file() and not p.name.startswith(".") and is_nifti(p.name)]
    stems_present = {nifti_stem(p) for p in files}
    beside = {p: [nifti_stem(p) + s for s in BRAIN_MASK_SUFFIXES if nifti_stem(p) + s in stems_present] for p in files}
    mask_stems = {m for found in beside.values() for m in found}
    scans = sorted(p for p in files if nifti_stem(p) not in mask_stems)
    if not scans:
        raise ValueError(f"{root}: no NIfTI scans (.nii.gz or .nii) found")
    stems = [nifti_stem(p) for p in scans]
    if len(set(stems)) != len(stems):
        dup = sorted({s for s in stems if stems.count(s) > 1})
        raise ValueError(f"{root}: scans {dup} exist both as .nii and .nii.gz; keep one of each")
    items: list[dict[str, Any]] = []
    for scan, stem in zip(scans, stems, strict=True):
        item: dict[str, Any] = {"case_id": stem, "image": [str(scan.absolute())]}
        if masks is not None:
            mask = masks / scan.name
            if not mask.is_file():
                raise FileNotFoundError(f"{mask}: brain mask for {scan} not found")
            item["brain_mask"] = str(mask.absolute())
        elif beside[scan]:
            item["brain_mask"] = str(_find(root, beside[scan][0]).absolute())
        items.append(item)
    return {
        "description": f"healthy scans from {root.absolute()}"
        + (f" with brain masks from {masks.absolute()}" if masks else ""),
        "labels": "internal",
        "modalities": ["t1n"],
        "training": items,
    }
