"""Tiny tf_aug bundle inputs shared by its tests (multi-GPU, MLflow, export, Zoo CI)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from custom_components.data.datalist import read_datalist
from custom_components.data.demo import make_demo_data
from custom_components.synthesis.healthy_prep import prepare_healthy


def make_aug_inputs(root: Path) -> dict[str, Any]:
    """tf_aug overrides for tiny demo data: 4-mm demo cases, healthy scans prepared into their space."""
    paths = make_demo_data(root / "demo", n_healthy=2, n_tumour=4, spacing=4.0, seed=0, verbose=False)
    reference = read_datalist(paths["tumour"])["training"][0]["image"][0]
    healthy = prepare_healthy(paths["healthy"], reference, root / "prepared", qc=False, verbose=False)
    return {
        "healthy_datalist": str(healthy),
        "real_datalist": str(paths["tumour"]),
        "allow_identity_intensity": True,
        "aug_min_voxels": 10,
        "qc_cases": 1,
        "seed": 0,
        "num_workers": 0,
    }
