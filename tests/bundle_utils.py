"""Helpers shared by the bundle tests: metadata validation and running configs in-process."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from monai.bundle import ConfigWorkflow

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
SCHEMA = SHARED / "bundle_schema" / "meta_schema_20240725.json"
# packages of this project that MONAI does not need: an exported bundle's process cannot import them unless
# the bundle's metadata lists them in required_packages_version (import name -> distribution name)
PROJECT_ONLY = {"SimpleITK": "simpleitk", "nilearn": "nilearn", "matplotlib": "matplotlib", "mlflow": "mlflow"}


def bundle_dir(name: str) -> Path:
    return REPO / "bundles" / name


def validate_metadata(name: str) -> dict[str, Any]:
    """Validate ``bundles/<name>/configs/metadata.json`` against the shared Model Zoo schema."""
    if not SCHEMA.is_file():
        pytest.skip(f"bundle schema not found at {SCHEMA} (../shared is absent)")
    meta = json.loads((bundle_dir(name) / "configs" / "metadata.json").read_text())
    jsonschema.validate(meta, json.loads(SCHEMA.read_text()))
    return meta


def workflow(name: str, configs: list[str], workflow_type: str, run_id: str = "run", **override: Any) -> ConfigWorkflow:
    """A ``ConfigWorkflow`` for ``bundles/<name>`` built from ``configs`` (file names in configs/)."""
    root = bundle_dir(name)
    return ConfigWorkflow(
        config_file=[str(root / "configs" / c) for c in configs],
        meta_file=str(root / "configs" / "metadata.json"),
        logging_file=str(root / "configs" / "logging.conf"),
        workflow_type=workflow_type,
        run_id=run_id,
        bundle_root=str(root),
        **override,
    )


def run_workflow(
    name: str, configs: list[str], workflow_type: str, run_id: str = "run", **override: Any
) -> ConfigWorkflow:
    """Initialise, run and finalise a bundle workflow in-process; returns the workflow."""
    wf = workflow(name, configs, workflow_type, run_id=run_id, **override)
    wf.initialize()
    wf.run()
    wf.finalize()
    return wf
