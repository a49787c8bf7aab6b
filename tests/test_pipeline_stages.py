"""Stage construction of the experiment: arms, seeds, ablation subsets and what each arm trains on."""

from __future__ import annotations

import json

import pytest
import yaml

from custom_components.pipeline.config import load_config
from custom_components.pipeline.experiment import Experiment


@pytest.fixture
def experiment(tmp_path) -> Experiment:
    real = {"training": [{"case_id": f"c{i}", "image": [f"c{i}.nii.gz"], "label": "l.nii.gz"} for i in range(3)]}
    (tmp_path / "real.json").write_text(json.dumps(real))
    cfg = {
        "real_datalist": "real.json",
        "healthy": "healthy",
        "seeds": [0, 1],
        "arms": ["baseline", "carvemix", "pix2pix", "tf_aug", "tf", "dtss", "dtss_mas", "tf_mas"],
        "synthetic_per_real": [2, 3],
    }
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(cfg))
    return Experiment(load_config(tmp_path / "p.yaml"))


def _overrides(exp: Experiment, stage: str) -> dict:
    return json.loads((exp.work / "overrides" / f"{stage}.json").read_text())


def test_stage_list_and_count(experiment):
    stages = experiment.model_stages()
    names = [s.name for s in stages]
    assert names[:2] == ["seg_phase1_s0", "seg_phase1_s1"]
    assert names.index("tf_gan_refine") < names.index("pix2pix_synthesise") < names.index("synthetic_subsets")
    assert {f"seg_{a}_s{s}" for a in ("tf_syn2", "tf_syn3", "dtss_mas") for s in (0, 1)} <= set(names)
    assert len(stages) + 1 == experiment.count_model_stages()  # + the report stage
    # the largest ablation ratio decides how many cases TF-Aug synthesises
    assert _overrides(experiment, "tf_aug_synthesise")["num_cases"] == 3 * 3


def test_arms_differ_only_in_phase2_data(experiment):
    experiment.model_stages()
    sub = experiment.stage_dir("synthetic_subsets")
    expected = {
        "baseline": ([], False, False, False),
        "carvemix": ([], False, False, True),
        "dtss": ([], True, False, False),
        "dtss_mas": ([], True, True, False),
        "tf_aug": ([str(sub / "coarse_syn1.json")], False, False, False),
        "pix2pix": ([str(sub / "pix2pix_syn1.json")], False, False, False),
        "tf": ([str(sub / "refined_syn1.json")], False, False, False),
        "tf_mas": ([str(sub / "refined_syn1.json")], False, True, False),
        "tf_syn3": ([str(sub / "refined_syn3.json")], False, False, False),
    }
    for arm, (datalists, dtss, mas, carvemix) in expected.items():
        o = _overrides(experiment, f"seg_{arm}_s1")
        assert (o["synthetic_datalists"], o["use_dtss"], o["use_mas"], o["use_carvemix"]) == (
            datalists,
            dtss,
            mas,
            carvemix,
        ), arm
        assert o["init_checkpoint"] == str(experiment.phase1_model(1)) and o["phase2_start_epoch"] == 0
        assert o["seed"] == 1
    phase1 = _overrides(experiment, "seg_phase1_s0")
    assert phase1["phase2_start_epoch"] == phase1["max_epochs"] and not phase1["use_dtss"]


def test_mass_effect_arms(tmp_path):
    real = {"training": [{"case_id": f"c{i}", "image": [f"c{i}.nii.gz"], "label": "l.nii.gz"} for i in range(2)]}
    (tmp_path / "real.json").write_text(json.dumps(real))
    cfg = {"real_datalist": "real.json", "healthy": "healthy", "arms": ["baseline", "tf_aug+mass", "dtss+mass"]}
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(cfg))
    exp = Experiment(load_config(tmp_path / "p.yaml"))
    stages = exp.model_stages()
    names = [s.name for s in stages]
    assert len(stages) + 1 == exp.count_model_stages()
    # the paper-faithful synthesis stays as it is; a second one synthesises with mass effect
    assert "mass_effect" not in _overrides(exp, "tf_aug_synthesise")
    assert _overrides(exp, "tf_aug_synthesise_mass")["mass_effect"] is True
    assert names.index("tf_aug_synthesise_mass") < names.index("seg_tf_aug+mass_s0")
    assert _overrides(exp, "seg_tf_aug+mass_s0")["synthetic_datalists"] == [str(exp.mass_coarse_datalist)]
    dtss = _overrides(exp, "seg_dtss+mass_s0")
    assert dtss["use_dtss"] and dtss["dtss_mass_effect"] and not dtss["use_mas"]
    assert "dtss_mass_effect" not in _overrides(exp, "seg_baseline_s0")


def test_config_errors(tmp_path):
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump({"demo": {}, "arms": ["tf"]}))
    with pytest.raises(ValueError, match="must include 'baseline'"):
        load_config(tmp_path / "bad.yaml")
    (tmp_path / "bad2.yaml").write_text(yaml.safe_dump({"demo": {}, "arms": ["baseline", "gan"]}))
    with pytest.raises(ValueError, match="unknown arms"):
        load_config(tmp_path / "bad2.yaml")
    (tmp_path / "bad3.yaml").write_text(yaml.safe_dump({"real_datalist": "x.json"}))
    with pytest.raises(ValueError, match="either 'demo' or both"):
        load_config(tmp_path / "bad3.yaml")
