"""Atomic writes: write to a temporary file in the target folder, then rename over the target."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import nibabel as nib
import numpy as np


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is renamed onto ``path``.

    Args:
        path: final destination.
        suffix: suffix for the temporary file (keep ``.nii.gz`` so writers pick the format).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix or "".join(path.suffixes), dir=path.parent)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the file ordinary permissions
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def save_nifti(
    array: np.ndarray,
    affine: np.ndarray,
    path: str | os.PathLike,
    dtype: np.dtype | type | None = None,
    header: nib.Nifti1Header | None = None,
) -> Path:
    """Save a 3D (or 4D, channel last) array as NIfTI atomically; returns the path.

    Args:
        array: voxel data in the axis order of ``affine``.
        affine: 4x4 voxel-to-world matrix.
        path: ``.nii`` or ``.nii.gz`` destination.
        dtype: on-disk data type (default: the array's).
        header: optional header to copy (qform/sform codes are taken from the affine).
    """
    data = np.asarray(array) if dtype is None else np.asarray(array).astype(dtype)
    img = nib.Nifti1Image(data, np.asarray(affine, dtype=np.float64), header=header)
    img.set_data_dtype(data.dtype)
    img.set_qform(img.affine, code=1)
    img.set_sform(img.affine, code=1)
    with atomic_path(path) as tmp:
        nib.save(img, str(tmp))
    return Path(path)
