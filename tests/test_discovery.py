"""Datalist discovery from BraTS folders and healthy-scan folders (custom_components.data.discovery)."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from custom_components.data.discovery import make_brats_datalist, make_healthy_datalist

NAMES_2021 = {"t1n": "t1", "t1c": "t1ce", "t2w": "t2", "t2f": "flair", "seg": "seg"}


def brats2023_case(root: Path, case: str, parts: tuple[str, ...] = ("t1n", "t1c", "t2w", "t2f", "seg")) -> Path:
    """A case folder in 2023 naming with empty placeholder files (discovery only looks at names)."""
    (root / case).mkdir(parents=True)
    for p in parts:
        (root / case / f"{case}-{p}.nii.gz").touch()
    return root / case


def brats2021_case(root: Path, case: str, parts: tuple[str, ...] = ("t1n", "t1c", "t2w", "t2f", "seg")) -> Path:
    (root / case).mkdir(parents=True)
    for p in parts:
        (root / case / f"{case}_{NAMES_2021[p]}.nii.gz").touch()
    return root / case


def test_brats2023_naming(tmp_path: Path) -> None:
    for case in ("BraTS-GLI-00002-000", "BraTS-GLI-00000-000"):
        brats2023_case(tmp_path, case)
    (tmp_path / "notes").mkdir()  # no NIfTI inside: not a case
    (tmp_path / "notes" / "readme.txt").touch()
    data = make_brats_datalist(tmp_path, modalities=("t2f", "t1n"))
    assert data["labels"] == "brats2023" and data["modalities"] == ["t2f", "t1n"]
    assert data["validation"] == [] and str(tmp_path) in data["description"]
    c = tmp_path / "BraTS-GLI-00000-000"
    assert data["training"][0] == {
        "case_id": "BraTS-GLI-00000-000",
        "image": [str(c / "BraTS-GLI-00000-000-t2f.nii.gz"), str(c / "BraTS-GLI-00000-000-t1n.nii.gz")],
        "label": str(c / "BraTS-GLI-00000-000-seg.nii.gz"),
    }
    assert [it["case_id"] for it in data["training"]] == ["BraTS-GLI-00000-000", "BraTS-GLI-00002-000"]


def test_brats2021_naming_mixed_with_2023_and_uncompressed(tmp_path: Path) -> None:
    c21 = brats2021_case(tmp_path, "BraTS2021_00005")
    c23 = brats2023_case(tmp_path, "BraTS-GLI-00001-000", parts=("t1n", "t1c", "t2w", "seg"))
    (c23 / "BraTS-GLI-00001-000-t2f.nii").touch()  # uncompressed NIfTI is found too
    data = make_brats_datalist(tmp_path, modalities="t1n,t1c,t2w,t2f", labels="brats2021")
    assert data["labels"] == "brats2021"
    by_id = {it["case_id"]: it for it in data["training"]}
    assert by_id["BraTS2021_00005"]["image"] == [
        str(c21 / f"BraTS2021_00005_{s}.nii.gz") for s in ("t1", "t1ce", "t2", "flair")
    ]
    assert by_id["BraTS2021_00005"]["label"] == str(c21 / "BraTS2021_00005_seg.nii.gz")
    assert by_id["BraTS-GLI-00001-000"]["image"][3] == str(c23 / "BraTS-GLI-00001-000-t2f.nii")


def test_missing_modality_or_seg_names_the_case_folder(tmp_path: Path) -> None:
    case = brats2021_case(tmp_path, "BraTS2021_00001", parts=("t1n", "t2f", "seg"))
    with pytest.raises(FileNotFoundError, match=rf"^{re.escape(str(case))}: case folder lacks BraTS2021_00001_t1ce "):
        make_brats_datalist(tmp_path, modalities=("t1n", "t1c"))
    (case / "BraTS2021_00001_seg.nii.gz").unlink()
    with pytest.raises(FileNotFoundError, match=rf"^{re.escape(str(case))}: case folder lacks BraTS2021_00001_seg "):
        make_brats_datalist(tmp_path, modalities=("t2f",))
    # unlabelled cases (e.g. a challenge's validation set) on request
    item = make_brats_datalist(tmp_path, modalities=("t2f",), require_label=False)["training"][0]
    assert item == {"case_id": "BraTS2021_00001", "image": [str(case / "BraTS2021_00001_flair.nii.gz")]}


def test_bad_folders_and_arguments(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="BraTS folder not found"):
        make_brats_datalist(tmp_path / "absent")
    with pytest.raises(ValueError, match="no BraTS case folders found"):
        make_brats_datalist(tmp_path)
    odd = tmp_path / "case9"
    odd.mkdir()
    (odd / "scan.nii.gz").touch()
    with pytest.raises(ValueError, match=rf"^{re.escape(str(odd))}: NIfTI files do not follow BraTS naming"):
        make_brats_datalist(tmp_path)
    (odd / "scan.nii.gz").unlink()
    brats2023_case(tmp_path, "c1")
    with pytest.raises(ValueError, match=r"unknown \['t1'\]; use the BraTS 2023 names"):
        make_brats_datalist(tmp_path, modalities=("t1",))
    with pytest.raises(ValueError, match="names a modality twice"):
        make_brats_datalist(tmp_path, modalities="t1n,t1n")
    with pytest.raises(ValueError, match="unknown label convention"):
        make_brats_datalist(tmp_path, labels="brats2019")
    with pytest.raises(ValueError, match="val_fraction"):
        make_brats_datalist(tmp_path, val_fraction=1.0)


def test_seeded_split(tmp_path: Path) -> None:
    for i in range(10):
        brats2023_case(tmp_path, f"case{i:02d}", parts=("t1n", "seg"))
    split = make_brats_datalist(tmp_path, val_fraction=0.3, seed=7)
    train = [it["case_id"] for it in split["training"]]
    val = [it["case_id"] for it in split["validation"]]
    assert len(train) == 7 and len(val) == 3
    assert sorted(train + val) == [f"case{i:02d}" for i in range(10)] and train == sorted(train) and val == sorted(val)
    assert make_brats_datalist(tmp_path, val_fraction=0.3, seed=7) == split
    others = {
        tuple(it["case_id"] for it in make_brats_datalist(tmp_path, val_fraction=0.3, seed=s)["validation"])
        for s in range(5)
    }
    assert len(others) > 1  # the seed changes the split
    assert len(make_brats_datalist(tmp_path, val_fraction=0.01)["validation"]) == 1  # at least one when asked


def test_split_keeps_a_training_case(tmp_path: Path) -> None:
    brats2023_case(tmp_path, "only", parts=("t1n", "seg"))
    data = make_brats_datalist(tmp_path, val_fraction=0.5)
    assert [it["case_id"] for it in data["training"]] == ["only"] and data["validation"] == []


def test_healthy_datalist(tmp_path: Path) -> None:
    scans, masks = tmp_path / "scans", tmp_path / "masks"
    scans.mkdir()
    masks.mkdir()
    for name in ("subj2.nii.gz", "subj1.nii"):
        (scans / name).touch()
        (masks / name).touch()
    (scans / "notes.txt").touch()
    data = make_healthy_datalist(scans)
    assert data["labels"] == "internal" and data["modalities"] == ["t1n"]
    assert data["training"] == [
        {"case_id": "subj1", "image": [str(scans / "subj1.nii")]},
        {"case_id": "subj2", "image": [str(scans / "subj2.nii.gz")]},
    ]
    with_masks = make_healthy_datalist(scans, mask_dir=masks)
    assert [it["brain_mask"] for it in with_masks["training"]] == [
        str(masks / "subj1.nii"),
        str(masks / "subj2.nii.gz"),
    ]
    (masks / "subj2.nii.gz").unlink()
    with pytest.raises(FileNotFoundError, match=rf"^{re.escape(str(masks / 'subj2.nii.gz'))}: brain mask for .*subj2"):
        make_healthy_datalist(scans, mask_dir=masks)


def test_healthy_bad_input(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="healthy scan folder not found"):
        make_healthy_datalist(tmp_path / "absent")
    with pytest.raises(ValueError, match="no NIfTI scans"):
        make_healthy_datalist(tmp_path)
    (tmp_path / "a.nii").touch()
    with pytest.raises(FileNotFoundError, match="brain mask folder not found"):
        make_healthy_datalist(tmp_path, mask_dir=tmp_path / "nomasks")
    (tmp_path / "a.nii.gz").touch()
    with pytest.raises(ValueError, match=r"scans \['a'\] exist both as .nii and .nii.gz"):
        make_healthy_datalist(tmp_path)


def test_symlinks_are_kept(tmp_path: Path) -> None:
    """Paths name the links (the case's own names), not their targets."""
    store = tmp_path / "store"
    store.mkdir()
    case = tmp_path / "root" / "c1"
    case.mkdir(parents=True)
    for part in ("t1n", "seg"):
        (store / f"blob-{part}").touch()
        os.symlink(store / f"blob-{part}", case / f"c1-{part}.nii.gz")
    item = make_brats_datalist(tmp_path / "root")["training"][0]
    assert item["image"] == [str(case / "c1-t1n.nii.gz")] and item["label"] == str(case / "c1-seg.nii.gz")
