"""Benchmark TF-Aug synthesis per 240x240x155 case on one CPU thread.

Times, per case, (1) the synthesis itself (the bundle's per-case-seeded mask augmentation and ROI blur, then
the class-wise intensity network) with the inputs already in memory, and (2) writing the case's uncompressed
NIfTI files (clip, image, label, ROI, brain mask, provenance record) with the bundle's writer handler. Uses the real glioma case in
``../shared/data`` when present (its label as the mask pool, its own brain as the "healthy" scan, its
T1 rescaled to [-1, 1]); otherwise a synthetic stand-in of the same size.

    .venv/bin/python benchmarks/bench_tf_aug.py [--cases 10] [--num-masks 1 2] [--seed 0]

Target: under 1 s per case for (1) + (2).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import Compose

from custom_components.data.labels import to_internal
from custom_components.networks.classwise_intensity import ClasswiseIntensity
from custom_components.synthesis.tf_aug import TFAugCaseWriter, plan_cases
from custom_components.transforms.intensity import RescaleBrainIntensity
from custom_components.transforms.mask_augment import MaskPool, TumorMaskAugmentd
from custom_components.transforms.roi_blur import RoiGaussianBlurd
from custom_components.transforms.seeded import ApplySeededd

REAL = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "tumor" / "TCGA-FG-6692"
SHAPE = (240, 240, 155)


def _inputs() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, str]:
    """(t1 in [-1, 1], brain mask, internal label, affine, description)."""
    if (REAL / "TCGA-FG-6692-t1n.nii.gz").is_file():
        img = nib.load(REAL / "TCGA-FG-6692-t1n.nii.gz")
        t1 = np.asarray(img.dataobj, dtype=np.float32)
        label = to_internal(np.asarray(nib.load(REAL / "TCGA-FG-6692-seg.nii.gz").dataobj), "brats2021")
        brain = t1 != 0
        x = RescaleBrainIntensity()(t1[None])[0]
        return x, brain, label, img.affine, "real case TCGA-FG-6692 (its label as the mask pool)"
    rng = np.random.default_rng(0)
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, s) for s in SHAPE], indexing="ij"))
    brain = (grid**2).sum(0) < 0.8
    x = np.where(brain, rng.uniform(-0.5, 0.8, SHAPE), -1.0).astype(np.float32)
    dist = ((grid - np.array([0.2, 0.1, 0.0])[:, None, None, None]) ** 2).sum(0)
    label = np.select([dist < 0.005, dist < 0.01, dist < 0.03], [1, 3, 2], 0).astype(np.uint8)
    return x, brain, label, np.eye(4), "synthetic stand-in (ellipsoid brain, spherical tumour)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", type=int, default=10)
    parser.add_argument("--num-masks", type=int, nargs=2, default=(1, 2))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)

    x, brain, label, affine, what = _inputs()
    pool = MaskPool([label], names=["real"])
    synthesis = Compose(
        [
            TumorMaskAugmentd("brain_mask", pool, num_masks=tuple(args.num_masks), min_voxels=100),
            RoiGaussianBlurd("image", roi_key="roi", mask_key="brain_mask", sigma=2.0, truncated=3.0),
        ]
    )
    image_t = MetaTensor(torch.as_tensor(x[None]), affine=torch.as_tensor(affine))
    brain_t = MetaTensor(torch.as_tensor(brain[None].astype(np.uint8)), affine=torch.as_tensor(affine))

    def preprocessing(_: dict) -> dict:  # inputs already in memory: no file I/O is timed
        return {"image": image_t, "brain_mask": brain_t}

    network = ClasswiseIntensity(1, a_init=[0.8, 1.1, 1.3], b_init=[-0.3, 0.1, 0.4])
    healthy = [{"case_id": "bench", "image": ["in-memory"], "brain_mask": "in-memory"}]
    cases = plan_cases(healthy, args.cases, seed=args.seed)
    seeded = ApplySeededd("seed", synthesis)
    with tempfile.TemporaryDirectory() as tmp:
        writer = TFAugCaseWriter(cases, tmp, network, synthesis, qc_cases=0, output_ext=".nii")
        synth_s, write_s = [], []
        for case in cases:
            t0 = time.perf_counter()
            data = seeded({**case, **preprocessing(case)})
            with torch.no_grad():
                pred = network(data["image"][None], data["label"][None])[0]
            t1 = time.perf_counter()
            label_s, brain_s = np.asarray(data["label"]), np.asarray(data["brain_mask"])
            writer.write_case(case, pred.numpy(), label_s, brain_s, affine, data["tf_aug_params"])
            t2 = time.perf_counter()
            synth_s.append(t1 - t0)
            write_s.append(t2 - t1)
    total = [a + b for a, b in zip(synth_s, write_s, strict=True)]
    print(f"TF-Aug synthesis benchmark: {args.cases} cases of {'x'.join(map(str, x.shape))}, 1 thread, {what}")
    print(
        f"  synthesis (mask aug + ROI blur + intensity):        median {statistics.median(synth_s):.3f} s, "
        f"max {max(synth_s):.3f} s"
    )
    print(
        f"  clip + writing uncompressed NIfTI + provenance:    median {statistics.median(write_s):.3f} s, "
        f"max {max(write_s):.3f} s"
    )
    print(
        f"  per case total:                                    median {statistics.median(total):.3f} s, "
        f"mean {statistics.mean(total):.3f} s (target < 1 s)"
    )


if __name__ == "__main__":
    main()
