"""HD95 as BraTS computes it (pooled surface distances, mm) against hand-computed values; empty regions."""

from __future__ import annotations

import math

import numpy as np
import pytest

from custom_components.quality.evaluation import BRATS_HD95_EMPTY, hd95, region_metrics


def _line(length: int, voxels: list[int]) -> np.ndarray:
    """A 1x1xlength volume with the given voxels set: every set voxel is a surface voxel."""
    mask = np.zeros((1, 1, length), dtype=bool)
    mask[0, 0, voxels] = True
    return mask


# reference: z = 0..9; prediction: the same plus two false positives at z = 18, 19.
# prediction -> reference: ten 0s, 9, 10 (voxels); reference -> prediction: ten 0s.
# pooled (22 values, 20 zeros then 9, 10): np.percentile 95 at rank 0.95 * 21 = 19.95 -> 0.95 * 9 = 8.55;
# directed 95th percentiles (MONAI): prediction -> reference at rank 0.95 * 11 = 10.45 -> 9 + 0.45 = 9.45.
REF = _line(20, list(range(10)))
PRED = _line(20, [*range(10), 18, 19])


@pytest.mark.parametrize(("spacing", "scale"), [((1.0, 1.0, 1.0), 1.0), ((1.0, 1.0, 2.0), 2.0), ((3.0, 5.0, 0.5), 0.5)])
def test_pooled_percentile_hand_computed(spacing: tuple[float, ...], scale: float) -> None:
    assert hd95(PRED, REF, spacing) == pytest.approx(8.55 * scale, abs=1e-5)
    assert hd95(REF, PRED, spacing) == pytest.approx(8.55 * scale, abs=1e-5)  # symmetric
    # MONAI's definition: the larger directed percentile, never below the pooled one
    assert hd95(PRED, REF, spacing, mode="monai") == pytest.approx(9.45 * scale, abs=1e-4)


def test_surface_only_and_anisotropic_shift() -> None:
    """Two 5x5x5 cubes, one shifted by 2 voxels along axis 0 where voxels are 3 mm.

    Each cube has 98 surface voxels (125 minus the 27 interior ones); the expected value is computed here
    by brute force over the surface voxels in mm, independently of MONAI.
    """
    ref = np.zeros((12, 9, 9), dtype=bool)
    ref[2:7, 2:7, 2:7] = True
    pred = np.roll(ref, 2, axis=0)
    spacing = (3.0, 1.0, 1.0)

    def surface(m: np.ndarray) -> np.ndarray:
        core = np.zeros_like(m)
        core[1:-1, 1:-1, 1:-1] = (
            m[1:-1, 1:-1, 1:-1]
            & m[:-2, 1:-1, 1:-1]
            & m[2:, 1:-1, 1:-1]
            & m[1:-1, :-2, 1:-1]
            & m[1:-1, 2:, 1:-1]
            & m[1:-1, 1:-1, :-2]
            & m[1:-1, 1:-1, 2:]
        )
        return np.argwhere(m & ~core) * np.asarray(spacing)

    sp, sr = surface(pred), surface(ref)
    assert len(sp) == len(sr) == 98
    d = np.sqrt(((sp[:, None] - sr[None]) ** 2).sum(-1))
    expected = np.percentile(np.concatenate([d.min(1), d.min(0)]), 95)
    assert hd95(pred, ref, spacing) == pytest.approx(expected, abs=1e-4)
    # the shift is 6 mm along axis 0; a 1 mm spacing there would give a third of the largest distances
    assert expected == pytest.approx(6.0)
    assert hd95(pred, ref, (1.0, 1.0, 1.0)) == pytest.approx(2.0)
    assert hd95(pred, ref, spacing, mode="monai") >= hd95(pred, ref, spacing)


def test_region_metrics_empty_conventions() -> None:
    shape = (3, 10, 10, 10)
    label = np.zeros(shape, dtype=np.float32)
    label[:, 2:5, 2:5, 2:5] = 1
    label[0] = 0  # no ET in the reference
    pred = label.copy()
    pred[2, 7, 7, 7] = 1  # a false-positive voxel in WT
    pred[1] = 0  # TC missed entirely
    m = region_metrics(pred, label, spacing=(1.0, 1.0, 2.0))
    assert m["dice_ET"] == 1.0 and m["hd95_ET"] == 0.0  # empty in both
    assert m["dice_TC"] == 0.0 and m["hd95_TC"] == BRATS_HD95_EMPTY  # empty prediction
    assert m["dice_WT"] == pytest.approx(2 * 27 / (28 + 27), abs=1e-6)
    assert m["hd95_WT"] == pytest.approx(hd95(pred[2], label[2], (1.0, 1.0, 2.0)))
    # empty reference, non-empty prediction: the same fixed value; None: this volume's diagonal
    pred[0, 1, 1, 1] = 1
    assert region_metrics(pred, label)["hd95_ET"] == BRATS_HD95_EMPTY
    diag = math.sqrt(10**2 + 10**2 + 20**2)
    got = region_metrics(pred, label, spacing=(1.0, 1.0, 2.0), hd95_empty=None)
    assert got["hd95_ET"] == pytest.approx(diag) and got["dice_ET"] == 0.0
    assert abs(BRATS_HD95_EMPTY - math.sqrt(240**2 + 240**2 + 155**2)) < 0.01


def test_bad_mode_and_empty_masks() -> None:
    with pytest.raises(ValueError, match="mode"):
        hd95(PRED, REF, (1, 1, 1), mode="max")
    with pytest.raises(ValueError, match="non-empty"):
        hd95(np.zeros_like(REF), REF, (1, 1, 1))
    with pytest.raises(ValueError, match="hd95_mode"):
        region_metrics(np.zeros((3, 4, 4, 4)), np.zeros((3, 4, 4, 4)), hd95_mode="x")
