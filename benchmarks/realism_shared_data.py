"""Realism of TF-Aug cases made from the two real healthy brains, with and without mass effect (CPU).

Uses ../shared/data (skips with a message when absent): the real glioma case TCGA-FG-6692 (T1) is the real
set and the mask pool; the two healthy T1 brains are prepared into its space (registration, brain mask,
[-1, 1]); F is a random-init DynUNet encoder (filters 8-16-32, seed 0) saved once; TF-Aug learns its
class-wise intensities through F for a few epochs on 64^3 crops, then synthesises ``--cases`` coarse cases
twice: paper-faithful (``mass_effect: false``) and with ``mass_effect: true`` (5 mm). Finally
``python -m custom_components realism`` compares each set with the real case and writes JSON.

Usage: ``python benchmarks/realism_shared_data.py [--out realism_shared_output] [--cases 4] [--epochs 3]``
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

from custom_components.data.datalist import write_datalist
from custom_components.data.discovery import make_brats_datalist
from custom_components.networks import build_segmentation_network
from custom_components.synthesis.healthy_prep import prepare_healthy

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
BUNDLE = REPO / "bundles" / "tf_aug"
FILTERS = [8, 16, 32]


def bundle(configs: list[str], overrides: dict, run_id: str | None = None) -> None:
    cmd = [sys.executable, "-m", "monai.bundle", "run"] + ([run_id] if run_id else [])
    cmd += ["--config_file", str([str(BUNDLE / "configs" / c) for c in configs]), "--bundle_root", str(BUNDLE)]
    for k, v in overrides.items():
        # the bundle CLI reads values as Python literals: True/False, not JSON's true/false
        cmd += [f"--{k}", v if isinstance(v, str) else str(v) if isinstance(v, bool) else json.dumps(v)]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="realism_shared_output")
    parser.add_argument("--cases", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()
    if not (SHARED / "tumor").is_dir():
        print(f"skipped: real MRI not found at {SHARED}")
        return 0
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    real = write_datalist(out / "real.json", make_brats_datalist(SHARED / "tumor", ("t1n",), labels="brats2021"))
    reference = json.loads(real.read_text())["training"][0]["image"][0]
    healthy = out / "prepared" / "datalist.json"
    if not healthy.is_file():
        healthy = prepare_healthy(
            SHARED / "healthy",
            out.parent / reference if not Path(reference).is_absolute() else reference,
            out / "prepared",
            qc=False,
            verbose=False,
        )
    ckpt = out / "encoder_random_init.pt"
    if not ckpt.is_file():
        torch.manual_seed(0)
        torch.save(build_segmentation_network("dynunet", 1, 4, FILTERS).state_dict(), ckpt)
    common = {
        "healthy_datalist": str(healthy),
        "real_datalist": str(real),
        "output_dir": str(out / "tf_aug"),
        "encoder_checkpoint": str(ckpt),
        "encoder_filters": FILTERS,
        "seed": 0,
    }
    if not (out / "tf_aug" / "models" / "intensity.json").is_file():
        bundle(["common.yaml", "train.yaml"], {**common, "epochs": args.epochs, "crop_size": [64, 64, 64]}, "training")
    results = {}
    for name, mass in (("tf_aug", False), ("tf_aug+mass", True)):
        synth = out / f"synthetic_{name}"
        if not (synth / "datalist.json").is_file():
            bundle(
                ["common.yaml", "inference.yaml"],
                {**common, "synthesis_dir": str(synth), "num_cases": args.cases, "qc_cases": 1, "mass_effect": mass},
            )
        json_out = out / f"realism_{name}.json"
        print(f"== {name}: {args.cases} TF-Aug cases on the two healthy brains vs the real case ==", flush=True)
        subprocess.run(
            [
                sys.executable,
                "-m",
                "custom_components",
                "realism",
                "--synthetic",
                str(synth / "datalist.json"),
                "--real",
                str(real),
                "--encoder",
                str(ckpt),
                "--filters",
                ",".join(map(str, FILTERS)),
                "--out",
                str(json_out),
            ],
            check=True,
        )
        results[name] = json.loads(json_out.read_text())["summary"]
    print(json.dumps(results, indent=2))
    print(f"done in {time.perf_counter() - start:.0f} s; outputs in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
