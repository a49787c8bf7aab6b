"""QC montages: size, overlay colours where the tumour is, radiological orientation from any affine."""

from __future__ import annotations

from pathlib import Path

import matplotlib.image as mpimg
import nibabel as nib
import numpy as np
import pytest

from custom_components.data.atomic import save_nifti
from custom_components.qc import DPI, HEADER_INCHES, PANEL_INCHES, save_montage

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


def test_size_and_overlay_location(tmp_path: Path) -> None:
    image, label = _case()
    out = save_montage(image, label, tmp_path / "m.png", title="synthetic")
    png = mpimg.imread(out)
    header = int(HEADER_INCHES * DPI)
    assert png.shape[:2] == (int((PANEL_INCHES + HEADER_INCHES) * DPI), int(3 * PANEL_INCHES * DPI))
    masks = _colour_masks(png)
    panel = int(PANEL_INCHES * DPI)
    for name, mask in masks.items():
        # the legend is in the header; every class is also drawn in each of the three panels
        for c in range(3):
            assert mask[header:, c * panel : (c + 1) * panel].sum() > 10, (name, c)
    # axial panel: radiological, so the patient's left (low x) is on the viewer's right and
    # anterior (high y) at the top
    rows, cols = np.nonzero(masks["NCR"][header:, :panel])
    px = panel / N
    assert abs(cols.mean() - (N - 1 - CX + 0.5) * px) < px * 1.5
    assert abs(rows.mean() - (N - 1 - CY + 0.5) * px) < px * 1.5
    # nothing is coloured far from the tumour
    assert masks["ED"][header:, :panel][:, : panel // 2].sum() == 0


def test_rows_and_outline(tmp_path: Path) -> None:
    image, label = _case()
    out = save_montage(
        image[None],
        label,
        tmp_path / "rows.png",
        extra_images=[image * 2],
        row_titles=["a", "b"],
        outline=image > 0,
    )
    png = mpimg.imread(out)
    assert png.shape[:2] == (int((2 * PANEL_INCHES + HEADER_INCHES) * DPI), int(3 * PANEL_INCHES * DPI))
    rgb = png[int(HEADER_INCHES * DPI) :, :, :3]
    cyan = (rgb[..., 2] - rgb[..., 0] > 0.4) & (rgb[..., 1] - rgb[..., 0] > 0.4)
    assert cyan.sum() > 50
    with pytest.raises(ValueError, match="row_titles"):
        save_montage(image, label, tmp_path / "x.png", extra_images=[image], row_titles=["a"])


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
    assert _colour_masks(png)["ET"][int(HEADER_INCHES * DPI) :].sum() > 10
    seg = save_nifti(brats, np.eye(4), tmp_path / "brats_seg.nii.gz")
    with pytest.raises(ValueError, match=r"brats_seg.nii.gz: label values \[4\]"):
        save_montage(image, seg, tmp_path / "c.png")  # value 4 is not internal
    png = mpimg.imread(save_montage(image, None, tmp_path / "none.png"))
    assert not any(m[int(HEADER_INCHES * DPI) :].any() for m in _colour_masks(png).values())


def test_errors_name_the_file(tmp_path: Path) -> None:
    image, label = _case()
    missing = tmp_path / "missing.nii.gz"
    with pytest.raises(FileNotFoundError, match="missing.nii.gz"):
        save_montage(missing, label, tmp_path / "x.png")
    with pytest.raises(ValueError, match="label shape"):
        save_montage(image, label[:-1], tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()
