"""Where along its training did TF-GAN make the most realistic tumours? (issue "TF-GAN that learns")

A GAN's last generator need not be its best. For a finished pipeline run whose TF-GAN kept its snapshots
(``keep_checkpoints: null`` in the run's ``tf_gan.overrides``, one every ``save_interval`` epochs), this refines the
run's coarse cases with every snapshot and the final generator, through the tf_gan bundle's own inference config and
the run's refinement overrides, and prints per snapshot the C2ST of the refined tumours against the REAL TRAINING
cases (those TF-GAN trained on; the held-out cases, which the report judges by, are not read), the texture the
classifier sees (high-pass spread and spread of the whole tumour against the real ones) and the change inside m_roi.
Choosing a training length from it uses training data only.

    python benchmarks/probe_tf_gan_trajectory.py --config pipelines/tf_phantom.yaml [--workdir W] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import time
from pathlib import Path

from custom_components.data.datalist import read_datalist
from custom_components.pipeline.config import load_config
from custom_components.pipeline.experiment import Experiment
from custom_components.pipeline.runner import bundle_command
from custom_components.quality.c2st import FEATURES, c2st_scores
from custom_components.quality.realism import load_cases
from custom_components.synthesis.tf_gan import summarise_change

_EPOCH = re.compile(r"checkpoint_epoch=(\d+)\.pt$")


def snapshots(models: Path) -> list[tuple[str, Path]]:
    """``(label, file)`` of every kept interval checkpoint, by epoch, then the final generator (``model.pt``)."""
    found = sorted((int(m[1]), p) for p in models.glob("checkpoint_epoch=*.pt") if (m := _EPOCH.search(p.name)))
    final = [("final", models / "model.pt")] if (models / "model.pt").is_file() else []
    return [(f"epoch {epoch}", p) for epoch, p in found] + final


def refine(overrides: dict, checkpoint: Path, out: Path) -> Path:
    """Refine the run's coarse cases with ``checkpoint`` into ``out`` (kept from an earlier call of this probe, so that
    a rerun refines only the new snapshots); returns the refined datalist."""
    if (out / "refined" / "datalist.json").is_file():
        return out / "refined" / "datalist.json"
    settings = {
        **overrides,
        "generator_checkpoint": str(checkpoint),
        "output_dir": str(out),
        "refined_dir": str(out / "refined"),
        "qc_cases": 0,
    }
    cmd = bundle_command("tf_gan", ["common.yaml", "inference.yaml"], settings, out / "overrides.json")
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    return out / "refined" / "datalist.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="the pipeline YAML of the finished run")
    parser.add_argument("--workdir", default=None, help="its work folder, if not the YAML's")
    parser.add_argument("--out", default=None, help="where the refined cases go (default <workdir>/trajectory)")
    args = parser.parse_args()
    exp = Experiment(load_config(args.config, **({"workdir": args.workdir} if args.workdir else {})))
    seed = exp.encoder_seed
    out = Path(args.out) if args.out else exp.work / "trajectory"
    overrides = json.loads((exp.work / "overrides" / f"tf_gan_refine_s{seed}.json").read_text())
    mods = list(exp.cfg["modalities"])
    real = load_cases(exp.real_datalist, mods, "training")[0]
    hp, sd = FEATURES.index("highpass_std"), FEATURES.index("std")
    print(
        f"C2ST of TF's tumours against the {len(real)} real training cases (whole tumour; per class AUC), per snapshot"
    )
    print(
        "snapshot         AUC [95 % CI]        NCR   ED    ET    high-pass syn/real  spread syn/real  change in m_roi  s"
    )
    coarse = load_cases(exp.coarse_datalist(seed), mods)[0]
    for label, checkpoint in [("coarse (TF-Aug)", None), *snapshots(exp.stage_dir(f"tf_gan_train_s{seed}") / "models")]:
        start = time.perf_counter()
        if checkpoint is None:
            cases, change = coarse, float("nan")
        else:
            datalist = refine(overrides, checkpoint, out / label.replace(" ", "_"))
            cases = load_cases(datalist, mods)[0]
            change = summarise_change(read_datalist(datalist)["training"])["roi_mean_abs"]
        result = c2st_scores(cases, real, mods)
        means = result["feature_means"]
        per_class = "  ".join(
            f"{e['auc']:.2f}" if e["auc"] is not None else " -  " for e in result["per_class"].values()
        )
        print(
            f"{label:<16} {result['auc']:.2f} [{result['ci_low']:.2f}, {result['ci_high']:.2f}]   {per_class}   "
            f"{means['synthetic'][hp]:.3f} / {means['real'][hp]:.3f}     {means['synthetic'][sd]:.3f} / "
            f"{means['real'][sd]:.3f}    {change:.3f}            {time.perf_counter() - start:.0f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
