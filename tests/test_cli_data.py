"""The data commands of ``python -m custom_components``: make-datalist and validate-datalist."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from tests.bundle_utils import REPO

# each test runs the CLI in subprocesses over the full-size real case (about 16 s each)
pytestmark = pytest.mark.slow

NAMES_2021 = {"t1n": "t1", "t1c": "t1ce", "t2w": "t2", "t2f": "flair", "seg": "seg"}


def cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "custom_components", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def link_real_case(real_case: dict, root: Path) -> dict[str, Path]:
    """Two case folders of symlinks to the real case: one in BraTS 2023 naming, one in 2021 naming."""
    real = {m: Path(f) for m, f in zip(("t1n", "t1c", "t2w", "t2f"), real_case["image"], strict=True)}
    real["seg"] = Path(real_case["label"])
    cases = {"BraTS-GLI-00001-000": "-{}", "BraTS2021_00002": "_{}"}
    for case, pattern in cases.items():
        (root / case).mkdir(parents=True)
        for part, target in real.items():
            suffix = pattern.format(part if pattern == "-{}" else NAMES_2021[part])
            os.symlink(target, root / case / f"{case}{suffix}.nii.gz")
    return real


def test_make_and_validate_brats_datalist(tmp_path: Path, real_case: dict) -> None:
    real = link_real_case(real_case, tmp_path / "brats")
    out = tmp_path / "lists" / "brats.json"
    r = cli(
        "make-datalist", str(tmp_path / "brats"), str(out), "--modalities", "t1n,t1c,t2w,t2f",
        "--labels", "brats2021", "--val_fraction", "0.5", "--seed", "0",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == str(out)
    data = json.loads(out.read_text())
    assert data["labels"] == "brats2021" and data["modalities"] == ["t1n", "t1c", "t2w", "t2f"]
    items = data["training"] + data["validation"]
    assert len(data["training"]) == 1 and len(data["validation"]) == 1
    by_id = {it["case_id"]: it for it in items}
    assert by_id["BraTS2021_00002"]["image"][1] == "../brats/BraTS2021_00002/BraTS2021_00002_t1ce.nii.gz"
    assert by_id["BraTS-GLI-00001-000"]["label"] == "../brats/BraTS-GLI-00001-000/BraTS-GLI-00001-000-seg.nii.gz"
    for item in items:  # every channel is the right real modality, whatever the naming
        files = [out.parent / f for f in item["image"]]
        assert [Path(os.path.realpath(f)) for f in files] == [real[m] for m in ("t1n", "t1c", "t2w", "t2f")]
        assert Path(os.path.realpath(out.parent / item["label"])) == real["seg"]

    r = cli("validate-datalist", str(out))
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.strip() == f"{out}: valid"


def test_validate_reports_one_line_per_problem(tmp_path: Path, real_case: dict) -> None:
    empty = tmp_path / "empty_seg.nii.gz"
    ref = nib.load(real_case["label"])
    nib.save(nib.Nifti1Image(np.zeros(ref.shape, dtype=np.uint8), ref.affine), str(empty))
    gone = tmp_path / "gone-t1n.nii.gz"
    path = tmp_path / "bad.json"
    path.write_text(
        json.dumps(
            {
                "labels": "brats2023",  # wrong: the real label holds BraTS 2021 values
                "training": [
                    {"case_id": "real", "image": real_case["image"], "label": real_case["label"]},
                    {"case_id": "gone", "image": [str(gone)], "label": real_case["label"]},
                    {"case_id": "empty", "image": real_case["image"][:1], "label": str(empty)},
                ],
            }
        )
    )
    r = cli("validate-datalist", str(path))
    assert r.returncode == 1
    lines = r.stdout.strip().splitlines()
    assert len(lines) == 3, r.stdout
    assert lines[0].startswith(f"{real_case['label']}: label values [4] are not in the brats2023 convention")
    assert lines[1].startswith(f"{gone}: file not found")
    assert lines[2].startswith(f"{empty}: label has no tumour voxels")

    r = cli("validate-datalist", str(path), "--labels", "brats2021", "--allow_empty")
    assert r.returncode == 1 and r.stdout.strip().splitlines() == [lines[1]]


def test_make_healthy_datalist_and_errors(tmp_path: Path, healthy_scans: list[Path]) -> None:
    scans = tmp_path / "healthy"
    scans.mkdir()
    for scan in healthy_scans:
        os.symlink(scan, scans / scan.name)
    out = tmp_path / "healthy.json"
    r = cli("make-datalist", str(scans), str(out), "--kind", "healthy")
    assert r.returncode == 0, r.stderr
    data = json.loads(out.read_text())
    assert data["labels"] == "internal" and data["modalities"] == ["t1n"]
    assert data["training"] == [
        {"case_id": "colin27_t1_brain", "image": ["healthy/colin27_t1_brain.nii.gz"]},
        {"case_id": "mni152_2009a_t1_brain", "image": ["healthy/mni152_2009a_t1_brain.nii.gz"]},
    ]

    case = tmp_path / "brats" / "c1"
    case.mkdir(parents=True)
    os.symlink(healthy_scans[0], case / "c1-t1n.nii.gz")
    r = cli("make-datalist", str(tmp_path / "brats"), str(tmp_path / "x.json"))
    assert r.returncode != 0 and f"{case}: case folder lacks c1-seg" in r.stderr
    assert not (tmp_path / "x.json").exists()
