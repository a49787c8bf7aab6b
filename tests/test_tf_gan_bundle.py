"""The tf_gan bundle: properties, metadata, and tiny end-to-end runs (TF-GAN train/resume/refine, Pix2Pix)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest
import torch
import yaml
from monai.bundle import ConfigParser

from custom_components.data.datalist import read_datalist
from custom_components.data.input_check import InputCheckError
from custom_components.data.validation import check_datalist
from custom_components.engines.gan_trainer import loss_terms
from custom_components.handlers import OutputExistsError
from custom_components.networks.segmentation import build_segmentation_network
from custom_components.transforms import roi_mask
from tests.bundle_utils import bundle_dir, run_workflow, validate_metadata, workflow

BUNDLE = "tf_gan"
TRAIN = ["common.yaml", "train.yaml"]
INFER = ["common.yaml", "inference.yaml"]
TRAIN_P2P = ["common.yaml", "train.yaml", "train_pix2pix.yaml"]
INFER_P2P = ["inference.yaml", "inference_pix2pix.yaml"]
SHAPE = (72, 68, 64)  # >= 64 per side: the six-level generator needs a 2-voxel bottleneck
AFFINE = np.array([[-1.0, 0, 0, 40.0], [0, -1.0, 0, 30.0], [0, 0, 1.0, -20.0], [0, 0, 0, 1]])
ENCODER_FILTERS = [8, 8, 16, 16, 16]


def _sphere(shape: tuple[int, ...], centre: tuple[float, ...], radius: float) -> np.ndarray:
    grid = np.indices(shape).astype(np.float32)
    return sum((g - c) ** 2 for g, c in zip(grid, centre, strict=True)) <= radius**2


def _case(rng: np.random.Generator, centre: tuple[float, ...]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A brain (ellipsoid) with an internal-convention tumour: NCR core, ET shell, ED around it."""
    grid = np.indices(SHAPE).astype(np.float32)
    half = np.array(SHAPE, dtype=np.float32) / 2
    brain = sum(((g - h) / (h - 3)) ** 2 for g, h in zip(grid, half, strict=True)) <= 1.0
    label = np.zeros(SHAPE, np.uint8)
    label[_sphere(SHAPE, centre, 9)] = 2
    label[_sphere(SHAPE, centre, 6)] = 3
    label[_sphere(SHAPE, centre, 3.5)] = 1
    label[~brain] = 0
    tissue = 0.3 * np.sin(grid[0] / 5) * np.cos(grid[1] / 7) + 0.05 * rng.standard_normal(SHAPE)
    return brain, label, tissue.astype(np.float32)


def _save(array: np.ndarray, path: Path) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, AFFINE), str(path))
    return str(path)


def make_data(root: Path, n_coarse: int = 2, n_real: int = 2) -> dict[str, Path]:
    """Coarse datalist (tf_aug layout, internal labels, [-1, 1] images), real datalist (BraTS 2021 labels,
    raw intensities, two modalities of which t1n is used) and a tiny dtss_mas_seg encoder checkpoint."""
    rng = np.random.default_rng(0)
    coarse = []
    for i in range(n_coarse):
        brain, label, tissue = _case(rng, (36 + 4 * i, 30, 34))
        image = np.where(brain, np.clip(tissue + 0.2 * (label == 3) - 0.3 * (label == 1), -1, 1), -1.0)
        roi = (label > 0) | _sphere(SHAPE, (36 + 4 * i, 30, 34), 10)
        cid = f"coarse_{i:02d}"
        coarse.append(
            {
                "case_id": cid,
                "image": [_save(image.astype(np.float32), root / "coarse" / f"{cid}_t1n.nii.gz")],
                "label": _save(label, root / "coarse" / f"{cid}_seg.nii.gz"),
                "roi": _save((roi & brain).astype(np.uint8), root / "coarse" / f"{cid}_roi.nii.gz"),
                "brain_mask": _save(brain.astype(np.uint8), root / "coarse" / f"{cid}_brain.nii.gz"),
                "synthetic": True,
                "provenance": {"stage": "tf_aug", "seed": i},
            }
        )
    real = []
    for i in range(n_real):
        brain, label, tissue = _case(rng, (34, 34 - 3 * i, 30))
        t1 = np.where(brain, 600 + 300 * tissue + 150 * (label == 3), 0).astype(np.float32)
        t2f = np.where(brain, 400 + 200 * tissue + 300 * (label == 2), 0).astype(np.float32)
        label21 = np.where(label == 3, 4, label).astype(np.uint8)
        cid = f"real_{i:02d}"
        real.append(
            {
                "case_id": cid,
                "image": [
                    _save(t2f, root / "real" / cid / f"{cid}-t2f.nii.gz"),
                    _save(t1, root / "real" / cid / f"{cid}-t1n.nii.gz"),
                ],
                "label": _save(label21, root / "real" / cid / f"{cid}-seg.nii.gz"),
            }
        )
    coarse_dl = root / "coarse_datalist.json"
    real_dl = root / "real_datalist.json"
    coarse_dl.write_text(json.dumps({"labels": "internal", "modalities": ["t1n"], "training": coarse}))
    real_dl.write_text(json.dumps({"labels": "brats2021", "modalities": ["t2f", "t1n"], "training": real}))
    torch.manual_seed(0)
    net = build_segmentation_network("dynunet", 1, 4, ENCODER_FILTERS)
    encoder = root / "seg_model.pt"
    torch.save(net.state_dict(), encoder)
    return {"coarse": coarse_dl, "real": real_dl, "encoder": encoder, "root": root}


def tiny(data: dict[str, Path], out: Path, **extra: Any) -> dict[str, Any]:
    """Overrides that make the bundle tiny (widths, patch, epochs) and point it at ``data`` / ``out``."""
    return {
        "dataset_dir": str(data["root"]),
        "coarse_datalist": str(data["coarse"]),
        "real_datalist": str(data["real"]),
        "output_dir": str(out / "outputs"),
        "models_dir": str(out / "models"),
        "pix2pix_models_dir": str(out / "models_p2p"),
        # 8 channels: PyTorch's CPU convolution falls back to a slow kernel below about 5 input channels
        "gen_channels": [8, 8, 8, 8, 8, 8],
        "disc_channels": [8, 8, 8, 8, 8],
        "patch_size": [64, 64, 64],
        "num_workers": 0,
        "device": "cpu",
        **extra,
    }


def train_overrides(data: dict[str, Path], out: Path, **extra: Any) -> dict[str, Any]:
    settings: dict[str, Any] = {
        "max_epochs": 2,
        "encoder_checkpoint": str(data["encoder"]),
        "encoder_filters": ENCODER_FILTERS,
    }
    settings.update(extra)
    return tiny(data, out, **settings)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return make_data(tmp_path_factory.mktemp("tf_gan_data"))


def _datalist(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def _chain(e: BaseException | None) -> str:
    """The messages of an exception and its causes (bundle expressions wrap errors in RuntimeError)."""
    out = []
    while e is not None:
        out.append(str(e))
        e = e.__cause__ or e.__context__
    return " | ".join(out)


def test_metadata_validates() -> None:
    meta = validate_metadata(BUNDLE)
    inputs = meta["network_data_format"]["inputs"]["image"]
    assert inputs["num_channels"] == 4 and inputs["value_range"] == [-1, 1]
    assert meta["network_data_format"]["outputs"]["pred"]["num_channels"] == 1


def test_bundle_files() -> None:
    root = bundle_dir(BUNDLE)
    assert "Apache License" in (root / "LICENSE").read_text()
    readme = (root / "docs" / "README.md").read_text()
    for key in ("hinge_margin", "roi_margin", "lambda_schedule", "sw_overlap", "paste_outside_roi"):
        assert key in readme
    assert "encoder_checkpoint" in readme


def test_pix2pix_inference_is_an_override_of_inference() -> None:
    """inference_pix2pix.yaml keeps only its differences from inference.yaml (no key with inference.yaml's value),
    its own values of common.yaml's keys are common.yaml's, and merged after inference.yaml it builds the Pix2Pix
    generator from <pix2pix_models_dir>/model.pt and writes stage pix2pix into <output_dir>/pix2pix."""
    configs = bundle_dir(BUNDLE) / "configs"
    inference, override, common = (
        yaml.safe_load((configs / f).read_text()) for f in ("inference.yaml", "inference_pix2pix.yaml", "common.yaml")
    )
    same = {k for k in set(inference) & set(override) if inference[k] == override[k]}
    assert not same, f"inference_pix2pix.yaml repeats inference.yaml's {sorted(same)}"
    for key in (set(override) & set(common)) - set(inference):
        assert override[key] == common[key], f"inference_pix2pix.yaml: {key} differs from common.yaml"
    parser = ConfigParser()
    parser.read_config([str(configs / f) for f in INFER_P2P])
    parser["bundle_root"] = "/b"
    assert parser.get_parsed_content("generator_checkpoint") == "/b/runs/models/pix2pix/model.pt"
    assert parser.get_parsed_content("network_def").in_channels == 0
    assert parser["prepare_batch"]["stage"] == parser["writer"]["stage"] == "pix2pix"
    assert parser.get_parsed_content("writer#output_dir") == "/b/runs/pix2pix"
    assert parser.get_parsed_content("writer#datalist_path") == "/b/runs/pix2pix/datalist.json"


def test_pix2pix_training_is_an_override_of_training() -> None:
    """train_pix2pix.yaml keeps only its differences from train.yaml, and merged after it trains the Pix2Pix
    generator into <pix2pix_models_dir> with a PatchGAN, in pix2pix mode, without the lambda_c schedule."""
    configs = bundle_dir(BUNDLE) / "configs"
    train, override = (yaml.safe_load((configs / f).read_text()) for f in ("train.yaml", "train_pix2pix.yaml"))
    same = {k for k in set(train) & set(override) if train[k] == override[k]}
    assert not same, f"train_pix2pix.yaml repeats train.yaml's {sorted(same)}"
    assert len((configs / "train_pix2pix.yaml").read_text().splitlines()) < 80
    parser = ConfigParser()
    parser.read_config([str(configs / f) for f in TRAIN_P2P])
    parser["bundle_root"] = "/b"
    assert parser.get_parsed_content("train_models_dir") == "/b/runs/models/pix2pix"
    assert parser["train#trainer"]["mode"] == "pix2pix" and parser["train#trainer"]["real_data_loader"] is None
    assert parser["train#trainer"]["checkpoint_dir"] == "@train_models_dir"
    assert parser["discriminator"]["_target_"] == "PatchDiscriminator"
    assert parser["trainer_handlers"][0]["_target_"] == "custom_components.handlers.hinge_weight_schedule"
    assert parser["trainer_handlers"][0]["_disabled_"] is True
    assert parser.get_parsed_content("lambda_global") == 0.0


@pytest.mark.parametrize(("configs", "kind"), [(TRAIN, "train"), (TRAIN_P2P, "train")])
def test_train_properties(data: dict[str, Path], tmp_path: Path, configs: list[str], kind: str) -> None:
    wf = workflow(BUNDLE, configs, kind, **train_overrides(data, tmp_path))
    wf.initialize()
    assert wf.check_properties() == []


@pytest.mark.slow
def test_tf_gan_train_resume_refine(data: dict[str, Path], tmp_path: Path) -> None:
    from monai.handlers import from_engine

    # train: 2 coarse cases x 2 epochs = 4 iterations, run id "training" as the product uses it
    wf = run_workflow(BUNDLE, TRAIN, "train", run_id="training", **train_overrides(data, tmp_path))
    trainer = wf.parser.get_parsed_content("train#trainer")
    assert (trainer.state.epoch, trainer.state.iteration) == (2, 4)
    assert trainer.state.lambda_c == 1.0  # lambda_c schedule ends exactly at 1
    terms = loss_terms(trainer.state.output)
    assert set(terms) >= {"loss", "g_adv_patch", "g_adv_global", "g_hinge", "g_perceptual", "d_loss", "lambda_c"}
    assert all(np.isfinite(v) for v in terms.values())
    # MONAI's default `--tracking mlflow` output_transform reads the scalar generator loss
    assert from_engine(["loss"], first=True)(trainer.state.output) == terms["loss"]
    models = tmp_path / "models"
    assert {"model.pt", "checkpoint_final.pt"} <= {p.name for p in models.iterdir()}
    g_state = torch.load(models / "model.pt", weights_only=True)
    assert "head.conv.conv.weight" in g_state  # the generator's state dict itself
    full = torch.load(models / "checkpoint_final.pt", weights_only=True)
    assert set(full) == {
        "generator",
        "discriminator",
        "g_optimizer",
        "d_optimizer",
        "g_scheduler",
        "d_scheduler",
        "trainer",
    }
    assert full["g_optimizer"]["param_groups"][0]["lr"] == 0.0  # linear decay to 0 over max_epochs

    # a plain rerun into the same models_dir is refused; with resume_checkpoint it continues at iteration 4
    with pytest.raises(OutputExistsError) as err:
        run_workflow(BUNDLE, TRAIN, "train", **train_overrides(data, tmp_path, max_epochs=3))
    assert "an earlier run's models are there" in _chain(err.value)
    resume = str(models / "checkpoint_final.pt")
    wf = run_workflow(BUNDLE, TRAIN, "train", **train_overrides(data, tmp_path, max_epochs=3, resume_checkpoint=resume))
    trainer = wf.parser.get_parsed_content("train#trainer")
    assert (trainer.state.epoch, trainer.state.iteration) == (3, 6)
    assert trainer.state.lambda_c == 1.0

    # refine the coarse datalist
    infer = tiny(data, tmp_path)
    wf = run_workflow(BUNDLE, INFER, "infer", **infer)
    assert wf.check_properties() == []
    out = tmp_path / "outputs" / "refined" / "datalist.json"
    check_datalist(out)  # valid for the next stage (files, grids, internal labels with tumour)
    refined = read_datalist(out)
    coarse = read_datalist(data["coarse"])
    assert refined["labels"] == "internal" and refined["modalities"] == ["t1n"]
    assert [i["case_id"] for i in refined["training"]] == [i["case_id"] for i in coarse["training"]]
    for item, src in zip(refined["training"], coarse["training"], strict=True):
        img, ref = nib.load(item["image"][0]), nib.load(src["image"][0])
        assert img.shape == ref.shape == SHAPE
        np.testing.assert_allclose(img.affine, ref.affine)
        vol = np.asarray(img.dataobj)
        brain = np.asarray(nib.load(src["brain_mask"]).dataobj) > 0
        assert vol.min() >= -1 and vol.max() <= 1
        assert np.all(vol[~brain] == -1.0)  # background masked
        for key in ("label", "roi", "brain_mask"):
            assert Path(item[key]).read_bytes() == Path(src[key]).read_bytes()
        assert item["synthetic"] is True
        prov = item["provenance"]
        assert prov["stage"] == "tf_gan" and prov["coarse_image"] == src["image"] and prov["seed"] == 0
        assert prov["generator_checkpoint"] == str(tmp_path / "models" / "model.pt")
        assert prov["parent"] == src["provenance"]
    # the inputs are untouched
    assert _datalist(data["coarse"])["training"][0]["image"] == coarse["training"][0]["image"]

    # a rerun refuses to mix with the previous output
    with pytest.raises(RuntimeError) as err:
        run_workflow(BUNDLE, INFER, "infer", **infer)
    assert str(out) in _chain(err.value)

    # paste_outside_roi keeps the coarse voxels exactly outside m_roi
    paste = tiny(data, tmp_path, refined_dir=str(tmp_path / "pasted"), paste_outside_roi=True, max_coarse_cases=1)
    run_workflow(BUNDLE, INFER, "infer", **paste)
    item = read_datalist(tmp_path / "pasted" / "datalist.json")["training"][0]
    src = coarse["training"][0]
    vol = np.asarray(nib.load(item["image"][0]).dataobj)
    coarse_vol = np.asarray(nib.load(src["image"][0]).dataobj)
    label = np.asarray(nib.load(src["label"]).dataobj)
    m_roi = roi_mask(label, np.asarray(nib.load(src["roi"]).dataobj), margin=4) > 0
    np.testing.assert_array_equal(vol[~m_roi], coarse_vol[~m_roi])
    assert not np.array_equal(vol[m_roi], coarse_vol[m_roi])


@pytest.mark.slow
def test_refine_bad_input_fails_before_output(data: dict[str, Path], tmp_path: Path) -> None:
    dl = _datalist(data["coarse"])
    missing = str(tmp_path / "absent_t1n.nii.gz")
    dl["training"][1]["image"] = [missing]
    bad = tmp_path / "bad_datalist.json"
    bad.write_text(json.dumps(dl))
    ckpt = tmp_path / "models" / "model.pt"
    ckpt.parent.mkdir()
    torch.save({}, ckpt)
    with pytest.raises(InputCheckError) as err:
        run_workflow(BUNDLE, INFER, "infer", **tiny(data, tmp_path, coarse_datalist=str(bad)))
    assert f"{missing}: file not found ({bad} training[1]" in _chain(err.value)
    assert not (tmp_path / "outputs").exists()


@pytest.mark.slow
def test_pix2pix_train_and_synthesise(data: dict[str, Path], tmp_path: Path) -> None:
    wf = run_workflow(BUNDLE, TRAIN_P2P, "train", run_id="training", **train_overrides(data, tmp_path, max_epochs=1))
    trainer = wf.parser.get_parsed_content("train#trainer")
    terms = loss_terms(trainer.state.output)
    assert trainer.state.iteration == 2 and {"g_l1", "g_adv_patch", "d_loss"} <= set(terms)
    assert terms["g_adv_global"] == 0.0  # PatchDiscriminator: no global head
    assert (tmp_path / "models_p2p" / "model.pt").is_file()

    wf = run_workflow(BUNDLE, INFER_P2P, "infer", **tiny(data, tmp_path, max_coarse_cases=1))
    assert wf.check_properties() == []
    synth = read_datalist(tmp_path / "outputs" / "pix2pix" / "datalist.json")
    src = read_datalist(data["coarse"])["training"][0]
    (item,) = synth["training"]
    img = nib.load(item["image"][0])
    assert img.shape == SHAPE
    np.testing.assert_allclose(img.affine, nib.load(src["label"]).affine)
    brain = np.asarray(nib.load(src["brain_mask"]).dataobj) > 0
    vol = np.asarray(img.dataobj)
    assert np.all(vol[~brain] == -1.0) and np.ptp(vol[brain]) > 0
    assert Path(item["label"]).read_bytes() == Path(src["label"]).read_bytes()
    assert item["provenance"]["stage"] == "pix2pix" and item["provenance"]["source_label"] == src["label"]
