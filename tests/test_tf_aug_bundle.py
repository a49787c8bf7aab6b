"""The tf_aug bundle end to end on tiny demo data: metadata, properties, training, synthesis, resume."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest
import torch
from scipy import ndimage

from custom_components.data.datalist import read_datalist
from custom_components.data.demo import make_demo_data
from custom_components.handlers import EPOCH_METRICS_FILE, OutputExistsError, read_epoch_metrics
from custom_components.networks import build_segmentation_network
from custom_components.synthesis.healthy_prep import prepare_healthy
from custom_components.synthesis.tf_aug import case_seed
from tests.bundle_utils import run_workflow, validate_metadata, workflow

BUNDLE = "tf_aug"
TRAIN = ["common.yaml", "train.yaml"]
INFER = ["common.yaml", "inference.yaml"]
NUM_CASES = 3


def _chain(e: BaseException) -> str:
    """Messages of an exception and its causes (bundle expressions wrap errors in RuntimeError)."""
    out = []
    while e is not None:
        out.append(str(e))
        e = e.__cause__ or e.__context__
    return "\n".join(out)


def _nifti(path: str | Path) -> np.ndarray:
    return np.asarray(nib.load(str(path)).dataobj)


def _files(folder: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.suffix in (".nii", ".json")
    }


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> dict[str, Any]:
    """Demo data at 4 mm, healthy scans prepared into the tumour space, a random dtss_mas_seg checkpoint."""
    root = tmp_path_factory.mktemp("tf_aug")
    paths = make_demo_data(root / "demo", n_healthy=2, n_tumour=3, spacing=4.0, seed=0, verbose=False)
    reference = read_datalist(paths["tumour"])["training"][0]["image"][0]
    healthy = prepare_healthy(paths["healthy"], reference, root / "prepared", qc=False, verbose=False)
    torch.manual_seed(0)
    ckpt = root / "seg_model.pt"
    torch.save(build_segmentation_network("dynunet", 1, 4, (8, 16, 32)).state_dict(), ckpt)
    overrides = {
        "healthy_datalist": str(healthy),
        "real_datalist": str(paths["tumour"]),
        "output_dir": str(root / "run"),
        "encoder_checkpoint": str(ckpt),
        "encoder_filters": [8, 16, 32],
        "max_epochs": 2,
        "lr": 0.01,
        "crop_size": [32, 32, 32],
        "aug_min_voxels": 10,
        "num_cases": NUM_CASES,
        "qc_cases": 1,
        "seed": 0,
        "num_workers": 0,
    }
    return {"root": root, "healthy": healthy, "overrides": overrides}


@pytest.fixture(scope="module")
def trained(demo) -> dict[str, Any]:
    run_workflow(BUNDLE, TRAIN, "train", run_id="training", **demo["overrides"])
    return demo


@pytest.fixture(scope="module")
def synthesised(trained) -> Path:
    run_workflow(BUNDLE, INFER, "infer", **trained["overrides"])
    return Path(trained["overrides"]["output_dir"]) / "coarse"


def _synthesise(demo, out: Path, **extra) -> Path:
    run_workflow(BUNDLE, INFER, "infer", **{**demo["overrides"], "synthesis_dir": str(out), **extra})
    return out


def test_metadata_validates():
    meta = validate_metadata(BUNDLE)
    assert meta["schema"].endswith("/0.8.1/meta_schema_20240725.json")


@pytest.mark.slow
@pytest.mark.parametrize(("configs", "kind"), [(TRAIN, "train"), (INFER, "infer")])
def test_check_properties(trained, configs, kind):
    # the inference properties include the network, i.e. the learned parameters: after training
    # overwrite: initialize only (a training rerun into the trained output_dir is otherwise refused)
    wf = workflow(BUNDLE, configs, kind, **trained["overrides"], **({"overwrite": True} if kind == "train" else {}))
    wf.initialize()
    assert wf.check_properties() == []


@pytest.mark.slow
def test_training_writes_learned_parameters(trained):
    models = Path(trained["overrides"]["output_dir"]) / "models"
    params = json.loads((models / "intensity.json").read_text())
    classes = ("NCR", "ED", "ET")
    assert set(params) == {*classes, "initial"}
    assert all(len(params[c]["a"]) == 1 and len(params[c]["b"]) == 1 for c in classes)
    # the default start is the moment match (away from the identity: the phantoms' classes are darker than the
    # healthy tissue), and SGD moved the parameters from there; the state_dict agrees with the JSON
    start = params["initial"]
    assert start["method"] == "moments"
    assert any(start[c]["a"][0] != 1.0 or start[c]["b"][0] != 0.0 for c in classes)
    assert any(params[c]["a"][0] != start[c]["a"][0] or params[c]["b"][0] != start[c]["b"][0] for c in classes)
    state = torch.load(models / "intensity.pt", weights_only=True)
    assert state["b"][2, 0].item() == pytest.approx(params["ET"]["b"][0])
    assert (models / "checkpoint_final.pt").is_file()
    # one row per epoch (the pipeline's training progress): the epoch's mean loss and a, b after the epoch
    rows = read_epoch_metrics(models / EPOCH_METRICS_FILE)
    assert [r["epoch"] for r in rows] == [1, 2]
    assert all(np.isfinite(r["epoch_loss"]) for r in rows)
    assert rows[-1]["a_ET_t1n"] == pytest.approx(params["ET"]["a"][0], rel=1e-5)
    assert rows[-1]["b_ET_t1n"] == pytest.approx(params["ET"]["b"][0], rel=1e-5, abs=1e-6)


@pytest.mark.slow
def test_training_rerun_is_refused_unless_resumed(trained, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(trained["overrides"]["output_dir"], out)
    overrides = {**trained["overrides"], "output_dir": str(out)}
    before = _files(out / "models")
    # the same output folder: refused before anything is written (a SystemExit, no config-expression traceback)
    with pytest.raises(OutputExistsError) as err:
        run_workflow(BUNDLE, TRAIN, "train", run_id="training", **overrides)
    assert f"{out / 'models'}: an earlier run's models are there" in _chain(err.value)
    assert _files(out / "models") == before
    # resume_checkpoint continues the run (epoch 3 of 3) and keeps exactly the newest epoch checkpoint
    models = out / "models"
    wf = run_workflow(
        BUNDLE, TRAIN, "train", run_id="training", **{**overrides, "max_epochs": 3},
        resume_checkpoint=str(models / "checkpoint_final.pt"),
    )  # fmt: skip
    trainer = wf.parser.get_parsed_content("train#trainer")
    assert trainer.state.epoch == 3
    assert sorted(p.name for p in models.glob("*_epoch=*.pt")) == ["checkpoint_epoch=3.pt"]
    # the epoch rows of the first run are kept, epoch 3 added
    assert [r["epoch"] for r in read_epoch_metrics(models / EPOCH_METRICS_FILE)] == [1, 2, 3]


@pytest.mark.slow
def test_synthesised_cases(trained, synthesised):
    data = read_datalist(synthesised / "datalist.json")
    assert data["labels"] == "internal" and data["modalities"] == ["t1n"]
    items = data["training"]
    assert [it["case_id"] for it in items] == [f"tfaug-{i:05d}" for i in range(NUM_CASES)]
    params = json.loads((Path(trained["overrides"]["output_dir"]) / "models" / "intensity.json").read_text())
    healthy = read_datalist(trained["healthy"])["training"]
    for i, it in enumerate(items):
        prov = it["provenance"]
        assert it["synthetic"] is True and prov["stage"] == "tf_aug"
        assert prov["seed"] == case_seed(0, i) and prov["case_index"] == i
        assert prov["healthy"] == healthy[i % len(healthy)]["image"][0]  # round robin
        assert prov["source_masks"] and all(s.endswith("_seg.nii.gz") for s in prov["source_masks"])
        assert prov["intensity"] == {c: params[c] for c in ("NCR", "ED", "ET")}
        assert {"scale", "rotate_deg", "flip", "shift"} <= set(prov["params"]["components"][0])
        src_img = nib.load(healthy[i % len(healthy)]["image"][0])
        x = np.asarray(src_img.dataobj)
        brain_in = _nifti(healthy[i % len(healthy)]["brain_mask"]) > 0
        out_img = nib.load(it["image"][0])
        y = np.asarray(out_img.dataobj)
        label, roi, brain = _nifti(it["label"]), _nifti(it["roi"]), _nifti(it["brain_mask"])
        assert np.allclose(out_img.affine, src_img.affine) and y.dtype == np.float32
        assert np.array_equal(brain > 0, brain_in)
        assert label.any() and not np.any(label[~brain_in])  # the tumour lies inside the healthy brain
        assert np.array_equal(roi, (label > 0).astype(np.uint8))
        assert np.array_equal(y[roi == 0], x[roi == 0])  # outside the ROI: the prepared scan, bit for bit
        # inside class c: clip(a_c * B(x) + b_c) with B the brain-normalised Gaussian (sigma 2, radius 3 sigma)
        w = brain_in.astype(np.float64)
        num = ndimage.gaussian_filter(x * w, 2.0, truncate=3.0, mode="nearest")
        den = ndimage.gaussian_filter(w, 2.0, truncate=3.0, mode="nearest")
        for c, name in ((1, "NCR"), (2, "ED"), (3, "ET")):
            sel = label == c
            if sel.any():
                a, b = params[name]["a"][0], params[name]["b"][0]
                np.testing.assert_allclose(y[sel], np.clip(a * num[sel] / den[sel] + b, -1, 1), atol=2e-5)
        assert y.min() >= -1 and y.max() <= 1
    assert (synthesised / "qc" / "tfaug-00000.png").is_file()
    assert not (synthesised / "qc" / "tfaug-00001.png").exists()


@pytest.mark.slow
def test_same_seed_is_byte_identical_and_labels_export(trained, synthesised, tmp_path):
    # the configs' default loads with worker processes; `synthesised` used none: each case is seeded by its index
    again = _synthesise(trained, tmp_path / "again", num_workers=2)
    first, second = _files(synthesised), _files(again)
    assert first.keys() == second.keys() and len(first) == 1 + NUM_CASES * 5
    assert all(first[k] == second[k] for k in first)
    other_seed = _synthesise(trained, tmp_path / "seed1", seed=1, num_cases=1)
    label0 = _nifti(synthesised / "tfaug-00000" / "tfaug-00000_label.nii")
    assert not np.array_equal(_nifti(other_seed / "tfaug-00000" / "tfaug-00000_label.nii"), label0)
    gz = _synthesise(trained, tmp_path / "gz", output_ext=".nii.gz", num_cases=1)
    gz2 = _synthesise(trained, tmp_path / "gz2", output_ext=".nii.gz", num_cases=1)
    f = "tfaug-00000/tfaug-00000_t1n.nii.gz"
    assert (gz / f).read_bytes() == (gz2 / f).read_bytes()  # gzip without time stamp or file name
    assert np.array_equal(_nifti(gz / f), _nifti(synthesised / "tfaug-00000" / "tfaug-00000_t1n.nii"))
    b21 = _synthesise(trained, tmp_path / "b21", export_labels="brats2021", num_cases=1)
    assert read_datalist(b21 / "datalist.json")["labels"] == "brats2021"
    internal = _nifti(synthesised / "tfaug-00000" / "tfaug-00000_label.nii")
    exported = _nifti(b21 / "tfaug-00000" / "tfaug-00000_label.nii")
    assert np.array_equal(exported, np.where(internal == 3, 4, internal))


@pytest.mark.slow
def test_mass_effect_option_displaces_tissue_not_outline(trained, synthesised, tmp_path):
    """mass_effect: true displaces the healthy tissue around m_s before painting; same masks, same outline."""
    mass = _synthesise(trained, tmp_path / "mass", mass_effect=True, num_cases=1)
    case = "tfaug-00000/tfaug-00000"
    label = _nifti(synthesised / f"{case}_label.nii")
    np.testing.assert_array_equal(_nifti(mass / f"{case}_label.nii"), label)  # same seed, same m_s
    plain, moved = _nifti(synthesised / f"{case}_t1n.nii"), _nifti(mass / f"{case}_t1n.nii")
    outside = label == 0
    assert np.abs(moved - plain)[outside].max() > 0.05  # tissue next to the tumour moved
    brain, brain_moved = _nifti(synthesised / f"{case}_brainmask.nii") > 0, _nifti(mass / f"{case}_brainmask.nii") > 0
    assert 2 * (brain & brain_moved).sum() / (brain.sum() + brain_moved.sum()) >= 0.99
    np.testing.assert_array_equal(moved[~brain], plain[~brain])  # background untouched
    far = ndimage.distance_transform_edt(label == 0, sampling=4.0) > 40.0  # beyond mass_effect_falloff_mm
    np.testing.assert_array_equal(moved[far], plain[far])
    record = json.loads((mass / f"{case}_provenance.json").read_text())
    assert any(t["transform"] == "MassEffectd" for t in record["fingerprint"]["synthesis"])


@pytest.mark.slow
def test_interrupted_run_resumes_without_duplicates(trained, synthesised, tmp_path):
    out = tmp_path / "resume"
    shutil.copytree(synthesised, out)
    before = _files(out)
    kept = out / "tfaug-00000" / "tfaug-00000_t1n.nii"
    kept_mtime = kept.stat().st_mtime_ns
    (out / "tfaug-00001" / "tfaug-00001_label.nii").unlink()  # interrupted after some files
    (out / "tfaug-00002" / "tfaug-00002_provenance.json").unlink()  # interrupted before the record
    truncated = out / "tfaug-00000" / "tfaug-00000_roi.nii"
    (out / "datalist.json").unlink()
    _synthesise(trained, out)
    assert _files(out) == before
    assert kept.stat().st_mtime_ns == kept_mtime  # the complete case was skipped, not rewritten
    assert len(read_datalist(out / "datalist.json")["training"]) == NUM_CASES
    # a corrupted (truncated) file is detected by its recorded size and the case redone
    truncated.write_bytes(truncated.read_bytes()[:100])
    _synthesise(trained, out)
    assert _files(out) == before


@pytest.mark.slow
def test_changed_settings_and_bad_inputs_are_refused_before_writing(trained, synthesised, tmp_path):
    out = tmp_path / "refuse"
    shutil.copytree(synthesised, out)
    before = _files(out)
    with pytest.raises(Exception) as err:
        _synthesise(trained, out, aug_max_shift=3)
    assert "tfaug-00000_provenance.json: this case was made with other settings" in _chain(err.value)
    assert _files(out) == before
    fresh = tmp_path / "fresh"
    with pytest.raises(Exception) as err:
        _synthesise(trained, fresh, intensity_params=str(tmp_path / "missing.json"))
    assert "missing.json: learned intensity parameters not found" in _chain(err.value)
    assert not fresh.exists()
    bad = tmp_path / "healthy_no_mask.json"
    data = json.loads(Path(trained["healthy"]).read_text())
    for it in data["training"]:
        it.pop("brain_mask")
        it["image"] = [str(Path(trained["healthy"]).parent / f) for f in it["image"]]
    bad.write_text(json.dumps(data))
    with pytest.raises(SystemExit) as err:  # the input check's InputCheckError
        _synthesise(trained, fresh, healthy_datalist=str(bad))
    assert "healthy_no_mask.json: training[0] (case" in _chain(err.value) and "no 'brain_mask'" in _chain(err.value)
    assert not fresh.exists()
    _synthesise(
        trained, fresh, intensity_params=str(tmp_path / "missing.json"), allow_identity_intensity=True, num_cases=1
    )
    assert json.loads((fresh / "tfaug-00000" / "tfaug-00000_provenance.json").read_text())["provenance"]["intensity"][
        "ET"
    ] == {"a": [1.0], "b": [0.0]}
