"""Deformation Tumor Synthesis (DSMA eqs. 1-5): pure pieces, invariants on the real case, API."""

from __future__ import annotations

import math

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from scipy import ndimage

from custom_components.data.labels import to_internal
from custom_components.transforms.dtss import (
    DeformationTumorSynthesis,
    DeformationTumorSynthesisd,
    deformation_area,
    fuse_image,
    monomer_mask,
)
from custom_components.transforms.intensity import RescaleBrainIntensity

# pure functions -------------------------------------------------------------------------------


def test_fuse_image_hand_computed():
    # one channel, four voxels: i, l, G_t and noise chosen so every term of eqs. 4-5 matters
    image = np.array([[[1.0, 0.5], [-1.0, 0.2]]], dtype=np.float32)
    lesion = np.array([[[1, 0], [1, 1]]], dtype=bool)
    g_t = np.array([[[0.3, 5.0], [0.5, -0.2]]], dtype=np.float32)
    noise = np.array([[[0.1, 7.0], [-0.5, 0.0]]], dtype=np.float32)
    out = fuse_image(image, lesion, g_t, noise)
    # inside: i - (G_t + n) = 1 - 0.4, -1 - 0, 0.2 + 0.2; outside: i untouched whatever G_t' is
    np.testing.assert_allclose(out, [[[0.6, 0.5], [-1.0, 0.4]]], atol=1e-6)
    assert out.dtype == np.float32
    # no noise, and a soft lesion weight 0.5: i' = i - G_t / 2
    np.testing.assert_allclose(fuse_image(image, np.full_like(image, 0.5), g_t), image - g_t / 2, atol=1e-6)
    # torch in, torch out, same numbers
    out_t = fuse_image(torch.as_tensor(image), torch.as_tensor(lesion), torch.as_tensor(g_t), torch.as_tensor(noise))
    assert isinstance(out_t, torch.Tensor)
    np.testing.assert_allclose(out_t.numpy(), out, atol=1e-6)


def _ball(shape: tuple[int, int, int], centre: tuple[float, ...], radius: float) -> np.ndarray:
    grid = np.indices(shape, dtype=np.float32)
    return sum((grid[a] - centre[a]) ** 2 for a in range(3)) <= radius**2


def test_deformation_area_is_size_dependent_shell():
    lesion = _ball((31, 31, 31), (15, 15, 15), 10)
    area, tau = deformation_area(lesion, shell_fraction=0.25)
    r_eq = (3 * lesion.sum() / (4 * math.pi)) ** (1 / 3)
    assert tau == pytest.approx(0.25 * r_eq) and 2 < tau < 3
    depth = ndimage.distance_transform_edt(lesion)
    assert np.array_equal(area, lesion & (depth <= tau))  # d = l * m
    assert area[5, 15, 15] and not area[15, 15, 15]  # surface in, centre out
    # a larger fraction gives a thicker shell; a tiny lesion gets at least one voxel of shell
    assert deformation_area(lesion, 0.5)[0].sum() > area.sum()
    dot = np.zeros((5, 5, 5), bool)
    dot[2, 2, 2] = True
    dot_area, dot_tau = deformation_area(dot, 0.25)
    assert dot_tau == 1.0 and np.array_equal(dot_area, dot)
    with pytest.raises(ValueError, match="empty"):
        deformation_area(np.zeros((3, 3, 3), bool), 0.2)


def test_monomer_mask_is_a_deformed_ellipsoid():
    still = np.zeros((3, 13, 13, 13), np.float32)
    mask = monomer_mask((3.0, 4.0, 5.0), still)
    # extents along each axis are 2 r + 1 voxels, volume close to 4/3 pi abc
    extents = [int(mask.any(axis=tuple(b for b in range(3) if b != a)).sum()) for a in range(3)]
    assert extents == [7, 9, 11]
    assert abs(mask.sum() - 4 / 3 * math.pi * 60) < 0.1 * 4 / 3 * math.pi * 60
    # a uniform displacement u shifts the ellipsoid by -u
    shifted = still.copy()
    shifted[0] = 1.0
    assert np.array_equal(monomer_mask((3.0, 4.0, 5.0), shifted), np.roll(mask, -1, axis=0))
    with pytest.raises(ValueError, match="P odd"):
        monomer_mask((3, 3, 3), np.zeros((3, 4, 4, 4)))


# cases ----------------------------------------------------------------------------------------


def _phantom() -> tuple[np.ndarray, np.ndarray]:
    """A 2-channel brain ball with a nested lesion (NCR in ET in ED), intensities in [-1, 1]."""
    shape = (40, 40, 40)
    rng = np.random.default_rng(0)
    brain = _ball(shape, (20, 20, 20), 17)
    label = np.zeros(shape, np.uint8)
    label[_ball(shape, (18, 21, 20), 8)] = 2
    label[_ball(shape, (18, 21, 20), 5)] = 3
    label[_ball(shape, (18, 21, 20), 2.5)] = 1
    base = np.array([0.6, -0.5, -0.2, 0.3])  # per-class mean of channel 0 (bg, NCR, ED, ET); channel 1 flips
    image = np.stack([base[label], -base[label]]) + rng.normal(0, 0.1, (2, *shape))
    image = np.where(brain, np.clip(image, -0.99, 1.0), -1.0).astype(np.float32)
    return image, label[None]


def _load_real(real_case: dict) -> tuple[np.ndarray, np.ndarray]:
    image = np.stack([np.asarray(nib.load(f).dataobj, dtype=np.float32) for f in real_case["image"]])
    label = to_internal(np.asarray(nib.load(real_case["label"]).dataobj), real_case["labels"])[None]
    return np.asarray(RescaleBrainIntensity()(image)), label


@pytest.fixture(scope="module")
def real_full(real_case) -> tuple[np.ndarray, np.ndarray]:
    """The real case, 4 channels rescaled to [-1, 1], internal labels (1, 240, 240, 155)."""
    return _load_real(real_case)


def _lesion_box(label: np.ndarray, margin: int) -> tuple[slice, ...]:
    hits = np.nonzero(label[0] > 0)
    return tuple(
        slice(max(int(h.min()) - margin, 0), min(int(h.max()) + margin + 1, n))
        for h, n in zip(hits, label.shape[1:], strict=True)
    )


@pytest.fixture(scope="module")
def real_crop(real_full) -> tuple[np.ndarray, np.ndarray]:
    """The real case cropped to its whole tumour plus 12 voxels (wider than any monomer reaches)."""
    image, label = real_full
    box = (slice(None), *_lesion_box(label, 12))
    return np.ascontiguousarray(image[box]), np.ascontiguousarray(label[box])


@pytest.fixture(params=["phantom", "real"])
def case(request) -> tuple[np.ndarray, np.ndarray]:
    if request.param == "phantom":
        return _phantom()
    return request.getfixturevalue("real_crop")


def _check_invariants(image, label, out_img, out_lab, reach: float) -> np.ndarray:
    """Assert DTSS's guarantees; return the grown (new tumour) voxels."""
    assert out_img.shape == image.shape and out_img.dtype == image.dtype
    assert out_lab.shape == label.shape and out_lab.dtype == label.dtype
    assert set(np.unique(out_lab).tolist()) <= {0, 1, 2, 3}
    old, new = label[0] > 0, out_lab[0] > 0
    assert np.all(new[old]) and np.array_equal(out_lab[0][old], label[0][old])  # contains the old lesion
    region = old | new
    assert np.array_equal(out_img[:, ~region], image[:, ~region])  # bit-identical outside
    assert np.array_equal(out_lab[0][~region], label[0][~region])
    changed = (out_img != image).any(axis=0)
    assert np.all(region[changed])
    # fused voxels stay in each channel's input range (clip)
    assert np.all(out_img.min(axis=(1, 2, 3)) >= image.min(axis=(1, 2, 3)))
    assert np.all(out_img.max(axis=(1, 2, 3)) <= image.max(axis=(1, 2, 3)))
    # grown voxels are near the old lesion and never detached from it (checked on the box that
    # holds the whole new lesion, which gives the same distances and components as the volume)
    grown = new & ~old
    box = _lesion_box(out_lab, 8)
    if grown.any():
        assert ndimage.distance_transform_edt(~old[box])[grown[box]].max() <= reach
    assert ndimage.label(new[box])[1] <= ndimage.label(old[box])[1]
    return grown


# behaviour --------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_invariants(case, seed):
    image, label = case
    dtss = DeformationTumorSynthesis().set_random_state(seed)
    out_img, out_lab = dtss(image, label)
    _check_invariants(image, label, out_img, out_lab, reach=5.0 + 1.0)
    # the inputs are not modified in place
    assert np.array_equal(image, case[0]) and out_img is not image


def test_label_grows_with_nearest_class(case):
    image, label = case
    out_img, out_lab = DeformationTumorSynthesis(iterations_range=(10, 10)).set_random_state(0)(image, label)
    grown = _check_invariants(image, label, out_img, out_lab, reach=6.0)
    assert grown.sum() >= 20
    # every grown voxel takes the class of its nearest real-lesion voxel (nested anatomy)
    _, nearest = ndimage.distance_transform_edt(label[0] == 0, return_indices=True)
    assert np.array_equal(out_lab[0][grown], label[0][tuple(n[grown] for n in nearest)])
    # the new tumour looks like the old one: in every channel where the class contrasts with healthy
    # tissue, the grown voxels' mean is close to the real lesion's mean of their classes
    old = label[0] > 0
    ring = ndimage.binary_dilation(old, iterations=6) & ~old
    contrasted = 0
    for c in range(image.shape[0]):
        healthy = np.median(image[c][ring & (image[c] > -1)])
        class_mean = {k: image[c][label[0] == k].mean() for k in np.unique(out_lab[0][grown])}
        target = np.mean([class_mean[k] for k in out_lab[0][grown]])
        if abs(target - healthy) > 0.1:
            contrasted += 1
            assert abs(out_img[c][grown].mean() - target) < 0.25 * abs(target - healthy)
    assert contrasted >= 2


def test_plain_blur_fades_grown_voxels():
    image, label = _phantom()
    outs = [
        DeformationTumorSynthesis(iterations_range=(10, 10), masked_blur=m).set_random_state(0)(image, label)
        for m in (True, False)
    ]
    assert np.array_equal(outs[0][1], outs[1][1])  # same geometry and labels
    grown = (outs[0][1][0] > 0) & (label[0] == 0)
    healthy = np.median(image[0][(label[0] == 0) & (image[0] > -1)])
    masked, plain = (abs(o[0][0][grown].mean() - healthy) for o in outs)
    assert masked > plain > 0.1  # eq. 2 as a plain convolution: the same tumour, fainter


def test_seeded_reproducible_and_varied(real_crop):
    image, label = real_crop
    runs = [DeformationTumorSynthesis().set_random_state(s)(image, label) for s in (7, 7, 8)]
    assert np.array_equal(runs[0][0], runs[1][0]) and np.array_equal(runs[0][1], runs[1][1])
    assert runs[0][0].tobytes() == runs[1][0].tobytes()
    assert not np.array_equal(runs[0][0], runs[2][0])
    assert not np.array_equal(runs[0][1], runs[2][1])
    # randomize() once, then replay with randomize=False: identical
    dtss = DeformationTumorSynthesis().set_random_state(3)
    dtss.randomize()
    first = dtss(image, label, randomize=False)
    assert np.array_equal(first[0], dtss(image, label, randomize=False)[0])


def test_collision_retain_overlap_reduce(case):
    image, label = case
    old = label[0] > 0
    kwargs = {"iterations_range": (6, 6), "sigma": 0.0, "noise_std": 0.0, "clip": False}
    outs = {}
    for name, probs in (("retain", (1, 0, 0)), ("overlap", (0, 1, 0)), ("reduce", (0, 0, 1))):
        dtss = DeformationTumorSynthesis(collision_probs=probs, **kwargs).set_random_state(5)
        outs[name] = dtss(image, label)
    # retain: the real tumour is untouched; new voxels carry real-lesion texture of their class
    ret_img, ret_lab = outs["retain"]
    assert np.array_equal(ret_img[:, old], image[:, old])
    grown = (ret_lab[0] > 0) & ~old
    assert grown.any()
    for c in np.unique(ret_lab[0][grown]):
        pool = {tuple(v) for v in image[:, label[0] == c].T.tolist()}
        assert all(tuple(v) in pool for v in ret_img[:, grown & (ret_lab[0] == c)].T.tolist())
    # same draws, so same geometry: overlap and reduce change the collision voxels by opposite amounts
    d_over = outs["overlap"][0].astype(np.float64) - image
    d_red = outs["reduce"][0].astype(np.float64) - image
    assert np.array_equal(outs["overlap"][1], ret_lab) and np.array_equal(outs["reduce"][1], ret_lab)
    assert np.abs(d_over[:, old]).max() > 0.05
    np.testing.assert_allclose(d_over[:, old], -d_red[:, old], atol=1e-5)
    np.testing.assert_array_equal(outs["overlap"][0][:, grown], ret_img[:, grown])
    # overlap moves the collision voxels away from healthy tissue, reduce towards it (FLAIR-like channel)
    c = image.shape[0] - 1
    hit = old & (np.abs(d_over[c]) > 0)
    healthy = np.median(image[c][~ndimage.binary_dilation(old, iterations=2) & (image[c] > -1)])
    dist = {n: np.abs(outs[n][0][c][hit] - healthy).mean() for n in ("overlap", "reduce")}
    assert dist["overlap"] > np.abs(image[c][hit] - healthy).mean() > dist["reduce"]


def test_intensity_scale_zero_changes_label_only(real_crop):
    image, label = real_crop
    dtss = DeformationTumorSynthesis(intensity_scale=0.0, noise_std=0.0, iterations_range=(8, 8))
    out_img, out_lab = dtss.set_random_state(1)(image, label)
    assert np.array_equal(out_img, image)  # G_t = 0 * T and no noise: eqs. 4-5 give i' = i
    assert (out_lab > 0).sum() > (label > 0).sum()


def test_multi_and_single_channel(real_crop):
    image, label = real_crop
    out_img, out_lab = DeformationTumorSynthesis(clip=False).set_random_state(2)(image, label)
    region = (out_lab[0] > 0) | (label[0] > 0)
    # one geometry for all channels: unclipped, the noise of eq. 4 rewrites every channel over
    # exactly the fused region
    for c in range(4):
        assert np.array_equal(out_img[c] != image[c], region)
    single = image[3:]
    out1, lab1 = DeformationTumorSynthesis().set_random_state(2)(single, label)
    assert out1.shape == single.shape
    _check_invariants(single, label, out1, lab1, reach=6.0)
    assert (lab1 > 0).sum() > (label > 0).sum() or not np.array_equal(out1, single)


def test_full_volume_matches_crop(real_full, real_crop):
    image, label = real_full
    dtss = DeformationTumorSynthesis(iterations_range=(10, 10)).set_random_state(4)
    dtss.randomize()
    out_img, out_lab = dtss(image, label, randomize=False)
    grown = _check_invariants(image, label, out_img, out_lab, reach=6.0)
    assert grown.any() and out_lab.shape == (1, 240, 240, 155)
    # the synthesis only looks at the lesion's neighbourhood: the crop gives the same voxels
    box = (slice(None), *_lesion_box(label, 12))
    crop_img, crop_lab = dtss(*real_crop, randomize=False)
    assert np.array_equal(out_img[box], crop_img) and np.array_equal(out_lab[box], crop_lab)


def test_torch_and_metatensor(real_crop):
    image, label = real_crop
    affine = torch.diag(torch.tensor([2.0, 1.0, 1.0, 1.0]))
    img_t = MetaTensor(torch.as_tensor(image), affine=affine)
    # float labels, as MONAI's LoadImage gives them
    lab_t = MetaTensor(torch.as_tensor(label, dtype=torch.float32), affine=affine)
    out_img, out_lab = DeformationTumorSynthesis().set_random_state(9)(img_t, lab_t)
    assert isinstance(out_img, MetaTensor) and isinstance(out_lab, MetaTensor)
    assert torch.equal(out_img.affine, affine) and torch.equal(out_lab.affine, affine)
    assert out_img.dtype == torch.float32 and out_lab.dtype == torch.float32
    ref_img, ref_lab = DeformationTumorSynthesis().set_random_state(9)(image, label)
    assert np.array_equal(out_img.numpy(), ref_img) and np.array_equal(out_lab.numpy(), ref_lab)
    assert torch.equal(img_t, torch.as_tensor(image))  # input untouched


def test_prob_zero_is_identity():
    image, label = _phantom()
    out_img, out_lab = DeformationTumorSynthesis(prob=0.0)(image, label)
    assert out_img is image and out_lab is label
    d = DeformationTumorSynthesisd(prob=0.0)({"image": image, "label": label})
    assert d["image"] is image and d["label"] is label
    assert d["dtss_applied"] is False and d["is_synthetic"] is False


def test_dictionary_flags_seed_and_channelless_label():
    image, label = _phantom()
    make = DeformationTumorSynthesisd(keys=("img", "seg"), image_key="img", label_key="seg", prob=1.0)
    a = make.set_random_state(11)({"img": image, "seg": label[0], "is_synthetic": False})
    assert a["dtss_applied"] is True and a["is_synthetic"] is True
    assert a["seg"].shape == label[0].shape and (a["seg"] > 0).sum() > (label[0] > 0).sum()
    again = make.set_random_state(11)({"img": image, "seg": label[0]})
    assert np.array_equal(a["img"], again["img"]) and np.array_equal(a["seg"], again["seg"])
    assert not np.array_equal(a["img"], make.set_random_state(12)({"img": image, "seg": label[0]})["img"])
    # a sample synthesised earlier (e.g. CarveMix) stays flagged synthetic when DTSS skips it
    skipped = DeformationTumorSynthesisd(prob=0.0)({"image": image, "label": label, "is_synthetic": True})
    assert skipped["is_synthetic"] is True and skipped["dtss_applied"] is False
    with pytest.raises(ValueError, match="image_key"):
        DeformationTumorSynthesisd(keys=("label",))


def test_bad_inputs_raise():
    image, label = _phantom()
    dtss = DeformationTumorSynthesis()
    with pytest.raises(ValueError, match="no tumour"):
        dtss(image, np.zeros_like(label))
    with pytest.raises(ValueError, match="no tumour"):
        DeformationTumorSynthesisd(prob=0.0)({"image": image, "label": np.zeros_like(label)})
    with pytest.raises(ValueError, match="internal convention"):
        dtss(image, np.where(label == 3, 4, label).astype(np.uint8))  # BraTS 2021 ET not mapped
    with pytest.raises(ValueError, match="grid"):
        dtss(image, label[:, :-1])
    with pytest.raises(ValueError, match="channel-first 3D"):
        dtss(image[0], label)
    with pytest.raises(ValueError, match="radius_range"):
        DeformationTumorSynthesis(radius_range=(5, 3))
    with pytest.raises(ValueError, match="collision_probs"):
        DeformationTumorSynthesis(collision_probs=(0.5, 0.6, 0.0))
