"""Quality-control PNGs that show the texture: axial, coronal and sagittal slices through the tumour,
each as it is and with the tumour labels as contours; for derived cases also the source and |difference|.

Slices go through the tumour's centre of mass (the volume's centre when there is no tumour) and
are shown in radiological orientation whatever the files' axis codes: axial and coronal views with
the patient's right on the viewer's left, anterior (axial) or superior (coronal, sagittal) at the
top, anterior on the left in the sagittal view. NIfTI inputs are reoriented with
``nibabel.as_closest_canonical``; arrays are taken as RAS unless an affine is given (a MONAI
``MetaTensor`` brings its own).

Contour colours are fixed per internal class: 1 NCR red, 2 ED green, 3 ET yellow. Labels are never
filled in, so the synthetic texture stays visible.
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
from monai.utils import convert_to_numpy  # noqa: E402

from custom_components.data.atomic import atomic_path  # noqa: E402
from custom_components.data.brain_mask import infer_brain_mask  # noqa: E402
from custom_components.data.labels import INTERNAL_CLASSES, to_internal  # noqa: E402

LABEL_COLOURS: dict[int, tuple[float, float, float]] = {1: (1.0, 0.0, 0.0), 2: (0.0, 0.8, 0.0), 3: (1.0, 1.0, 0.0)}
OUTLINE_COLOUR: tuple[float, float, float] = (0.0, 0.9, 1.0)
PANEL_INCHES = 2.5
HEADER_INCHES = 0.6
DPI = 100
VIEWS: tuple[str, ...] = ("axial", "coronal", "sagittal")
PANELS_PER_VIEW = 2  # the slice as it is, and the same slice with label contours
WINDOW_PERCENTILES: tuple[float, float] = (0.5, 99.5)  # of brain voxels, per image (modality) and row

ArrayLike = Any  # numpy array, torch tensor / MetaTensor, or a NIfTI path


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
    data, own_affine = convert_to_numpy(volume, wrap_sequence=True), getattr(volume, "affine", None)
    own_affine = None if own_affine is None else convert_to_numpy(own_affine, dtype=np.float64)
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


def display_slice(volume: np.ndarray, view: str, index: int) -> np.ndarray:
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


def display_brain(volume: np.ndarray) -> np.ndarray:
    """Brain voxels of a volume for display: the inferred brain mask, unchecked (a montage must show even
    a doubtful volume)."""
    return infer_brain_mask(volume, check=False)


def window(volume: np.ndarray, brain: np.ndarray | None = None) -> tuple[float, float]:
    """Grey-level window of one image: the ``WINDOW_PERCENTILES`` of its brain voxels (default: the
    :func:`display_brain` mask), so every modality and every row is windowed on its own brain."""
    fg = volume[display_brain(volume) if brain is None else brain]
    if fg.size == 0:
        return float(volume.min()), float(volume.min()) + 1.0
    lo, hi = np.percentile(fg, WINDOW_PERCENTILES)
    return float(lo), float(max(hi, lo + 1e-6))


def windowed(slice2d: np.ndarray, vmin: float, vmax: float, brain2d: np.ndarray | None = None) -> np.ndarray:
    """Grey values in [0, 1] of a 2D slice under the window ``[vmin, vmax]``; voxels outside ``brain2d``
    black (even when the window starts below the background value)."""
    grey = np.clip((slice2d.astype(np.float64) - vmin) / (vmax - vmin), 0.0, 1.0)
    if brain2d is not None:
        grey[~brain2d] = 0.0
    return grey


def label_contours(label2d: np.ndarray) -> np.ndarray:
    """Contour pixels of each class of a 2D label slice: the class's voxels with a 4-neighbour of
    another value (or on the slice's edge); 0 elsewhere. Values are the classes'."""
    lab = np.asarray(label2d)
    padded = np.pad(lab, 1, mode="edge")
    centre = padded[1:-1, 1:-1]
    differs = np.zeros(lab.shape, dtype=bool)
    for shifted in (padded[:-2, 1:-1], padded[2:, 1:-1], padded[1:-1, :-2], padded[1:-1, 2:]):
        differs |= shifted != centre
    return np.where(differs & (lab > 0), lab, 0)


def contoured(grey: np.ndarray, label2d: np.ndarray | None) -> np.ndarray:
    """RGB image of a grey slice with the label contours drawn in the class colours (not filled)."""
    rgb = np.repeat(grey[..., None], 3, axis=-1)
    if label2d is not None:
        edges = label_contours(label2d)
        for value, colour in LABEL_COLOURS.items():
            rgb[edges == value] = colour
    return rgb


def difference_rgb(diff2d: np.ndarray, vmax: float) -> np.ndarray:
    """RGB of an absolute-difference slice (``inferno`` colour map, 0 black, ``vmax`` and above brightest)."""
    from matplotlib import colormaps

    return colormaps["inferno"](np.clip(diff2d / vmax, 0.0, 1.0))[..., :3]


def tumour_centre(label: np.ndarray | None, shape: Sequence[int]) -> tuple[int, int, int]:
    """Voxel index of the tumour's centre of mass, or of the volume's centre without tumour."""
    if label is not None and (label > 0).any():
        return tuple(int(round(c)) for c in np.argwhere(label > 0).mean(0))
    return tuple(int(s // 2) for s in shape)


def _load_label(label: ArrayLike, channel_affine: np.ndarray | None, shape: tuple[int, ...], labels: str, what: str):
    lab, _ = load_volume(label, 0, channel_affine)
    if lab.shape != shape:
        raise ValueError(f"{what} shape {lab.shape} does not match image shape {shape}")
    try:
        return to_internal(np.rint(lab).astype(np.int64), labels)
    except ValueError as e:
        name = str(label) if isinstance(label, str | os.PathLike) else f"{what} array"
        raise ValueError(f"{name}: {e}") from e


def montage_rows(
    image: ArrayLike,
    label: ArrayLike | None,
    channel: int = 0,
    source: ArrayLike | None = None,
    source_label: ArrayLike | None = None,
    extra_images: Sequence[ArrayLike] | None = None,
    affine: np.ndarray | None = None,
    labels: str = "internal",
) -> tuple[list[dict[str, Any]], dict[str, int], np.ndarray | None]:
    """The panels of a montage as RGB arrays, before rendering (what :func:`save_montage` draws).

    Returns ``(rows, index, label)``: one dict per row with ``kind`` (``"image"``, ``"source"`` or
    ``"difference"``), ``zooms`` and, per view, ``(plain, contours)`` RGB arrays in [0, 1] (display
    orientation); the slice index per view; the internal label volume (RAS) or None. The plain panel of an
    image row is the windowed slice (grey, r = g = b); the contour panel is the same slice with the
    label's class contours in the class colours; a difference row shows ``|image - source|``.
    """
    img, zooms = load_volume(image, channel, affine)
    shape = img.shape
    lab = None if label is None else _load_label(label, affine, shape, labels, "label")
    centre = tumour_centre(lab, shape)
    index = {"axial": centre[2], "coronal": centre[1], "sagittal": centre[0]}
    volumes: list[tuple[str, np.ndarray, tuple[float, ...], np.ndarray | None]] = [("image", img, zooms, lab)]
    src = None
    if source is not None:
        src, src_zooms = load_volume(source, channel, affine)
        if src.shape != shape:
            raise ValueError(f"source image has shape {src.shape}, the image {shape}")
        src_lab = lab if source_label is None else _load_label(source_label, affine, shape, labels, "source label")
        volumes.append(("source", src, src_zooms, src_lab))
    for i, extra in enumerate(extra_images or [], start=1):
        vol, z = load_volume(extra, channel, affine)
        if vol.shape != shape:
            raise ValueError(f"extra image {i} has shape {vol.shape}, the first image {shape}")
        volumes.append(("image", vol, z, lab))
    rows: list[dict[str, Any]] = []
    brains: list[np.ndarray] = []
    for kind, vol, z, row_lab in volumes:
        brain = display_brain(vol)
        brains.append(brain)
        vmin, vmax = window(vol, brain)
        row: dict[str, Any] = {"kind": kind, "zooms": z}
        for view in VIEWS:
            grey = windowed(display_slice(vol, view, index[view]), vmin, vmax, display_slice(brain, view, index[view]))
            lab2d = None if row_lab is None else display_slice(row_lab, view, index[view])
            row[view] = (contoured(grey, None), contoured(grey, lab2d))
        rows.append(row)
        if kind == "source":
            diff = np.abs(img.astype(np.float64) - src.astype(np.float64))
            brain = brains[0] | brains[-1]  # the image's and the source's brain
            dmax = float(np.percentile(diff[brain], 99.5)) if brain.any() else 0.0
            dmax = dmax if dmax > 0 else float(diff.max()) or 1.0
            drow: dict[str, Any] = {"kind": "difference", "zooms": zooms, "vmax": dmax}
            for view in VIEWS:
                d = difference_rgb(display_slice(diff, view, index[view]), dmax)
                lab2d = None if lab is None else display_slice(lab, view, index[view])
                edges = None if lab2d is None else label_contours(lab2d)
                with_contours = d.copy()
                if edges is not None:
                    for value, colour in LABEL_COLOURS.items():
                        with_contours[edges == value] = colour
                drow[view] = (d, with_contours)
            rows.append(drow)
    return rows, index, lab


def save_montage(
    image: ArrayLike,
    label: ArrayLike | None,
    out_png: str | os.PathLike,
    title: str = "",
    channel: int = 0,
    source: ArrayLike | None = None,
    source_label: ArrayLike | None = None,
    extra_images: Sequence[ArrayLike] | None = None,
    row_titles: Sequence[str] | None = None,
    outline: ArrayLike | None = None,
    affine: np.ndarray | None = None,
    labels: str = "internal",
    outline_name: str = "outline",
) -> Path:
    """Write a PNG: per row, axial, coronal and sagittal slices through the tumour centre, each shown twice:
    as it is (no overlay, to judge the texture) and with the label's class contours (not filled).

    Rows: the image; then, for a derived case, its ``source`` (with ``source_label``'s contours) and the
    absolute difference ``|image - source|``; then any ``extra_images``. Every image row is windowed on its
    own brain percentiles (``WINDOW_PERCENTILES``); the difference on 0 .. its 99.5th brain percentile.
    The PNG is ``3 * PANELS_PER_VIEW * PANEL_INCHES * DPI`` (1500) pixels wide and
    ``(rows * PANEL_INCHES + HEADER_INCHES) * DPI`` (250 per row + 60) pixels high.

    Args:
        image: NIfTI path or array (X, Y, Z) / (C, X, Y, Z).
        label: label of ``image`` (same forms, same grid) or None; its contours are drawn on every row but
            the source row, and it centres the slices.
        out_png: PNG path, written atomically.
        title: figure title.
        channel: channel (modality) shown from 4D images.
        source: the case ``image`` was derived from (DTSS / CarveMix target, TF-GAN's coarse input,
            the healthy scan of TF-Aug), same grid.
        source_label: the source's label (default: ``label``).
        extra_images: further images on the same grid, one row each (e.g. the registration reference).
        row_titles: a name per row (image, [source, difference,] extras).
        outline: optional binary mask drawn as a cyan contour on every contour panel (e.g. the ROI m_s,
            or the reference brain when checking a registration); plain panels never get an overlay.
        affine: voxel-to-world matrix for array inputs that carry none (default: RAS).
        labels: label convention of ``label`` / ``source_label``.
        outline_name: legend entry of the outline.

    Returns:
        ``out_png`` as a Path.
    """
    rows, index, lab = montage_rows(image, label, channel, source, source_label, extra_images, affine, labels)
    shape = load_volume(image, channel, affine)[0].shape
    mask = None
    if outline is not None:
        mask, _ = load_volume(outline, 0, affine)
        if mask.shape != shape:
            raise ValueError(f"outline shape {mask.shape} does not match image shape {shape}")
        mask = mask > 0
    if row_titles is not None and len(row_titles) != len(rows):
        raise ValueError(f"row_titles has {len(row_titles)} names for {len(rows)} rows")
    default_titles = {"image": "", "source": "source", "difference": "|difference|"}
    n_cols = len(VIEWS) * PANELS_PER_VIEW
    height = len(rows) * PANEL_INCHES + HEADER_INCHES
    fig = Figure(figsize=(n_cols * PANEL_INCHES, height), dpi=DPI)
    FigureCanvasAgg(fig)
    fig.patch.set_facecolor("black")
    for r, row in enumerate(rows):
        bottom = (len(rows) - 1 - r) * PANEL_INCHES / height
        name = row_titles[r] if row_titles is not None else default_titles[row["kind"]]
        for v, view in enumerate(VIEWS):
            aspect = _aspect(row["zooms"], view)
            for k, panel in enumerate(row[view]):
                ax = fig.add_axes(((v * PANELS_PER_VIEW + k) / n_cols, bottom, 1 / n_cols, PANEL_INCHES / height))
                ax.set_axis_off()
                ax.set_facecolor("black")
                ax.imshow(panel, aspect=aspect, interpolation="nearest")
                if mask is not None and k == 1:  # the plain panel stays free of any overlay
                    m2 = display_slice(mask, view, index[view])
                    if m2.any() and not m2.all():
                        ax.contour(m2.astype(np.float32), levels=[0.5], colors=[OUTLINE_COLOUR], linewidths=0.8)
                suffix = "contours" if k == 1 else ""
                text = " ".join(t for t in (name, view, suffix) if t)
                ax.text(0.02, 0.98, text, color="white", fontsize=7, va="top", transform=ax.transAxes)
    header = PANEL_INCHES * len(rows) / height
    if title:  # upper line of the header
        fig.text(0.01, header + 0.72 * (1 - header), title, color="white", fontsize=9, va="center")
    handles = class_handles() if lab is not None else []
    if mask is not None:
        handles.append(Patch(color=OUTLINE_COLOUR, label=outline_name))
    if handles:  # lower line of the header
        header_legend(fig, handles, header + 0.28 * (1 - header))
    return save_png(fig, out_png)


def class_handles() -> list[Patch]:
    """Legend entries of the class contour colours (1 NCR, 2 ED, 3 ET)."""
    return [Patch(color=LABEL_COLOURS[v], label=f"{v} {INTERNAL_CLASSES[v]}") for v in LABEL_COLOURS]


def header_legend(fig: Figure, handles: Sequence[Patch], y: float) -> None:
    """A one-line legend at the right of a figure's header, centred at height ``y`` (figure fraction)."""
    fig.legend(
        handles=handles,
        loc="center right",
        bbox_to_anchor=(0.99, y),
        ncol=len(handles),
        fontsize=8,
        frameon=False,
        labelcolor="white",
    )


def save_png(fig: Figure, out_png: str | os.PathLike) -> Path:
    """Write a figure as a PNG on black, atomically, without a software tag (same input, same bytes)."""
    out_png = Path(out_png)
    with atomic_path(out_png, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", facecolor="black", metadata={"Software": None})
    return out_png
