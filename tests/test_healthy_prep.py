"""prepare_healthy: exact target grid, [-1, 1] intensities, known transforms recovered, input checks."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from custom_components.data.atomic import save_nifti
from custom_components.data.brain_mask import infer_brain_mask
from custom_components.data.datalist import read_datalist
from custom_components.data.demo import make_demo_data, mni152_template_path
from custom_components.synthesis.healthy_prep import (
    dice,
    from_sitk,
    prepare_healthy,
    to_sitk,
)

# Brain-mask Dice of the real MNI152 scan registered to TCGA-FG-6692 (measured: 0.937-0.945
# with rigid + affine; rigid only 0.90; the two brains differ in shape, so ~0.95 is the ceiling
# of a global transform). 0.92 fails when the affine stage or the LPS handling breaks.
REAL_DICE_MIN = 0.92


def _lps_copy(data: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The same image stored LPS (x and y axes flipped), like BraTS files."""
    flip = np.diag([-1.0, -1.0, 1.0, 1.0])
    flip[:2, 3] = np.asarray(data.shape[:2]) - 1
    return data[::-1, ::-1].copy(), affine @ flip


@pytest.fixture(scope="module")
def template_2mm(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """The MNI152 template at 2 mm stored LPS (the reference) and its array/affine."""
    tpl = sitk.ReadImage(str(mni152_template_path()), sitk.sitkFloat32)
    small = sitk.Resample(
        tpl,
        [int(round(s / 2)) for s in tpl.GetSize()],
        sitk.Transform(),
        sitk.sitkLinear,
        tpl.GetOrigin(),
        (2.0, 2.0, 2.0),
        tpl.GetDirection(),
        0.0,
        sitk.sitkFloat32,
    )
    ras = nib.load(str(mni152_template_path())).affine.copy()
    ras[:3, :3] *= 2.0
    data = from_sitk(small).astype(np.float32)
    lps_data, lps_affine = _lps_copy(data, ras)
    folder = tmp_path_factory.mktemp("tpl")
    ref = save_nifti(lps_data, lps_affine, folder / "reference_t1n.nii.gz")
    return {"path": ref, "data": lps_data, "affine": lps_affine, "image": to_sitk(lps_data, lps_affine)}


def test_sitk_roundtrip_keeps_voxels_and_world() -> None:
    data = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    affine = np.array([[-2.0, 0, 0, 10], [0, -1.5, 0, 20], [0, 0, 3, -5], [0, 0, 0, 1]])
    img = to_sitk(data, affine)
    np.testing.assert_array_equal(from_sitk(img), data)
    # voxel (1, 2, 3): RAS world from nibabel == LPS world from ITK with x, y negated
    ras = nib.affines.apply_affine(affine, [1, 2, 3])
    lps = img.TransformIndexToPhysicalPoint((1, 2, 3))
    np.testing.assert_allclose(lps, ras * [-1, -1, 1])


def test_brain_mask_ignores_values_below_background() -> None:
    data = np.zeros((20, 20, 20), np.float32)
    data[5:15, 5:15, 5:15] = 100.0
    data[10, 10, 10] = -50.0  # interpolation undershoot inside the brain, as in real BraTS files
    data[1, 1, 2] = 30.0  # speck outside the brain
    mask = infer_brain_mask(data)
    assert mask.sum() == 1000 and mask[10, 10, 10] and not mask[1, 1, 2]


def test_recovers_known_rigid_transform(template_2mm: dict[str, object], tmp_path: Path) -> None:
    """Move the reference by a known rotation and translation onto another grid; registration undoes it."""
    ref_img = template_2mm["image"]
    known = sitk.Euler3DTransform()
    centre = ref_img.TransformContinuousIndexToPhysicalPoint([(s - 1) / 2 for s in ref_img.GetSize()])
    known.SetCenter(centre)
    known.SetRotation(np.deg2rad(8.0), np.deg2rad(-5.0), np.deg2rad(10.0))
    known.SetTranslation((7.0, -5.0, 4.0))
    # moving(q) = reference(known(q)) on a 2.5 mm RAS grid
    grid = sitk.Image([72, 84, 72], sitk.sitkFloat32)
    grid.SetSpacing((2.5, 2.5, 2.5))
    grid.SetDirection((-1.0, 0, 0, 0, -1.0, 0, 0, 0, 1.0))  # RAS axes in ITK's LPS world
    grid.SetOrigin(np.asarray(centre) - np.array([-1, -1, 1]) * 2.5 * (np.array([72, 84, 72]) - 1) / 2)
    moving = sitk.Resample(ref_img, grid, known, sitk.sitkLinear, 0.0)
    moving_affine = np.diag([2.5, 2.5, 2.5, 1.0])
    moving_affine[:3, 3] = np.asarray(grid.GetOrigin()) * [-1, -1, 1]
    healthy = tmp_path / "healthy"
    save_nifti(from_sitk(moving), moving_affine, healthy / "moved.nii.gz")
    # the written RAS affine puts voxel (0,0,0) where ITK put it
    np.testing.assert_allclose(to_sitk(from_sitk(moving), moving_affine).GetOrigin(), grid.GetOrigin(), atol=1e-4)

    datalist = prepare_healthy(healthy, template_2mm["path"], tmp_path / "out", qc=False, verbose=False)
    found = sitk.ReadTransform(str(tmp_path / "out" / "moved_affine.tfm"))
    # found maps reference points to moving points: known(found(p)) == p inside the brain
    brain_idx = np.argwhere(template_2mm["data"] > 0)[::97]
    errors = []
    for idx in brain_idx:
        p = ref_img.TransformIndexToPhysicalPoint([int(i) for i in idx])
        errors.append(np.linalg.norm(np.asarray(known.TransformPoint(found.TransformPoint(p))) - p))
    assert np.mean(errors) < 0.8 and np.max(errors) < 2.0, (np.mean(errors), np.max(errors))
    item = read_datalist(datalist)["training"][0]
    # the 2.5 mm moving grid blurs the brain's edge: 0.95 measured
    assert item["provenance"]["dice_brain_vs_reference"] > 0.93
    prepared = np.asarray(nib.load(item["image"][0]).dataobj)
    ref_brain = template_2mm["data"] > 0
    both = ref_brain & (prepared > -1)
    assert np.corrcoef(prepared[both], template_2mm["data"][both])[0, 1] > 0.93  # 0.947 measured


@pytest.mark.slow
def test_real_healthy_to_tumour_case(real_case: dict[str, object], healthy_scans: list[Path], tmp_path: Path) -> None:
    reference = Path(real_case["image"][0])
    mni = next(p for p in healthy_scans if p.name.startswith("mni152"))
    healthy = tmp_path / "healthy"
    healthy.mkdir()
    (healthy / mni.name).symlink_to(mni)
    before = mni.read_bytes()
    datalist = prepare_healthy(healthy, reference, tmp_path / "prepared", verbose=False)
    assert mni.read_bytes() == before

    data = read_datalist(datalist)
    assert data["labels"] == "internal" and data["modalities"] == ["t1n"]
    (item,) = data["training"]
    ref = nib.load(str(reference))
    img, mask = nib.load(item["image"][0]), nib.load(item["brain_mask"])
    for out in (img, mask):
        assert out.shape == ref.shape == (240, 240, 155)
        np.testing.assert_allclose(out.affine, ref.affine, atol=1e-5)
        assert nib.aff2axcodes(out.affine) == ("L", "P", "S")
    arr, brain = np.asarray(img.dataobj), np.asarray(mask.dataobj).astype(bool)
    assert arr.dtype == np.float32 and arr.min() >= -1.0 and arr.max() <= 1.0
    assert (arr[~brain] == -1.0).all()
    assert np.median(arr[brain]) > -0.5  # brain spread over the range, not squashed at -1
    ref_brain = infer_brain_mask(np.asarray(ref.dataobj, dtype=np.float32))
    overlap = dice(brain, ref_brain)
    assert overlap > REAL_DICE_MIN, overlap
    prov = item["provenance"]
    assert prov["dice_brain_vs_reference"] == pytest.approx(overlap, abs=1e-3)
    assert prov["source"] == str((healthy / mni.name).resolve()) and prov["reference"] == str(reference.resolve())
    assert prov["registration"]["shrink_factors"] == [4, 2] and "final_metric" in prov["registration"]
    assert (tmp_path / "prepared" / f"{item['case_id']}_qc.png").stat().st_size > 10_000


def test_demo_healthy_datalist_to_demo_tumour(tmp_path: Path) -> None:
    """The demo chain: raw demo healthy scans (with brain masks) into a demo tumour case's space."""
    demo = make_demo_data(tmp_path / "demo", n_healthy=1, n_tumour=2, spacing=4.0, verbose=False)
    reference = read_datalist(demo["tumour"])["training"][0]["image"][0]
    first = prepare_healthy(demo["healthy"], reference, tmp_path / "a", qc=False, verbose=False)
    item = read_datalist(first)["training"][0]
    assert item["case_id"] == "demo-healthy-000"
    assert item["provenance"]["source_brain_mask"].endswith("demo-healthy-000_brainmask.nii.gz")
    assert item["provenance"]["registration"]["shrink_factors"] == [1, 1]
    assert item["provenance"]["dice_brain_vs_reference"] > 0.9
    out = nib.load(item["image"][0])
    assert out.shape == nib.load(reference).shape
    # deterministic: a rerun writes the same volumes and transform
    second = prepare_healthy(demo["healthy"], reference, tmp_path / "b", qc=False, verbose=False)
    again = read_datalist(second)["training"][0]
    assert Path(item["image"][0]).read_bytes() == Path(again["image"][0]).read_bytes()
    assert (
        json.loads(Path(first).read_text())["training"][0]["provenance"]["registration"]
        == json.loads(Path(second).read_text())["training"][0]["provenance"]["registration"]
    )


def _write(path: Path, data: np.ndarray) -> Path:
    return save_nifti(data, np.eye(4), path)


def _brain() -> np.ndarray:
    data = np.zeros((24, 24, 24), np.float32)
    data[4:20, 4:20, 4:20] = np.linspace(50, 150, 16)[None, None, :]
    return data


@pytest.mark.parametrize(
    ("name", "make", "match"),
    [
        ("nan.nii.gz", lambda: np.where(_brain() > 100, np.nan, _brain()), "NaN"),
        ("empty.nii.gz", lambda: np.zeros((24, 24, 24), np.float32), "implausible"),
        ("four_d.nii.gz", lambda: np.stack([_brain(), _brain()], -1), "3D"),
    ],
)
def test_bad_healthy_scan_named_nothing_written(tmp_path: Path, name: str, make, match: str) -> None:
    reference = _write(tmp_path / "ref.nii.gz", _brain())
    healthy = tmp_path / "healthy"
    _write(healthy / "good.nii.gz", _brain())
    _write(healthy / name, make())
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=f"{name}.*{match}|{match}.*{name}"):
        prepare_healthy(healthy, reference, out, verbose=False)
    assert not out.exists()


def test_missing_inputs_and_existing_output(tmp_path: Path) -> None:
    reference = _write(tmp_path / "ref.nii.gz", _brain())
    healthy = tmp_path / "healthy"
    _write(healthy / "good.nii.gz", _brain())
    with pytest.raises(FileNotFoundError, match="nope.nii.gz"):
        prepare_healthy(healthy, tmp_path / "nope.nii.gz", tmp_path / "out", verbose=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no NIfTI"):
        prepare_healthy(tmp_path / "empty", reference, tmp_path / "o2", verbose=False)
    listing = tmp_path / "healthy.json"
    listing.write_text(json.dumps({"training": [{"case_id": "x", "image": ["missing_scan.nii.gz"]}]}))
    with pytest.raises(FileNotFoundError, match="missing_scan.nii.gz"):
        prepare_healthy(listing, reference, tmp_path / "o3", verbose=False)
    assert not (tmp_path / "o2").exists() and not (tmp_path / "o3").exists()
    (tmp_path / "done").mkdir()
    (tmp_path / "done" / "datalist.json").write_text("{}")
    with pytest.raises(FileExistsError, match="datalist.json"):
        prepare_healthy(healthy, reference, tmp_path / "done", verbose=False)
