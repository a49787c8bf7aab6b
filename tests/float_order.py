"""What two computation paths must agree on when their float operations may run in another order.

Two paths that run a network differently (TorchScript against eager, one thread against several, another CPU's
vector kernels: ``ATEN_CPU_CAPABILITY``, ``ONEDNN_MAX_CPU_ISA``) sum in another order, so their outputs agree
to rounding, not bit for bit, and an argmax of them may flip where the top two classes nearly tie. Tests of
such paths compare probabilities within a tolerance, and labels everywhere except at near-ties, which must be
rare (a wrong orientation, channel or case disagrees at far more voxels). Paths that run the very same float
operations in the same order stay compared bit for bit.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np

# top-two probability gap below which an argmax may differ between two float orders: the tiny dynunet of the
# Deploy test gives probabilities that differ by up to 1.5e-5 between AVX-512 and SSE4.1 kernels (logits
# of magnitude 40 by 6e-5), so a gap moves by at most 3e-5
TIE_MARGIN = 1e-4
# largest fraction of voxels that may be near-ties (that test: 40 of 46,080, 0.09 %); more means outputs
# so flat that the comparison says little. A real bug (orientation, channel order) disagrees at clear voxels.
MAX_TIE_FRACTION = 5e-3


def near_ties(probs: np.ndarray, margin: float = TIE_MARGIN) -> np.ndarray:
    """Voxels whose two largest class probabilities differ by less than ``margin``.

    Args:
        probs: class probabilities ``(C, *spatial)``, C >= 2.
        margin: the top-two gap below which a voxel is a near-tie.

    Returns:
        boolean ``(*spatial)``.
    """
    top2 = np.partition(np.asarray(probs, dtype=np.float64), -2, axis=0)[-2:]
    return (top2[1] - top2[0]) < margin


def assert_labels_agree_except_near_ties(
    labels: np.ndarray,
    reference: np.ndarray,
    probs: np.ndarray,
    margin: float = TIE_MARGIN,
    max_fraction: float = MAX_TIE_FRACTION,
) -> int:
    """Assert two label maps are equal at every voxel that is not a near-tie of ``probs``, and near-ties are rare.

    Args:
        labels: a label map ``(*spatial)`` of one path.
        reference: the label map of the other path, same shape.
        probs: class probabilities ``(C, *spatial)`` of one of the paths (on the labels' grid).
        margin: see :func:`near_ties`.
        max_fraction: the largest fraction of voxels that may be near-ties.

    Returns:
        the number of voxels at which the maps differ (all of them near-ties).
    """
    labels, reference = np.asarray(labels), np.asarray(reference)
    assert labels.shape == reference.shape == np.shape(probs)[1:], (labels.shape, reference.shape, np.shape(probs))
    ties = near_ties(probs, margin)
    assert ties.mean() < max_fraction, f"{int(ties.sum())} of {ties.size} voxels are near-ties (margin {margin})"
    differ = labels != reference
    clear = differ & ~ties
    assert not clear.any(), (
        f"labels differ at {int(clear.sum())} voxel(s) that are not near-ties, e.g. {np.argwhere(clear)[:5].tolist()}"
    )
    return int(differ.sum())


def assert_nifti_folders_agree(folder: Path, reference: Path, atol: float = 1e-5) -> list[str]:
    """Assert two folders hold the same NIfTI files: names, headers (grid, dtype), integer data bit for bit and
    float data within ``atol``.

    Args:
        folder: one path's output folder (searched recursively for ``*.nii*``).
        reference: the other path's output folder.
        atol: absolute tolerance on float data (images in [-1, 1]: rounding is about 1e-7).

    Returns:
        the relative names of the files compared.
    """
    names = sorted(str(p.relative_to(folder)) for p in folder.rglob("*.nii*"))
    assert names == sorted(str(p.relative_to(reference)) for p in reference.rglob("*.nii*"))
    for name in names:
        img, ref = nib.load(str(folder / name)), nib.load(str(reference / name))
        assert img.header.binaryblock == ref.header.binaryblock, f"{name}: headers differ"
        a, b = np.asarray(img.dataobj), np.asarray(ref.dataobj)
        if np.issubdtype(a.dtype, np.floating):
            np.testing.assert_allclose(a, b, rtol=0, atol=atol, err_msg=name)
        else:
            np.testing.assert_array_equal(a, b, err_msg=name)
    return names
