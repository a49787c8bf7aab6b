"""A texture panel: real tumours beside each synthesis method's, zoomed and on one intensity scale.

The QC montages (:mod:`custom_components.quality.qc`) show a whole case beside the input it was made from, each
windowed on its own brain. To judge whether a method's tumours have the texture of real ones, the eye needs them
side by side instead: :func:`save_texture_panel` draws, per set of cases (real held-out tumours first, then each
method), the axial slice through each tumour's centre of mass, cropped to a square around it and shown in the
brain-normalised intensities of the realism test (:func:`custom_components.quality.realism.load_cases`, brain in
[-1, 1]) under ONE fixed window for every panel, so a tumour darker or flatter than the real ones looks it. Each
case is shown twice, as it is and with the class contours (colours of the QC montages).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from custom_components.quality.qc import (
    DPI,
    PANEL_INCHES,
    class_handles,
    contoured,
    display_slice,
    header_legend,
    save_png,
    tumour_centre,
)
from custom_components.quality.realism import RealismCase

TEXTURE_WINDOW: tuple[float, float] = (-1.0, 1.0)  # the brain's intensity range after RescaleBrainIntensity
HEADER_INCHES = 0.5


def texture_slices(case: RealismCase, half_size: int, channel: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The axial slice through a case's tumour centre of mass, in display orientation (as the QC montages), cropped
    to the ``2 * half_size + 1`` pixels square centred on the tumour; pixels beyond the volume are padded (image with
    the window's low end, label with 0).

    Args:
        case: a case as the realism test reads it (image ``(C, X, Y, Z)`` brain-normalised, internal label).
        half_size: pixels on each side of the centre.
        channel: the image channel (modality) shown.

    Returns:
        ``(image2d, label2d)``, both ``(2 * half_size + 1, 2 * half_size + 1)``.
    """
    if half_size < 1:
        raise ValueError(f"half_size must be >= 1, got {half_size}")
    volume = case.image[channel]
    cx, cy, cz = tumour_centre(case.label, volume.shape)
    image2d, label2d = display_slice(volume, "axial", cz), display_slice(case.label, "axial", cz)
    # display_slice shows volume[:, :, z] flipped on both axes and transposed: voxel (x, y) is pixel (Y-1-y, X-1-x)
    row, col = volume.shape[1] - 1 - cy, volume.shape[0] - 1 - cx
    side = 2 * half_size + 1

    def crop(a: np.ndarray, fill: float) -> np.ndarray:
        out = np.full((side, side), fill, dtype=a.dtype)
        r0, c0 = row - half_size, col - half_size
        rs, cs = slice(max(r0, 0), min(r0 + side, a.shape[0])), slice(max(c0, 0), min(c0 + side, a.shape[1]))
        out[rs.start - r0 : rs.stop - r0, cs.start - c0 : cs.stop - c0] = a[rs, cs]
        return out

    return crop(image2d, TEXTURE_WINDOW[0]), crop(label2d, 0)


def save_texture_panel(
    sets: Mapping[str, Sequence[RealismCase]],
    out_png: str | os.PathLike,
    half_size: int = 16,
    channel: int = 0,
    title: str = "",
) -> Path:
    """Write a PNG: one pair of columns per set of cases (the zoomed tumour slice of :func:`texture_slices` as it is
    and with its class contours), one row per case (the i-th case of every set; a set with fewer cases leaves its
    panels empty), every panel under the fixed window :data:`TEXTURE_WINDOW`.

    Args:
        sets: name -> cases, in column order (e.g. ``{"real (held-out)": ..., "TF-Aug": ..., "TF": ...}``).
        out_png: PNG path, written atomically.
        half_size: pixels on each side of the tumour centre.
        channel: the image channel (modality) shown.
        title: figure title.

    Returns:
        ``out_png`` as a Path.
    """
    names = [name for name, cases in sets.items() if cases]
    if not names:
        raise ValueError("save_texture_panel needs at least one set with a case")
    n_rows = max(len(sets[name]) for name in names)
    n_cols = 2 * len(names)
    height = n_rows * PANEL_INCHES + HEADER_INCHES
    fig = Figure(figsize=(n_cols * PANEL_INCHES, height), dpi=DPI)
    FigureCanvasAgg(fig)
    fig.patch.set_facecolor("black")
    lo, hi = TEXTURE_WINDOW
    for s, name in enumerate(names):
        for r, case in enumerate(sets[name]):
            image2d, label2d = texture_slices(case, half_size, channel)
            grey = np.clip((image2d.astype(np.float64) - lo) / (hi - lo), 0.0, 1.0)
            bottom = (n_rows - 1 - r) * PANEL_INCHES / height
            for k, panel in enumerate((contoured(grey, None), contoured(grey, label2d))):
                ax = fig.add_axes(((2 * s + k) / n_cols, bottom, 1 / n_cols, PANEL_INCHES / height))
                ax.set_axis_off()
                ax.imshow(panel, interpolation="nearest")
                text = f"{name}: {case.case_id}" if k == 0 else "contours"
                ax.text(0.02, 0.98, text, color="white", fontsize=7, va="top", transform=ax.transAxes)
    header = n_rows * PANEL_INCHES / height
    heading = title or f"tumour texture, axial, window [{lo:g}, {hi:g}] of the brain-normalised image"
    fig.text(0.01, header + 0.5 * (1 - header), heading, color="white", fontsize=9, va="center")
    header_legend(fig, class_handles(), header + 0.5 * (1 - header))
    return save_png(fig, out_png)
