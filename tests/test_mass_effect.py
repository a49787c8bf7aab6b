"""MassEffect / MassEffectd: outward displacement around an inserted tumour, brain outline fixed."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from scipy import ndimage

from custom_components.transforms import MassEffect, MassEffectd, mass_effect_field

SHAPE = (64, 64, 48)
CENTRE = np.array([32.0, 32.0, 24.0])
TUMOUR_CENTRE = np.array([22.0, 32.0, 24.0])


def _ball(centre: np.ndarray, radii: np.ndarray | float) -> np.ndarray:
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in SHAPE], indexing="ij"), -1).astype(np.float64)
    return (((grid - centre) / radii) ** 2).sum(-1) <= 1.0


@pytest.fixture(scope="module")
def phantom() -> dict[str, np.ndarray]:
    """A brain ellipsoid with texture (background -1), a bright 'ventricle' beside a tumour ball."""
    brain = _ball(CENTRE, np.array([29.0, 29.0, 21.0]))
    rng = np.random.default_rng(0)
    texture = ndimage.gaussian_filter(rng.normal(size=SHAPE), 2.0)
    texture = 0.6 * texture / np.abs(texture).max()
    ventricle = _ball(np.array([36.0, 32.0, 24.0]), np.array([3.0, 6.0, 5.0]))
    img = np.where(brain, texture + 0.9 * ventricle, -1.0).astype(np.float32)
    tumour = _ball(TUMOUR_CENTRE, 7.0)
    label = np.zeros(SHAPE, dtype=np.uint8)
    label[tumour] = 3
    label[_ball(TUMOUR_CENTRE, 3.5)] = 1
    return {
        "image": np.stack([img, -img])[:, ...],  # two channels
        "label": label[None],
        "brain_mask": brain.astype(np.uint8)[None],
        "ventricle": ventricle.astype(np.uint8)[None],
    }


def _jacobian_det(ddf: np.ndarray) -> np.ndarray:
    grads = np.stack([np.stack(np.gradient(ddf[i]), 0) for i in range(3)])  # d u_i / d x_j
    jac = grads + np.eye(3)[:, :, None, None, None]
    return np.linalg.det(np.moveaxis(jac, (0, 1), (-2, -1)))


def test_identity_at_zero_displacement(phantom):
    t = MassEffect(max_displacement_mm=0.0)
    out = t(phantom["image"], phantom["label"], phantom["brain_mask"])
    assert out.dtype == phantom["image"].dtype
    np.testing.assert_array_equal(out, phantom["image"])
    lab = t(phantom["label"], phantom["label"], phantom["brain_mask"], mode="nearest")
    np.testing.assert_array_equal(lab, phantom["label"])


def test_far_voxels_unchanged_and_outline_kept(phantom):
    t = MassEffect(max_displacement_mm=4.0, falloff_mm=16.0, grid_mm=2.0)
    field = t.field(phantom["image"], phantom["label"], phantom["brain_mask"])
    out = t.apply(phantom["image"], field)
    # farther than the fall-off from the tumour: bit-identical
    far = ndimage.distance_transform_edt(phantom["label"][0] == 0) > 16.0
    assert far.sum() > 0.3 * far.size
    np.testing.assert_array_equal(out[:, far], phantom["image"][:, far])
    # background (outside the brain) untouched, brain outline kept
    outside = phantom["brain_mask"][0] == 0
    np.testing.assert_array_equal(out[:, outside], phantom["image"][:, outside])
    warped_brain = t.apply(phantom["brain_mask"], field, "nearest")[0] > 0
    brain = phantom["brain_mask"][0] > 0
    dice = 2 * (warped_brain & brain).sum() / (warped_brain.sum() + brain.sum())
    assert dice >= 0.99
    # something did move near the tumour
    assert not np.array_equal(out, phantom["image"])


def test_field_is_diffeomorphic_and_peaks_near_requested(phantom):
    for magnitude in (3.0, 5.0, 8.0):
        field = mass_effect_field(phantom["label"][0] > 0, phantom["brain_mask"][0] > 0, (1.0, 1.0, 1.0), magnitude)
        ddf = field.full()
        assert _jacobian_det(ddf).min() > 0.0
        peak = np.sqrt((ddf**2).sum(0)).max()
        assert 0.6 * magnitude <= peak <= 1.05 * magnitude
        # zero where the brain mask is not, i.e. on and outside the brain boundary
        assert np.abs(ddf[:, phantom["brain_mask"][0] == 0]).max() == 0.0


def test_tissue_pushed_away_and_ventricle_compressed(phantom):
    t = MassEffectd(
        keys=("image", "ventricle", "brain_mask"),
        mode=("bilinear", "nearest", "nearest"),
        max_displacement_mm=5.0,
    )
    out = t(dict(phantom))
    before = np.array(ndimage.center_of_mass(phantom["ventricle"][0]))
    after = np.array(ndimage.center_of_mass(out["ventricle"][0]))
    shift = np.linalg.norm(after - TUMOUR_CENTRE) - np.linalg.norm(before - TUMOUR_CENTRE)
    assert shift > 0.5  # moved away from the tumour (mm, 1 mm voxels)
    assert out["ventricle"].sum() < phantom["ventricle"].sum()  # squeezed against the far tissue
    # the tumour label defines the field but is not itself in keys: unchanged object
    assert out["label"] is phantom["label"]


def test_backward_field_points_towards_tumour(phantom):
    field = mass_effect_field(phantom["label"][0] > 0, phantom["brain_mask"][0] > 0, (1.0, 1.0, 1.0), 5.0)
    ddf = field.full()
    # at a voxel on the far side of the ventricle (+x from the tumour), the output samples closer to the tumour
    assert ddf[0, 32, 32, 24] < -0.5
    assert abs(ddf[1, 32, 32, 24]) < 0.1 and abs(ddf[2, 32, 32, 24]) < 0.1


def test_determinism_by_seed(phantom):
    def run(seed: int) -> np.ndarray:
        t = MassEffectd(keys="image", max_displacement_mm=6.0, min_displacement_mm=1.0)
        t.set_random_state(seed)
        return t(dict(phantom))["image"]

    np.testing.assert_array_equal(run(3), run(3))
    assert not np.array_equal(run(3), run(4))


def test_spacing_from_metatensor_and_torch(phantom):
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    img = MetaTensor(torch.as_tensor(phantom["image"]), affine=torch.as_tensor(affine))
    t = MassEffect(max_displacement_mm=4.0)
    field_2mm = t.field(img, phantom["label"], phantom["brain_mask"])
    field_1mm = t.field(phantom["image"], phantom["label"], phantom["brain_mask"])
    peak = [np.sqrt((f.full() ** 2).sum(0)).max() for f in (field_2mm, field_1mm)]
    assert peak[0] < 0.7 * peak[1]  # the same mm displacement is fewer 2 mm voxels
    out = t.apply(img, field_2mm)
    assert isinstance(out, torch.Tensor) and out.shape == img.shape


def test_bad_input(phantom):
    with pytest.raises(ValueError, match="does not match"):
        MassEffect()(phantom["image"], phantom["label"][:, :-1], phantom["brain_mask"])
    with pytest.raises(ValueError, match="max_displacement_mm"):
        MassEffect(max_displacement_mm=-1.0)
    with pytest.raises(ValueError, match="falloff_mm"):
        MassEffect(max_displacement_mm=5.0, falloff_mm=10.0)
    with pytest.raises(ValueError, match="min_displacement_mm"):
        MassEffect(max_displacement_mm=2.0, min_displacement_mm=3.0)


def test_no_tumour_is_identity(phantom):
    out = MassEffect()(phantom["image"], np.zeros_like(phantom["label"]), phantom["brain_mask"])
    np.testing.assert_array_equal(out, phantom["image"])


def test_dtss_mass_effect_option_in_dtss_mas_seg(phantom):
    """dtss_mas_seg: off by default (paper-faithful DTSS); on, the grown tumour pushes image and label."""
    from pathlib import Path

    from monai.bundle import ConfigParser
    from monai.transforms import Compose

    from custom_components.transforms.dtss import DeformationTumorSynthesisd

    configs = Path(__file__).resolve().parents[1] / "bundles" / "dtss_mas_seg" / "configs"
    parser = ConfigParser()
    parser.read_config([str(configs / "common.yaml"), str(configs / "train.yaml")])
    assert parser["dtss_mass_effect"] is False
    assert isinstance(parser.get_parsed_content("train#dtss_online"), DeformationTumorSynthesisd)
    parser["dtss_mass_effect"] = True
    online = parser.get_parsed_content("train#dtss_online", lazy=False)
    assert isinstance(online, Compose) and isinstance(online.transforms[1], MassEffectd)
    image = np.where(phantom["brain_mask"] > 0, phantom["image"][:1], -1.0).astype(np.float32)
    out = online({"image": image, "label": phantom["label"]})
    assert out["label"].shape == phantom["label"].shape and (np.asarray(out["label"]) > 0).sum() > 0
