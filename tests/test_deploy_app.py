"""The MONAI Deploy application ``deploy/brats_seg_app`` (needs the ``[deploy]`` extra): run as a user runs it,
``python deploy/brats_seg_app -i CASE_DIR -o OUT -m model.ts``, on a small case with a tiny exported model, on CPU.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ConfigWorkflow, ckpt_export
from monai.transforms import AsDiscreted, Compose
from scipy.special import softmax

from custom_components.data import from_internal
from custom_components.data.datalist import write_datalist
from custom_components.networks import build_segmentation_network
from tests.bundle_utils import REPO, bundle_dir, run_workflow
from tests.float_order import assert_labels_agree_except_near_ties

if importlib.util.find_spec("monai.deploy") is None:
    pytest.skip(
        "monai-deploy-app-sdk is not installed in this environment; `make test` runs this file in .venv-deploy "
        "(make deploy-setup)",
        allow_module_level=True,
    )

APP = REPO / "deploy" / "brats_seg_app"
sys.path.insert(0, str(APP))
from app import model_metadata, model_modalities  # noqa: E402
from nifti_operators import find_case_files, load_case  # noqa: E402

CASE = "BraTS-GLI-00001-000"
MODALITIES = ["t1n", "t1c", "t2w", "t2f"]
TINY = [4, 8, 16, 32]
SHAPE = (40, 36, 32)
# not RAS (x flipped, y and z swapped), 2 mm, offset: the app must write on this grid, not the RAS one it infers on
AFFINE = np.array([[-2.0, 0, 0, 40], [0, 0, 2.0, -30], [0, -2.0, 0, 50], [0, 0, 0, 1]])


def _write_case(folder: Path) -> list[Path]:
    rng = np.random.default_rng(0)
    g = np.stack(np.meshgrid(*[np.linspace(-1, 1, s) for s in SHAPE], indexing="ij"))
    brain = (g**2).sum(0) < 0.8
    tumour = ((g - np.array([0.3, 0.1, 0.0])[:, None, None, None]) ** 2).sum(0) < 0.08
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for k, mod in enumerate(MODALITIES):
        sign = 1 if k % 2 else -1
        img = np.where(brain, 300 + 100 * k + 200 * sign * tumour + 20 * rng.standard_normal(SHAPE), 0)
        files.append(folder / f"{CASE}-{mod}.nii.gz")
        nib.save(nib.Nifti1Image(img.astype(np.float32), AFFINE), str(files[-1]))
    return files


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A case folder and the bundle's TorchScript (tiny weights) from ckpt_export of configs/inference.yaml."""
    root = tmp_path_factory.mktemp("deploy")
    files = _write_case(root / "case")
    torch.manual_seed(0)
    torch.save(build_segmentation_network("dynunet", 4, 4, TINY).state_dict(), root / "model.pt")
    configs = bundle_dir("dtss_mas_seg") / "configs"
    ckpt_export(
        net_id="network_def", filepath=str(root / "model.ts"), ckpt_file=str(root / "model.pt"),
        meta_file=str(configs / "metadata.json"), config_file=str(configs / "inference.yaml"),
        bundle_root=str(bundle_dir("dtss_mas_seg")), filters=TINY,
    )  # fmt: skip
    return {"root": root, "case": root / "case", "files": files, "pt": root / "model.pt", "ts": root / "model.ts"}


def _bundle_logits(wf: ConfigWorkflow) -> np.ndarray:
    """The network outputs ``(C, *SHAPE)`` of the bundle's inference workflow ``wf`` (run) for its one case, on the
    input grid: its preprocessing, network and sliding-window inferer, then its postprocessing without the argmax
    (the inverse of the preprocessing)."""
    item = wf.parser.get_parsed_content("dataset")[0]
    network = wf.parser.get_parsed_content("network").eval()
    with torch.no_grad():
        # a MetaTensor: Invertd takes the inverse from item["image"]
        item["pred"] = wf.parser.get_parsed_content("inferer")(item["image"][None], network)[0]
    postprocessing = wf.parser.get_parsed_content("postprocessing").transforms
    inverse = Compose([t for t in postprocessing if not isinstance(t, AsDiscreted)])
    return inverse(item)["pred"].numpy()


def _run_app(case: Path, out: Path, model: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, str(APP), "-i", str(case), "-o", str(out), "-m", str(model)]
    return subprocess.run(cmd, cwd=str(out.parent), env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_app_writes_labels_on_input_grid_like_the_bundle(exported: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = _run_app(exported["case"], out, exported["ts"])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert sorted(p.name for p in out.iterdir()) == [f"{CASE}-seg.nii.gz"]
    seg = nib.load(str(out / f"{CASE}-seg.nii.gz"))
    labels = np.asarray(seg.dataobj)
    assert seg.shape == SHAPE and labels.dtype == np.uint8
    np.testing.assert_allclose(seg.affine, AFFINE)
    assert set(np.unique(labels).tolist()) <= {0, 1, 2, 3}  # BraTS 2023: 1 NCR, 2 ED, 3 ET
    # the bundle's own inference (same weights, same configs/inference.yaml) writes the same label map, up to
    # the float order: the app runs the TorchScript on one thread, the bundle the eager network in this process,
    # so the labels may differ where the bundle's top two classes nearly tie, and nowhere else
    datalist = tmp_path / "datalist.json"
    items = [{"case_id": CASE, "image": [str(f) for f in exported["files"]]}]
    write_datalist(datalist, {"modalities": MODALITIES, "labels": "brats2023", "test": items})
    wf = run_workflow(
        "dtss_mas_seg", ["inference.yaml"], "infer", run_id="inference", datalist=str(datalist),
        model_path=str(exported["pt"]), output_dir=str(tmp_path / "bundle"), filters=TINY, num_workers=0,
    )  # fmt: skip
    reference = nib.load(str(tmp_path / "bundle" / "predictions" / f"{CASE}.nii.gz"))
    np.testing.assert_allclose(reference.affine, AFFINE)
    expected = np.asarray(reference.dataobj)
    assert len(np.unique(expected)) >= 2  # a map with several labels, so the comparison tests the orientation
    logits = _bundle_logits(wf)
    # recomputed with the very operations of the bundle's run (this process, its network, its input): the argmax
    # is its label map bit for bit, so these are the outputs that made it
    np.testing.assert_array_equal(from_internal(logits.argmax(0), "brats2023"), expected)
    assert_labels_agree_except_near_ties(labels, expected, softmax(logits.astype(np.float64), axis=0))


@pytest.mark.slow
def test_app_rejects_a_missing_modality_before_writing(exported: dict[str, Path], tmp_path: Path) -> None:
    case = tmp_path / "case"
    case.mkdir()
    for f in exported["files"][:3]:
        (case / f.name).write_bytes(f.read_bytes())
    out = tmp_path / "out"
    proc = _run_app(case, out, exported["ts"])
    assert proc.returncode != 0
    assert f"{case}: no <case>-t2f.nii.gz file" in proc.stdout + proc.stderr
    assert not out.exists() or not any(out.iterdir())


def test_modalities_come_from_the_model_metadata(exported: dict[str, Path], tmp_path: Path) -> None:
    assert model_modalities(model_metadata(exported["ts"]), exported["ts"]) == MODALITIES
    with pytest.raises(ValueError, match="not a TorchScript file"):
        model_metadata(exported["files"][0])


def test_case_files_and_grid_checks(exported: dict[str, Path], tmp_path: Path) -> None:
    case, files = find_case_files(exported["case"], ["t2f", "t1n"])
    assert case == CASE and [f.name for f in files] == [f"{CASE}-t2f.nii.gz", f"{CASE}-t1n.nii.gz"]
    data, affine = load_case(files)
    assert data.shape == (2, *SHAPE) and data.dtype == np.float32
    np.testing.assert_array_equal(data[1], np.asarray(nib.load(str(files[1])).dataobj))
    np.testing.assert_allclose(affine, AFFINE)
    moved = tmp_path / f"{CASE}-t1c.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros(SHAPE, np.float32), AFFINE + np.diag([0, 0, 0.5, 0])), str(moved))
    with pytest.raises(ValueError, match=f"{moved}: grid .* differs"):
        load_case([files[0], moved])
    other = tmp_path / "two"
    other.mkdir()
    for name in (f"{CASE}-t1n.nii.gz", "OTHER-t1c.nii.gz"):
        (other / name).write_bytes(files[1].read_bytes())
    with pytest.raises(ValueError, match="different cases"):
        find_case_files(other, ["t1n", "t1c"])
