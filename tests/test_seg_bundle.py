"""The dtss_mas_seg bundle end to end on tiny demo data: two-phase training (DTSS + MAS) through
``python -m monai.bundle run training``, resume, phase 2 from a checkpoint with a synthetic datalist,
evaluation, inference in the input's space, and the trained encoder as a FrozenEncoder."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest
import torch
from ignite.engine import Engine, Events

from custom_components.data.datalist import read_datalist, write_datalist
from custom_components.data.demo import make_demo_data
from custom_components.handlers import EPOCH_METRICS_FILE, read_epoch_metrics
from custom_components.handlers.mas import mas_weight
from custom_components.networks import FrozenEncoder
from tests.bundle_utils import REPO, bundle_dir, run_workflow, validate_metadata, workflow

BUNDLE = "dtss_mas_seg"
FILTERS = [4, 8, 16, 32]
TINY: dict[str, Any] = {
    "crop_size": [32, 32, 32],
    "filters": FILTERS,
    "batch_size": 2,
    "num_workers": 0,
    "device": "cpu",
    "amp": False,
    "sw_batch_size": 1,
}


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tumour datalist of 4 phantom cases on a 4-mm grid (3 training, 1 validation)."""
    out = tmp_path_factory.mktemp("segdemo")
    return make_demo_data(out, n_healthy=1, n_tumour=4, spacing=4.0, seed=0, verbose=False)["tumour"]


@pytest.fixture(scope="module")
def trained(demo: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One phase-1 epoch then one phase-2 epoch with DTSS + MAS, through the bundle's command line."""
    out = tmp_path_factory.mktemp("run1")
    overrides = {**TINY, "datalist": str(demo), "output_dir": str(out), "max_epochs": 2, "phase2_start_epoch": 1}
    cmd = _bundle_cmd(["common.yaml", "train.yaml"], overrides, out.parent, [sys.executable])
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=str(REPO), timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out


def _bundle_cmd(configs: list[str], overrides: dict[str, Any], work: Path, launcher: list[str]) -> list[str]:
    """argv running ``monai.bundle run training`` on the bundle's configs plus an override file."""
    root = bundle_dir(BUNDLE)
    override_file = work / "overrides.json"
    override_file.write_text(json.dumps(overrides))
    files = [str(root / "configs" / c) for c in configs] + [str(override_file)]
    return [
        *launcher, "-m", "monai.bundle", "run", "training",
        "--config_file", repr(files),
        "--meta_file", str(root / "configs" / "metadata.json"),
        "--logging_file", str(root / "configs" / "logging.conf"),
        "--bundle_root", str(root),
    ]  # fmt: skip


def _error_chain(fn: Any) -> str:
    """Run ``fn``; return the messages of the raised exception and its causes (MONAI wraps config errors; the
    input check raises a SystemExit listing every problem)."""
    with pytest.raises(BaseException) as info:
        fn()
    messages, err = [], info.value
    while err is not None:
        messages.append(f"{type(err).__name__}: {err}")
        err = err.__cause__
    return "\n".join(messages)


def _csv(path: Path) -> list[dict[str, str]]:
    with path.open() as f:
        return list(csv.DictReader(f))


def test_metadata_validates() -> None:
    meta = validate_metadata(BUNDLE)
    assert meta["network_data_format"]["inputs"]["image"]["num_channels"] == 4
    assert meta["network_data_format"]["outputs"]["pred"]["num_channels"] == 4
    assert meta["schema"].endswith("meta_schema_20240725.json")


@pytest.mark.parametrize(
    ("configs", "kind", "run_id"),
    [
        (["common.yaml", "train.yaml"], "train", "training"),
        (["common.yaml", "evaluate.yaml"], "infer", "evaluating"),
        (["common.yaml", "inference.yaml"], "infer", "inference"),
    ],
)
@pytest.mark.slow
def test_check_properties(demo: Path, trained: Path, tmp_path: Path, configs, kind, run_id) -> None:
    wf = workflow(
        BUNDLE, configs, kind, run_id=run_id, **TINY, datalist=str(demo), output_dir=str(tmp_path),
        model_path=str(trained / "models" / "model.pt"), infer_section="validation",
    )  # fmt: skip
    wf.initialize()
    assert wf.check_properties() == []


@pytest.mark.slow
def test_training_outputs(trained: Path) -> None:
    models = trained / "models"
    assert {"model.pt", "checkpoint_final.pt"} <= {p.name for p in models.iterdir()}
    state = torch.load(models / "model.pt", map_location="cpu", weights_only=True)
    assert "input_block.conv1.conv.weight" in state  # a plain DynUNet state_dict
    full = torch.load(models / "checkpoint_final.pt", map_location="cpu", weights_only=False)
    assert {"model", "optimizer", "lr_scheduler", "trainer", "mas"} <= set(full)
    assert full["trainer"]["iteration"] == 4 and full["trainer"]["epoch_length"] == 2
    # phase 1 (epoch 1): 3 real crops, then MAS evaluates the model after epoch 1 on the 3 real cases (tumour-centred
    # crops, eval mode); phase 2 (epoch 2): 3 real + 3 DTSS crops, MAS-weighted with the eta/theta of that evaluation
    e1, e2 = _csv(trained / "mas" / "epoch_0001.csv"), _csv(trained / "mas" / "epoch_0002.csv")
    train1 = [r for r in e1 if r["source"] == "train"]
    assert len(train1) == 3 and all(r["synthetic"] == "0" for r in train1)
    syn = [r for r in e2 if r["synthetic"] == "1"]
    assert len([r for r in e2 if r["source"] == "train"]) == 6
    assert len(syn) == 3 and all(r["case_id"].endswith("#online0") and r["mas"] == "1" for r in syn)
    real1 = {r["case_id"]: float(r["dice"]) for r in e1 if r["source"] == "real_eval"}
    assert len(real1) == 3
    eta, theta = float(np.mean(list(real1.values()))), (max(real1.values()) - min(real1.values())) / 2 + 2e-5
    assert full["mas"]["eta"] is not None
    for r in syn:
        if r["dice"] != "nan":
            assert float(r["weight"]) == pytest.approx(mas_weight(float(r["dice"]), eta, theta, 0.1), abs=1e-5)
    # the learning rate dropped to lr_phase2 for phase 2
    assert full["optimizer"]["param_groups"][0]["lr"] == pytest.approx(1e-5)
    # one row per epoch (the pipeline's training progress): the phase, and from phase 2 MAS's statistics
    rows = read_epoch_metrics(models / EPOCH_METRICS_FILE)
    assert [r["epoch"] for r in rows] == [1, 2] and [r["phase"] for r in rows] == [1, 2]
    assert "mas_eta_applied" in rows[1]


@pytest.mark.slow
def test_frozen_encoder_loads_trained_model(trained: Path) -> None:
    enc = FrozenEncoder.from_checkpoint(trained / "models" / "model.pt", levels=3, in_channels=4, filters=FILTERS)
    feats = enc(torch.zeros(1, 4, 32, 32, 32))
    assert [tuple(f.shape) for f in feats] == [(1, 4, 32, 32, 32), (1, 8, 16, 16, 16), (1, 16, 8, 8, 8)]
    assert not any(p.requires_grad for p in enc.parameters())


@pytest.mark.slow
def test_resume_continues_run(demo: Path, trained: Path, tmp_path: Path) -> None:
    out = tmp_path / "resumed"
    shutil.copytree(trained, out)
    # a fresh run into a folder with models is refused before anything is written
    fresh = workflow(BUNDLE, ["common.yaml", "train.yaml"], "train", **TINY, datalist=str(demo), output_dir=str(out))
    assert "OutputExistsError" in _error_chain(fresh.initialize)
    wf = run_workflow(
        BUNDLE, ["common.yaml", "train.yaml"], "train", run_id="training", **TINY, datalist=str(demo),
        output_dir=str(out), max_epochs=3, phase2_start_epoch=1,
        resume_checkpoint=str(out / "models" / "checkpoint_final.pt"),
    )  # fmt: skip
    trainer = wf.parser.get_parsed_content("train#trainer")
    assert trainer.state.epoch == 3 and trainer.state.iteration == 6
    # the MAS statistics of epoch 2 came back with the checkpoint and weighted epoch 3
    assert "mas_eta_applied" in trainer.state.metrics and trainer.state.metrics["phase"] == 2
    assert (out / "mas" / "epoch_0003.csv").is_file()
    # the epoch rows of the first run are kept, epoch 3 added
    assert [r["epoch"] for r in read_epoch_metrics(out / "models" / EPOCH_METRICS_FILE)] == [1, 2, 3]


@pytest.mark.slow
def test_poly_schedule_decays_the_lr_every_epoch(demo: Path, tmp_path: Path) -> None:
    """lr_schedule poly: each phase decays from its own rate, one step per epoch (2 + 2 epochs of real data)."""
    wf = workflow(
        BUNDLE, ["common.yaml", "train.yaml"], "train", run_id="training", **TINY, datalist=str(demo),
        output_dir=str(tmp_path / "poly"), max_epochs=4, phase2_start_epoch=2, val_interval=4, lr_schedule="poly",
        lr_phase1=1e-3, lr_phase2=1e-4, use_dtss=False, use_mas=False,
    )  # fmt: skip
    wf.initialize()
    trainer, optimizer = wf.parser.get_parsed_content("train#trainer"), wf.parser.get_parsed_content("train#optimizer")
    lrs: dict[int, set[float]] = {}

    def record(engine: Engine) -> None:
        lrs.setdefault(engine.state.epoch, set()).add(optimizer.param_groups[0]["lr"])

    trainer.add_event_handler(Events.ITERATION_STARTED, record)
    wf.run()
    wf.finalize()
    assert sorted(lrs) == [1, 2, 3, 4] and all(len(v) == 1 for v in lrs.values()), lrs
    half = 0.5**0.9  # (1 - 1/2) ** 0.9: the second epoch of a two-epoch phase
    np.testing.assert_allclose([min(lrs[e]) for e in range(1, 5)], [1e-3, 1e-3 * half, 1e-4, 1e-4 * half], rtol=1e-6)


@pytest.mark.slow
def test_val_interval_0_skips_validation_and_keeps_the_final_weights(demo: Path, tmp_path: Path) -> None:
    """val_interval 0 (the pipeline's): no validation pass, and model.pt holds the same weights, to the bit, as the
    best model of a run that validates once, at its end (its only, hence best, validation)."""
    models = {}
    for interval in (0, 2):
        out = tmp_path / f"val{interval}"
        wf = run_workflow(
            BUNDLE, ["common.yaml", "train.yaml"], "train", run_id="training", **TINY, datalist=str(demo),
            output_dir=str(out), max_epochs=2, phase2_start_epoch=2, val_interval=interval, use_dtss=False,
            use_mas=False,
        )  # fmt: skip
        evaluator = wf.parser.get_parsed_content("validate#evaluator")
        assert evaluator.state.iteration == (0 if interval == 0 else 1)  # 1 validation case, validated once
        models[interval] = torch.load(out / "models" / "model.pt", map_location="cpu", weights_only=True)
        assert (out / "models" / "checkpoint_final.pt").is_file()
    assert models[0].keys() == models[2].keys()
    assert all(torch.equal(models[0][k], models[2][k]) for k in models[0])


@pytest.mark.slow
def test_channels_last_trains_the_same_network_in_another_memory_layout(demo: Path, tmp_path: Path) -> None:
    """channels_last: the network's 5-D weights are channels_last_3d during training; 2 epochs give the weights of
    the default layout up to float rounding (another order of the same operations), saved as a plain state_dict."""
    models = {}
    for channels_last in (False, True):
        out = tmp_path / f"cl{int(channels_last)}"
        wf = run_workflow(
            BUNDLE, ["common.yaml", "train.yaml"], "train", run_id="training", **TINY, datalist=str(demo),
            output_dir=str(out), max_epochs=2, phase2_start_epoch=2, val_interval=0, use_dtss=False, use_mas=False,
            channels_last=channels_last,
        )  # fmt: skip
        conv = next(p for p in wf.parser.get_parsed_content("network").parameters() if p.ndim == 5)
        assert conv.is_contiguous(memory_format=torch.channels_last_3d) == channels_last
        assert conv.is_contiguous() != channels_last
        models[channels_last] = torch.load(out / "models" / "model.pt", map_location="cpu", weights_only=True)
    assert models[True].keys() == models[False].keys()
    for k, v in models[False].items():
        torch.testing.assert_close(models[True][k], v, rtol=1e-3, atol=2e-4)


@pytest.mark.slow
def test_phase2_from_checkpoint_with_synthetic_datalist(demo: Path, trained: Path, tmp_path: Path) -> None:
    # the demo cases stand in for a synthetic datalist (labels in the internal convention)
    synthetic = tmp_path / "synthetic.json"
    data = read_datalist(demo)
    write_datalist(
        synthetic, {"labels": "internal", "modalities": data["modalities"], "training": data["training"][:2]}
    )
    init = trained / "models" / "model.pt"
    out = tmp_path / "phase2"
    wf = run_workflow(
        BUNDLE, ["common.yaml", "train.yaml"], "train", run_id="training", **TINY, datalist=str(demo),
        output_dir=str(out), max_epochs=1, phase2_start_epoch=0, init_checkpoint=str(init), lr_phase2=0.0,
        use_dtss=False, use_carvemix=True, synthetic_datalists=[str(synthetic)], synthetic_weight=0.25,
    )  # fmt: skip
    trainer = wf.parser.get_parsed_content("train#trainer")
    assert trainer.state.metrics["phase"] == 2
    rows = _csv(out / "mas" / "epoch_0001.csv")
    syn = [r for r in rows if r["synthetic"] == "1" and "#" not in r["case_id"] and r["source"] == "train"]
    mixed = [r for r in rows if r["case_id"].endswith("#online0")]
    # 3 real cases, each with a CarveMix case (the only online transform here) and one synthetic-datalist case
    # (cycled over the 2 available)
    assert len(rows) == 9 + 3 and len(mixed) == 3 and all(r["synthetic"] == "1" for r in mixed)
    assert sorted(r["case_id"] for r in syn) == ["demo-tumour-000", "demo-tumour-000", "demo-tumour-001"]
    # MAS acts from the first synthetic sample: eta/theta come from the loaded model's Dice on the 3 real cases
    # (tumour-centred crops, eval mode) before the first iteration, and weight every synthetic sample (eq. 6), not the
    # fixed synthetic_weight; with lr 0 the evaluation after the epoch sees the same model, so the log's
    # real_eval rows are the start's accuracies
    summary = json.loads((out / "mas" / "summary.json").read_text())
    start = summary["history"][0]
    assert (start["when"], start["after_epoch"], start["real_cases"]) == ("start", 0, 3) and not summary["degenerate"]
    real = [float(r["dice"]) for r in rows if r["source"] == "real_eval"]
    assert len(real) == 3 and start["eta"] == pytest.approx(np.mean(real), abs=1e-5)
    assert start["theta"] == pytest.approx((max(real) - min(real)) / 2 + 2e-5, abs=1e-5)
    for r in syn + mixed:
        assert float(r["weight"]) == pytest.approx(
            mas_weight(float(r["dice"]), start["eta"], start["theta"], 0.1), abs=1e-5
        ), r
    assert any(float(r["weight"]) != 0.25 for r in syn + mixed)
    # lr 0 in phase 2: the weights are exactly those of init_checkpoint
    before, after = torch.load(init, weights_only=True), torch.load(out / "models" / "model.pt", weights_only=True)
    assert all(torch.equal(before[k], after[k]) for k in before)


@pytest.mark.slow
def test_bad_datalist_fails_before_writing(demo: Path, tmp_path: Path) -> None:
    data = read_datalist(demo)
    data["training"][1]["label"] = str(tmp_path / "nowhere_seg.nii.gz")
    bad = tmp_path / "bad.json"
    write_datalist(bad, data)
    out = tmp_path / "out"
    wf = workflow(BUNDLE, ["common.yaml", "train.yaml"], "train", **TINY, datalist=str(bad), output_dir=str(out))
    message = _error_chain(wf.initialize)
    assert "InputCheckError" in message and "nowhere_seg.nii.gz: file not found" in message
    assert f"({bad} training[1], case demo-tumour-001)" in message
    assert not out.exists()


@pytest.mark.slow
def test_evaluation_writes_metrics(demo: Path, trained: Path, tmp_path: Path) -> None:
    out = tmp_path / "eval_run"
    run_workflow(
        BUNDLE, ["common.yaml", "evaluate.yaml"], "infer", run_id="evaluating", **TINY, datalist=str(demo),
        output_dir=str(out), model_path=str(trained / "models" / "model.pt"),
    )  # fmt: skip
    rows = _csv(out / "eval" / "metrics_per_case.csv")
    assert [r["case_id"] for r in rows] == ["demo-tumour-003"]
    for col in ("dice_ET", "dice_TC", "dice_WT", "dice_mean"):
        assert 0.0 <= float(rows[0][col]) <= 1.0
    for col in ("hd95_ET", "hd95_TC", "hd95_WT"):
        assert float(rows[0][col]) >= 0.0
    report = json.loads((out / "eval" / "metrics.json").read_text())
    assert report["n_cases"] == 1 and report["section"] == "validation"
    assert report["conventions"]["hd95_mode"] == "brats" and "373.13" in report["conventions"]["empty_one"]
    assert report["mean"]["dice_WT"] == pytest.approx(float(rows[0]["dice_WT"]), abs=1e-6)
    summary = _csv(out / "eval" / "metrics_summary.csv")
    assert summary[0]["statistic"] == "mean"


def _reoriented_copy(item: dict, out: Path) -> dict:
    """The case with its voxel axes flipped (x reversed) and the affine changed so the world is unchanged (LAS)."""
    files = []
    for f in item["image"]:
        img = nib.load(f)
        data = np.asarray(img.dataobj)[::-1]
        flip = np.eye(4)
        flip[0, 0], flip[0, 3] = -1, data.shape[0] - 1
        path = out / Path(f).name.replace("demo-tumour", "las-tumour")
        nib.save(nib.Nifti1Image(np.ascontiguousarray(data), img.affine @ flip), str(path))
        files.append(str(path))
    return {"case_id": item["case_id"].replace("demo", "las"), "image": files}


@pytest.mark.slow
def test_inference_writes_labels_in_input_space(demo: Path, trained: Path, tmp_path: Path) -> None:
    data = read_datalist(demo)
    case = data["validation"][0]
    flipped = _reoriented_copy(case, tmp_path)
    assert nib.aff2axcodes(nib.load(flipped["image"][0]).affine) == ("L", "A", "S")
    infer = tmp_path / "infer.json"
    write_datalist(infer, {"labels": "internal", "modalities": data["modalities"], "test": [case, flipped]})
    out = tmp_path / "infer_run"
    run_workflow(
        BUNDLE, ["common.yaml", "inference.yaml"], "infer", run_id="inference", **TINY, datalist=str(infer),
        output_dir=str(out), model_path=str(trained / "models" / "model.pt"), export_labels="brats2021",
    )  # fmt: skip
    preds = {}
    for item in (case, flipped):
        pred = nib.load(str(out / "predictions" / f"{item['case_id']}.nii.gz"))
        ref = nib.load(item["image"][0])
        assert pred.shape == ref.shape
        np.testing.assert_allclose(pred.affine, ref.affine, atol=1e-5)
        values = np.asarray(pred.dataobj)
        assert pred.get_data_dtype() == np.uint8 and set(np.unique(values).tolist()) <= {0, 1, 2, 4}
        preds[item["case_id"]] = values
    # the same world-space prediction: the LAS copy's labels are the RAS case's flipped along x. Bit for bit on any
    # CPU: reoriented to RAS, both inputs are the same array, so the network runs the very same float operations
    np.testing.assert_array_equal(preds[flipped["case_id"]], preds[case["case_id"]][::-1])
