"""Brain masks: the inferred mask on three kinds of background, its rejection, and an explicit brain_mask
winning over inference (array transform, datalist loading, the dtss_mas_seg load chain, make-datalist)."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser
from monai.data import MetaTensor
from scipy import ndimage

from custom_components.data import load_datalist
from custom_components.data.atomic import save_nifti
from custom_components.data.brain_mask import BrainMaskError, infer_brain_mask
from custom_components.data.discovery import make_brats_datalist, make_healthy_datalist
from custom_components.synthesis.healthy_prep import dice
from custom_components.transforms.intensity import RescaleBrainIntensity, RescaleBrainIntensityd
from tests.brain_phantom import SHAPE, brain_shape, brain_texture

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def truth() -> np.ndarray:
    return brain_shape()


def test_zero_background(truth: np.ndarray) -> None:
    vol = np.where(truth, brain_texture(), 0.0).astype(np.float32)
    assert (vol[truth] < 0).sum() >= 27 and (vol[truth] == 0).sum() == 1
    mask = infer_brain_mask(vol, "zero.nii.gz")
    np.testing.assert_array_equal(mask, truth)


def test_padded_field_of_view(truth: np.ndarray) -> None:
    """z-scored brain, the old field of view's background one constant inside the brain's value range, the
    padding that resampling added another (0): the corner rule called 98 % of such a volume brain."""
    tex = brain_texture()
    z = (tex - tex[truth].mean()) / tex[truth].std()
    inner = float(np.percentile(z[truth], 5))  # a background constant that brain voxels straddle
    vol = np.where(truth, z, inner).astype(np.float32)
    assert (z[truth] < inner).sum() > 0 and (z[truth] > 0).sum() > 0  # brain values on both sides of both levels
    for pad in (((6, 6), (5, 5), (4, 4)), ((0, 0), (0, 12), (10, 0))):  # all around; two faces only
        padded = np.pad(vol, pad)
        want = np.pad(truth, pad)
        corner_rule = padded != padded[0, 0, 0]
        assert corner_rule.sum() > 3 * want.sum()  # what the old rule inferred: the whole old field of view
        mask = infer_brain_mask(padded, "padded.nii.gz")
        np.testing.assert_array_equal(mask, want)


def test_noisy_background(truth: np.ndarray) -> None:
    """Magnitude (Rician) noise outside and inside the head, sigma 4 % of the brain's median."""
    rng = np.random.default_rng(1)
    clean = np.where(truth, np.clip(brain_texture(), 20, None), 0.0)
    sigma = 0.04 * np.median(clean[truth])
    noisy = np.abs(clean + rng.normal(0, sigma, SHAPE) + 1j * rng.normal(0, sigma, SHAPE)).astype(np.float32)
    assert (noisy[~truth] > 0).all()  # no voxel equals a constant background
    mask = infer_brain_mask(noisy, "noisy.nii.gz")
    assert dice(mask, truth) > 0.98
    assert mask[truth & (clean < 2 * sigma)].all()  # dark voxels inside the brain: holes, filled
    assert not mask[(~truth) & ~ndimage.binary_dilation(truth, iterations=1)].any()


def test_prepared_volume_is_a_fixed_point(truth: np.ndarray) -> None:
    vol = np.where(truth, brain_texture(), 0.0).astype(np.float32)
    rescale = RescaleBrainIntensity(lower=0, upper=100)
    once = rescale(vol[None])
    assert (once[0][~truth] == -1).all() and (once[0][truth] > -1).all()
    np.testing.assert_array_equal(infer_brain_mask(once[0]), truth)
    np.testing.assert_allclose(rescale(once), once, atol=1e-6)


def _everywhere() -> np.ndarray:
    return brain_texture()  # tissue-like values up to the border: nothing looks like background


def _speck() -> np.ndarray:
    vol = np.zeros(SHAPE, np.float32)
    vol[18:21, 22:25, 18:21] = 50.0  # 27 voxels: 0.03 % of the volume
    return vol


def _slab() -> np.ndarray:
    """A few slices whose brain fills most of each slice: 54 % of the volume but on most of its border."""
    vol = np.zeros((40, 48, 8), np.float32)
    vol[:, :26] = brain_texture()[:, :26, :8] + 200.0
    return vol


@pytest.mark.parametrize(
    ("make", "match"),
    [(_everywhere, r"implausible: \S+% of the volume"), (_speck, r"implausible: 0\.0% of"), (_slab, "border")],
)
def test_implausible_mask_rejected(make, match: str) -> None:
    vol = make()
    with pytest.raises(BrainMaskError, match=match) as err:
        infer_brain_mask(vol, "/data/scan_t1n.nii.gz")
    assert str(err.value).startswith("/data/scan_t1n.nii.gz:") and "'brain_mask'" in str(err.value)
    assert infer_brain_mask(vol, check=False).shape == vol.shape  # unchecked: no error


def test_real_t1_mask(real_case: dict[str, object]) -> None:
    t1 = np.asarray(nib.load(real_case["image"][0]).dataobj, dtype=np.float32)
    mask = infer_brain_mask(t1, real_case["image"][0])
    assert 0.17 < mask.mean() < 0.19  # 17.9 % measured; the brain of a BraTS-space volume
    assert t1[mask].min() == -52.0  # the negative voxels lie inside the brain
    assert (t1[~mask] == 0).all()


# ---- explicit brain_mask ---------------------------------------------------------------------------------
def _meta(array: np.ndarray, name: str, affine: np.ndarray | None = None) -> MetaTensor:
    aff = torch.as_tensor(np.eye(4) if affine is None else affine)
    return MetaTensor(torch.as_tensor(array[None]), affine=aff, meta={"filename_or_obj": name})


def test_explicit_mask_overrides_inference(truth: np.ndarray) -> None:
    vol = np.where(truth, brain_texture(), 0.0).astype(np.float32)
    given = truth.copy()
    given[:, :, 20:] = False  # a different brain than the inferred one
    out = RescaleBrainIntensityd("image")({"image": _meta(vol, "img.nii.gz"), "brain_mask": _meta(given, "m.nii.gz")})
    img = out["image"][0].numpy()
    assert (img[~given] == -1).all() and (img[given] > -1).all()
    # the percentiles are those of the given brain's voxels
    lo, hi = np.percentile(vol[given], [0.5, 99.5])
    inside = given & (vol > lo) & (vol < hi)
    np.testing.assert_allclose(img[inside], (vol[inside] - lo) / (hi - lo) * 2 - 1, atol=1e-5)
    inferred = RescaleBrainIntensityd("image")({"image": _meta(vol, "img.nii.gz")})["image"][0].numpy()
    assert ((inferred > -1) == truth).all()


def test_explicit_mask_grid_checked(truth: np.ndarray) -> None:
    vol = _meta(np.where(truth, brain_texture(), 0.0).astype(np.float32), "/d/img.nii.gz")
    rescale = RescaleBrainIntensityd("image")
    with pytest.raises(ValueError, match=r"/d/small_mask.nii.gz.*shape.*/d/img.nii.gz"):
        rescale({"image": vol, "brain_mask": _meta(truth[:, :, :-1], "/d/small_mask.nii.gz")})
    shifted = np.eye(4)
    shifted[0, 3] = 2.0
    with pytest.raises(ValueError, match=r"/d/moved_mask.nii.gz.*affine.*/d/img.nii.gz"):
        rescale({"image": vol, "brain_mask": _meta(truth, "/d/moved_mask.nii.gz", shifted)})
    with pytest.raises(ValueError, match="not loaded"):
        rescale({"image": vol, "brain_mask": "/d/mask.nii.gz"})


def _case(folder: Path, case: str, vol: np.ndarray, label: np.ndarray, mask: np.ndarray | None) -> None:
    affine = np.diag([-2.0, -2.0, 2.0, 1.0])  # LPS like BraTS: the chain reorients image, label and mask alike
    save_nifti(vol, affine, folder / case / f"{case}-t1n.nii.gz")
    save_nifti(label, affine, folder / case / f"{case}-seg.nii.gz")
    if mask is not None:
        save_nifti(mask.astype(np.uint8), affine, folder / case / f"{case}_brainmask.nii.gz")


def test_datalist_brain_mask_used_by_the_segmentation_load_chain(truth: np.ndarray, tmp_path: Path) -> None:
    """make-datalist picks up <case>_brainmask; the dtss_mas_seg load transforms then use it, not inference."""
    # z-scored + padded: the inferred mask is right here too, so give a smaller mask to see which one is used
    vol = np.where(truth, brain_texture(), 0.0).astype(np.float32)
    label = np.zeros(SHAPE, np.uint8)
    label[18:22, 22:26, 18:22] = 2
    given = truth & (np.indices(SHAPE)[2] < 22)
    _case(tmp_path / "raw", "with-mask", vol, label, given)
    _case(tmp_path / "raw", "no-mask", vol, label, None)
    data = make_brats_datalist(tmp_path / "raw", labels="brats2023")
    by_id = {it["case_id"]: it for it in data["training"]}
    assert by_id["with-mask"]["brain_mask"].endswith("with-mask_brainmask.nii.gz")
    assert "brain_mask" not in by_id["no-mask"]
    datalist = tmp_path / "datalist.json"
    datalist.write_text(json.dumps(data))
    items = {
        it["case_id"]: it
        for it in load_datalist(
            datalist, "training", ["t1n"], require=["label"], keys=["label", "brain_mask"], check="exists"
        )
    }
    assert items["with-mask"]["brain_mask"] == by_id["with-mask"]["brain_mask"]

    parser = ConfigParser()
    parser.read_config(str(REPO / "bundles" / "dtss_mas_seg" / "configs" / "common.yaml"))
    parser["datalist"] = str(datalist)
    chain = parser.get_parsed_content("load_transforms")
    from monai.transforms import Compose

    load = Compose(chain)
    ras = given[::-1, ::-1]  # the chain reorients to RAS
    out = load(items["with-mask"])
    assert "brain_mask" not in out
    assert ((out["image"][0].numpy() > -1) == ras).all()
    plain = load(items["no-mask"])
    assert ((plain["image"][0].numpy() > -1) == truth[::-1, ::-1]).all()


def test_make_datalist_mask_patterns(tmp_path: Path) -> None:
    vol = np.where(brain_shape(), brain_texture(), 0.0).astype(np.float32)
    lab = np.zeros(SHAPE, np.uint8)
    lab[20, 24, 20] = 1
    _case(tmp_path / "a", "c1", vol, lab, None)
    save_nifti(brain_shape().astype(np.uint8), np.eye(4), tmp_path / "a" / "c1" / "c1-mask.nii.gz")
    assert make_brats_datalist(tmp_path / "a")["training"][0]["brain_mask"].endswith("c1-mask.nii.gz")
    save_nifti(brain_shape().astype(np.uint8), np.eye(4), tmp_path / "a" / "c1" / "c1_BrainMask.nii.gz")
    with pytest.raises(ValueError, match="several brain mask files"):
        make_brats_datalist(tmp_path / "a")
    healthy = tmp_path / "healthy"
    save_nifti(vol, np.eye(4), healthy / "h1.nii.gz")
    save_nifti(brain_shape().astype(np.uint8), np.eye(4), healthy / "h1_brain_mask.nii.gz")
    save_nifti(vol, np.eye(4), healthy / "h2.nii")
    items = make_healthy_datalist(healthy)["training"]
    assert [it["case_id"] for it in items] == ["h1", "h2"]
    assert items[0]["brain_mask"].endswith("h1_brain_mask.nii.gz") and "brain_mask" not in items[1]
