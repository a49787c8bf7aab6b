"""The pipeline's YAML configuration: data, sizes, arms and seeds, with defaults and validation."""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import yaml

from custom_components.engines import SAMPLING
from custom_components.pipeline.arms import ARMS, BASELINE, CONTROL, get_arm

# How the synthetic arms train the segmentation model (per experiment):
PROTOCOLS: dict[str, str] = {
    # DSMA paper (section 3): phase 1 on real data, then phase 2 continues that model with real + synthetic data
    "dsma": "continue the phase-1 (baseline) model for phase2_epochs with real + synthetic data",
    # TF paper (section 4): the downstream model is trained from scratch on real + synthetic data for as long
    # as the real-only baseline
    "tf": "train from scratch on real + synthetic data for the baseline's number of iterations",
}
# How the arms with synthetic datalists add their cases (dtss_mas_seg's synthetic_sampling), by default per protocol:
# companion (DSMA: each real index also yields its synthetic companions, so batches grow) or union (the TF paper's
# nnU-Net: fixed-size batches from the union of real and synthetic cases, the baseline's samples per step)
PROTOCOL_SAMPLING: dict[str, str] = {"dsma": "companion", "tf": "union"}

# How the synthesis follows the seeds (so the spread over seeds includes the synthesis's own variance):
SYNTHESIS_PER_SEED: dict[str, str] = {
    # TF-Aug, TF-GAN and Pix2Pix are trained once (first seed, its phase-1 encoder F); every seed draws its own
    # synthetic cases with them (TF-Aug's mask augmentation and placement, then TF-GAN / Pix2Pix on those cases)
    "draws": "synthetic cases drawn per seed (TF models trained once, seed {seed})",
    # every seed also trains its own TF-Aug, TF-GAN and Pix2Pix (with its own phase-1 encoder F)
    "train": "synthetic cases drawn per seed (TF models trained per seed, each with its seed's phase-1 encoder F)",
}

DEFAULTS: dict[str, Any] = {
    # everything the pipeline writes goes under workdir (relative paths: relative to the config file)
    "workdir": "pipeline_output",
    "title": "Tumour synthesis comparison",
    # data: either demo (generated) or real_datalist + healthy
    "demo": None,  # {n_healthy, n_tumour, spacing, seed, n_held_out}: make_demo_data's arguments
    "real_datalist": None,  # BraTS-style datalist with training and validation sections
    "healthy": None,  # folder of skull-stripped healthy scans or a healthy datalist (raw, not prepared)
    # image defining the target space; default: the first real training case's t1n, else t1c, else first modality
    "reference": None,
    # prepare_healthy stops the pipeline when a healthy scan registers with a brain Dice below this
    "min_brain_dice": 0.80,
    "eval_section": "validation",
    # the TF stages work on T1 (the paper's setting); segmentation uses the same channels
    "modalities": ["t1n"],
    # >= 3 seeds for mean +- std and paired t-tests (the TF paper's three runs)
    "seeds": [0, 1, 2],
    "arms": ["baseline", "tf", "dtss_mas"],
    # add the real_matched arm (real data only, the synthetic arms' samples per step) to arms that have a
    # synthetic arm; it follows the baseline
    "control_arm": True,
    # dsma | tf: see PROTOCOLS
    "protocol": "dsma",
    # null (the protocol's: PROTOCOL_SAMPLING) | companion | union: see PROTOCOL_SAMPLING; online arms
    # (Arm.online: DTSS, CarveMix) always use companion
    "synthetic_sampling": None,
    # draws | train: see SYNTHESIS_PER_SEED (seed s's arms train with seed s's synthetic cases either way)
    "synthesis_per_seed": "draws",
    # real training cases every arm sees (the first n_real of the datalist's training section; synthesis draws
    # from the same cases); null: all
    "n_real": None,
    # synthetic-volume ablation: TF arms with r synthetic cases per real case (tf_syn<r>; r may be fractional,
    # 0.5 with 100 real cases = the TF paper's Syn50)
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
        # validation on the evaluation section (and best-model selection) every this many epochs; 0: none, each
        # model is its final weights (the evaluation stage measures it on the same cases, which therefore do not
        # select it)
        "val_interval": 0,
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


def _resolve_sampling_and_control(cfg: dict[str, Any], path: Path) -> None:
    """Check ``synthetic_sampling`` and ``control_arm``; set the protocol's sampling where it is null; put
    ``real_matched`` right after the baseline (the order of the stages and the report) where it is listed, and add
    it (with ``control_arm``) to every experiment with a synthetic arm, the synthetic-volume ablation's included
    (arm roles: :mod:`custom_components.pipeline.arms`)."""
    if cfg["synthetic_sampling"] not in (None, *SAMPLING):
        raise ValueError(
            f"{path}: synthetic_sampling must be null (the protocol's) or one of {list(SAMPLING)}, "
            f"got {cfg['synthetic_sampling']!r}"
        )
    cfg["synthetic_sampling"] = cfg["synthetic_sampling"] or PROTOCOL_SAMPLING[cfg["protocol"]]
    if not isinstance(cfg["control_arm"], bool):
        raise ValueError(f"{path}: control_arm must be true or false, got {cfg['control_arm']!r}")
    synthetic = any(get_arm(a).role == "synthetic" for a in cfg["arms"]) or bool(cfg["synthetic_per_real"])
    arms = [a for a in cfg["arms"] if a != CONTROL]
    if (cfg["control_arm"] and synthetic) or CONTROL in cfg["arms"]:
        arms.insert(arms.index(BASELINE) + 1, CONTROL)
    cfg["arms"] = arms


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
    if BASELINE not in cfg["arms"]:
        raise ValueError(f"{path}: the arms must include {BASELINE!r} (the reference of the comparison)")
    if not cfg["seeds"]:
        raise ValueError(f"{path}: 'seeds' is empty")
    if cfg["protocol"] not in PROTOCOLS:
        raise ValueError(f"{path}: unknown protocol {cfg['protocol']!r}; known: {list(PROTOCOLS)}")
    _resolve_sampling_and_control(cfg, path)
    if cfg["synthesis_per_seed"] not in SYNTHESIS_PER_SEED:
        raise ValueError(
            f"{path}: unknown synthesis_per_seed {cfg['synthesis_per_seed']!r}; known: {list(SYNTHESIS_PER_SEED)}"
        )
    if cfg["n_real"] is not None and (isinstance(cfg["n_real"], bool) or not isinstance(cfg["n_real"], int)):
        raise ValueError(f"{path}: n_real must be a whole number of cases or null, got {cfg['n_real']!r}")
    if cfg["n_real"] is not None and cfg["n_real"] < 1:
        raise ValueError(f"{path}: n_real must be >= 1, got {cfg['n_real']}")
    interval = cfg["seg"]["val_interval"]
    if isinstance(interval, bool) or not isinstance(interval, int) or interval < 0:
        raise ValueError(f"{path}: seg.val_interval must be a whole number >= 0 (0: no validation), got {interval!r}")
    ratios = [*cfg["synthetic_per_real"], cfg["tf_aug"]["synthetic_per_real"]]
    if any(isinstance(r, bool) or not isinstance(r, int | float) or not r > 0 for r in ratios):
        raise ValueError(f"{path}: synthetic_per_real values must be numbers > 0, got {ratios}")
    cfg["source"] = str(path.resolve())
    return cfg
