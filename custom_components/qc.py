"""Quality-control PNGs: axial, coronal and sagittal slices with the tumour labels overlaid.

Slices go through the tumour's centre of mass (the volume's centre when there is no tumour) and
are shown in radiological orientation whatever the files' axis codes: axial and coronal views with
the patient's right on the viewer's left, anterior (axial) or superior (coronal, sagittal) at the
top, anterior on the left in the sagittal view. NIfTI inputs are reoriented with
``nibabel.as_closest_canonical``; arrays are taken as RAS unless an affine is given (a MONAI
``MetaTensor`` brings its own).

Overlay colours are fixed per internal class: 1 NCR red, 2 ED green, 3 ET yellow.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import nibabel as nib  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

from custom_components.data.atomic import atomic_path  # noqa: E402
from custom_components.data.brain_mask import infer_brain_mask  # noqa: E402
from custom_components.data.labels import INTERNAL_CLASSES, to_internal  # noqa: E402

LABEL_COLOURS: dict[int, tuple[float, float, float]] = {1: (1.0, 0.0, 0.0), 2: (0.0, 0.8, 0.0), 3: (1.0, 1.0, 0.0)}
OUTLINE_COLOUR: tuple[float, float, float] = (0.0, 0.9, 1.0)
PANEL_INCHES = 3.0
HEADER_INCHES = 0.6
DPI = 100
VIEWS: tuple[str, ...] = ("axial", "coronal", "sagittal")

ArrayLike = Any  # numpy array, torch tensor / MetaTensor, or a NIfTI path


def _as_numpy(x: Any) -> tuple[np.ndarray, np.ndarray | None]:
    """Array and affine (when the object carries one, e.g. a MetaTensor)."""
    affine = getattr(x, "affine", None)
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    if affine is not None and hasattr(affine, "detach"):
        affine = affine.detach().cpu().numpy()
    return np.asarray(x), None if affine is None else np.asarray(affine, dtype=np.float64)


def load_volume(
    volume: ArrayLike, channel: int = 0, affine: np.ndarray | None = None
) -> tuple[np.ndarray, tuple[float, ...]]:
    """One 3D volume in RAS axis order and its voxel sizes.

    Args:
        volume: NIfTI path (3D, or 4D with channels last), or an array / tensor shaped
            (X, Y, Z) or (C, X, Y, Z).
        channel: channel to take from a 4D volume.
        affine: voxel-to-world matrix of an array input (default: the input's own, else RAS).

    Raises:
        FileNotFoundError / ValueError naming the file when it is missing or not 3D/4D.
    """
    if isinstance(volume, str | os.PathLike):
        path = Path(volume)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: image not found")
        img = nib.as_closest_canonical(nib.load(str(path)))
        data = np.asarray(img.dataobj)
        if data.ndim == 4:
            if not 0 <= channel < data.shape[3]:
                raise ValueError(f"{path}: channel {channel} out of range ({data.shape[3]} channels)")
            data = data[..., channel]
        if data.ndim != 3:
            raise ValueError(f"{path}: expected a 3D or 4D image, got shape {data.shape}")
        return data, tuple(float(z) for z in img.header.get_zooms()[:3])
    data, own_affine = _as_numpy(volume)
    if data.ndim == 4:
        if not 0 <= channel < data.shape[0]:
            raise ValueError(f"channel {channel} out of range for an array of shape {data.shape}")
        data = data[channel]
    if data.ndim != 3:
        raise ValueError(f"expected a 3D or channel-first 4D array, got shape {data.shape}")
    affine = own_affine if affine is None else np.asarray(affine, dtype=np.float64)
    if affine is None:
        return data, (1.0, 1.0, 1.0)
    ornt = nib.orientations.io_orientation(affine)
    data = nib.orientations.apply_orientation(data, ornt)
    new_affine = affine @ nib.orientations.inv_ornt_aff(ornt, data.shape)
    return data, tuple(float(z) for z in np.sqrt((new_affine[:3, :3] ** 2).sum(0)))


def _slice(volume: np.ndarray, view: str, index: int) -> np.ndarray:
    """2D display array of a RAS volume: rows top to bottom, columns left to right (radiological)."""
    if view == "axial":
        s = volume[:, :, index]
    elif view == "coronal":
        s = volume[:, index, :]
    else:
        s = volume[index, :, :]
    return s[::-1, ::-1].T


def _aspect(zooms: Sequence[float], view: str) -> float:
    zx, zy, zz = zooms
    return {"axial": zy / zx, "coronal": zz / zx, "sagittal": zz / zy}[view]


def _window(volume: np.ndarray, brain: np.ndarray) -> tuple[float, float]:
    fg = volume[brain]
    if fg.size == 0:
        return float(volume.min()), float(volume.min()) + 1.0
    lo, hi = np.percentile(fg, [0.5, 99.5])
    return float(lo), float(max(hi, lo + 1e-6))


def _overlay(label2d: np.ndarray, alpha: float) -> np.ndarray:
    rgba = np.zeros((*label2d.shape, 4), dtype=np.float32)
    for value, colour in LABEL_COLOURS.items():
        sel = label2d == value
        rgba[sel, :3] = colour
        rgba[sel, 3] = alpha
    return rgba


def tumour_centre(label: np.ndarray | None, shape: Sequence[int]) -> tuple[int, int, int]:
    """Voxel index of the tumour's centre of mass, or of the volume's centre without tumour."""
    if label is not None and (label > 0).any():
        return tuple(int(round(c)) for c in np.argwhere(label > 0).mean(0))
    return tuple(int(s // 2) for s in shape)


def save_montage(
    image: ArrayLike,
    label: ArrayLike | None,
    out_png: str | os.PathLike,
    title: str = "",
    channel: int = 0,
    extra_images: Sequence[ArrayLike] | None = None,
    row_titles: Sequence[str] | None = None,
    outline: ArrayLike | None = None,
    affine: np.ndarray | None = None,
    alpha: float = 0.5,
    labels: str = "internal",
    outline_name: str = "outline",
) -> Path:
    """Write a PNG: one row of axial, coronal and sagittal slices per image, labels overlaid.

    The PNG is ``3 * PANEL_INCHES * DPI`` (900) pixels wide and
    ``(rows * PANEL_INCHES + HEADER_INCHES) * DPI`` (300 per row + 60) pixels high.

    Args:
        image: NIfTI path or array (X, Y, Z) / (C, X, Y, Z); grey scale, percentile-windowed.
        label: internal-convention label (same forms, same grid) or None; overlaid on every row.
        out_png: PNG path, written atomically.
        title: figure title.
        channel: channel shown from 4D images.
        extra_images: further images on the same grid, one row each (e.g. coarse vs refined,
            raw vs prepared, or the registration reference).
        row_titles: a name per row (``1 + len(extra_images)``).
        outline: optional binary mask on the same grid drawn as a contour on every row (e.g. the
            reference brain when checking a registration).
        affine: voxel-to-world matrix for array inputs that carry none (default: RAS).
        alpha: opacity of the label overlay.
        labels: label convention of ``label`` (mapped to the internal classes for colouring).
        outline_name: legend entry of the outline.

    Returns:
        ``out_png`` as a Path.
    """
    rows = [image, *(extra_images or [])]
    volumes = [load_volume(v, channel, affine) for v in rows]
    shape = volumes[0][0].shape
    for i, (vol, _) in enumerate(volumes[1:], start=1):
        if vol.shape != shape:
            raise ValueError(f"extra image {i} has shape {vol.shape}, the first image {shape}")
    lab = None
    if label is not None:
        lab, _ = load_volume(label, 0, affine)
        if lab.shape != shape:
            raise ValueError(f"label shape {lab.shape} does not match image shape {shape}")
        try:
            lab = to_internal(np.rint(lab).astype(np.int64), labels)
        except ValueError as e:
            name = str(label) if isinstance(label, str | os.PathLike) else "label array"
            raise ValueError(f"{name}: {e}") from e
    mask = None
    if outline is not None:
        mask, _ = load_volume(outline, 0, affine)
        if mask.shape != shape:
            raise ValueError(f"outline shape {mask.shape} does not match image shape {shape}")
        mask = mask > 0
    if row_titles is not None and len(row_titles) != len(rows):
        raise ValueError(f"row_titles has {len(row_titles)} names for {len(rows)} rows")
    centre = tumour_centre(lab, shape)
    index = {"axial": centre[2], "coronal": centre[1], "sagittal": centre[0]}

    fig = Figure(figsize=(3 * PANEL_INCHES, len(rows) * PANEL_INCHES + HEADER_INCHES), dpi=DPI)
    FigureCanvasAgg(fig)
    fig.patch.set_facecolor("black")
    height = len(rows) * PANEL_INCHES + HEADER_INCHES
    for r, (vol, zooms) in enumerate(volumes):
        # display only: the inferred brain, unchecked (a montage must show even a doubtful volume)
        brain = infer_brain_mask(vol, check=False)
        vmin, vmax = _window(vol, brain)
        for c, view in enumerate(VIEWS):
            bottom = (len(rows) - 1 - r) * PANEL_INCHES / height
            ax = fig.add_axes((c / 3, bottom, 1 / 3, PANEL_INCHES / height))
            ax.set_axis_off()
            ax.set_facecolor("black")
            aspect = _aspect(zooms, view)
            shown = _slice(vol, view, index[view]).astype(np.float32)
            shown[~_slice(brain, view, index[view])] = vmin  # background black even when the window starts below it
            ax.imshow(shown, cmap="gray", vmin=vmin, vmax=vmax, aspect=aspect)
            if lab is not None:
                ax.imshow(_overlay(_slice(lab, view, index[view]), alpha), aspect=aspect, interpolation="nearest")
            if mask is not None:
                m2 = _slice(mask, view, index[view])
                if m2.any() and not m2.all():
                    ax.contour(m2.astype(np.float32), levels=[0.5], colors=[OUTLINE_COLOUR], linewidths=0.8)
            name = row_titles[r] if row_titles is not None else ""
            ax.text(0.02, 0.98, f"{name} {view}".strip(), color="white", fontsize=8, va="top", transform=ax.transAxes)
    header = PANEL_INCHES * len(rows) / height
    if title:  # upper line of the header
        fig.text(0.01, header + 0.72 * (1 - header), title, color="white", fontsize=9, va="center")
    handles = []
    if lab is not None and alpha > 0:  # alpha 0: the label only centres the slices
        handles = [Patch(color=LABEL_COLOURS[v], label=f"{v} {INTERNAL_CLASSES[v]}") for v in LABEL_COLOURS]
    if mask is not None:
        handles.append(Patch(color=OUTLINE_COLOUR, label=outline_name))
    if handles:  # lower line of the header
        fig.legend(
            handles=handles,
            loc="center right",
            bbox_to_anchor=(0.99, header + 0.28 * (1 - header)),
            ncol=len(handles),
            fontsize=8,
            frameon=False,
            labelcolor="white",
        )
    out_png = Path(out_png)
    with atomic_path(out_png, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", facecolor="black", metadata={"Software": None})
    return out_png
