"""The pipeline's YAML configuration: data, sizes, arms and seeds, with defaults and validation."""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import yaml

# Comparison arms of the two papers. Each is a phase-2 continuation of the same phase-1 model.
ARMS: dict[str, str] = {
    "baseline": "real data only",
    "carvemix": "+ CarveMix (online)",
    "pix2pix": "+ Pix2Pix synthetic cases",
    "tf_aug": "+ TF-Aug coarse synthetic cases",
    "tf": "+ TF (TF-Aug + TF-GAN) synthetic cases",
    "dtss": "+ DTSS (online)",
    "dtss_mas": "+ DTSS + MAS",
    "tf_mas": "+ TF synthetic cases weighted by MAS",
    # beyond both papers: the same methods with mass effect (custom_components.transforms.MassEffectd)
    "tf_aug+mass": "+ TF-Aug coarse cases with mass effect (healthy tissue displaced before painting)",
    "dtss+mass": "+ DTSS (online) with mass effect (growth pushes the surroundings)",
    "dtss_mas+mass": "+ DTSS with mass effect + MAS",
}
# arms that need TF-Aug cases synthesised with mass effect
MASS_TF_AUG_ARMS: tuple[str, ...] = ("tf_aug+mass",)

DEFAULTS: dict[str, Any] = {
    # everything the pipeline writes goes under workdir (relative paths: relative to the config file)
    "workdir": "pipeline_output",
    "title": "Tumour synthesis comparison",
    # data: either demo (generated) or real_datalist + healthy
    "demo": None,  # {n_healthy, n_tumour, spacing, seed}
    "real_datalist": None,  # BraTS-style datalist with training and validation sections
    "healthy": None,  # folder of skull-stripped healthy scans or a healthy datalist (raw, not prepared)
    # image defining the target space; default: the first real training case's t1n, else t1c, else first modality
    "reference": None,
    # prepare_healthy stops the pipeline when a healthy scan registers with a brain Dice below this
    "min_brain_dice": 0.80,
    "eval_section": "validation",
    # the TF stages work on T1 (the paper's setting); segmentation uses the same channels
    "modalities": ["t1n"],
    "seeds": [0],
    "arms": ["baseline", "tf", "dtss_mas"],
    # synthetic-volume ablation: TF arms with N synthetic cases per real case (tf_syn<N>)
    "synthetic_per_real": [],
    "device": "cpu",
    "num_workers": 0,
    "seg": {
        "network_name": "dynunet",
        "filters": [8, 16, 32, 64],
        "crop_size": [32, 32, 32],
        "batch_size": 2,
        "phase1_epochs": 4,
        "phase2_epochs": 2,
        # validation (and best-model selection) every this many phase-1 epochs
        "val_interval": 1,
        "overrides": {},
    },
    "tf_aug": {"epochs": 5, "crop_size": [32, 32, 32], "synthetic_per_real": 1, "overrides": {}},
    "tf_gan": {
        "epochs": 2,
        "patch_size": [64, 64, 64],
        "gen_channels": [8, 8, 8, 8, 8, 8],
        "disc_channels": [8, 8, 8, 8, 8],
        "overrides": {},
    },
    "mlflow": {"enabled": False, "tracking_uri": None, "experiment": None},
    "qc_cases": 2,
}


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict) and key != "overrides":
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def load_config(path: str | os.PathLike, **overrides: Any) -> dict[str, Any]:
    """Read a pipeline YAML, fill defaults, resolve paths against the file's folder, and validate.

    Args:
        path: pipeline YAML.
        overrides: top-level values replacing the file's (e.g. ``workdir``).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: pipeline config not found")
    raw = yaml.safe_load(path.read_text()) or {}
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: a pipeline config must be a mapping")
    unknown = sorted(set(raw) - set(DEFAULTS))
    if unknown:
        raise ValueError(f"{path}: unknown keys {unknown}; known: {sorted(DEFAULTS)}")
    cfg = _merge(DEFAULTS, {**raw, **overrides})
    base = path.resolve().parent
    for key in ("workdir", "real_datalist", "healthy", "reference"):
        if cfg[key] is not None and not os.path.isabs(str(cfg[key])):
            cfg[key] = str((base / str(cfg[key])).resolve())
    if cfg["demo"] is None and (cfg["real_datalist"] is None or cfg["healthy"] is None):
        raise ValueError(f"{path}: give either 'demo' or both 'real_datalist' and 'healthy'")
    bad = [a for a in cfg["arms"] if a not in ARMS]
    if bad:
        raise ValueError(f"{path}: unknown arms {bad}; known: {list(ARMS)}")
    if "baseline" not in cfg["arms"]:
        raise ValueError(f"{path}: the arms must include 'baseline' (the reference of the comparison)")
    if not cfg["seeds"]:
        raise ValueError(f"{path}: 'seeds' is empty")
    cfg["source"] = str(path.resolve())
    return cfg
