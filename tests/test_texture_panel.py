"""Texture panel: the zoomed tumour slice of every case (centre, orientation, padding) and the PNG's layout."""

from __future__ import annotations

from pathlib import Path

import matplotlib.image as mpimg
import numpy as np
import pytest

from custom_components.pipeline.report import TEXTURE_HEADING, write_report
from custom_components.quality.qc import DPI, PANEL_INCHES
from custom_components.quality.realism import RealismCase
from custom_components.quality.texture_panel import HEADER_INCHES, save_texture_panel, texture_slices

SHAPE = (20, 24, 16)


def _case(centre: tuple[int, int, int], case_id: str = "c", value: float = 0.0) -> RealismCase:
    """A volume whose voxels hold their own coordinates (x + 100 y + 10000 z, scaled), a 3^3 ET cube at ``centre``
    with an NCR voxel in its middle."""
    x, y, z = np.meshgrid(*(np.arange(n) for n in SHAPE), indexing="ij")
    image = ((x + 100 * y + 10000 * z) / 1e6 + value).astype(np.float32)[None]
    label = np.zeros(SHAPE, np.uint8)
    cx, cy, cz = centre
    label[cx - 1 : cx + 2, cy - 1 : cy + 2, cz - 1 : cz + 2] = 3
    label[cx, cy, cz] = 1
    return RealismCase(case_id, image, label, (1.0, 1.0, 1.0))


def test_crop_is_centred_on_the_tumour_in_display_orientation() -> None:
    case = _case((8, 10, 5))
    image2d, label2d = texture_slices(case, half_size=3)
    assert image2d.shape == label2d.shape == (7, 7)
    # the centre pixel is the tumour's centre voxel; the axial slice is z = 5
    assert image2d[3, 3] == pytest.approx(case.image[0, 8, 10, 5])
    assert label2d[3, 3] == 1 and (label2d == 3).sum() == 8
    # radiological display: one pixel to the right is one voxel towards low x, one pixel down one towards low y
    assert image2d[3, 4] == pytest.approx(case.image[0, 7, 10, 5])
    assert image2d[4, 3] == pytest.approx(case.image[0, 8, 9, 5])


def test_crop_beyond_the_volume_is_padded() -> None:
    # tumour centre at x = 1: the crop reaches 3 voxels to low x... and beyond x = 0 on the display's right
    case = _case((1, 12, 8))
    image2d, label2d = texture_slices(case, half_size=3)
    assert image2d[3, 3] == pytest.approx(case.image[0, 1, 12, 8])
    # display columns 5 and 6 are x = -1 and x = -2: padded with the window's low end and no label
    assert np.all(image2d[:, 5:] == -1.0) and np.all(label2d[:, 5:] == 0)
    assert image2d[3, 4] == pytest.approx(case.image[0, 0, 12, 8])
    with pytest.raises(ValueError, match="half_size"):
        texture_slices(case, half_size=0)


def test_png_layout_one_window_for_every_panel(tmp_path: Path) -> None:
    panel, header = int(PANEL_INCHES * DPI), int(HEADER_INCHES * DPI)
    sets = {
        "real": [_case((8, 10, 5), "r0"), _case((10, 12, 8), "r1")],
        "dark": [_case((8, 10, 5), "d0", value=-0.5)],
        "empty": [],
    }
    png = mpimg.imread(save_texture_panel(sets, tmp_path / "t.png", half_size=4))
    # two sets with cases, each as it is and with contours; two rows (the longest set); the empty set left out
    assert png.shape[:2] == (2 * panel + header, 4 * panel)

    def mean_grey(col: int) -> float:
        centre = png[
            header + panel // 4 : header + 3 * panel // 4, col * panel + panel // 4 : (col + 1) * panel - panel // 4
        ]
        return float(centre[..., :3].mean())

    # one fixed window: the same case 0.5 darker is darker on the page (brain window [-1, 1]: 0.25 grey lower)
    assert mean_grey(0) - mean_grey(2) == pytest.approx(0.25, abs=0.03)
    # the dark set has one case: its second row is empty (black)
    assert png[header + panel + 5 :, 2 * panel :, :3].max() == 0.0
    with pytest.raises(ValueError, match="at least one set"):
        save_texture_panel({"empty": []}, tmp_path / "none.png")


def test_report_shows_the_texture_panel(tmp_path: Path) -> None:
    from custom_components.pipeline.report import ArmResult

    png = save_texture_panel({"real": [_case((8, 10, 5))]}, tmp_path / "report" / "qc" / "texture.png", half_size=4)
    results = [ArmResult("baseline", 0, {"ET": 0.5, "TC": 0.6, "WT": 0.7})]
    paths = write_report(results, tmp_path / "report", texture_panel=png)
    md, page = paths["markdown"].read_text(), paths["html"].read_text()
    assert f"## {TEXTURE_HEADING}" in md and f"![{TEXTURE_HEADING}](qc/texture.png)" in md
    assert "src='qc/texture.png'" in page
    assert TEXTURE_HEADING not in write_report(results, tmp_path / "without")["markdown"].read_text()
