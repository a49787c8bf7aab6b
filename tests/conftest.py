"""Shared fixtures: the real MRI in ../shared/data (skipped when absent) and small demo data."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
REAL_CASE = SHARED_DATA / "tumor" / "TCGA-FG-6692"
MODALITIES = ("t1n", "t1c", "t2w", "t2f")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The folder of real MRI beside the repository; tests that need it skip when it is absent."""
    if not REAL_CASE.is_dir():
        pytest.skip(f"real MRI not found at {SHARED_DATA} (../shared/data is absent on this machine)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def real_case(shared_data: Path) -> dict[str, object]:
    """The real glioma case: four modality files, its label (BraTS 2021 values 1, 2, 4), case id."""
    case = "TCGA-FG-6692"
    return {
        "case_id": case,
        "image": [str(REAL_CASE / f"{case}-{m}.nii.gz") for m in MODALITIES],
        "label": str(REAL_CASE / f"{case}-seg.nii.gz"),
        "labels": "brats2021",
    }


@pytest.fixture(scope="session")
def healthy_scans(shared_data: Path) -> list[Path]:
    """The two real healthy T1 brains (RAS, other grids than the tumour case)."""
    return sorted((shared_data / "healthy").glob("*.nii.gz"))


@pytest.fixture(scope="session", autouse=True)
def _private_check_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Input-check results go to a cache file of this test session, not to the user's ~/.cache."""
    import os

    os.environ.setdefault("CUSTOM_COMPONENTS_CHECK_CACHE", str(tmp_path_factory.mktemp("check_cache") / "cache.json"))
