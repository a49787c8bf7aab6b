"""MONAI Deploy application: brain-tumour segmentation of one BraTS case with the dtss_mas_seg bundle.

    python deploy/brats_seg_app -i INPUT_DIR -o OUTPUT_DIR -m MODEL

INPUT_DIR holds one case's co-registered modality files, named as BraTS 2023 names them
(``<case>-t1n.nii.gz``, ``-t1c``, ``-t2w``, ``-t2f``); the modalities read are those the model's metadata names
(``network_data_format`` input channel_def), in that order. MODEL is the bundle's TorchScript written by
``monai.bundle ckpt_export`` from ``configs/inference.yaml``, with the metadata and the inference config inside.
OUTPUT_DIR receives ``<case>-seg.nii.gz``: uint8 labels in the BraTS 2023 convention (1 NCR, 2 ED, 3 ET) on the
input's grid and affine.

Operators: :class:`NiftiCaseLoaderOperator` (stack the modalities, keep the affine) ->
``MonaiBundleInferenceOperator`` (the bundle's own preprocessing, sliding-window inferer and postprocessing,
read from the TorchScript's embedded ``inference.json``) -> :class:`NiftiSegWriterOperator`.
"""

from __future__ import annotations

import json
import logging
import sys
import zipfile
from pathlib import Path

from holoscan.conditions import CountCondition
from monai.deploy.core import AppContext, Application, Image, IOType
from monai.deploy.operators.monai_bundle_inference_operator import (
    BundleConfigNames,
    IOMapping,
    MonaiBundleInferenceOperator,
)
from nifti_operators import NiftiCaseLoaderOperator, NiftiSegWriterOperator

# the label convention of the written files (BraTS 2023: 1 NCR, 2 ED, 3 ET)
OUTPUT_CONVENTION = "brats2023"


def model_metadata(model: Path) -> dict:
    """The ``metadata.json`` embedded in a TorchScript file by ``ckpt_export``.

    Raises:
        ValueError naming the file when it is not a TorchScript archive with embedded metadata.
    """
    try:
        with zipfile.ZipFile(model) as archive:
            name = next((n for n in archive.namelist() if n.endswith("/extra/metadata.json")), None)
            if name is None:
                raise ValueError(f"{model}: no embedded metadata.json; export the model with monai.bundle ckpt_export")
            return json.loads(archive.read(name))
    except zipfile.BadZipFile as e:
        raise ValueError(f"{model}: not a TorchScript file ({e})") from e


def model_modalities(meta: dict, source: Path) -> list[str]:
    """Modality names of the model's input channels, in channel order (``network_data_format`` channel_def)."""
    image = meta.get("network_data_format", {}).get("inputs", {}).get("image", {})
    channel_def, n = image.get("channel_def", {}), image.get("num_channels")
    names = [str(channel_def.get(str(i), "")) for i in range(n or 0)]
    if not names or not all(names):
        raise ValueError(f"{source}: network_data_format inputs image needs num_channels and a channel_def name each")
    return names


class BratsSegApp(Application):
    """Segment one case: NIfTI modalities in, a BraTS 2023 label NIfTI out (see the module docstring)."""

    def compose(self) -> None:
        app_context: AppContext = Application.init_app_context(self.argv)
        model = Path(app_context.model_path)
        if model.is_dir():  # the SDK's model folder layout: <folder>/<name>/model.ts or <folder>/model.ts
            found = sorted(model.rglob("*.ts"))
            if len(found) != 1:
                raise ValueError(f"{model}: expected one TorchScript .ts file, found {[str(f) for f in found]}")
            model = found[0]
        bundle_root = model.parent.parent
        if (bundle_root / "scripts" / "__init__.py").is_file() and str(bundle_root) not in sys.path:
            # a model exported from an export-bundle copy imports its vendored code (scripts/) from the bundle root
            sys.path.insert(0, str(bundle_root))
        modalities = model_modalities(model_metadata(model), model)
        logging.info(f"model {model}: input modalities {modalities}")

        loader = NiftiCaseLoaderOperator(
            self,
            CountCondition(self, 1),
            input_folder=Path(app_context.input_path),
            modalities=modalities,
            name="nifti_loader",
        )
        infer = MonaiBundleInferenceOperator(
            self,
            input_mapping=[IOMapping("image", Image, IOType.IN_MEMORY)],
            # postprocessing (argmax, inverse of the preprocessing) makes the one-channel label map "pred"
            output_mapping=[IOMapping("pred", Image, IOType.IN_MEMORY)],
            app_context=app_context,
            bundle_config_names=BundleConfigNames(config_names=["inference"]),
            bundle_path=model,
            name="bundle_inference",
        )
        writer = NiftiSegWriterOperator(
            self, output_folder=Path(app_context.output_path), convention=OUTPUT_CONVENTION, name="nifti_writer"
        )
        self.add_flow(loader, infer, {("image", "image")})
        self.add_flow(infer, writer, {("pred", "seg_image")})


if __name__ == "__main__":
    BratsSegApp().run()
