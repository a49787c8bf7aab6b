"""Datalist read / write (custom_components.data.datalist)."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from custom_components.data import load_datalist
from custom_components.data.datalist import read_datalist, source_name, write_datalist


def _datalist(tmp_path: Path) -> dict:
    data_dir = tmp_path / "data"
    return {
        "description": "two cases",
        "labels": "brats2021",
        "modalities": ["t1n", "t2f"],
        "training": [
            {
                "case_id": "a",
                "image": [str(data_dir / "a" / "a-t1n.nii.gz"), str(data_dir / "a" / "a-t2f.nii.gz")],
                "label": str(data_dir / "a" / "a-seg.nii.gz"),
                "provenance": {"stage": "real", "seed": 3},
            }
        ],
        "validation": [
            {"case_id": "b", "image": str(data_dir / "b.nii.gz"), "brain_mask": str(data_dir / "masks" / "b.nii.gz")}
        ],
    }


def test_write_stores_relative_paths_and_read_restores_absolute(tmp_path: Path) -> None:
    data = _datalist(tmp_path)
    out = write_datalist(tmp_path / "lists" / "datalist.json", data)
    assert out == tmp_path / "lists" / "datalist.json"

    stored = json.loads(out.read_text())
    assert stored["training"][0]["image"] == ["../data/a/a-t1n.nii.gz", "../data/a/a-t2f.nii.gz"]
    assert stored["training"][0]["label"] == "../data/a/a-seg.nii.gz"
    assert stored["validation"][0]["image"] == "../data/b.nii.gz"
    assert stored["validation"][0]["brain_mask"] == "../data/masks/b.nii.gz"
    # metadata and non-path keys are stored as given
    assert stored["modalities"] == ["t1n", "t2f"] and stored["labels"] == "brats2021"
    assert stored["training"][0]["provenance"] == {"stage": "real", "seed": 3}

    assert read_datalist(out) == data
    assert load_datalist(out, "validation", check="none") == [
        {**data["validation"][0], "image": [data["validation"][0]["image"]]}
    ]
    assert load_datalist(out, check="none")[0]["image"][1] == str(tmp_path / "data" / "a" / "a-t2f.nii.gz")


def test_read_keeps_absolute_paths_and_resolves_relative_ones(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "dl.json"
    path.parent.mkdir()
    path.write_text(
        json.dumps(
            {
                "training": [
                    {"image": ["/elsewhere/x.nii.gz", "../y.nii.gz"], "label": "./z/../seg.nii.gz", "case_id": "c.nii"}
                ]
            }
        )
    )
    item = read_datalist(path)["training"][0]
    assert item["image"] == ["/elsewhere/x.nii.gz", str(tmp_path / "y.nii.gz")]
    assert item["label"] == str(tmp_path / "sub" / "seg.nii.gz")
    assert item["case_id"] == "c.nii"  # not a path key


def test_read_does_not_follow_symlinks(tmp_path: Path) -> None:
    """MONAI names outputs after the loaded file name: a link must not be replaced by its target."""
    (tmp_path / "store").mkdir()
    (tmp_path / "store" / "blob123").write_bytes(b"x")
    os.symlink(tmp_path / "store" / "blob123", tmp_path / "case7-t1n.nii.gz")
    path = tmp_path / "dl.json"
    path.write_text(json.dumps({"training": [{"image": "case7-t1n.nii.gz"}]}))
    assert read_datalist(path)["training"][0]["image"] == str(tmp_path / "case7-t1n.nii.gz")


def test_write_accepts_pathlike_values(tmp_path: Path) -> None:
    out = write_datalist(
        tmp_path / "dl.json", {"training": [{"image": [tmp_path / "a.nii.gz"], "label": tmp_path / "s.nii"}]}
    )
    assert json.loads(out.read_text())["training"][0] == {"image": ["a.nii.gz"], "label": "s.nii"}


def test_write_is_atomic(tmp_path: Path) -> None:
    path = tmp_path / "dl.json"
    write_datalist(path, _datalist(tmp_path))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dl.json"]  # no temporary file left
    before = path.read_text()
    with pytest.raises(TypeError):  # not JSON serialisable: the old file stays as it was
        write_datalist(path, {"training": [{"image": "a.nii.gz", "seed": object()}]})
    assert path.read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dl.json"]
    write_datalist(path, {"training": [{"image": "new.nii.gz"}]})
    assert json.loads(path.read_text()) == {"training": [{"image": "new.nii.gz"}]}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dl.json"]


def test_clear_errors(tmp_path: Path) -> None:
    missing = tmp_path / "nope.json"
    with pytest.raises(FileNotFoundError, match=f"^{re.escape(str(missing))}: datalist file not found"):
        read_datalist(missing)

    bad = tmp_path / "bad.json"
    bad.write_text('{"training": [')
    with pytest.raises(ValueError, match=f"^{re.escape(str(bad))}: not valid JSON"):
        read_datalist(bad)

    not_obj = tmp_path / "list.json"
    not_obj.write_text("[]")
    with pytest.raises(ValueError, match=f"^{re.escape(str(not_obj))}: a datalist must be a JSON object"):
        read_datalist(not_obj)

    good = write_datalist(tmp_path / "good.json", _datalist(tmp_path))
    with pytest.raises(KeyError, match=r"good.json: datalist has no section 'test' \(has: description, labels"):
        load_datalist(good, "test")


def test_select_modalities_by_name_and_errors() -> None:
    from custom_components.data.datalist import select_modalities

    files = ["a_t1n", "a_t1c", "a_t2w", "a_t2f"]
    assert select_modalities(files, ["t1n", "t1c", "t2w", "t2f"], ["t2f", "t1n"], "x") == ["a_t2f", "a_t1n"]
    assert select_modalities(["only"], None, ["t1n"], "x") == ["only"]
    with pytest.raises(ValueError, match="x: modalities \\['flair'\\] not in"):
        select_modalities(files, ["t1n", "t1c", "t2w", "t2f"], ["flair"], "x")
    with pytest.raises(ValueError, match="x: 3 image file"):
        select_modalities(files[:3], ["t1n", "t1c", "t2w", "t2f"], ["t1n"], "x")
    with pytest.raises(ValueError, match="no top-level 'modalities'"):
        select_modalities(files, None, ["t1n"], "x")


def test_label_convention_of() -> None:
    from custom_components.data.datalist import label_convention_of

    assert label_convention_of({"labels": "brats2021"}) == "brats2021"
    assert label_convention_of({}) == "brats2023"
    assert label_convention_of({}, "brats2015") == "brats2015"
    assert label_convention_of({"labels": "internal"}, "internal") == "internal"
    with pytest.raises(ValueError, match="declares labels 'brats2021' but label_convention is 'brats2023'"):
        label_convention_of({"labels": "brats2021"}, "brats2023", source="d.json")
    with pytest.raises(ValueError, match="d.json: unknown label convention"):
        label_convention_of({"labels": "brats1999"}, source="d.json")


def test_source_name_is_the_loaded_file() -> None:
    import numpy as np
    import torch
    from monai.data import MetaTensor

    assert source_name(MetaTensor(torch.zeros(1), meta={"filename_or_obj": "/d/t1.nii.gz"})) == "/d/t1.nii.gz"
    # a collated batch records one name per item: the first is named
    assert source_name(MetaTensor(torch.zeros(1), meta={"filename_or_obj": ["/d/a.nii", "/d/b.nii"]})) == "/d/a.nii"
    for unknown in (
        MetaTensor(torch.zeros(1)),
        torch.zeros(1),
        np.zeros(1),
        None,
        MetaTensor(torch.zeros(1), meta={"filename_or_obj": ""}),
    ):
        assert source_name(unknown) is None
