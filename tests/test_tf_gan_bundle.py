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
from custom_components.handlers import EPOCH_METRICS_FILE, OutputExistsError, read_epoch_metrics
from custom_components.transforms import roi_mask
from tests.bundle_utils import bundle_dir, run_workflow, validate_metadata, workflow
from tests.tf_gan_data import SHAPE, make_data, tiny, train_overrides

BUNDLE = "tf_gan"
TRAIN = ["common.yaml", "train.yaml"]
INFER = ["common.yaml", "inference.yaml"]
TRAIN_P2P = ["common.yaml", "train.yaml", "train_pix2pix.yaml"]
INFER_P2P = ["inference.yaml", "inference_pix2pix.yaml"]


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
    for key in ("hinge_margin", "roi_margin", "lambda_schedule", "sw_overlap", "paste_outside_roi", "upsample"):
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
    generator into <pix2pix_models_dir> with a PatchGAN and the Pix2Pix trainer, without the lambda_c schedule."""
    configs = bundle_dir(BUNDLE) / "configs"
    train, override = (yaml.safe_load((configs / f).read_text()) for f in ("train.yaml", "train_pix2pix.yaml"))
    same = {k for k in set(train) & set(override) if train[k] == override[k]}
    assert not same, f"train_pix2pix.yaml repeats train.yaml's {sorted(same)}"
    assert len((configs / "train_pix2pix.yaml").read_text().splitlines()) < 80
    parser = ConfigParser()
    parser.read_config([str(configs / f) for f in TRAIN_P2P])
    parser["bundle_root"] = "/b"
    assert parser.get_parsed_content("train_models_dir") == "/b/runs/models/pix2pix"
    assert parser["train#trainer"]["_target_"] == "custom_components.engines.Pix2PixTrainer"
    assert parser["train#trainer"]["real_data_loader"] is None
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


def test_paste_outside_roi_reaches_the_trainer_and_the_writer(data: dict[str, Path], tmp_path: Path) -> None:
    """One key, common.yaml's, for training and refinement (off by default, the paper's G)."""
    for paste in (None, True):
        extra = {} if paste is None else {"paste_outside_roi": paste}
        train = workflow(BUNDLE, TRAIN, "train", **train_overrides(data, tmp_path, **extra))
        infer = workflow(BUNDLE, INFER, "infer", **tiny(data, tmp_path, **extra))
        assert train.parser.get_parsed_content("train#trainer").paste_outside_roi is bool(paste)
        assert infer.parser.get_parsed_content("writer").paste_outside_roi is bool(paste)


def test_upsample_reaches_the_generator_in_training_and_refinement(data: dict[str, Path], tmp_path: Path) -> None:
    """One key, the same in common.yaml and inference.yaml (nearest by default, the paper's G), and in the provenance
    of the refined cases; the Pix2Pix generator keeps the paper's nearest neighbour."""
    for mode in (None, "trilinear"):
        extra = {} if mode is None else {"upsample": mode}
        train = workflow(BUNDLE, TRAIN, "train", **train_overrides(data, tmp_path, **extra))
        infer = workflow(BUNDLE, INFER, "infer", **tiny(data, tmp_path, **extra))
        for wf in (train, infer):
            assert wf.parser.get_parsed_content("network").upsample == (mode or "nearest")
        assert infer.parser.get_parsed_content("writer").parameters["upsample"] == (mode or "nearest")
        assert train.parser.get_parsed_content("pix2pix_network_def").upsample == "nearest"


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
    # the epoch rows of the first run are kept, epoch 3 added
    assert [r["epoch"] for r in read_epoch_metrics(models / EPOCH_METRICS_FILE)] == [1, 2, 3]

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


def _real_crops(data: dict[str, Path], out: Path, resample: bool, seed: int) -> list[dict[str, Any]]:
    """The real cases' crops as TF-GAN's real loader prepares them (``real_resample`` on or off)."""
    from custom_components.synthesis.tf_gan import dataset_items

    parser = ConfigParser()
    parser.read_config([str(bundle_dir(BUNDLE) / "configs" / c) for c in TRAIN])
    parser.update({**train_overrides(data, out), "real_resample": resample})
    preprocessing = parser.get_parsed_content("train#real_preprocessing")
    preprocessing.set_random_state(seed=seed)
    # one crop per case (num_samples 1): a list of one
    return [preprocessing(item)[0] for item in dataset_items(parser.get_parsed_content("real_items"))]


def _high_pass_sd(image: Any, brain: np.ndarray) -> float:
    from scipy import ndimage

    x = np.asarray(image)[0]
    return float((x - ndimage.gaussian_filter(x, 1.0))[brain].std())


def test_real_resample_smooths_the_real_crops_as_registration_smooths_the_healthy_scans(
    data: dict[str, Path], tmp_path: Path
) -> None:
    from scipy import ndimage

    plain = _real_crops(data, tmp_path, False, seed=0)
    resampled = _real_crops(data, tmp_path, True, seed=0)
    again = _real_crops(data, tmp_path, True, seed=0)
    for p, r, a in zip(plain, resampled, again, strict=True):
        assert np.array_equal(r["image"], a["image"]) and np.array_equal(r["label"], a["label"])  # seeded
        assert r["image"].shape == p["image"].shape == (1, 64, 64, 64)
        assert set(np.unique(np.asarray(r["label"]))) <= {0, 1, 2, 3}
        inner = ndimage.binary_erosion(np.asarray(p["image"])[0] > -1, iterations=4)
        # linear interpolation at sub-voxel offsets removes fine texture, as prepare_healthy's resampling does
        assert _high_pass_sd(r["image"], inner) < 0.9 * _high_pass_sd(p["image"], inner)
        # the same crop (the resampling comes last: every earlier draw is the default's), moved by at most a
        # rigid 2 degrees and 1 voxel: the tumour keeps its size within the nearest-neighbour relabelling's error
        assert abs(int((np.asarray(r["label"]) > 0).sum()) / int((np.asarray(p["label"]) > 0).sum()) - 1) < 0.1


def test_noise_input_training_curves_and_seeded_refinement(data: dict[str, Path], tmp_path: Path) -> None:
    """noise_channels 1, tumour-centred crops and a spectral-norm D: the per-epoch curves are written, refinement
    is the same for the same seed and another for another seed, and a refined case keeps its label, ROI and brain
    mask byte for byte."""
    settings = {"noise_channels": 1, "crop_neg": 0, "disc_spectral_norm": True}
    run_workflow(BUNDLE, TRAIN, "train", run_id="training", **train_overrides(data, tmp_path, max_epochs=2, **settings))
    rows = read_epoch_metrics(tmp_path / "models" / EPOCH_METRICS_FILE)
    assert [r["epoch"] for r in rows] == [1, 2]
    curves = {"epoch_d_acc", "epoch_d_acc_real", "epoch_d_acc_fake", "epoch_change_roi", "epoch_change_outside"}
    assert curves | {"epoch_g_perceptual", "epoch_g_hinge", "epoch_g_adv_patch", "lambda_c"} <= set(rows[0])
    for r in rows:
        assert r["epoch_d_acc"] == pytest.approx((r["epoch_d_acc_real"] + r["epoch_d_acc_fake"]) / 2)
        assert r["epoch_change_roi"] > 0 and 0 <= r["epoch_change_outside"] < 0.05
    refined = {}
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        run_workflow(
            BUNDLE,
            INFER,
            "infer",
            **tiny(data, tmp_path, refined_dir=str(tmp_path / name), noise_channels=1, seed=seed),
        )
        refined[name] = read_datalist(tmp_path / name / "datalist.json")["training"]
    coarse = read_datalist(data["coarse"])["training"]
    for a, b, c, src in zip(refined["a"], refined["b"], refined["c"], coarse, strict=True):
        image = [np.asarray(nib.load(i["image"][0]).dataobj) for i in (a, b, c)]
        np.testing.assert_array_equal(image[0], image[1])
        assert not np.array_equal(image[0], image[2])  # another seed, other noise
        for key in ("label", "roi", "brain_mask"):
            assert Path(a[key]).read_bytes() == Path(src[key]).read_bytes()
        assert a["provenance"]["parameters"]["noise_channels"] == 1


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
    # Pix2Pix's own epoch rows beside its checkpoints (the pipeline's training progress)
    rows = read_epoch_metrics(tmp_path / "models_p2p" / EPOCH_METRICS_FILE)
    assert [r["epoch"] for r in rows] == [1] and "epoch_g_l1" in rows[0]

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
