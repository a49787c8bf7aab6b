"""The one datalist loader and case-id rule (custom_components.data.load_datalist / case_id_of)."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from custom_components.data import case_id_of, load_datalist, make_healthy_datalist, nifti_stem, validate_items
from custom_components.engines import load_synthetic_items
from custom_components.synthesis.healthy_prep import _healthy_inputs


def _nii(path: Path, data: np.ndarray) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, np.eye(4)), str(path))
    return str(path)


def _case(root: Path, name: str, label_value: int = 3) -> dict:
    img = np.linspace(-1, 1, 6**3, dtype=np.float32).reshape(6, 6, 6)
    lab = np.zeros((6, 6, 6), np.uint8)
    lab[2:4, 2:4, 2:4] = label_value
    return {
        "image": [_nii(root / f"{name}-{m}.nii.gz", img + k) for k, m in enumerate(("t1n", "t2f"))],
        "label": _nii(root / f"{name}-seg.nii", lab),
    }


def _write(path: Path, data: dict) -> Path:
    path.write_text(json.dumps(data))
    return path


def test_case_id_rule() -> None:
    # explicit id wins; else the first listed image's name without the NIfTI extension (dots inside kept)
    assert case_id_of({"case_id": "x", "image": ["a.nii.gz"]}) == "x"
    assert case_id_of({"image": ["/d/BraTS-GLI-00001-000-t1n.nii.gz", "/d/other.nii"]}) == "BraTS-GLI-00001-000-t1n"
    assert case_id_of({"image": "sub.01_T1w.nii"}) == "sub.01_T1w"
    assert case_id_of({"image": "scan.mha"}) == "scan.mha"
    assert case_id_of({"case_id": "", "image": "b.nii.gz"}) == "b"
    assert case_id_of({"label": "x.nii.gz"}) is None
    assert nifti_stem("/a/b.c.nii.gz") == "b.c" and nifti_stem(".nii") == ".nii"


def test_same_file_same_id_everywhere(tmp_path: Path) -> None:
    """One scan, read by the loader (every modality selection), validation, healthy prep and discovery."""
    scan = tmp_path / "healthy" / "sub.01_T1w.nii.gz"
    _nii(scan, np.linspace(-1, 1, 6**3, dtype=np.float32).reshape(6, 6, 6))
    discovered = make_healthy_datalist(tmp_path / "healthy")
    datalist = _write(tmp_path / "h.json", {"modalities": ["t1n"], "training": [{"image": [str(scan)]}]})
    ids = {
        "discovery": discovered["training"][0]["case_id"],
        "loader": load_datalist(datalist, modalities=["t1n"])[0]["case_id"],
        "healthy_prep_folder": _healthy_inputs(tmp_path / "healthy")[0]["case_id"],
        "healthy_prep_datalist": _healthy_inputs(datalist)[0]["case_id"],
    }
    assert set(ids.values()) == {"sub.01_T1w"}, ids
    # validation names duplicates by the same rule
    problems = validate_items([{"image": str(scan)}, {"image": str(scan)}], require_tumour=False)
    assert any("duplicate case id 'sub.01_T1w'" in p for p in problems)


def test_id_does_not_depend_on_selected_modalities(tmp_path: Path) -> None:
    data = {"modalities": ["t1n", "t2f"], "labels": "internal", "training": [_case(tmp_path, "c1")]}
    path = _write(tmp_path / "d.json", data)
    a = load_datalist(path, modalities=["t2f"])[0]
    b = load_datalist(path, modalities=["t1n", "t2f"])[0]
    c = load_datalist(path)[0]
    assert a["case_id"] == b["case_id"] == c["case_id"] == "c1-t1n"
    assert a["image"] == [str(tmp_path / "c1-t2f.nii.gz")]
    assert b["image"] == c["image"] == [str(tmp_path / "c1-t1n.nii.gz"), str(tmp_path / "c1-t2f.nii.gz")]


def test_loader_keys_require_limits_and_errors(tmp_path: Path) -> None:
    cases = [_case(tmp_path, f"c{k}") | {"case_id": f"case{k}", "provenance": {"k": k}} for k in range(3)]
    path = _write(tmp_path / "d.json", {"modalities": ["t1n", "t2f"], "labels": "internal", "training": cases})
    items = load_datalist(path, modalities=["t1n"], require=["label"], keys=["label"], max_items=2)
    assert [it["case_id"] for it in items] == ["case0", "case1"]
    assert set(items[0]) == {"case_id", "image", "label"}
    assert load_datalist(path, check="none")[2]["provenance"] == {"k": 2}
    with pytest.raises(ValueError, match=r"d.json: training\[0\] \(case0\) has no brain_mask"):
        load_datalist(path, require=["brain_mask"], check="none")
    with pytest.raises(ValueError, match=r"d.json: modalities \['t1c'\] not in"):
        load_datalist(path, modalities=["t1c"])
    with pytest.raises(KeyError, match=r"d.json: datalist has no section 'test'"):
        load_datalist(path, "test")
    with pytest.raises(ValueError, match="declares labels 'internal' but label_convention is 'brats2021'"):
        load_datalist(path, label_convention="brats2021")
    dup = _write(tmp_path / "dup.json", {"modalities": ["t1n", "t2f"], "training": [cases[0], cases[0]]})
    with pytest.raises(ValueError, match=r"duplicate case id 'case0' in training\[0\] and training\[1\]"):
        load_datalist(dup, check="none")
    with pytest.raises(ValueError, match="check must be one of"):
        load_datalist(path, check="some")


def test_loader_checks_files(tmp_path: Path) -> None:
    case = _case(tmp_path, "c1", label_value=4)  # 4 is not an internal label
    path = _write(tmp_path / "d.json", {"modalities": ["t1n", "t2f"], "labels": "internal", "training": [case]})
    assert load_datalist(path, check="exists")[0]["case_id"] == "c1-t1n"
    with pytest.raises(ValueError, match=r"c1-seg.nii: label values \[4\] are not in the internal convention"):
        load_datalist(path)  # full check reads the data
    assert load_datalist(path, label_convention="internal", check="none")[0]["label"].endswith("c1-seg.nii")
    Path(case["label"]).unlink()
    with pytest.raises(FileNotFoundError, match="case c1-t1n: file not found: .*c1-seg.nii"):
        load_datalist(path, check="exists")


def test_synthetic_items_use_the_loader(tmp_path: Path) -> None:
    a = _write(
        tmp_path / "a.json", {"labels": "internal", "modalities": ["t1n", "t2f"], "training": [_case(tmp_path, "s")]}
    )
    b = _write(
        tmp_path / "b.json", {"labels": "internal", "modalities": ["t1n", "t2f"], "training": [_case(tmp_path, "s")]}
    )
    items = load_synthetic_items([a, b], modalities=["t2f"])
    assert [it["case_id"] for it in items] == ["s-t1n", "1:s-t1n"]
    assert set(items[0]) == {"case_id", "image", "label"}
