"""How much fine texture the healthy tissue keeps on each side of TF-GAN's game (issue "TF-GAN that learns").

TF-GAN's discriminator compares coarse TF-Aug crops (healthy scans registered and resampled onto the real data's
grid by prepare_healthy) with real tumour crops (never resampled: they define the grid). Resampling smooths noise,
so a discriminator can tell the two apart on the anatomy alone, and a generator that must fool it rewrites the
anatomy. This probe prints the high-pass standard deviation of the healthy tissue (SD of ``x - G_1(x)``, ``G_1``
a 1-voxel Gaussian, over the brain eroded by ``--erode`` voxels; intensities rescaled in the brain to [-1, 1] as
the bundles load them) for: the real tumour cases (tumour dilated by 4 voxels excluded), the raw healthy scans,
the prepared healthy scans, TF-Aug's coarse cases outside m_roi, and one raw healthy scan resampled by a small
rigid transform with SimpleITK's linear, B-spline and Lanczos interpolators.

    python benchmarks/probe_background_texture.py --work demo_output [--cases 3]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from custom_components.data.loader import load_datalist
from custom_components.transforms.intensity import RescaleBrainIntensity


def _read(path: str) -> np.ndarray:
    return np.asarray(nib.as_closest_canonical(nib.load(path)).dataobj, dtype=np.float32)


def high_pass_sd(image: np.ndarray, brain: np.ndarray, keep: np.ndarray, erode: int) -> float:
    """High-pass SD of ``image`` (rescaled in ``brain`` to [-1, 1]) over ``keep`` within the eroded brain."""
    x = np.asarray(RescaleBrainIntensity()(image[None], brain[None]))[0]
    high = x - ndimage.gaussian_filter(x, 1.0)
    inner = ndimage.binary_erosion(brain, iterations=erode) if erode else brain
    return float(high[inner & keep].std())


def _row(name: str, values: list[float]) -> None:
    print(f"{name:<44} " + "  ".join(f"{v:.4f}" for v in values))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("demo_output"), help="a pipeline work folder")
    parser.add_argument("--cases", type=int, default=3, help="cases per set")
    parser.add_argument("--erode", type=int, default=3, help="brain erosion in voxels (the skull edge)")
    args = parser.parse_args()
    work = args.work
    real_dl = work / "data" / "demo" / "tumour" / "datalist.json"
    coarse_dl = work / "tf_aug_synthesise_s0" / "coarse" / "datalist.json"
    if not real_dl.is_file() or not coarse_dl.is_file():
        print(f"{work}: no demo pipeline output (run `make demo` first)", file=sys.stderr)
        return 2
    print(f"high-pass SD of healthy tissue, first {args.cases} cases per set ({work})")
    values = []
    for item in load_datalist(real_dl, modalities=["t1n"], require=["label"], check="none")[: args.cases]:
        brain = _read(item["brain_mask"]) > 0
        tumour = ndimage.binary_dilation(_read(item["label"]) > 0, iterations=4)
        values.append(high_pass_sd(_read(item["image"][0]), brain, ~tumour, args.erode))
    _row("real tumour cases (tumour + 4 voxels excluded)", values)
    for name, folder in (
        ("raw healthy scans", work / "data" / "demo" / "healthy"),
        ("prepared healthy scans", work / "prepare_healthy"),
    ):
        items = load_datalist(folder / "datalist.json", check="none")[: args.cases]
        _row(
            name, [high_pass_sd(_read(i["image"][0]), _read(i["brain_mask"]) > 0, np.True_, args.erode) for i in items]
        )
    items = load_datalist(coarse_dl, modalities=["t1n"], require=["label"], check="none")[: args.cases]
    _row(
        "TF-Aug coarse cases outside m_roi",
        [
            high_pass_sd(_read(i["image"][0]), _read(i["brain_mask"]) > 0, _read(i["roi"]) == 0, args.erode)
            for i in items
        ],
    )
    raw = load_datalist(work / "data" / "demo" / "healthy" / "datalist.json", check="none")[0]
    image = sitk.ReadImage(raw["image"][0], sitk.sitkFloat32)
    brain = np.asarray(nib.load(raw["brain_mask"]).dataobj) > 0  # the array order SimpleITK's array has, transposed
    rigid = sitk.Euler3DTransform()
    rigid.SetCenter(image.TransformContinuousIndexToPhysicalPoint([s / 2 for s in image.GetSize()]))
    rigid.SetRotation(0.02, -0.015, 0.01)
    rigid.SetTranslation((0.7, -0.4, 0.3))
    resampled = {"none": image} | {
        name: sitk.Resample(image, image, rigid, interpolator, 0.0)
        for name, interpolator in (
            ("linear", sitk.sitkLinear),
            ("B-spline", sitk.sitkBSpline),
            ("Lanczos", sitk.sitkLanczosWindowedSinc),
        )
    }
    print(f"{raw['case_id']} resampled by a rigid transform (about 1 degree, 0.9 mm):")
    for name, out in resampled.items():
        array = sitk.GetArrayFromImage(out).transpose(2, 1, 0)
        _row(f"  interpolation {name}", [high_pass_sd(array, brain, np.True_, args.erode + 1)])
    return 0


if __name__ == "__main__":
    sys.exit(main())
