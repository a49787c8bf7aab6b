"""Datalist validation (custom_components.data.validation): one test per kind of bad input."""

from __future__ import annotations

import gzip
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from custom_components.data import validation
from custom_components.data.datalist import write_datalist
from custom_components.data.validation import check_datalist, check_items, validate_datalist, validate_items

SHAPE = (6, 5, 4)
AFFINE = np.diag([1.0, 1.0, 2.0, 1.0])


def nii(path: Path, data: np.ndarray, affine: np.ndarray = AFFINE) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.asarray(data), affine), str(path))
    return str(path)


def tumour_label() -> np.ndarray:
    lab = np.zeros(SHAPE, dtype=np.uint8)
    lab[2:4, 2:4, 1:3] = 2
    lab[2, 2, 1] = 1
    lab[3, 3, 2] = 3
    return lab


def make_case(root: Path, cid: str, n_mod: int = 2, seed: int = 0) -> dict:
    """A sound case: ``n_mod`` float32 modalities, a brats2023 label with every class, a brain mask."""
    rng = np.random.default_rng(seed)
    folder = root / cid
    return {
        "case_id": cid,
        "image": [nii(folder / f"{cid}-m{i}.nii.gz", rng.random(SHAPE, dtype=np.float32)) for i in range(n_mod)],
        "label": nii(folder / f"{cid}-seg.nii.gz", tumour_label()),
        "brain_mask": nii(folder / f"{cid}-mask.nii.gz", np.ones(SHAPE, dtype=np.uint8)),
    }


def datalist(tmp_path: Path, training: list, validation_items: list | None = None, **top: object) -> Path:
    data: dict = {**top, "training": training}
    if validation_items is not None:
        data["validation"] = validation_items
    return write_datalist(tmp_path / "lists" / "datalist.json", data)


def only(problems: list[str], path: str | Path) -> str:
    """The single problem, checked to start with the offending file."""
    assert len(problems) == 1, problems
    assert problems[0].startswith(f"{path}: "), problems[0]
    return problems[0]


def test_sound_datalist_is_valid(tmp_path: Path) -> None:
    a, b, c = (make_case(tmp_path, cid, seed=i) for i, cid in enumerate("abc"))
    c["roi"] = c["brain_mask"]
    path = datalist(tmp_path, [a, b], [c], labels="brats2023", modalities=["t1n", "t2f"])
    assert validate_datalist(path) == []
    assert check_datalist(path)["validation"][0]["roi"] == c["brain_mask"]
    assert validate_items([a, b, c]) == []
    assert check_items([a]) == [a]


def test_missing_file(tmp_path: Path) -> None:
    a = make_case(tmp_path, "a")
    a["image"][1] = str(tmp_path / "a" / "gone.nii.gz")
    line = only(validate_datalist(datalist(tmp_path, [a])), a["image"][1])
    assert "file not found" in line and "training[0], case a" in line


def test_corrupt_file(tmp_path: Path) -> None:
    a = make_case(tmp_path, "a")
    Path(a["label"]).write_bytes(b"this is not a NIfTI file at all" * 20)
    assert "unreadable image" in only(validate_items([a]), a["label"])


def test_truncated_file(tmp_path: Path) -> None:
    """The header decompresses but the data does not: caught when the data is read."""
    a = make_case(tmp_path, "a")
    big = tmp_path / "big.nii.gz"
    nii(big, np.random.default_rng(1).random((40, 40, 40)).astype(np.float32))
    raw = gzip.decompress(big.read_bytes())
    Path(a["image"][0]).write_bytes(gzip.compress(raw)[:2000])
    a["image"] = a["image"][:1]
    a["label"] = nii(tmp_path / "a" / "seg40.nii.gz", np.pad(tumour_label(), ((0, 34), (0, 35), (0, 36))))
    del a["brain_mask"]
    assert "unreadable data" in only(validate_items([a]), a["image"][0])


def test_image_not_3d(tmp_path: Path) -> None:
    a = make_case(tmp_path, "a")
    a["image"][0] = nii(tmp_path / "a" / "4d.nii.gz", np.zeros((*SHAPE, 3), dtype=np.float32))
    assert "4D volume of shape (6, 5, 4, 3)" in only(validate_items([a]), a["image"][0])
    a["image"] = [nii(tmp_path / "a" / "2d.nii.gz", np.zeros(SHAPE[:2], dtype=np.float32))]
    problems = validate_items([a])
    assert problems and "2D volume" in problems[0] and problems[0].startswith(a["image"][0])


def test_singleton_4d_accepted_only_when_an_item_agrees(tmp_path: Path) -> None:
    a = make_case(tmp_path, "a")
    a["image"] = [nii(tmp_path / "a" / f"s{i}.nii.gz", np.ones((*SHAPE, 1), dtype=np.float32)) for i in range(2)]
    a["label"] = nii(tmp_path / "a" / "seg4d.nii.gz", tumour_label()[..., None])
    assert validate_items([a]) == []
    a["image"][1] = make_case(tmp_path, "b")["image"][0]  # 3D beside a (X, Y, Z, 1) file
    assert "image shape (6, 5, 4) differs from" in only(validate_items([a]), a["image"][1])


def test_modality_shape_mismatch(tmp_path: Path) -> None:
    a = make_case(tmp_path, "a")
    a["image"][1] = nii(tmp_path / "a" / "small.nii.gz", np.zeros((6, 5, 3), dtype=np.float32))
    line = only(validate_items([a]), a["image"][1])
    assert f"image shape (6, 5, 3) differs from {a['image'][0]} shape (6, 5, 4)" in line


def test_modality_affine_mismatch_beyond_tolerance(tmp_path: Path) -> None:
    a = make_case(tmp_path, "a")
    shifted = AFFINE.copy()
    shifted[0, 3] = 1e-6  # within tolerance: the same grid
    a["image"][1] = nii(tmp_path / "a" / "near.nii.gz", np.zeros(SHAPE, dtype=np.float32), shifted)
    assert validate_items([a]) == []
    shifted[0, 3] = 0.5
    a["image"][1] = nii(tmp_path / "a" / "moved.nii.gz", np.zeros(SHAPE, dtype=np.float32), shifted)
    assert "affine differs from that of" in only(validate_items([a]), a["image"][1])


def test_label_grid_mismatch(tmp_path: Path) -> None:
    a = make_case(tmp_path, "a")
    a["label"] = nii(tmp_path / "a" / "seg_shape.nii.gz", np.pad(tumour_label(), ((0, 1), (0, 0), (0, 0))))
    assert "label shape (7, 5, 4) differs from image" in only(validate_items([a]), a["label"])
    a["label"] = nii(tmp_path / "a" / "seg_affine.nii.gz", tumour_label(), np.diag([1.0, 1.0, 1.0, 1.0]))
    assert "label affine differs from image" in only(validate_items([a]), a["label"])


def test_label_values_outside_convention(tmp_path: Path) -> None:
    a = make_case(tmp_path, "a")
    lab = tumour_label()
    lab[0, 0, 0] = 5
    a["label"] = nii(tmp_path / "a" / "seg5.nii.gz", lab)
    line = only(validate_datalist(datalist(tmp_path, [a])), a["label"])
    assert "label values [5] are not in the brats2023 convention (allowed: 0, 1, 2, 3)" in line

    lab = np.where(tumour_label() == 3, 4, tumour_label())  # brats2021, declared at the top of the datalist ...
    a["label"] = nii(tmp_path / "a" / "seg4.nii.gz", lab)
    path = datalist(tmp_path, [a], labels="brats2021")
    assert validate_datalist(path) == []
    # ... and the argument overrides the declaration
    assert "label values [4] are not in the internal" in only(validate_datalist(path, labels="internal"), a["label"])
    b = make_case(tmp_path, "b")  # holds 3, which is not a brats2021 value
    assert "label values [3] are not in the brats2021" in only(validate_items([b], "brats2021"), b["label"])


def test_nan_and_inf_voxels(tmp_path: Path) -> None:
    a = make_case(tmp_path, "a")
    img = np.zeros(SHAPE, dtype=np.float32)
    img[1, 1, 1] = np.nan
    img[2, 2, 2] = np.inf
    a["image"][0] = nii(tmp_path / "a" / "nan.nii.gz", img)
    assert "2 NaN/inf voxel(s)" in only(validate_items([a]), a["image"][0])

    b = make_case(tmp_path, "b")
    lab = tumour_label().astype(np.float32)
    lab[0, 0, 0] = -np.inf
    b["label"] = nii(tmp_path / "b" / "seg_inf.nii.gz", lab)
    assert "1 NaN/inf voxel(s)" in only(validate_items([b]), b["label"])


def test_empty_label(tmp_path: Path) -> None:
    a = make_case(tmp_path, "a")
    a["label"] = nii(tmp_path / "a" / "empty.nii.gz", np.zeros(SHAPE, dtype=np.uint8))
    path = datalist(tmp_path, [a])
    assert "label has no tumour voxels" in only(validate_datalist(path), a["label"])
    assert validate_datalist(path, require_tumour=False) == []


def test_duplicate_case_ids(tmp_path: Path) -> None:
    a, b = make_case(tmp_path, "a"), make_case(tmp_path, "b", seed=1)
    b["case_id"] = "a"
    path = datalist(tmp_path, [a], [b])
    assert only(validate_datalist(path), path) == f"{path}: duplicate case id 'a' in training[0], validation[0]"
    assert validate_datalist(path, sections=["training"]) == []
    # without case_id, the first image's file name is the id
    c = {"image": [str(tmp_path / "x" / "scan.nii.gz")]}
    d = {"image": [str(tmp_path / "y" / "scan.nii.gz")]}
    for item in (c, d):
        nii(Path(item["image"][0]), np.zeros(SHAPE, dtype=np.float32))
    assert only(validate_items([c, d], source="mylist.json"), "mylist.json").endswith("'scan' in items[0], items[1]")


def test_missing_image_key_and_bad_entries(tmp_path: Path) -> None:
    a = make_case(tmp_path, "a")
    del a["image"]
    path = datalist(tmp_path, [a, "not-an-object.nii.gz"])
    problems = validate_datalist(path)
    assert problems == [
        f"{path}: training[1] is a str, expected an object with an 'image' key",
        f"{path}: training[0] (case a) has no 'image' key",
    ]


def test_brain_mask_must_match_the_image(tmp_path: Path) -> None:
    a = make_case(tmp_path, "a")
    a["brain_mask"] = nii(tmp_path / "a" / "mask_big.nii.gz", np.ones((8, 5, 4), dtype=np.uint8))
    assert "brain_mask shape (8, 5, 4) differs from image" in only(validate_items([a]), a["brain_mask"])
    a["brain_mask"] = nii(tmp_path / "a" / "mask_empty.nii.gz", np.zeros(SHAPE, dtype=np.uint8))
    assert "mask is empty" in only(validate_items([a]), a["brain_mask"])


def test_modalities_count(tmp_path: Path) -> None:
    a = make_case(tmp_path, "a", n_mod=3)
    path = datalist(tmp_path, [a], modalities=["t1n", "t2f"])
    assert "has 3 image file(s) but the datalist declares 2 modalities (t1n, t2f)" in only(
        validate_datalist(path), path
    )


def test_datalist_level_problems(tmp_path: Path) -> None:
    missing = tmp_path / "none.json"
    assert validate_datalist(missing) == [f"{missing}: datalist file not found"]
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    assert "not valid JSON" in only(validate_datalist(bad), bad)
    no_sections = tmp_path / "meta.json"
    no_sections.write_text('{"labels": "internal"}')
    assert "no list sections" in only(validate_datalist(no_sections), no_sections)

    path = datalist(tmp_path, [make_case(tmp_path, "a")], labels="brats2019")
    assert "top-level 'labels' is 'brats2019'" in only(validate_datalist(path), path)
    assert "no list section 'test' (has: training)" in only(
        validate_datalist(path, "internal", sections=["test"]), path
    )
    with pytest.raises(ValueError, match="unknown label convention 'bogus'"):
        validate_datalist(path, labels="bogus")
    with pytest.raises(ValueError, match="unknown label convention 'bogus'"):
        validate_items([], labels="bogus")


def test_check_raises_with_every_problem(tmp_path: Path) -> None:
    a, b = make_case(tmp_path, "a"), make_case(tmp_path, "b")
    a["image"][0] = str(tmp_path / "missing.nii.gz")
    b["label"] = nii(tmp_path / "b" / "empty.nii.gz", np.zeros(SHAPE, dtype=np.uint8))
    path = datalist(tmp_path, [a, b])
    with pytest.raises(ValueError, match=r"datalist.json is invalid \(2 problem\(s\)\)") as e:
        check_datalist(path)
    lines = str(e.value).splitlines()[1:]
    assert lines[0].startswith(f"{tmp_path / 'missing.nii.gz'}: file not found")
    assert lines[1].startswith(f"{b['label']}: label has no tumour voxels")
    with pytest.raises(ValueError, match="in.json is invalid"):
        check_items([a], source="in.json")


def test_a_shared_bad_file_is_reported_once(tmp_path: Path) -> None:
    a = make_case(tmp_path, "a")
    a["label"] = nii(tmp_path / "a" / "empty.nii.gz", np.zeros(SHAPE, dtype=np.uint8))
    b = {**a, "case_id": "b"}
    line = only(validate_items([a, b]), a["label"])
    assert line.endswith("(items[0], case a)")
    c = {**a, "case_id": "c", "image": [*a["image"][:1], str(tmp_path / "small.nii.gz")]}
    nii(tmp_path / "small.nii.gz", np.zeros((2, 2, 2), dtype=np.float32))
    # a mismatch between files is a problem of each item that pairs them
    problems = validate_items([c, {**c, "case_id": "d"}])
    assert len(problems) == 3 and sum("differs from" in p for p in problems) == 2


def test_each_file_is_opened_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    a = make_case(tmp_path, "a")
    b = {**a, "case_id": "b"}  # a second item naming the same files
    opened: list[str] = []
    real_load = nib.load

    def counting_load(path: str, *args: object, **kwargs: object) -> object:
        opened.append(str(path))
        return real_load(path, *args, **kwargs)

    monkeypatch.setattr(validation.nib, "load", counting_load)
    assert validate_items([a, b]) == []
    assert sorted(opened) == sorted([*a["image"], a["label"], a["brain_mask"]])


def test_real_case_is_valid(tmp_path: Path, real_case: dict) -> None:
    item = {k: real_case[k] for k in ("case_id", "image", "label")}
    path = datalist(tmp_path, [item], labels=real_case["labels"], modalities=["t1n", "t1c", "t2w", "t2f"])
    assert validate_datalist(path) == []
    line = only(validate_datalist(path, labels="brats2023"), real_case["label"])
    assert "label values [4] are not in the brats2023 convention" in line
