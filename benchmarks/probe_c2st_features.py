"""What the C2ST's classifier sees, per tumour class: the texture statistics of the tumour patches of the real
cases (held out and training) and of every synthesis method of a finished pipeline run (issue "TF-GAN that learns").

For each class (NCR, ED, ET) and the whole tumour, and each set of cases, it prints the mean of every C2ST feature
(mean, spread, 10th and 90th percentile, high-pass spread, gradient of the brain-normalised image in 8^3-voxel
patches; :func:`custom_components.quality.c2st.patch_features`) averaged over each case's patches and then over the
cases, with the spread of the case means. A method whose row sits far from the real rows in a column is told apart
by that statistic: the high-pass spread shows whether a tumour is too flat (below the real one) or overshoots.
Only the methods that read cases from a datalist (not the derived, on-the-fly ones) are listed.

    python benchmarks/probe_c2st_features.py --config pipelines/tf_phantom.yaml [--workdir OTHER_OUTPUT]
"""

from __future__ import annotations

import argparse

import numpy as np

from custom_components.data.labels import INTERNAL_CLASSES, TUMOUR_CLASSES
from custom_components.pipeline.config import load_config
from custom_components.pipeline.experiment import Experiment
from custom_components.pipeline.summary import method_variants, variant_name
from custom_components.quality.c2st import FEATURES, C2STSettings, group_features
from custom_components.quality.realism import RealismCase, load_cases


def case_sets(exp: Experiment) -> dict[str, list[RealismCase]]:
    """The real held-out and training cases and each datalist-backed method's cases of the encoder seed."""
    mods = list(exp.cfg["modalities"])
    sets = {
        "real held-out": load_cases(exp.real_datalist, mods, exp.cfg["eval_section"])[0],
        "real training": load_cases(exp.real_datalist, mods, "training")[0],
    }
    for spec, mass in method_variants(exp):
        if not spec.derived:
            sets[variant_name(spec, mass)] = load_cases(exp.method_cases(spec, exp.encoder_seed, mass), mods)[0]
    return sets


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="the pipeline YAML of the finished run")
    parser.add_argument("--workdir", default=None, help="its work folder, if not the YAML's")
    args = parser.parse_args()
    exp = Experiment(load_config(args.config, **({"workdir": args.workdir} if args.workdir else {})))
    sets = case_sets(exp)
    settings = C2STSettings()
    width = max(len(name) for name in sets)
    groups = [(INTERNAL_CLASSES[c], (c,)) for c in TUMOUR_CLASSES] + [("whole tumour", None)]
    for group, classes in groups:
        print(f"== {group}: case-averaged feature means (spread of the case means)")
        print(" " * width + "  " + "  ".join(f"{f:>13}" for f in FEATURES))
        for name, cases in sets.items():
            feats = group_features(cases, classes, settings, 0)
            if not feats:
                continue
            per_case = np.array([f.mean(0) for f in feats])
            cells = (f"{m:6.3f} ({s:5.3f})" for m, s in zip(per_case.mean(0), per_case.std(0), strict=True))
            print(f"{name:>{width}}  " + "  ".join(cells) + f"   {len(feats)} cases")


if __name__ == "__main__":
    main()
