"""QC montages: plain panels equal the windowed slice, contours only on label boundaries, source and
|difference| rows, size, radiological orientation from any affine."""

from __future__ import annotations

from pathlib import Path

import matplotlib.image as mpimg
import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from custom_components.data.atomic import save_nifti
from custom_components.quality.qc import (
    DPI,
    HEADER_INCHES,
    LABEL_COLOURS,
    PANEL_INCHES,
    VIEWS,
    display_slice,
    label_contours,
    montage_rows,
    save_montage,
    window,
    windowed,
)

N = 32
# tumour centre (voxel, RAS order): on the patient's left (low x) and anterior (high y)
CX, CY, CZ = 8, 24, 16


def _case() -> tuple[np.ndarray, np.ndarray]:
    grid = np.stack(np.meshgrid(*[np.arange(N)] * 3, indexing="ij")).astype(np.float32)
    brain = ((grid - (N - 1) / 2) ** 2).sum(0) < 14.5**2
    image = np.where(brain, 100.0 + grid[0], 0.0).astype(np.float32)
    r = np.sqrt(((grid - np.array([CX, CY, CZ]).reshape(3, 1, 1, 1)) ** 2).sum(0))
    label = np.zeros((N, N, N), np.uint8)
    label[r < 6] = 2
    label[r < 4] = 3
    label[r < 2.5] = 1
    return image, label


def _colour_masks(png: np.ndarray) -> dict[str, np.ndarray]:
    rgb = png[..., :3]
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    return {
        "NCR": (r - g > 0.3) & (r - b > 0.3),
        "ED": (g - r > 0.25) & (g - b > 0.25),
        "ET": (r - b > 0.3) & (g - b > 0.3) & (np.abs(r - g) < 0.15),
    }


PANEL = int(PANEL_INCHES * DPI)
HEADER = int(HEADER_INCHES * DPI)


def _panel(png: np.ndarray, row: int, col: int) -> np.ndarray:
    return png[HEADER + row * PANEL : HEADER + (row + 1) * PANEL, col * PANEL : (col + 1) * PANEL, :3]


def test_plain_panel_is_the_windowed_slice_and_contours_only_on_boundaries() -> None:
    image, label = _case()
    rows, index, _ = montage_rows(image, label)
    assert index == {"axial": CZ, "coronal": CY, "sagittal": CX}
    vmin, vmax = window(image)
    brain = image[image > 0]
    assert (vmin, vmax) == tuple(np.percentile(brain, [0.5, 99.5]))  # brain percentiles, background excluded
    for view in VIEWS:
        plain, contours = rows[0][view]
        expected = windowed(
            display_slice(image, view, index[view]), vmin, vmax, display_slice(image > 0, view, index[view])
        )
        for ch in range(3):  # grey, no overlay: r = g = b = the windowed slice
            np.testing.assert_array_equal(plain[..., ch], expected)
        lab2d = display_slice(label, view, index[view])
        coloured = (contours != plain).any(-1)
        # every coloured pixel is a labelled voxel with a 4-neighbour of another class (a boundary)
        edges = label_contours(lab2d)
        np.testing.assert_array_equal(coloured, edges > 0)
        interior = ndimage.binary_erosion(lab2d > 0) & (edges == 0)
        assert interior.sum() > 0 and not coloured[interior].any()  # not filled
        for value, colour in LABEL_COLOURS.items():
            np.testing.assert_array_equal(
                contours[edges == value], np.broadcast_to(colour, ((edges == value).sum(), 3))
            )
            assert (edges == value).sum() > 0
    # a hand-made case: a 3x3 square of class 2 in a 5x5 slice -> its 8 outer voxels are the contour
    lab = np.zeros((5, 5), int)
    lab[1:4, 1:4] = 2
    expected_edges = np.where(lab > 0, 2, 0)
    expected_edges[2, 2] = 0
    np.testing.assert_array_equal(label_contours(lab), expected_edges)


def test_png_layout_plain_panels_grey_contours_coloured(tmp_path: Path) -> None:
    image, label = _case()
    out = save_montage(image, label, tmp_path / "m.png", title="synthetic")
    png = mpimg.imread(out)
    assert png.shape[:2] == (PANEL + HEADER, 2 * len(VIEWS) * PANEL)
    masks = _colour_masks(png)
    for v in range(len(VIEWS)):
        plain = _panel(png, 0, 2 * v)
        assert np.abs(plain[..., 0] - plain[..., 1]).max() < 1e-6 and np.abs(plain[..., 0] - plain[..., 2]).max() < 1e-6
        assert plain.max() > 0.5  # the brain is visible
        for name, mask in masks.items():
            sub = mask[HEADER:, (2 * v + 1) * PANEL : (2 * v + 2) * PANEL]
            assert sub.sum() > 10, (name, v)
    # axial contour panel: radiological, the patient's left (low x) on the viewer's right, anterior on top
    rows, cols = np.nonzero(masks["ED"][HEADER:, PANEL : 2 * PANEL])
    px = PANEL / N
    assert abs(cols.mean() - (N - 1 - CX + 0.5) * px) < px * 1.5
    assert abs(rows.mean() - (N - 1 - CY + 0.5) * px) < px * 1.5
    # contours, not filled areas: the centre of the ET ring shows NCR's ring, the tumour centre itself is grey
    centre = _panel(png, 0, 1)[int((N - 1 - CY + 0.5) * px), int((N - 1 - CX + 0.5) * px)]
    assert abs(centre[0] - centre[1]) < 1e-6 and abs(centre[1] - centre[2]) < 1e-6


def test_source_and_difference_rows(tmp_path: Path) -> None:
    image, label = _case()
    source = image.copy()
    source[label > 0] = 100.0  # the derived case differs from its source only inside the tumour
    rows, index, _ = montage_rows(image, label, source=source)
    assert [r["kind"] for r in rows] == ["image", "source", "difference"]
    diff_plain, diff_contours = rows[2]["axial"]
    lab2d = display_slice(label, "axial", index["axial"])
    assert diff_plain[lab2d == 0].max() < 0.02  # black (inferno at 0) where image == source
    assert diff_plain[lab2d == 3].max() > 0.5  # bright where they differ
    assert (diff_contours != diff_plain).any()
    png = mpimg.imread(
        save_montage(
            image, label, tmp_path / "d.png", source=source, row_titles=["derived", "source", "|d|"], outline=image > 0
        )
    )
    assert png.shape[:2] == (3 * PANEL + HEADER, 2 * len(VIEWS) * PANEL)
    rgb = png[HEADER:, :, :3]
    cyan = (rgb[..., 2] - rgb[..., 0] > 0.4) & (rgb[..., 1] - rgb[..., 0] > 0.4)
    assert cyan.sum() > 50
    plain_cols = np.concatenate([np.arange(c * PANEL, (c + 1) * PANEL) for c in (0, 2, 4)])
    assert not cyan[: 2 * PANEL, plain_cols].any()  # the outline only on contour panels (image and source rows)
    with pytest.raises(ValueError, match="row_titles"):
        save_montage(image, label, tmp_path / "x.png", source=source, row_titles=["a"])
    with pytest.raises(ValueError, match="source image has shape"):
        save_montage(image, label, tmp_path / "x.png", source=source[:-1])


def test_orientation_independent_of_axis_codes(tmp_path: Path) -> None:
    """The same anatomy stored RAS or LPS gives the same picture."""
    image, label = _case()
    ras = np.eye(4)
    lps = np.diag([-1.0, -1.0, 1.0, 1.0])
    lps[:2, 3] = N - 1  # voxel 0 of the flipped axes sits at world N-1
    paths = {}
    for name, aff, flip in (("ras", ras, (slice(None),) * 3), ("lps", lps, (slice(None, None, -1),) * 2)):
        img = save_nifti(image[flip], aff, tmp_path / f"{name}_img.nii.gz")
        lab = save_nifti(label[flip], aff, tmp_path / f"{name}_seg.nii.gz")
        paths[name] = mpimg.imread(save_montage(img, lab, tmp_path / f"{name}.png"))
    assert nib.aff2axcodes(lps) == ("L", "P", "S")
    np.testing.assert_array_equal(paths["ras"], paths["lps"])
    # arrays with an explicit affine follow the same rule
    from_array = mpimg.imread(save_montage(image[::-1, ::-1], label[::-1, ::-1], tmp_path / "arr.png", affine=lps))
    np.testing.assert_array_equal(paths["ras"], from_array)


def test_brats_labels_and_no_tumour(tmp_path: Path) -> None:
    image, label = _case()
    brats = label.copy()
    brats[label == 3] = 4
    png = mpimg.imread(save_montage(image, brats, tmp_path / "b.png", labels="brats2021"))
    assert _colour_masks(png)["ET"][HEADER:].sum() > 10
    seg = save_nifti(brats, np.eye(4), tmp_path / "brats_seg.nii.gz")
    with pytest.raises(ValueError, match=r"brats_seg.nii.gz: label values \[4\]"):
        save_montage(image, seg, tmp_path / "c.png")  # value 4 is not internal
    png = mpimg.imread(save_montage(image, None, tmp_path / "none.png"))
    assert not any(m[HEADER:].any() for m in _colour_masks(png).values())


def test_errors_name_the_file(tmp_path: Path) -> None:
    image, label = _case()
    missing = tmp_path / "missing.nii.gz"
    with pytest.raises(FileNotFoundError, match="missing.nii.gz"):
        save_montage(missing, label, tmp_path / "x.png")
    with pytest.raises(ValueError, match="label shape"):
        save_montage(image, label[:-1], tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()
