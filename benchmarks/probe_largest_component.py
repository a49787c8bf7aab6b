"""Where do a pipeline's segmentation errors lie: in the tumour, or in blobs away from it?

For every evaluation stage of a pipeline work directory (``make demo``'s ``demo_output``, an experiment's), this
probe reruns the stage's evaluation (dtss_mas_seg's ``evaluate.yaml`` with the stage's overrides: its model, data,
sliding window) and prints, per arm and seed, the number of connected tumour components the model predicts per
held-out case and the mean Dice (ET, TC, WT averaged, :func:`~custom_components.quality.evaluation.region_metrics`)
with every component kept and with the largest kept (``keep_largest_component``, the bundle's own postprocessing).
A stage whose evaluation set the key itself is measured both ways all the same. Components are counted
face-connected (scipy's default 6-connectivity); the cut joins diagonal neighbours too (full connectivity), so
it sees at most as many components as printed.

Usage::

    python benchmarks/probe_largest_component.py --workdir demo_output [--stages evaluate_baseline_s0 ...]
        [--json out.json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from monai.bundle import ConfigParser
from scipy import ndimage

from custom_components.networks import load_network_weights
from custom_components.quality.evaluation import region_metrics

BUNDLE = Path(__file__).resolve().parents[1] / "bundles" / "dtss_mas_seg"


def evaluation_parser(overrides: dict, keep_largest: bool) -> ConfigParser:
    """dtss_mas_seg's evaluation config with a stage's overrides and the given ``keep_largest_component``."""
    parser = ConfigParser()
    parser.read_config([str(BUNDLE / "configs" / "common.yaml"), str(BUNDLE / "configs" / "evaluate.yaml")])
    parser.update({**overrides, "bundle_root": str(BUNDLE), "keep_largest_component": keep_largest})
    return parser


def mean_dice(regions: dict) -> float:
    """ET, TC and WT Dice of one case, averaged."""
    metrics = region_metrics(regions["pred"], regions["label"])
    return float(np.mean([metrics[f"dice_{r}"] for r in ("ET", "TC", "WT")]))


def probe_stage(overrides_file: Path) -> dict:
    """Components per case and the mean Dice with every component and with the largest, over the stage's cases."""
    overrides = json.loads(overrides_file.read_text())
    parser = evaluation_parser(overrides, False)
    network = parser.get_parsed_content("network")
    load_network_weights(network, overrides["model_path"])
    network.eval()
    inferer = parser.get_parsed_content("inferer")
    preprocessing = parser.get_parsed_content("preprocessing")
    every = parser.get_parsed_content("postprocessing")
    largest = evaluation_parser(overrides, True).get_parsed_content("postprocessing")
    components, dice_all, dice_largest = [], [], []
    for item in parser.get_parsed_content("items"):
        case = preprocessing(item)
        with torch.no_grad():
            logits = inferer(case["image"][None], network)[0]
        components.append(int(ndimage.label(logits.argmax(0).numpy() > 0)[1]))
        dice_all.append(mean_dice(every({"pred": logits, "label": case["label"]})))
        dice_largest.append(mean_dice(largest({"pred": logits, "label": case["label"]})))
    return {
        "cases": len(components),
        "components": components,
        "dice_every_component": float(np.mean(dice_all)),
        "dice_largest_component": float(np.mean(dice_largest)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", required=True, help="pipeline work directory")
    parser.add_argument("--stages", nargs="*", help="evaluation stages (default: every evaluate_* stage)")
    parser.add_argument("--json", help="also write the figures to this file")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    folder = Path(args.workdir) / "overrides"
    stages = args.stages or sorted(p.stem for p in folder.glob("evaluate_*.json"))
    if not stages:
        raise SystemExit(f"no evaluate_*.json stage overrides in {folder}")
    print(f"{'stage':32} cases components/case (6-connected; median, range)  Dice every / largest")
    out = {}
    for stage in stages:
        out[stage] = r = probe_stage(folder / f"{stage}.json")
        c = r["components"]
        print(
            f"{stage:32} {r['cases']:5} {np.median(c):9.0f} ({min(c)}-{max(c)}){'':14} "
            f"{r['dice_every_component']:.4f} / {r['dice_largest_component']:.4f}",
            flush=True,
        )
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
