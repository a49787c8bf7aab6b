"""Tiny tf_gan bundle data shared by its tests (bundle, multi-GPU, MLflow, export, Zoo CI, benchmarks): coarse and
real datalists, an encoder checkpoint, and the overrides that make the bundle tiny."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch

from custom_components.networks.segmentation import build_segmentation_network

SHAPE = (72, 68, 64)  # >= 64 per side: the six-level generator needs a 2-voxel bottleneck
AFFINE = np.array([[-1.0, 0, 0, 40.0], [0, -1.0, 0, 30.0], [0, 0, 1.0, -20.0], [0, 0, 0, 1]])
ENCODER_FILTERS = [8, 8, 16, 16, 16]


def _sphere(shape: tuple[int, ...], centre: tuple[float, ...], radius: float) -> np.ndarray:
    grid = np.indices(shape).astype(np.float32)
    return sum((g - c) ** 2 for g, c in zip(grid, centre, strict=True)) <= radius**2


def _case(rng: np.random.Generator, centre: tuple[float, ...]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A brain (ellipsoid) with an internal-convention tumour: NCR core, ET shell, ED around it."""
    grid = np.indices(SHAPE).astype(np.float32)
    half = np.array(SHAPE, dtype=np.float32) / 2
    brain = sum(((g - h) / (h - 3)) ** 2 for g, h in zip(grid, half, strict=True)) <= 1.0
    label = np.zeros(SHAPE, np.uint8)
    label[_sphere(SHAPE, centre, 9)] = 2
    label[_sphere(SHAPE, centre, 6)] = 3
    label[_sphere(SHAPE, centre, 3.5)] = 1
    label[~brain] = 0
    tissue = 0.3 * np.sin(grid[0] / 5) * np.cos(grid[1] / 7) + 0.05 * rng.standard_normal(SHAPE)
    return brain, label, tissue.astype(np.float32)


def _save(array: np.ndarray, path: Path) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, AFFINE), str(path))
    return str(path)


def make_data(root: Path, n_coarse: int = 2, n_real: int = 2) -> dict[str, Path]:
    """Coarse datalist (tf_aug layout, internal labels, [-1, 1] images), real datalist (BraTS 2021 labels,
    raw intensities, two modalities of which t1n is used) and a tiny dtss_mas_seg encoder checkpoint."""
    rng = np.random.default_rng(0)
    coarse = []
    for i in range(n_coarse):
        brain, label, tissue = _case(rng, (36 + 4 * i, 30, 34))
        image = np.where(brain, np.clip(tissue + 0.2 * (label == 3) - 0.3 * (label == 1), -1, 1), -1.0)
        roi = (label > 0) | _sphere(SHAPE, (36 + 4 * i, 30, 34), 10)
        cid = f"coarse_{i:02d}"
        coarse.append(
            {
                "case_id": cid,
                "image": [_save(image.astype(np.float32), root / "coarse" / f"{cid}_t1n.nii.gz")],
                "label": _save(label, root / "coarse" / f"{cid}_seg.nii.gz"),
                "roi": _save((roi & brain).astype(np.uint8), root / "coarse" / f"{cid}_roi.nii.gz"),
                "brain_mask": _save(brain.astype(np.uint8), root / "coarse" / f"{cid}_brain.nii.gz"),
                "synthetic": True,
                "provenance": {"stage": "tf_aug", "seed": i},
            }
        )
    real = []
    for i in range(n_real):
        brain, label, tissue = _case(rng, (34, 34 - 3 * i, 30))
        t1 = np.where(brain, 600 + 300 * tissue + 150 * (label == 3), 0).astype(np.float32)
        t2f = np.where(brain, 400 + 200 * tissue + 300 * (label == 2), 0).astype(np.float32)
        label21 = np.where(label == 3, 4, label).astype(np.uint8)
        cid = f"real_{i:02d}"
        real.append(
            {
                "case_id": cid,
                "image": [
                    _save(t2f, root / "real" / cid / f"{cid}-t2f.nii.gz"),
                    _save(t1, root / "real" / cid / f"{cid}-t1n.nii.gz"),
                ],
                "label": _save(label21, root / "real" / cid / f"{cid}-seg.nii.gz"),
            }
        )
    coarse_dl = root / "coarse_datalist.json"
    real_dl = root / "real_datalist.json"
    coarse_dl.write_text(json.dumps({"labels": "internal", "modalities": ["t1n"], "training": coarse}))
    real_dl.write_text(json.dumps({"labels": "brats2021", "modalities": ["t2f", "t1n"], "training": real}))
    torch.manual_seed(0)
    net = build_segmentation_network("dynunet", 1, 4, ENCODER_FILTERS)
    encoder = root / "seg_model.pt"
    torch.save(net.state_dict(), encoder)
    return {"coarse": coarse_dl, "real": real_dl, "encoder": encoder, "root": root}


def tiny(data: dict[str, Path], out: Path, **extra: Any) -> dict[str, Any]:
    """Overrides that make the bundle tiny (widths, patch, epochs) and point it at ``data`` / ``out``."""
    return {
        "dataset_dir": str(data["root"]),
        "coarse_datalist": str(data["coarse"]),
        "real_datalist": str(data["real"]),
        "output_dir": str(out / "outputs"),
        "models_dir": str(out / "models"),
        "pix2pix_models_dir": str(out / "models_p2p"),
        # 8 channels: PyTorch's CPU convolution falls back to a slow kernel below about 5 input channels
        "gen_channels": [8, 8, 8, 8, 8, 8],
        "disc_channels": [8, 8, 8, 8, 8],
        "patch_size": [64, 64, 64],
        "num_workers": 0,
        "device": "cpu",
        **extra,
    }


def train_overrides(data: dict[str, Path], out: Path, **extra: Any) -> dict[str, Any]:
    settings: dict[str, Any] = {
        "max_epochs": 2,
        "encoder_checkpoint": str(data["encoder"]),
        "encoder_filters": ENCODER_FILTERS,
    }
    settings.update(extra)
    return tiny(data, out, **settings)
