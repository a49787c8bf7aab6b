"""NIfTI operators of the BraTS segmentation app: load one case's modality files as one multi-channel image that
keeps its affine, and write the predicted label map on the input's grid and affine.

The SDK's ``NiftiDataLoader`` reads one file and returns its array without the affine, so it can neither stack the
modalities nor give the writer the grid to write on; these two operators do both with nibabel.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from monai.deploy.core import Fragment, Image, Operator, OperatorSpec

# metadata keys the writer reads (MONAI's transforms leave keys they do not know unchanged)
CASE_KEY = "brats_case_id"
SHAPE_KEY = "brats_input_shape"
AFFINE_KEY = "brats_input_affine"
NIFTI_SUFFIXES = (".nii.gz", ".nii")


def find_case_files(folder: Path, modalities: Sequence[str]) -> tuple[str, list[Path]]:
    """The case id and one file per modality, in ``modalities`` order, from BraTS 2023 names
    ``<case>-<modality>.nii.gz`` (or ``.nii``) in ``folder``.

    Raises:
        FileNotFoundError naming the folder and the modality when a modality has no file; ValueError when a modality
        has several files or the files name different cases.
    """
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: input folder not found")
    files: list[Path] = []
    cases: set[str] = set()
    for mod in modalities:
        pattern = re.compile(rf"^(?P<case>.+)-{re.escape(mod)}(\.nii\.gz|\.nii)$")
        found = sorted(p for p in folder.iterdir() if p.is_file() and pattern.match(p.name))
        if not found:
            raise FileNotFoundError(f"{folder}: no <case>-{mod}.nii.gz file (the model needs {list(modalities)})")
        if len(found) > 1:
            raise ValueError(f"{folder}: several {mod} files ({[p.name for p in found]}); give one case per folder")
        files.append(found[0])
        cases.add(pattern.match(found[0].name).group("case"))
    if len(cases) != 1:
        raise ValueError(f"{folder}: the modality files name different cases {sorted(cases)}")
    return cases.pop(), files


def load_case(files: Sequence[Path], atol: float = 1e-3) -> tuple[np.ndarray, np.ndarray]:
    """Stack 3-D modality files as channels ``(C, *spatial)`` float32; returns the array and the common affine.

    Raises:
        ValueError naming the file when it is not 3-D, has non-finite voxels or is not on the first file's grid.
    """
    arrays, affine, shape = [], None, None
    for f in files:
        try:
            img = nib.load(str(f))
            data = np.asarray(img.dataobj, dtype=np.float32)
        except Exception as e:  # nibabel raises several types for a truncated or foreign file
            raise ValueError(f"{f}: cannot read the NIfTI file ({e})") from e
        if data.ndim == 4 and data.shape[-1] == 1:
            data = data[..., 0]
        if data.ndim != 3:
            raise ValueError(f"{f}: expected a 3-D volume, got shape {data.shape}")
        if not np.all(np.isfinite(data)):
            raise ValueError(f"{f}: has NaN or infinite voxels")
        if affine is None:
            affine, shape = img.affine, data.shape
        elif data.shape != shape or not np.allclose(img.affine, affine, atol=atol):
            raise ValueError(f"{f}: grid {data.shape} / affine differs from {files[0]} ({shape}); co-register first")
        arrays.append(data)
    return np.stack(arrays), np.asarray(affine, dtype=np.float64)


class NiftiCaseLoaderOperator(Operator):
    """Emit one case's modalities as one ``Image`` ``(C, *spatial)`` with the affine in its metadata.

    Named outputs:
        image: ``Image`` whose metadata holds ``affine`` / ``original_affine`` (the files' voxel-to-world matrix),
            ``original_channel_dim`` 0 (channels first), ``filename_or_obj`` and the case id, shape and affine that
            :class:`NiftiSegWriterOperator` writes with.

    Args:
        fragment: the application.
        input_folder: folder with the case's ``<case>-<modality>.nii.gz`` files.
        modalities: modality names in channel order (the bundle's ``network_data_format`` channel_def).
    """

    def __init__(self, fragment: Fragment, *args: Any, input_folder: Path, modalities: Sequence[str], **kwargs: Any):
        self.input_folder = Path(input_folder)
        self.modalities = list(modalities)
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec) -> None:
        spec.output("image")

    def compute(self, op_input: Any, op_output: Any, context: Any) -> None:
        case, files = find_case_files(self.input_folder, self.modalities)
        data, affine = load_case(files)
        logging.info(f"{case}: {len(files)} modalities {self.modalities}, grid {data.shape[1:]}")
        meta = {
            "affine": affine.copy(),
            "original_affine": affine.copy(),
            "spatial_shape": np.asarray(data.shape[1:]),
            "original_channel_dim": 0,
            "space": "RAS",
            "filename_or_obj": str(files[0]),
            CASE_KEY: case,
            SHAPE_KEY: tuple(int(s) for s in data.shape[1:]),
            AFFINE_KEY: affine.copy(),
        }
        op_output.emit(Image(data, metadata=meta), "image")


class NiftiSegWriterOperator(Operator):
    """Write the bundle's label map as ``<output_folder>/<case>-seg.nii.gz`` on the input's grid and affine, in a
    BraTS label convention, atomically.

    Named inputs:
        seg_image: ``Image`` from ``MonaiBundleInferenceOperator``: internal labels (0 background, 1 NCR, 2 ED,
            3 ET) in the SDK's ``(k, j, i)`` axis order, with the input's metadata.

    Args:
        fragment: the application.
        output_folder: where the label file goes (created).
        convention: label convention of the written file (``brats2023`` default; ``brats2021`` writes ET as 4).
    """

    def __init__(
        self, fragment: Fragment, *args: Any, output_folder: Path, convention: str = "brats2023", **kwargs: Any
    ):
        self.output_folder = Path(output_folder)
        self.convention = convention
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec) -> None:
        spec.input("seg_image")

    def compute(self, op_input: Any, op_output: Any, context: Any) -> None:
        # imported here: the bundle's inference config, parsed by the inference operator, decides which copy of
        # custom_components is loaded (installed, or an exported bundle's scripts/)
        from custom_components.data.atomic import save_nifti
        from custom_components.data.labels import from_internal

        seg = op_input.receive("seg_image")
        meta = seg.metadata()
        labels = np.swapaxes(np.asarray(seg.asnumpy()), 0, 2)  # the SDK's (k, j, i) back to the files' (i, j, k)
        shape, affine, case = tuple(meta[SHAPE_KEY]), np.asarray(meta[AFFINE_KEY], dtype=np.float64), meta[CASE_KEY]
        if labels.shape != shape:
            raise ValueError(f"{case}: label map of shape {labels.shape} is not on the input grid {shape}")
        out = self.output_folder / f"{case}-seg.nii.gz"
        self.output_folder.mkdir(parents=True, exist_ok=True)
        save_nifti(from_internal(labels.astype(np.uint8), self.convention), affine, out, dtype=np.uint8)
        logging.info(f"{case}: wrote {out} (labels {sorted(np.unique(labels).tolist())}, {self.convention})")
