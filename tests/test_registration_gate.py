"""prepare-healthy: the brain-Dice gate (a failed registration writes nothing and stops the pipeline) and the
choice of the reference image (T1-weighted first)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from custom_components import cli
from custom_components.data.atomic import save_nifti
from custom_components.data.datalist import read_datalist
from custom_components.pipeline.config import load_config
from custom_components.pipeline.experiment import Experiment
from custom_components.pipeline.runner import run_stages
from custom_components.synthesis import healthy_prep
from custom_components.synthesis.healthy_prep import RegistrationQualityError, choose_reference, prepare_healthy
from tests.brain_phantom import brain_shape, brain_texture

AFFINE = np.diag([4.0, 4.0, 4.0, 1.0])  # 4 mm voxels: one registration level, fast


def _identity_registration(*args, **kwargs):
    """A registration that gives up: the identity transform (what a failed optimiser can return)."""
    return sitk.Euler3DTransform(), {"final_metric": 0.0, "shrink_factors": [1, 1]}


@pytest.fixture
def scans(tmp_path: Path) -> dict[str, Path]:
    brain = np.where(brain_shape(), brain_texture(), 0.0).astype(np.float32)
    shifted = AFFINE.copy()
    shifted[0, 3] = 60.0  # the same brain 60 mm to the side (15 voxels of a 12-voxel radius)
    ref = save_nifti(brain, AFFINE, tmp_path / "real" / "case-t1n.nii.gz")
    save_nifti(brain, AFFINE, tmp_path / "healthy" / "aligned.nii.gz")
    save_nifti(brain, shifted, tmp_path / "healthy" / "shifted.nii.gz")
    return {"reference": ref, "healthy": tmp_path / "healthy", "out": tmp_path / "prepared"}


def _prepared_files(out: Path) -> list[str]:
    return sorted(p.name for p in out.iterdir() if not p.name.endswith("_qc.png")) if out.exists() else []


def test_failed_registration_writes_nothing(scans: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(healthy_prep, "register", _identity_registration)
    with pytest.raises(RegistrationQualityError) as err:
        prepare_healthy(scans["healthy"], scans["reference"], scans["out"], qc=False, verbose=False)
    msg = str(err.value)
    png = scans["out"] / "shifted_qc.png"
    assert str(scans["healthy"] / "shifted.nii.gz") in msg and str(scans["reference"]) in msg and str(png) in msg
    assert "aligned.nii.gz" not in msg  # the aligned scan passed (Dice 1) ...
    assert _prepared_files(scans["out"]) == []  # ... but nothing is written while another scan fails
    assert png.stat().st_size > 10_000 and not (scans["out"] / "aligned_qc.png").exists()  # qc=False: failures only
    # the gate is a number: with min_brain_dice 0 the same run writes both cases
    datalist = prepare_healthy(
        scans["healthy"], scans["reference"], scans["out"], qc=False, verbose=False, min_brain_dice=0.0
    )
    dices = {it["case_id"]: it["provenance"]["dice_brain_vs_reference"] for it in read_datalist(datalist)["training"]}
    assert dices["aligned"] == 1.0 and dices["shifted"] < 0.5
    assert "datalist.json" in _prepared_files(scans["out"])


def test_cli_exits_non_zero(
    scans: dict[str, Path], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(healthy_prep, "register", _identity_registration)
    with pytest.raises(SystemExit) as exit_info:
        cli.prepare_healthy(str(scans["healthy"]), str(scans["reference"]), str(scans["out"]), min_brain_dice=0.8)
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert "shifted.nii.gz" in err and "brain Dice" in err and "shifted_qc.png" in err and "0.80" in err
    assert _prepared_files(scans["out"]) == []


def test_pipeline_stops_at_prepare_healthy(
    scans: dict[str, Path], monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The pipeline's prepare_healthy stage fails (min_brain_dice from the pipeline config) and records nothing;
    the reference is the real case's t1n although FLAIR is its first modality."""
    monkeypatch.setattr(healthy_prep, "register", _identity_registration)
    real = tmp_path / "real"
    flair = save_nifti(np.asarray(np.where(brain_shape(), 50.0, 0.0), np.float32), AFFINE, real / "case-t2f.nii.gz")
    label = save_nifti(np.zeros((40, 48, 40), np.uint8), AFFINE, real / "case-seg.nii.gz")
    (real / "real.json").write_text(
        json.dumps(
            {
                "modalities": ["t2f", "t1n"],
                "labels": "brats2023",
                "training": [{"case_id": "case", "image": [str(flair), str(scans["reference"])], "label": str(label)}],
            }
        )
    )
    config = tmp_path / "pipeline.yaml"
    config.write_text(
        f"workdir: {tmp_path / 'work'}\nreal_datalist: {real / 'real.json'}\nhealthy: {scans['healthy']}\n"
        "min_brain_dice: 0.7\n"
    )
    exp = Experiment(load_config(config))
    stages = exp.data_stages()
    assert [s.name for s in stages] == ["prepare_healthy"]
    with pytest.raises(RegistrationQualityError, match="0.70"):
        run_stages(stages, exp.work)
    assert f"reference image {scans['reference']} (t1n of case case" in capsys.readouterr().out
    assert not exp.prepared_healthy.exists() and not (exp.work / "prepare_healthy" / "stage.json").exists()
    assert _prepared_files(exp.stage_dir("prepare_healthy")) == []


@pytest.mark.parametrize(
    ("modalities", "expected"),
    [(["t2f", "t1c", "t1n"], "t1n"), (["t2w", "t1c"], "t1c"), (["t2f", "t2w"], "t2f"), (None, None)],
)
def test_reference_choice(tmp_path: Path, modalities: list[str] | None, expected: str | None) -> None:
    names = modalities or ["a", "b"]
    item = {"case_id": "c0", "image": [f"c0-{m}.nii.gz" for m in names], "brain_mask": "c0_brainmask.nii.gz"}
    other = {"case_id": "c1", "image": [f"c1-{m}.nii.gz" for m in names]}
    data = {"training": [item, other], **({"modalities": modalities} if modalities else {})}
    (tmp_path / "real.json").write_text(json.dumps(data))
    chosen = choose_reference(tmp_path / "real.json")
    assert chosen["modality"] == expected and chosen["case_id"] == "c0"
    assert chosen["image"] == tmp_path / f"c0-{expected or 'a'}.nii.gz"
    assert chosen["brain_mask"] == tmp_path / "c0_brainmask.nii.gz"


def test_reference_override_kept(tmp_path: Path) -> None:
    config = tmp_path / "p.yaml"
    config.write_text("real_datalist: real.json\nhealthy: h\nreference: ref/t2f.nii.gz\n")
    assert Experiment(load_config(config)).reference() == tmp_path / "ref" / "t2f.nii.gz"
    config.write_text("real_datalist: real.json\nhealthy: h\n")
    assert Experiment(load_config(config)).reference() == tmp_path / "real.json"


def test_wrong_brain_mask_fails_the_gate_with_real_registration(scans: dict[str, Path]) -> None:
    """No mock: a healthy scan given a brain_mask that holds only half of its brain registers, but its brain
    then covers half of the reference brain (Dice about 0.67), so the gate stops the run."""
    healthy = scans["healthy"]
    (healthy / "shifted.nii.gz").unlink()
    half = brain_shape() & (np.indices((40, 48, 40))[2] < 20)
    save_nifti(half.astype(np.uint8), AFFINE, healthy / "aligned_brainmask.nii.gz")
    with pytest.raises(
        RegistrationQualityError, match=r"aligned.nii.gz.*brain Dice 0\.[4-7]\d\d < min_brain_dice 0.80"
    ):
        prepare_healthy(healthy, scans["reference"], scans["out"], verbose=False)
    assert _prepared_files(scans["out"]) == [] and (scans["out"] / "aligned_qc.png").is_file()
