"""The chained pipeline end to end on tiny demo data: every stage's datalist, the report, skip on rerun."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import yaml

from custom_components.data.datalist import read_datalist
from custom_components.data.validation import validate_datalist
from custom_components.pipeline.config import load_config
from custom_components.pipeline.experiment import Experiment, run_experiment

# end-to-end runs: `make unit` leaves them out, `make test` runs them
pytestmark = pytest.mark.slow

TINY = {
    "workdir": "work",
    "title": "tiny",
    "demo": {"n_healthy": 2, "n_tumour": 4, "spacing": 4.0, "seed": 0},
    "arms": ["baseline", "tf", "dtss_mas"],
    "seeds": [0],
    "seg": {"filters": [4, 8, 16], "crop_size": [32, 32, 32], "phase1_epochs": 2, "phase2_epochs": 1},
    "tf_aug": {"epochs": 1, "crop_size": [32, 32, 32]},
    "tf_gan": {"epochs": 1, "patch_size": [64, 64, 64], "overrides": {"epoch_length": 1}},
    "qc_cases": 1,
}


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> tuple[Experiment, list[str]]:
    root = tmp_path_factory.mktemp("pipeline")
    config = root / "pipeline.yaml"
    config.write_text(yaml.safe_dump(TINY))
    cfg = load_config(config)
    lines: list[str] = []
    report = run_experiment(cfg, log=lines.append)
    assert report == Path(cfg["workdir"]) / "report" / "report.md"
    return Experiment(cfg), lines


def test_every_stage_ran_in_order(finished):
    exp, lines = finished
    done = [line.split("] ")[1].split(":")[0] for line in lines if "done in" in line]
    assert done[:5] == ["data", "prepare_healthy", "seg_phase1_s0", "tf_aug_train_s0", "tf_aug_synthesise_s0"]
    assert done[5:7] == ["tf_gan_train_s0", "tf_gan_refine_s0"]
    # real_matched (added by control_arm): one more training and evaluation
    assert done[-1] == "report" and len(done) == exp.count_model_stages() + 2 == 16


def test_stage_datalists(finished):
    exp, _ = finished
    real = read_datalist(exp.real_datalist)
    n_real = len(real["training"])
    prepared = read_datalist(exp.prepared_healthy)
    ref = nib.load(real["training"][0]["image"][0])
    for item in prepared["training"]:
        img = nib.load(item["image"][0])
        assert img.shape == ref.shape and np.allclose(img.affine, ref.affine, atol=1e-5)
    for datalist in (exp.coarse_datalist(0), exp.refined_datalist(0)):
        data = read_datalist(datalist)
        assert data["labels"] == "internal" and data["modalities"] == ["t1n"]
        assert len(data["training"]) == n_real  # one synthetic case per real case
        assert all(item["synthetic"] for item in data["training"])
        assert validate_datalist(datalist) == []
    refined = read_datalist(exp.refined_datalist(0))["training"]
    coarse = {i["case_id"]: i for i in read_datalist(exp.coarse_datalist(0))["training"]}
    for item in refined:  # the refined case keeps its coarse label
        a = np.asarray(nib.load(item["label"]).dataobj)
        b = np.asarray(nib.load(coarse[item["case_id"]]["label"]).dataobj)
        assert np.array_equal(a, b)
    # the TF arm's training was fed the refined datalist
    overrides = json.loads((exp.work / "overrides" / "seg_tf_s0.json").read_text())
    assert overrides["synthetic_datalists"] == [str(exp.refined_datalist(0))]
    assert overrides["init_checkpoint"] == str(exp.phase1_model(0))


def test_report_table(finished):
    exp, _ = finished
    md = (exp.work / "report" / "report.md").read_text()
    assert "Made with commit " in md.splitlines()[2] and "sha256 " in md.splitlines()[2]
    assert "Synthesis: synthetic cases drawn per seed (TF models trained once, seed 0)" in md
    dice_md, realism_md = md.split("## Realism")
    realism_md, refinement_md = realism_md.split("## Refinement: what TF-GAN changed")
    # every stage was made by this code and thread count: one provenance row, not MIXED
    refinement_md, provenance_md = refinement_md.split("## Provenance")
    assert "MIXED" not in provenance_md and "report" in provenance_md
    assert len([line for line in provenance_md.splitlines() if line.startswith("| ")]) == 2
    # the refinement table: the residual generator, barely trained, keeps the anatomy outside m_roi
    refinement_md, curves_md = refinement_md.split("TF-GAN's training, per epoch")
    refinement = [line.split("|")[1:-1] for line in refinement_md.splitlines() if line.startswith("| ")]
    n_refined = len(read_datalist(exp.refined_datalist(0))["training"])
    assert len(refinement) == 2 and float(refinement[1][0]) < 0.05 and int(refinement[1][3]) == n_refined
    # TF-GAN's per-epoch curves: a table of its epochs (the last included) and the plot
    curves = [line.split("|")[1:-1] for line in curves_md.splitlines() if line.startswith("| ")]
    epochs = int(exp.cfg["tf_gan"]["epochs"])
    assert [c.strip() for c in curves[0][:4]] == ["epoch", "d_acc", "d_acc_real", "d_acc_fake"]
    assert int(curves[-1][0]) == epochs and (exp.work / "report" / "tf_gan_curves.png").is_file()
    rows = {line.split("|")[1].strip(): line for line in dice_md.splitlines() if line.startswith("| ")}
    assert set(rows) == {"Arm", "baseline", "real_matched", "tf", "dtss_mas"}
    # a realism row per synthetic method, against the held-out (validation) real cases
    realism_md, features_md = realism_md.split("What the C2ST's classifier sees")
    realism_rows = {line.split("|")[1].strip() for line in realism_md.splitlines() if line.startswith("| ")}
    assert realism_rows == {"Method", "TF-Aug", "TF", "DTSS"}
    # what the classifier sees: the real tumours' feature means, then each method's
    feature_rows = [line.split("|")[1].strip() for line in features_md.splitlines() if line.startswith("| ")]
    assert feature_rows[:2] == ["tumours", "real (held-out)"] and sorted(feature_rows[2:]) == ["DTSS", "TF", "TF-Aug"]
    realism = json.loads((exp.work / "report" / "realism.json").read_text())
    n_held_out = len(read_datalist(exp.real_datalist)["validation"])
    for method in ("TF-Aug", "TF", "DTSS"):
        assert realism[method]["n_real"] == n_held_out
        assert np.isfinite(realism[method]["summary"]["frechet"])
        assert np.isfinite(realism[method]["summary"]["wasserstein"])
    assert (exp.work / "report" / "realism.png").is_file()
    results = json.loads((exp.work / "report" / "results.json").read_text())
    for r in results["runs"]:
        metrics = json.loads(exp.metrics(r["arm"], r["seed"]).read_text())["mean"]
        assert r["ET"] == pytest.approx(metrics["dice_ET"]) and 0.0 <= r["mean"] <= 1.0
        assert f"{100 * r['mean']:.2f} ±" in rows[r["arm"]]
    assert (exp.work / "report" / "report.html").is_file()
    # tf_aug, tf, dtss montages and the texture panel (real, TF-Aug, TF, DTSS side by side), shown in its section
    assert len(list((exp.work / "report" / "qc").glob("*.png"))) == 4
    assert "## Texture: real tumours beside the synthetic ones" in md and "(qc/texture.png)" in md


def test_rerun_skips_completed_stages(finished):
    exp, _ = finished
    lines: list[str] = []
    run_experiment(exp.cfg, log=lines.append)
    assert lines and all("up to date, skipped" in line for line in lines)
    lines.clear()
    run_experiment(exp.cfg, from_stage="report", log=lines.append)
    assert sum("done in" in line for line in lines) == 1 and "report: done" in lines[-1]
