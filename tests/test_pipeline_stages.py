"""Stage construction of the experiment: arms, seeds, ablation subsets and what each arm trains on."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from custom_components.pipeline.config import load_config
from custom_components.pipeline.experiment import Experiment
from custom_components.pipeline.summary import batch_note, evaluation_note, synthesis_note


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
    assert names.index("tf_gan_refine_s1") < names.index("pix2pix_synthesise_s0") < names.index("synthetic_subsets_s0")
    assert {f"seg_{a}_s{s}" for a in ("tf_syn2", "tf_syn3", "dtss_mas") for s in (0, 1)} <= set(names)
    assert len(stages) + 1 == experiment.count_model_stages()  # + the report stage
    # the largest ablation ratio decides how many cases TF-Aug synthesises
    assert _overrides(experiment, "tf_aug_synthesise_s0")["num_cases"] == 3 * 3


def test_arms_differ_only_in_phase2_data(experiment):
    experiment.model_stages()
    sub = experiment.stage_dir("synthetic_subsets_s1")  # seed 1's arms train with seed 1's synthetic cases
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
    assert "mass_effect" not in _overrides(exp, "tf_aug_synthesise_s0")
    assert _overrides(exp, "tf_aug_synthesise_mass_s2")["mass_effect"] is True
    assert _overrides(exp, "tf_aug_synthesise_mass_s2")["seed"] == 2
    assert names.index("tf_aug_synthesise_mass_s0") < names.index("seg_tf_aug+mass_s0")
    assert _overrides(exp, "seg_tf_aug+mass_s2")["synthetic_datalists"] == [str(exp.mass_coarse_datalist(2))]
    dtss = _overrides(exp, "seg_dtss+mass_s0")
    assert dtss["use_dtss"] and dtss["dtss_mass_effect"] and not dtss["use_mas"]
    assert "dtss_mass_effect" not in _overrides(exp, "seg_baseline_s0")


def _inputs_made_earlier(stages) -> None:
    """Every stage's input that another stage writes is written by an earlier stage."""
    made: dict = {}
    for stage in stages:
        for path in stage.outputs:
            made[path] = stage.name
    done: set = set()
    for stage in stages:
        late = [made[p] for p in stage.inputs if p in made and made[p] not in done]
        assert not late, f"{stage.name} reads outputs of later stages {late}"
        done.add(stage.name)


def test_synthesis_draws_per_seed(experiment):
    """synthesis_per_seed: draws (default): TF-Aug, TF-GAN and Pix2Pix train once (first seed, its F), every
    seed synthesises its own cases (TF-Aug seeded by it) and its arms train with them."""
    stages = experiment.model_stages()
    names = [s.name for s in stages]
    by_name = {s.name: s for s in stages}
    _inputs_made_earlier(stages)
    assert experiment.cfg["synthesis_per_seed"] == "draws"
    trainings = [n for n in names if n.startswith(("tf_aug_train", "tf_gan_train", "pix2pix_train"))]
    assert trainings == ["tf_aug_train_s0", "tf_gan_train_s0", "pix2pix_train_s0"]
    assert _overrides(experiment, "tf_aug_train_s0")["encoder_checkpoint"] == str(experiment.phase1_model(0))
    outputs = {}
    for seed in (0, 1):
        aug = _overrides(experiment, f"tf_aug_synthesise_s{seed}")
        # the seed drives TF-Aug's draws (case i: seed (seed, i)); the intensities are seed 0's
        assert aug["seed"] == seed and aug["intensity_params"] == str(experiment.tf_aug_params(0))
        refine = _overrides(experiment, f"tf_gan_refine_s{seed}")
        assert refine["coarse_datalist"] == str(experiment.coarse_datalist(seed)) and refine["seed"] == seed
        assert refine["generator_checkpoint"] == str(experiment.tf_gan_generator(0))
        pix = _overrides(experiment, f"pix2pix_synthesise_s{seed}")
        assert pix["coarse_datalist"] == str(experiment.coarse_datalist(seed))
        assert pix["generator_checkpoint"] == str(experiment.pix2pix_generator(0))
        assert experiment.refined_datalist(seed) in by_name[f"synthetic_subsets_s{seed}"].inputs
        outputs[seed] = [
            *by_name[f"tf_aug_synthesise_s{seed}"].outputs,
            *by_name[f"tf_gan_refine_s{seed}"].outputs,
            *by_name[f"pix2pix_synthesise_s{seed}"].outputs,
            *by_name[f"synthetic_subsets_s{seed}"].outputs,
        ]
        sub = experiment.stage_dir(f"synthetic_subsets_s{seed}")
        for arm, kind in (("tf_aug", "coarse"), ("tf", "refined"), ("tf_mas", "refined"), ("pix2pix", "pix2pix")):
            datalist = str(sub / f"{kind}_syn1.json")
            assert _overrides(experiment, f"seg_{arm}_s{seed}")["synthetic_datalists"] == [datalist], (arm, seed)
            assert Path(datalist) in by_name[f"seg_{arm}_s{seed}"].inputs
    assert not set(outputs[0]) & set(outputs[1])  # the seeds' synthetic datalists are distinct files
    assert synthesis_note(experiment) == (
        "Synthesis: synthetic cases drawn per seed (TF models trained once, seed 0): each seed's arms train with "
        "that seed's cases; the realism table pools every seed's cases (at most 50 a method, seed by seed), the QC "
        "montages and refinement table show seed 0's; "
        "DTSS / CarveMix draw online from each segmentation run's seed."
    )


def test_synthesis_trained_per_seed(tmp_path):
    """synthesis_per_seed: train: every seed also trains TF-Aug, TF-GAN and Pix2Pix, with its own phase-1 F."""
    arms = ["baseline", "tf_aug", "tf", "pix2pix"]
    exp = _experiment(tmp_path, seeds=[3, 5], arms=arms, synthesis_per_seed="train")
    stages = exp.model_stages()
    _inputs_made_earlier(stages)
    names = [s.name for s in stages]
    assert len(stages) + 1 == exp.count_model_stages()
    for seed in (3, 5):
        for part in ("tf_aug_train", "tf_gan_train", "pix2pix_train"):
            assert _overrides(exp, f"{part}_s{seed}")["seed"] == seed
        for part in ("tf_aug_train", "tf_gan_train"):
            assert _overrides(exp, f"{part}_s{seed}")["encoder_checkpoint"] == str(exp.phase1_model(seed))
        assert _overrides(exp, f"tf_gan_train_s{seed}")["coarse_datalist"] == str(exp.coarse_datalist(seed))
        assert _overrides(exp, f"tf_aug_synthesise_s{seed}")["intensity_params"] == str(exp.tf_aug_params(seed))
        assert _overrides(exp, f"tf_gan_refine_s{seed}")["generator_checkpoint"] == str(exp.tf_gan_generator(seed))
        pix = _overrides(exp, f"pix2pix_synthesise_s{seed}")["generator_checkpoint"]
        assert pix == str(exp.pix2pix_generator(seed))
        # no ablation: each arm trains with all of its seed's cases
        assert _overrides(exp, f"seg_tf_s{seed}")["synthetic_datalists"] == [str(exp.refined_datalist(seed))]
        assert _overrides(exp, f"seg_tf_aug_s{seed}")["synthetic_datalists"] == [str(exp.coarse_datalist(seed))]
    assert names.index("seg_phase1_s5") < names.index("tf_aug_train_s3")
    assert "TF models trained per seed" in synthesis_note(exp) and "show seed 3's" in synthesis_note(exp)
    with pytest.raises(ValueError, match="unknown synthesis_per_seed 'once'"):
        _experiment(tmp_path, synthesis_per_seed="once")


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
        # the default val_interval 0: no training validates; each model is its final weights
        assert o["val_interval"] == 0
    assert _overrides(exp, "seg_phase1_s0")["val_interval"] == 0


def test_a_val_interval_is_capped_at_each_trainings_epochs(tmp_path):
    """seg.val_interval > 0: phase 1 validates every val_interval epochs (at most its epoch count, so at least at
    its end); a DSMA arm's short continuation validates once, at its end; a negative value is refused."""
    seg = {"batch_size": 2, "phase1_epochs": 30, "phase2_epochs": 4, "val_interval": 50}
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    exp = _experiment(tmp_path / "a", n_train=5, protocol="dsma", seeds=[0], arms=["baseline"], seg=seg)
    exp.model_stages()
    assert _overrides(exp, "seg_phase1_s0")["val_interval"] == 30
    assert _overrides(exp, "seg_baseline_s0")["val_interval"] == 4
    with pytest.raises(ValueError, match="val_interval must be a whole number >= 0"):
        _experiment(tmp_path / "b", n_train=5, seeds=[0], arms=["baseline"], seg={**seg, "val_interval": -1})


def test_fractional_synthetic_per_real(tmp_path):
    exp = _experiment(tmp_path, n_train=4, seeds=[0], arms=["baseline", "tf"], synthetic_per_real=[0.5, 1.5])
    assert exp.arms == ["baseline", "real_matched", "tf", "tf_syn0.5", "tf_syn1.5"]
    # the largest ratio decides how many cases are synthesised: round(1.5 * 4) = 6
    assert exp.num_synthetic() == 6
    stages = {s.name: s for s in exp.model_stages()}
    assert _overrides(exp, "tf_aug_synthesise_s0")["num_cases"] == 6
    sub = exp.stage_dir("synthetic_subsets_s0")
    o = _overrides(exp, "seg_tf_syn0.5_s0")
    assert o["synthetic_datalists"] == [str(sub / "refined_syn0.5.json")] and o["synthetic_per_case"] == 0.5
    # the subsets hold round(r * n_real) cases: Syn50 of 100 real cases = 50
    refined = {"training": [{"case_id": f"s{i}", "image": [f"s{i}.nii.gz"], "label": "l.nii.gz"} for i in range(6)]}
    for path in (exp.refined_datalist(0), exp.coarse_datalist(0)):
        path.parent.mkdir(parents=True)
        path.write_text(json.dumps(refined))
    stages["synthetic_subsets_s0"].function()
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


def _phantom_case(k: int) -> dict:
    """A preprocessed real case as dtss_mas_seg's dataset holds it: a brain ball in [-1, 1] (background -1) with a
    nested lesion (NCR in ET in ED) placed by ``k``."""
    import numpy as np

    grid = np.indices((32, 32, 32)).astype(np.float32)
    lesion = np.sqrt(((grid - np.array([13 + 3 * k, 16, 16])[:, None, None, None]) ** 2).sum(0))
    label = np.select([lesion < 2.5, lesion < 4.5, lesion < 7], [1, 3, 2], 0).astype(np.uint8)
    noise = np.random.default_rng(k).normal(0, 0.05, label.shape)
    brain = np.sqrt(((grid - 15.5) ** 2).sum(0)) < 14
    image = np.where(brain, np.array([0.2, -0.6, 0.5, 0.8])[label] + noise, -1.0).astype(np.float32)
    return {"case_id": f"c{k}", "image": image[None], "label": label[None]}


def _online_draws(seed: int, num_workers: int = 0) -> list:
    """Case 0's DTSS- and CarveMix-derived samples of epoch 1, drawn as dtss_mas_seg draws them: the run's
    ``set_determinism(seed)``, then MONAI's DataLoader seeds the dataset's transforms from torch's generator
    (``set_rnd``; in each worker from the worker's seed)."""
    from monai.data import DataLoader
    from monai.utils import set_determinism

    from custom_components.engines.seg_data import TwoPhaseDataset
    from custom_components.transforms import CarveMixd, DeformationTumorSynthesisd

    set_determinism(seed=seed)
    real = [_phantom_case(k) for k in range(2)]
    dtss = DeformationTumorSynthesisd(["image", "label"], prob=1.0)
    carvemix = CarveMixd(["image", "label"], source=[1], loader=real.__getitem__, prob=1.0)  # always the other case
    dataset = TwoPhaseDataset(real, augment=lambda d: d, online=[dtss, carvemix])
    dataset.set_epoch(1)
    loader = DataLoader(dataset, batch_size=1, shuffle=False, num_workers=num_workers, collate_fn=lambda b: b[0])
    samples = next(iter(loader))
    set_determinism(seed=None)
    assert [s["is_synthetic"] for s in samples] == [False, True, True]
    return [(s["image"], s["label"]) for s in samples[1:]]


def test_online_synthesis_follows_the_runs_seed():
    """DTSS and CarveMix draw from the segmentation run's ``seed``: two seeds give other derived cases of the same
    case in the same epoch, one seed the same (in the main process and in a worker)."""
    import numpy as np

    from tests.bundle_utils import REPO

    train = yaml.safe_load((REPO / "bundles" / "dtss_mas_seg" / "configs" / "train.yaml").read_text())
    # the bundle's mechanism: determinism from `seed` first, then MONAI's DataLoader (which seeds the transforms)
    assert train["initialize"][0] == "$monai.utils.set_determinism(seed=@seed)"
    assert train["train"]["dataloader"]["_target_"] == "DataLoader"
    seed0, seed0_again, seed1 = _online_draws(0), _online_draws(0), _online_draws(1)
    for drawn, again, other in zip(seed0, seed0_again, seed1, strict=True):  # DTSS, then CarveMix
        assert all(np.array_equal(a, b) for a, b in zip(drawn, again, strict=True))  # one seed: the same case
        assert not np.array_equal(drawn[0], other[0])  # another seed: another image
    assert not np.array_equal(seed0[0][1], seed1[0][1])  # DTSS: another grown tumour
    worker0, worker1 = _online_draws(0, num_workers=1), _online_draws(1, num_workers=1)
    assert not np.array_equal(worker0[0][1], worker1[0][1]) and not np.array_equal(worker0[1][0], worker1[1][0])


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
    # source: the config file itself; synthetic_sampling: each protocol's own (companion, union)
    assert differ == {"source", "workdir", "title", "protocol", "arms", "synthetic_sampling"}
    assert (dsma["synthetic_sampling"], tf["synthetic_sampling"]) == ("companion", "union")
    assert (dsma["protocol"], tf["protocol"]) == ("dsma", "tf")
    assert tf["arms"] == ["baseline", "real_matched", "tf_aug", "tf"] and set(tf["arms"]) < set(dsma["arms"])
    assert tf["seeds"] == dsma["seeds"] == list(range(8))


def test_real_matched_control_arm_under_companion_sampling(tmp_path):
    """DSMA protocol (companion sampling): real_matched continues phase 1 as every arm does, on real data only, with a
    second augmented real crop per index where a synthetic arm has its companion."""
    seg = {"batch_size": 2, "phase1_epochs": 30, "phase2_epochs": 4}
    exp = _experiment(tmp_path, n_train=4, seeds=[0], arms=["tf", "baseline", "dtss_mas"], seg=seg)
    # added by control_arm, right after the baseline
    assert exp.cfg["arms"] == ["tf", "baseline", "real_matched", "dtss_mas"] and not exp.control_is_baseline
    stages = {s.name: s for s in exp.model_stages()}
    o = _overrides(exp, "seg_real_matched_s0")
    assert (o["real_per_case"], o["synthetic_sampling"], o["synthetic_datalists"]) == (1.0, "companion", [])
    assert not (o["use_dtss"] or o["use_carvemix"] or o["use_mas"])
    assert o["init_checkpoint"] == str(exp.phase1_model(0)) and o["max_epochs"] == 4
    # the arms it controls: one synthetic companion per index
    tf = _overrides(exp, "seg_tf_s0")
    assert (tf["synthetic_per_case"], tf["synthetic_sampling"], tf["real_per_case"]) == (1.0, "companion", 0)
    assert _overrides(exp, "seg_dtss_mas_s0")["synthetic_sampling"] == "companion"
    assert _overrides(exp, "seg_baseline_s0")["real_per_case"] == 0
    model = exp.stage_dir("seg_real_matched_s0") / "models" / "model.pt"
    assert exp.arm_model("real_matched", 0) == model
    assert _overrides(exp, "evaluate_real_matched_s0")["model_path"] == str(model)
    assert len(stages) + 1 == exp.count_model_stages()
    # base_ratio companions per index -> as many extra real crops
    (tmp_path / "r2").mkdir()
    two = _experiment(tmp_path / "r2", seeds=[0], arms=["baseline", "tf"], tf_aug={"synthetic_per_real": 2})
    assert two.arm_overrides("real_matched", 0)["real_per_case"] == 2.0


def test_union_sampling_real_matched_is_the_baseline(tmp_path):
    """TF protocol (union sampling by default): every TF arm sees the baseline's samples per step, so real_matched
    is the baseline's model, evaluated under its name and not trained again."""
    exp = _experiment(tmp_path, n_train=4, protocol="tf", seeds=[0, 1], arms=["baseline", "tf_aug", "tf"])
    assert exp.cfg["synthetic_sampling"] == "union" and exp.control_is_baseline
    stages = {s.name: s for s in exp.model_stages()}
    assert "seg_real_matched_s1" not in stages and exp.arm_epochs("real_matched") == 0
    assert exp.arm_overrides("real_matched", 1) == exp.arm_overrides("baseline", 1)
    model = _overrides(exp, "evaluate_real_matched_s1")["model_path"]
    assert model == str(exp.phase1_model(1)) == _overrides(exp, "evaluate_baseline_s1")["model_path"]
    assert "the baseline's model" in stages["evaluate_real_matched_s1"].description
    for arm in ("tf_aug", "tf"):
        o = _overrides(exp, f"seg_{arm}_s1")
        assert (o["synthetic_sampling"], o["real_per_case"], o["init_checkpoint"]) == ("union", 0, None)
    assert len(stages) + 1 == exp.count_model_stages()
    assert batch_note(exp) == "batch 2 samples drawn from the real and synthetic cases together (union sampling)"
    # union under the DSMA protocol: the control is the baseline arm's continued model
    (tmp_path / "d").mkdir()
    dsma = _experiment(tmp_path / "d", seeds=[0], arms=["baseline", "tf"], synthetic_sampling="union")
    stages = {s.name: s for s in dsma.model_stages()}
    baseline = dsma.stage_dir("seg_baseline_s0") / "models" / "model.pt"
    assert _overrides(dsma, "evaluate_real_matched_s0")["model_path"] == str(baseline)
    assert "seg_real_matched_s0" not in stages and _overrides(dsma, "seg_tf_s0")["synthetic_sampling"] == "union"


def test_online_arms_keep_companions_under_union(tmp_path):
    """DTSS derives a companion of every real case each epoch: under union sampling its arm keeps companion
    sampling, and real_matched trains (from scratch, TF protocol) as its control."""
    exp = _experiment(tmp_path, protocol="tf", seeds=[0], arms=["baseline", "tf", "dtss_mas"])
    assert exp.cfg["synthetic_sampling"] == "union" and not exp.control_is_baseline
    exp.model_stages()
    assert _overrides(exp, "seg_dtss_mas_s0")["synthetic_sampling"] == "companion"
    assert _overrides(exp, "seg_tf_s0")["synthetic_sampling"] == "union"
    o = _overrides(exp, "seg_real_matched_s0")
    assert (o["real_per_case"], o["synthetic_sampling"], o["init_checkpoint"]) == (1.0, "companion", None)
    assert o["max_epochs"] == exp.cfg["seg"]["phase1_epochs"]
    assert batch_note(exp).endswith("(union sampling); dtss_mas: 2 real samples + their online companions")
    companion = _experiment(tmp_path, seeds=[0], arms=["baseline", "tf"])
    assert batch_note(companion) == "batch 2 real samples (+ their synthetic companions)"


def test_control_arm_and_sampling_config(tmp_path):
    assert _experiment(tmp_path, arms=["baseline", "tf"], control_arm=False).arms == ["baseline", "tf"]
    assert _experiment(tmp_path, arms=["baseline"]).arms == ["baseline"]  # no synthetic arm: nothing to control
    assert _experiment(tmp_path, arms=["real_matched", "baseline"], control_arm=False).arms == [
        "baseline",
        "real_matched",
    ]
    # the synthetic-volume ablation's arms are synthetic arms too
    assert _experiment(tmp_path, arms=["baseline"], synthetic_per_real=[2]).arms == [
        "baseline",
        "real_matched",
        "tf_syn2",
    ]
    assert _experiment(tmp_path, protocol="tf", synthetic_sampling="companion").cfg["synthetic_sampling"] == "companion"
    with pytest.raises(ValueError, match=r"synthetic_sampling must be null \(the protocol's\) or one of"):
        _experiment(tmp_path, synthetic_sampling="random")
    with pytest.raises(ValueError, match="control_arm must be true or false"):
        _experiment(tmp_path, control_arm="yes")


def test_largest_component_postprocessing_reaches_every_evaluation(tmp_path):
    """``seg.overrides.keep_largest_component`` (the demo's) reaches each arm's evaluation stage and the report's
    evaluation line; without it the line names the section only."""
    seg = {"overrides": {"keep_largest_component": True}}
    exp = _experiment(tmp_path, seeds=[0], arms=["baseline", "tf"], seg=seg)
    exp.model_stages()
    assert all(_overrides(exp, f"evaluate_{arm}_s0")["keep_largest_component"] for arm in ("baseline", "tf"))
    assert evaluation_note(exp) == (
        "evaluation on section 'validation', every prediction cut to its largest connected tumour component "
        "(keep_largest_component, nnU-Net's postprocessing)"
    )
    (tmp_path / "plain").mkdir()
    assert evaluation_note(_experiment(tmp_path / "plain", seeds=[0])) == "evaluation on section 'validation'"
    demo = yaml.safe_load((Path(__file__).parents[1] / "custom_components/pipeline/demo.yaml").read_text())
    assert demo["seg"]["overrides"]["keep_largest_component"] is True
