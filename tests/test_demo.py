"""Demo data: grid, datalists, phantom labels and contrasts, determinism."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from custom_components.data.datalist import read_datalist
from custom_components.data.demo import demo_grid, make_demo_data, mni152_template_path

SPACING = 4.0


def _load(path: str) -> np.ndarray:
    return np.asarray(nib.load(path).dataobj)


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("demo")
    return make_demo_data(out, n_healthy=2, n_tumour=3, spacing=SPACING, seed=7, verbose=False)


def test_template_is_shipped_with_nilearn() -> None:
    path = mni152_template_path()
    assert path.is_file() and "nilearn" in str(path)


@pytest.mark.parametrize(("spacing", "shape"), [(2.0, (80, 96, 80)), (4.0, (40, 48, 40))])
def test_grid(spacing: float, shape: tuple[int, int, int]) -> None:
    got, affine = demo_grid(spacing)
    assert got == shape
    np.testing.assert_allclose(np.diag(affine)[:3], spacing)
    assert nib.aff2axcodes(affine) == ("R", "A", "S")


def test_datalists(demo: dict[str, Path]) -> None:
    healthy = read_datalist(demo["healthy"])
    tumour = read_datalist(demo["tumour"])
    assert healthy["labels"] == "internal" and healthy["modalities"] == ["t1n"]
    assert [it["case_id"] for it in healthy["training"]] == ["demo-healthy-000", "demo-healthy-001"]
    assert tumour["labels"] == "internal" and tumour["modalities"] == ["t1n", "t1c", "t2w", "t2f"]
    assert "PHANTOM" in tumour["description"]
    assert len(tumour["training"]) == 2 and len(tumour["validation"]) == 1
    for item in healthy["training"]:
        assert len(item["image"]) == 1 and Path(item["brain_mask"]).is_file()
    for item in tumour["training"] + tumour["validation"]:
        assert len(item["image"]) == 4 and Path(item["label"]).is_file() and item["phantom"] is True
        assert [Path(p).name.split("_")[-1] for p in item["image"]] == [
            "t1n.nii.gz",
            "t1c.nii.gz",
            "t2w.nii.gz",
            "t2f.nii.gz",
        ]
    # paths are stored relative to the datalist
    raw = json.loads(Path(demo["tumour"]).read_text())
    assert not Path(raw["training"][0]["label"]).is_absolute()


def test_healthy_scans(demo: dict[str, Path]) -> None:
    shape, affine = demo_grid(SPACING)
    for item in read_datalist(demo["healthy"])["training"]:
        img = nib.load(item["image"][0])
        data, mask = np.asarray(img.dataobj), _load(item["brain_mask"]).astype(bool)
        assert img.shape == shape and data.dtype == np.int16
        np.testing.assert_allclose(img.affine, affine)
        assert (data[~mask] == 0).all() and (data[mask] > 0).all()
        # raw scanner-like range, not normalised
        assert 150 < np.median(data[mask]) < 600
        assert mask.sum() > 0.25 * mask.size


def test_tumour_cases(demo: dict[str, Path]) -> None:
    shape, affine = demo_grid(SPACING)
    items = read_datalist(demo["tumour"])
    for item in items["training"] + items["validation"]:
        seg = nib.load(item["label"])
        label, brain = np.asarray(seg.dataobj), _load(item["brain_mask"]).astype(bool)
        assert seg.shape == shape and label.dtype == np.uint8
        np.testing.assert_allclose(seg.affine, affine)
        assert set(np.unique(label).tolist()) == {0, 1, 2, 3}
        assert brain[label > 0].all(), "phantom outside the brain"
        t1n, t1c, t2w, t2f = (_load(p).astype(np.float64) for p in item["image"])
        for img in (t1n, t1c, t2w, t2f):
            assert img.shape == shape and (img[~brain] == 0).all() and (img[brain] > 0).all()
        wm = _white_matter(t1n, label, brain)
        ncr, ed, et = (label == 1), (label == 2), (label == 3)

        def rel(img: np.ndarray, region: np.ndarray, wm: np.ndarray = wm) -> float:
            return float(img[region].mean() / img[wm].mean())

        # T1: necrosis markedly hypointense, oedema mildly but visibly hypointense, rim iso-to-hypointense
        assert rel(t1n, ncr) < rel(t1n, ed) < 1.0
        assert rel(t1n, ncr) < 0.65 and 0.65 < rel(t1n, ed) < 0.92 and rel(t1n, et) < 1.0
        # T1 post-contrast: the rim enhances, the necrosis does not
        assert rel(t1c, et) > 1.15 and rel(t1c, ncr) < 1.0
        # T2 and FLAIR: oedema and necrosis bright
        for img in (t2w, t2f):
            assert rel(img, ed) > 1.2 and rel(img, ncr) > 1.2
        # each drawn lesion is centred in its own core; touching lesions make one tumour
        _, n = ndimage.label(label > 0)
        lesions = item["provenance"]["lesions"]
        assert n == item["provenance"]["n_lesions"] and 1 <= n <= len(lesions)
        for lesion in lesions:
            assert label[tuple(lesion["centre_voxel"])] in (1, 3)


def _white_matter(t1n: np.ndarray, label: np.ndarray, brain: np.ndarray) -> np.ndarray:
    """Normal-appearing white matter: brain >= 3 voxels from the tumour, brightest 30 % on T1."""
    normal = brain & ~ndimage.binary_dilation(label > 0, iterations=3)
    return normal & (t1n > np.percentile(t1n[normal], 70))


def test_variety(tmp_path: Path) -> None:
    """Tumour size, location and lesion count differ across the cases of one seed."""
    paths = make_demo_data(tmp_path, n_healthy=1, n_tumour=8, spacing=SPACING, seed=3, verbose=False)
    data = read_datalist(paths["tumour"])
    items = data["training"] + data["validation"]
    volumes = [int((_load(it["label"]) > 0).sum()) for it in items]
    centres = np.asarray([it["provenance"]["lesions"][0]["centre_voxel"] for it in items], dtype=float)
    counts = [it["provenance"]["n_lesions"] for it in items]
    assert max(volumes) > 2 * min(volumes), volumes
    dist = np.sqrt(((centres[:, None] - centres[None]) ** 2).sum(-1))[np.triu_indices(len(items), 1)]
    assert dist.min() > 0 and np.median(dist) * SPACING > 20.0  # mm
    assert len(set(counts)) > 1 and min(counts) >= 1 and max(counts) <= 3, counts
    radii = [lesion["core_radius_mm"] for it in items for lesion in it["provenance"]["lesions"]]
    assert max(radii) > 1.5 * min(radii)


def test_healthy_contrast_csf(demo: dict[str, Path]) -> None:
    """CSF (dark on T1) is bright on T2 and dark on FLAIR in the tumour cases' normal tissue."""
    item = read_datalist(demo["tumour"])["training"][0]
    t1n, _, t2w, t2f = (_load(p).astype(np.float64) for p in item["image"])
    brain = (_load(item["label"]) == 0) & _load(item["brain_mask"]).astype(bool)
    dark_t1 = brain & (t1n < np.percentile(t1n[brain], 5))
    bright_t1 = brain & (t1n > np.percentile(t1n[brain], 80))
    assert t2w[dark_t1].mean() > 1.5 * t2w[bright_t1].mean()
    assert t2f[dark_t1].mean() < 0.7 * t2f[bright_t1].mean()


def test_deterministic_and_seed_dependent(demo: dict[str, Path], tmp_path: Path) -> None:
    again = make_demo_data(tmp_path / "same", n_healthy=2, n_tumour=3, spacing=SPACING, seed=7, verbose=False)
    first_dir, second_dir = Path(demo["tumour"]).parent.parent, Path(again["tumour"]).parent.parent
    files = sorted(p.relative_to(first_dir) for p in first_dir.rglob("*.nii.gz"))
    assert len(files) == 2 * 2 + 3 * 6
    for rel in files:
        assert (first_dir / rel).read_bytes() == (second_dir / rel).read_bytes(), rel
    other = make_demo_data(tmp_path / "other", n_healthy=1, n_tumour=2, spacing=SPACING, seed=8, verbose=False)
    a = _load(read_datalist(demo["tumour"])["training"][0]["label"])
    b = _load(read_datalist(other["tumour"])["training"][0]["label"])
    assert not np.array_equal(a, b)
    h1 = _load(read_datalist(demo["healthy"])["training"][0]["image"][0])
    h2 = _load(read_datalist(other["healthy"])["training"][0]["image"][0])
    assert not np.array_equal(h1, h2)


def test_subjects_differ(demo: dict[str, Path]) -> None:
    items = read_datalist(demo["healthy"])["training"]
    m0, m1 = (_load(it["brain_mask"]).astype(bool) for it in items)
    dice = 2 * (m0 & m1).sum() / (m0.sum() + m1.sum())
    assert 0.8 < dice < 0.995, dice


def test_refuses_other_settings_and_bad_counts(demo: dict[str, Path]) -> None:
    out = Path(demo["tumour"]).parent.parent
    with pytest.raises(FileExistsError, match="datalist.json"):
        make_demo_data(out, n_healthy=2, n_tumour=3, spacing=SPACING, seed=8, verbose=False)
    with pytest.raises(ValueError, match="n_tumour"):
        make_demo_data(out, n_tumour=1, verbose=False)
    with pytest.raises(ValueError, match="n_healthy"):
        make_demo_data(out, n_healthy=0, verbose=False)


def test_n_held_out(demo: dict[str, Path], tmp_path: Path) -> None:
    """n_held_out sets the validation count; the cases are those of the default split, case for case."""
    default = read_datalist(demo["tumour"])
    # the default rule, max(1, n_tumour // 3), and a generator record without n_held_out (older data unchanged)
    assert [it["case_id"] for it in default["training"]] == ["demo-tumour-000", "demo-tumour-001"]
    assert [it["case_id"] for it in default["validation"]] == ["demo-tumour-002"]
    assert "n_held_out" not in default["generator"]
    paths = make_demo_data(tmp_path, n_healthy=2, n_tumour=3, spacing=SPACING, seed=7, verbose=False, n_held_out=2)
    held = read_datalist(paths["tumour"])
    assert [it["case_id"] for it in held["training"]] == ["demo-tumour-000"]
    assert [it["case_id"] for it in held["validation"]] == ["demo-tumour-001", "demo-tumour-002"]
    assert held["generator"]["n_held_out"] == 2
    first_dir = Path(demo["tumour"]).parent.parent
    for path in sorted(first_dir.rglob("*.nii.gz")):
        assert (tmp_path / path.relative_to(first_dir)).read_bytes() == path.read_bytes(), path.name
    # another split is another setting: refused in a folder made with the default one
    with pytest.raises(FileExistsError, match="datalist.json"):
        make_demo_data(first_dir, n_healthy=2, n_tumour=3, spacing=SPACING, seed=7, verbose=False, n_held_out=2)
    for bad in (0, 3):
        with pytest.raises(ValueError, match="n_held_out"):
            make_demo_data(tmp_path / "bad", n_tumour=3, n_held_out=bad, verbose=False)
