"""CarveMix: signed distance, carved region, mixing, determinism."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from custom_components.transforms.carvemix import CarveMix, CarveMixd, carve_region, signed_distance


def _cube(shape=(21, 21, 21), lo=6, hi=15) -> np.ndarray:
    m = np.zeros(shape, dtype=bool)
    m[lo:hi, lo:hi, lo:hi] = True
    return m


def test_signed_distance_hand_computed():
    mask = _cube()  # 9-voxel cube from 6 to 14
    d = signed_distance(mask)
    assert d[6, 10, 10] == 0.0  # boundary voxel inside
    assert d[5, 10, 10] == 0.0  # boundary voxel outside
    assert d[10, 10, 10] == -4.0  # centre: 5 voxels to the outside, minus one
    assert d[2, 10, 10] == 3.0  # 4 voxels from the lesion, minus one
    assert d.min() == -4.0
    # anisotropic spacing scales distances along that axis
    d2 = signed_distance(mask, spacing=(2.0, 1.0, 1.0))
    assert d2[2, 10, 10] == pytest.approx(4 * 2.0 - 1.0)


def test_carve_region_bounds():
    d = signed_distance(_cube())
    smallest, lam_l = carve_region(d, 0.0)
    largest, lam_u = carve_region(d, 1.0)
    assert lam_l == pytest.approx(-2.0) and lam_u == pytest.approx(4.0)
    assert np.array_equal(smallest, d < -2.0)
    # c=0 carves strictly inside the lesion, c=1 carves the lesion plus a margin
    assert smallest.sum() < _cube().sum() < largest.sum()
    assert np.all(_cube()[smallest])
    assert np.all(largest[_cube()])


def test_carvemix_mixes_image_and_label_inside_region():
    rng = np.random.default_rng(0)
    target = rng.normal(size=(2, 21, 21, 21)).astype(np.float32)
    source = rng.normal(size=(2, 21, 21, 21)).astype(np.float32) + 10
    t_lab = np.zeros((1, 21, 21, 21), np.uint8)
    t_lab[0, 1:4, 1:4, 1:4] = 2
    s_lab = _cube()[None].astype(np.uint8) * 3
    mixer = CarveMix().set_random_state(seed=1)
    img, lab, info = mixer(torch.as_tensor(target), t_lab, source, s_lab)
    assert isinstance(img, torch.Tensor) and isinstance(lab, np.ndarray)
    region, lam = carve_region(signed_distance(s_lab[0] > 0), info["c"])
    assert lam == pytest.approx(info["lambda"]) and info["voxels"] == region.sum() > 0
    img = img.numpy()
    assert np.array_equal(img[:, region], source[:, region])
    assert np.array_equal(img[:, ~region], target[:, ~region])
    assert np.array_equal(lab[0][region], s_lab[0][region])
    assert np.array_equal(lab[0][~region], t_lab[0][~region])
    # the target's own lesion far from the carved region survives
    assert (lab == 2).sum() == 27


def test_carvemixd_seeded_and_flags():
    target = {"image": np.zeros((1, 21, 21, 21), np.float32), "label": np.zeros((1, 21, 21, 21), np.uint8)}
    source = [{"image": np.ones((1, 21, 21, 21), np.float32), "label": _cube()[None].astype(np.uint8)}]
    outs = [CarveMixd(("image", "label"), source).set_random_state(seed=s)(target) for s in (3, 3, 4)]
    assert outs[0]["is_synthetic"] is True
    assert np.array_equal(outs[0]["image"], outs[1]["image"])
    assert not np.array_equal(outs[0]["image"], outs[2]["image"])
    untouched = CarveMixd(("image", "label"), source, prob=0.0)(target)
    assert untouched["is_synthetic"] is False and np.array_equal(untouched["image"], target["image"])


def test_carvemix_errors():
    with pytest.raises(ValueError, match="empty"):
        signed_distance(np.zeros((4, 4, 4), bool))
    with pytest.raises(ValueError, match="one grid"):
        CarveMix()(np.zeros((1, 4, 4, 4)), np.zeros((1, 4, 4, 4)), np.zeros((1, 5, 4, 4)), np.ones((1, 5, 4, 4)))
