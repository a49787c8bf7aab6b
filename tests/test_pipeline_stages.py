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


def _experiment(tmp_path, n_train: int = 3, **cfg) -> Experiment:
    real = {
        "training": [{"case_id": f"c{i}", "image": [f"c{i}.nii.gz"], "label": "l.nii.gz"} for i in range(n_train)],
        "validation": [{"case_id": "v0", "image": ["v0.nii.gz"], "label": "l.nii.gz"}],
    }
    (tmp_path / "real.json").write_text(json.dumps(real))
    (tmp_path / "p.yaml").write_text(yaml.safe_dump({"real_datalist": "real.json", "healthy": "healthy", **cfg}))
    return Experiment(load_config(tmp_path / "p.yaml"))


def test_tf_protocol_trains_from_scratch_for_the_baselines_iterations(tmp_path):
    seg = {"batch_size": 2, "phase1_epochs": 30, "phase2_epochs": 4, "val_interval": 10}
    exp = _experiment(tmp_path, n_train=5, protocol="tf", seeds=[0, 1], arms=["baseline", "tf", "dtss_mas"], seg=seg)
    stages = {s.name: s for s in exp.model_stages()}
    # the baseline is the phase-1 model itself: no training stage, its evaluation reads the phase-1 model
    assert "seg_baseline_s0" not in stages
    assert _overrides(exp, "evaluate_baseline_s1")["model_path"] == str(exp.phase1_model(1))
    phase1 = _overrides(exp, "seg_phase1_s1")
    for arm in ("tf", "dtss_mas"):
        o = _overrides(exp, f"seg_{arm}_s1")
        # fresh initialisation: no init_checkpoint, no phase-1 model among the stage's inputs
        assert o["init_checkpoint"] is None
        assert exp.phase1_model(1) not in stages[f"seg_{arm}_s1"].inputs
        # the whole run is "phase 2" (synthetic data from the first epoch) at phase 1's learning rate
        assert o["phase2_start_epoch"] == 0 and o["lr_phase2"] == "@lr_phase1"
        # as many epochs as the baseline; an epoch is ceil(5 real cases / batch 2) = 3 iterations for both
        assert o["max_epochs"] == phase1["max_epochs"] == 30
        assert o["batch_size"] == phase1["batch_size"] == 2
        assert exp.arm_iterations(arm) == exp.arm_iterations("baseline") == 30 * 3 == 90
        assert o["val_interval"] == phase1["val_interval"] == 10
    assert len(stages) + 1 == exp.count_model_stages()


def test_dsma_protocol_continues_phase1(tmp_path):
    seg = {"batch_size": 2, "phase1_epochs": 30, "phase2_epochs": 4}
    exp = _experiment(tmp_path, n_train=5, protocol="dsma", seeds=[0], arms=["baseline", "dtss_mas"], seg=seg)
    exp.model_stages()
    for arm in ("baseline", "dtss_mas"):
        o = _overrides(exp, f"seg_{arm}_s0")
        assert o["init_checkpoint"] == str(exp.phase1_model(0)) and o["max_epochs"] == 4 and "lr_phase2" not in o
        assert exp.arm_iterations(arm) == (30 + 4) * 3


def test_fractional_synthetic_per_real(tmp_path):
    exp = _experiment(tmp_path, n_train=4, seeds=[0], arms=["baseline", "tf"], synthetic_per_real=[0.5, 1.5])
    assert exp.arms == ["baseline", "tf", "tf_syn0.5", "tf_syn1.5"]
    # the largest ratio decides how many cases are synthesised: round(1.5 * 4) = 6
    assert exp.num_synthetic() == 6
    stages = {s.name: s for s in exp.model_stages()}
    assert _overrides(exp, "tf_aug_synthesise")["num_cases"] == 6
    sub = exp.stage_dir("synthetic_subsets")
    o = _overrides(exp, "seg_tf_syn0.5_s0")
    assert o["synthetic_datalists"] == [str(sub / "refined_syn0.5.json")] and o["synthetic_per_case"] == 0.5
    # the subsets hold round(r * n_real) cases: Syn50 of 100 real cases = 50
    refined = {"training": [{"case_id": f"s{i}", "image": [f"s{i}.nii.gz"], "label": "l.nii.gz"} for i in range(6)]}
    for path in (exp.refined_datalist, exp.coarse_datalist):
        path.parent.mkdir(parents=True)
        path.write_text(json.dumps(refined))
    stages["synthetic_subsets"].function()
    counts = {r: len(json.loads((sub / f"refined_syn{r}.json").read_text())["training"]) for r in ("0.5", "1", "1.5")}
    assert counts == {"0.5": 2, "1": 4, "1.5": 6}
    (tmp_path / "x").mkdir()
    exp100 = _experiment(tmp_path / "x", n_train=100)
    assert exp100.num_subset(0.5) == 50


def test_two_phase_dataset_fractional_synthetic_per_case():
    from custom_components.engines.seg_data import TwoPhaseDataset

    real = [{"case_id": f"r{i}", "image": i, "label": i} for i in range(5)]
    synthetic = [{"case_id": f"s{j}", "image": 100 + j, "label": 0} for j in range(3)]
    ds = TwoPhaseDataset(real, augment=lambda d: d, synthetic=synthetic, synthetic_per_case=0.5)
    # floor(5 * 0.5) = 2 synthetic samples per epoch, at indices 1 and 3 (floor((i+1)/2) - floor(i/2))
    assert ds.synthetic_per_epoch() == 2
    used = []
    for epoch in (1, 2, 3):
        ds.set_epoch(epoch)
        per_index = [[s["case_id"] for s in ds[i] if s["is_synthetic"]] for i in range(5)]
        assert [len(p) for p in per_index] == [0, 1, 0, 1, 0]
        used += [c for p in per_index for c in p]
    # cycled: every synthetic case used equally often (6 draws over 3 cases)
    assert used == ["s0", "s1", "s2", "s0", "s1", "s2"]


def test_n_real_subset(tmp_path):
    exp = _experiment(tmp_path, n_train=5, n_real=2, seeds=[0], arms=["baseline", "dtss"])
    stages = {s.name: s for s in exp.data_stages()}
    assert exp.real_datalist == exp.stage_dir("real_subset") / "datalist.json" and exp.n_real() == 2
    stages["real_subset"].function()
    data = json.loads(exp.real_datalist.read_text())
    assert [c["case_id"] for c in data["training"]] == ["c0", "c1"]
    assert [c["case_id"] for c in data["validation"]] == ["v0"]
    exp.model_stages()
    assert _overrides(exp, "seg_phase1_s0")["datalist"] == str(exp.real_datalist)
    (tmp_path / "b").mkdir()
    too_many = _experiment(tmp_path / "b", n_train=1, n_real=2)
    with pytest.raises(ValueError, match="n_real 2 but the training section has 1"):
        {s.name: s for s in too_many.data_stages()}["real_subset"].function()


def test_protocol_and_n_real_validation(tmp_path):
    with pytest.raises(ValueError, match="unknown protocol"):
        _experiment(tmp_path, protocol="nnunet")
    with pytest.raises(ValueError, match="n_real must be >= 1"):
        _experiment(tmp_path, n_real=0)
    with pytest.raises(ValueError, match="synthetic_per_real values must be numbers > 0"):
        _experiment(tmp_path, synthetic_per_real=[0])
    assert load_config_default_seeds(tmp_path) == [0, 1, 2]


def load_config_default_seeds(tmp_path) -> list[int]:
    (tmp_path / "d.yaml").write_text(yaml.safe_dump({"demo": {}}))
    return load_config(tmp_path / "d.yaml")["seeds"]


def test_tf_protocol_low_data_experiment_differs_only_in_protocol_and_arms():
    """pipelines/low_data_phantom_tf.yaml claims the same data, seeds and budget as the DSMA-protocol one."""
    from tests.bundle_utils import REPO

    dsma = load_config(REPO / "pipelines" / "low_data_phantom.yaml")
    tf = load_config(REPO / "pipelines" / "low_data_phantom_tf.yaml")
    differ = {k for k in set(dsma) | set(tf) if dsma.get(k) != tf.get(k)}
    assert differ == {"source", "workdir", "title", "protocol", "arms"}  # source: the config file itself
    assert (dsma["protocol"], tf["protocol"]) == ("dsma", "tf")
    assert tf["arms"] == ["baseline", "tf_aug", "tf"] and set(tf["arms"]) < set(dsma["arms"])
    assert tf["seeds"] == dsma["seeds"] == [0, 1, 2, 3, 4]
