"""Hostile inputs for the robustness tests: defective copies of demo data and runs of the bundles' commands.

Each defect turns one case of a datalist into a case a bundle must refuse, and returns the file the error must
name. :func:`run_bundle` runs ``python -m monai.bundle run`` in a subprocess, as a user would.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]


def _load(path: Path) -> tuple[np.ndarray, np.ndarray]:
    img = nib.load(str(path))
    return np.asanyarray(img.dataobj), img.affine


def _save(data: np.ndarray, affine: np.ndarray, path: Path) -> None:
    nib.save(nib.Nifti1Image(data, affine), str(path))


def truncated(item: dict[str, Any], base: Path) -> str:
    """The label file cut in half (gzip stream ends early)."""
    f = base / item["label"]
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    return str(f)


def two_d(item: dict[str, Any], base: Path) -> str:
    """The first image file replaced by one 2-D slice."""
    f = base / item["image"][0]
    data, affine = _load(f)
    _save(np.ascontiguousarray(data[:, :, data.shape[2] // 2]), affine, f)
    return str(f)


def shape_mismatch(item: dict[str, Any], base: Path) -> str:
    """The label four voxels shorter along the first axis than the images."""
    f = base / item["label"]
    data, affine = _load(f)
    _save(np.ascontiguousarray(data[:-4]), affine, f)
    return str(f)


def affine_mismatch(item: dict[str, Any], base: Path) -> str:
    """The label's grid moved by 3 mm."""
    f = base / item["label"]
    data, affine = _load(f)
    moved = affine.copy()
    moved[0, 3] += 3.0
    _save(data, moved, f)
    return str(f)


def nan_voxel(item: dict[str, Any], base: Path) -> str:
    """One NaN voxel in the first image file (stored as float32)."""
    f = base / item["image"][0]
    data, affine = _load(f)
    data = data.astype(np.float32)
    data[tuple(s // 2 for s in data.shape)] = np.nan
    _save(data, affine, f)
    return str(f)


def bad_label_value(item: dict[str, Any], base: Path) -> str:
    """A label value (7) that is in no BraTS convention."""
    f = base / item["label"]
    data, affine = _load(f)
    data = data.copy()
    data[data == 2] = 7
    _save(data, affine, f)
    return str(f)


def no_tumour(item: dict[str, Any], base: Path) -> str:
    """A label without tumour voxels."""
    f = base / item["label"]
    data, affine = _load(f)
    _save(np.zeros_like(data), affine, f)
    return str(f)


def missing_file(item: dict[str, Any], base: Path) -> str:
    """The label names a file that does not exist."""
    item["label"] = "absent_seg.nii.gz"
    return str(base / "absent_seg.nii.gz")


FILE_DEFECTS: dict[str, Callable[[dict[str, Any], Path], str]] = {
    "truncated": truncated,
    "2-D": two_d,
    "shape mismatch": shape_mismatch,
    "affine mismatch": affine_mismatch,
    "NaN": nan_voxel,
    "bad label value": bad_label_value,
    "no tumour": no_tumour,
    "missing file": missing_file,
}


def hostile_copy(src: Path, dst: Path, defects: list[str], section: str = "training") -> dict[str, tuple[str, str]]:
    """Copy the datalist ``src`` with its folder to ``dst`` and give case ``i`` of ``section`` ``defects[i]``.

    Returns:
        ``{defect: (case_id, file the error must name)}``.
    """
    shutil.copytree(src.parent, dst)
    path = dst / src.name
    data = json.loads(path.read_text())
    if len(data[section]) < len(defects):
        raise ValueError(f"{src}: {len(data[section])} cases in {section}, {len(defects)} defects")
    out = {}
    for item, name in zip(data[section], defects, strict=False):
        out[name] = (item["case_id"], FILE_DEFECTS[name](item, dst))
    path.write_text(json.dumps(data, indent=2))
    return out


def non_json(path: Path) -> Path:
    """A datalist that is not JSON."""
    path.write_text('{"training": [ {"image": "a.nii.gz", ')
    return path


def empty_section(src: Path, path: Path, section: str = "training") -> Path:
    """A copy of datalist ``src`` (paths made absolute) whose ``section`` is empty."""
    from custom_components.data.datalist import read_datalist

    data = read_datalist(src)
    data[section] = []
    path.write_text(json.dumps(data))
    return path


def pickle_checkpoint(path: Path) -> Path:
    """A checkpoint that only ``torch.load(weights_only=False)`` (pickle) can read."""
    torch.save({"model": argparse.Namespace(weights=[1.0])}, path)
    return path


def tree_hash(*folders: Path) -> dict[str, str]:
    """sha256 of every file under ``folders`` (to show inputs are unchanged)."""
    out = {}
    for folder in folders:
        for p in sorted(Path(folder).rglob("*")):
            if p.is_file():
                out[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def files_under(folder: Path) -> list[str]:
    """Every file under ``folder`` (empty when it does not exist)."""
    return sorted(str(p) for p in Path(folder).rglob("*") if p.is_file()) if Path(folder).exists() else []


def bundle_command(bundle: str, configs: list[str], overrides: dict[str, Any], work: Path, run_id: str) -> list[str]:
    """argv of ``python -m monai.bundle run <run_id>`` on the bundle's configs plus an overrides file."""
    root = REPO / "bundles" / bundle
    work.mkdir(parents=True, exist_ok=True)
    override_file = work / f"overrides_{bundle}_{run_id}.json"
    override_file.write_text(json.dumps(overrides))
    files = [str(root / "configs" / c) for c in configs] + [str(override_file)]
    return [
        sys.executable, "-m", "monai.bundle", "run", run_id,
        "--config_file", repr(files),
        "--meta_file", str(root / "configs" / "metadata.json"),
        "--logging_file", str(root / "configs" / "logging.conf"),
        "--bundle_root", str(root),
    ]  # fmt: skip


def bundle_env(cache: Path | None = None) -> dict[str, str]:
    """Environment of a bundle subprocess: this checkout first on the path, one thread, a private check cache."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    env["CUSTOM_COMPONENTS_CHECK_CACHE"] = str(cache) if cache is not None else ""
    return env


def run_bundle(
    bundle: str,
    configs: list[str],
    overrides: dict[str, Any],
    work: Path,
    run_id: str = "run",
    timeout: float = 300,
    cache: Path | None = None,
) -> subprocess.CompletedProcess:
    """Run a bundle workflow in a subprocess; returns the completed process (text stdout / stderr)."""
    cmd = bundle_command(bundle, configs, overrides, work, run_id)
    return subprocess.run(
        cmd, capture_output=True, text=True, env=bundle_env(cache), cwd=str(REPO), timeout=timeout, check=False
    )


def problem_block(stderr: str) -> list[str]:
    """The problem lines printed last by a failed input check (after its header line)."""
    lines = stderr.rstrip().splitlines()
    for i in range(len(lines) - 1, -1, -1):
        if "problem(s) in the inputs; nothing was written" in lines[i]:
            return lines[i + 1 :]
    return []
