"""RescaleBrainIntensity: the inferred (or given) brain, percentiles mapped to [-1, 1]."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import torch
from monai.data import MetaTensor

from custom_components.data.brain_mask import infer_brain_mask
from custom_components.transforms.intensity import RescaleBrainIntensity, RescaleBrainIntensityd


def _volume() -> np.ndarray:
    x = np.zeros((1, 10, 10, 10), np.float32)
    x[0, 2:8, 2:8, 2:8] = np.linspace(-50, 150, 216).reshape(6, 6, 6)  # negative values inside the brain
    return x


def test_brain_is_the_block_with_its_negative_values():
    x = _volume()
    assert infer_brain_mask(x[0]).sum() == 216  # the whole block, negative ramp values included
    assert infer_brain_mask(np.full((4, 4, 4), -1.0), check=False).sum() == 0  # all background


def test_percentiles_map_to_range_and_background_to_bmin():
    x = _volume()
    out = RescaleBrainIntensity(lower=0, upper=100)(x)
    brain = infer_brain_mask(x[0])
    assert np.all(out[0][~brain] == -1.0)
    ramp = out[0][brain]
    # lower percentile -> one float step above -1 (kept distinguishable), upper -> 1, linear in between
    assert ramp.min() == np.nextafter(np.float32(-1), np.float32(1)) and ramp.max() == 1.0
    expected = (x[0][brain] + 50) / 200 * 2 - 1
    assert np.allclose(ramp[1:], expected[1:], atol=1e-6)
    # idempotent: a prepared volume stays the same
    assert np.allclose(RescaleBrainIntensity(lower=0, upper=100)(out), out, atol=1e-6)


def test_metatensor_and_dict(tmp_path):
    x = MetaTensor(torch.as_tensor(_volume()), affine=torch.diag(torch.tensor([2.0, 2.0, 2.0, 1.0])))
    out = RescaleBrainIntensityd("image")({"image": x})["image"]
    assert isinstance(out, MetaTensor) and out.affine[0, 0] == 2.0 and out.dtype == torch.float32


def test_real_case_brain_excludes_zero_background(real_case):
    t1 = nib.load(real_case["image"][0]).get_fdata().astype(np.float32)
    assert t1.min() < 0  # the real T1 has negative voxels inside the brain
    brain = infer_brain_mask(t1)
    assert 1.5e6 < brain.sum() < 1.7e6  # ~1.6M brain voxels of 8.9M
    out = RescaleBrainIntensity()(t1[None])
    assert out.min() == -1.0 and out.max() == 1.0 and (out[0] > -1).sum() == brain.sum()
