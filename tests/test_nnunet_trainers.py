"""nnU-Net v2 trainers with DTSS and MAS (custom_components.nnunet): the synthesis on nnU-Net's arrays, the MAS
weights, and two iterations of each trainer through the launcher on a tiny dataset (extra [nnunet], which
`make setup` installs)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from custom_components.export.nnunet import NNUNET_LABELS, REGIONS_CLASS_ORDER
from custom_components.handlers.mas import MASStatistics
from custom_components.nnunet import PreprocessedDTSS, bundle_settings, regions_to_internal, sample_region_dice

REPO = Path(__file__).resolve().parents[1]
DATASET_ID = 987
DATASET = f"Dataset{DATASET_ID}_tiny"


def _case(shape: tuple[int, int, int] = (32, 32, 32), seed: int = 0, centre_shift: int = 0) -> tuple[np.ndarray, ...]:
    """A preprocessed-like case: z-scored channels, 0 outside a spherical brain; nested tumour in export values
    (1 oedema, 3 enhancing, 2 necrosis) and -1 outside the brain (nnU-Net's crop_to_nonzero)."""
    rng = np.random.default_rng(seed)
    grid = np.indices(shape).astype(np.float32)
    centre = np.array(shape, dtype=np.float32)[:, None, None, None] / 2
    r_brain = np.sqrt(((grid - centre) ** 2).sum(0))
    centre[0] += centre_shift
    r = np.sqrt(((grid - centre) ** 2).sum(0))
    brain = r_brain < shape[0] / 2 - 2
    seg = np.zeros((1, *shape), np.int8)
    seg[0][r <= 7] = 1
    seg[0][r <= 4] = 3
    seg[0][r <= 2] = 2
    seg[0][~brain] = -1
    data = rng.normal(0.0, 1.0, (2, *shape)).astype(np.float32)
    data[0, seg[0] > 0] += 2.0
    data[1, seg[0] == 3] += 3.0
    data[:, ~brain] = 0.0
    return data, seg


def test_dtss_changes_the_tumour_and_keeps_the_label_consistent() -> None:
    data, seg = _case(shape=(40, 40, 40))
    dtss = PreprocessedDTSS.from_bundle(prob=1.0)
    settings = bundle_settings()
    assert dtss.dtss.radius_range == tuple(float(r) for r in settings["dtss_radius_range"])
    assert dtss.dtss.iterations_range == tuple(settings["dtss_iterations_range"])
    out, out_seg, applied = dtss(data, seg, seed=3)
    assert applied and out.dtype == data.dtype and out_seg.dtype == seg.dtype
    changed = (out != data).any(axis=0)
    grown = (out_seg[0] > 0) & (seg[0] == 0)
    assert changed.sum() > 100 and grown.sum() > 10
    # every changed voxel is tumour in the new label (the synthetic label covers where the image changed)
    assert not (changed & (out_seg[0] <= 0)).any()
    # the real tumour stays labelled as it was; the outside of the brain is untouched and stays -1
    assert np.array_equal(out_seg[seg > 0], seg[seg > 0])
    outside = seg[0] < 0
    assert np.array_equal(out_seg[0][outside], seg[0][outside]) and not changed[outside].any()
    assert set(np.unique(out_seg)) <= {-1, 0, 1, 2, 3}
    # deterministic for a seed, different for another
    again, again_seg, _ = dtss(data, seg, seed=3)
    assert np.array_equal(again, out) and np.array_equal(again_seg, out_seg)
    other, _, _ = dtss(data, seg, seed=4)
    assert not np.array_equal(other, out)


def test_dtss_probability_and_tumour_free_cases() -> None:
    data, seg = _case()
    never = PreprocessedDTSS.from_bundle(prob=0.0)
    assert never(data, seg, seed=0) == (data, seg, False)
    empty = np.where(seg > 0, 0, seg).astype(seg.dtype)
    always = PreprocessedDTSS.from_bundle(prob=1.0)
    out, out_seg, applied = always(data, empty, seed=0)
    assert not applied and out is data and out_seg is empty
    half = PreprocessedDTSS(0.5, (3, 5), (3, 10), 1.0)
    drawn = [half(data, seg, seed=s)[2] for s in range(40)]
    assert 8 < sum(drawn) < 32


def test_regions_to_internal_and_sample_dice() -> None:
    _, seg = _case()
    s = torch.from_numpy(np.maximum(seg, 0).astype(np.int64))
    # nnU-Net's region target: one channel per region (whole tumour, tumour core, enhancing)
    regions = torch.stack([s[0] > 0, (s[0] == 2) | (s[0] == 3), s[0] == 3])[None].float()
    internal = regions_to_internal(regions > 0.5)
    expected = torch.from_numpy(np.array([0, 2, 1, 3], np.uint8)[np.maximum(seg[0], 0)])
    assert torch.equal(internal[0], expected)
    logits = torch.cat([regions * 20 - 10, (regions * 20 - 10).flip(-1)])  # perfect, then mirrored
    dice = sample_region_dice(logits, torch.cat([regions, regions]), REGIONS_CLASS_ORDER)
    assert dice[0] == pytest.approx(1.0) and 0 < float(dice[1]) < 1


def _hand_weight(dice: float, eta: float, theta: float, beta: float) -> float:
    """Eq. 6 with eq. 13, written out."""
    lo, hi = eta - theta, eta + theta
    if lo <= dice <= hi:
        return 1.0
    q1, q2 = lo - beta, hi + beta
    if q1 < dice < q2:
        return -(dice - q1) * (dice - q2) / (beta * (2 * theta + beta))
    return 0.0


def test_mas_weights_match_the_paper() -> None:
    from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper

    from custom_components.nnunet.trainers import SampleWeightedLoss

    beta, c = 0.1, 2e-5
    stats = MASStatistics(beta=beta, c=c)
    inner = DeepSupervisionWrapper(lambda x, y: ((torch.sigmoid(x) - y) ** 2).mean(), [0.6, 0.4])
    loss = SampleWeightedLoss(inner, stats, synthetic_weight=0.5, regions_class_order=REGIONS_CLASS_ORDER)
    dice = torch.tensor([0.75, 0.55, 0.3, 0.55, float("nan")])
    synthetic = torch.tensor([True, True, True, False, True])
    # before statistics: the fixed weights (synthetic_weight for synthetic samples)
    assert loss.weights(dice, synthetic).tolist() == [0.5, 0.5, 0.5, 1.0, 0.5]
    real = [0.6, 0.8, 0.7]
    stats.update({f"case{i}": d for i, d in enumerate(real)})
    eta, theta = float(np.mean(real)), (max(real) - min(real)) / 2 + c  # eqs. 7-8
    assert stats.eta == pytest.approx(eta) and stats.theta == pytest.approx(theta)
    hand = [_hand_weight(float(d), eta, theta, beta) for d in dice[:3]] + [1.0, 0.5]
    assert loss.weights(dice, synthetic).tolist() == pytest.approx(hand, abs=1e-6)
    assert 0 < hand[1] < 1 and hand[0] == 1.0 and hand[2] == 0.0
    # the forward pass: each sample's deep-supervision loss (all levels) times its weight, mean over the batch
    torch.manual_seed(0)
    output = [torch.randn(3, 3, 8, 8, 8, requires_grad=True), torch.randn(3, 3, 4, 4, 4, requires_grad=True)]
    target = [(torch.rand(3, 3, 8, 8, 8) > 0.5).float(), (torch.rand(3, 3, 4, 4, 4) > 0.5).float()]
    flags = torch.tensor([True, False, True])
    with loss.batch(flags):
        total = loss(output, target)
    w = loss.weights(sample_region_dice(output[0], target[0]), flags)
    per = [inner([o[b : b + 1] for o in output], [t[b : b + 1] for t in target]) for b in range(3)]
    expected = sum(w[b] * per[b].detach() for b in range(3)) / 3
    assert float(total.detach()) == pytest.approx(float(expected), rel=1e-5)
    assert torch.equal(loss.last["weight"], w)
    # outside a training batch (validation) it is nnU-Net's loss unchanged
    assert float(loss(output, target).detach()) == pytest.approx(float(inner(output, target).detach()))


def _write_raw_dataset(raw: Path, n: int = 5) -> None:
    folder = raw / DATASET
    (folder / "imagesTr").mkdir(parents=True)
    (folder / "labelsTr").mkdir()
    affine = np.eye(4)
    for i in range(n):
        data, seg = _case(seed=i, centre_shift=i - 2)
        name = f"case{i}"
        for ch in range(data.shape[0]):
            nib.save(nib.Nifti1Image(data[ch], affine), folder / "imagesTr" / f"{name}_{ch:04d}.nii.gz")
        nib.save(
            nib.Nifti1Image(np.maximum(seg[0], 0).astype(np.uint8), affine), folder / "labelsTr" / f"{name}.nii.gz"
        )
    dataset = {
        "channel_names": {"0": "T1", "1": "FLAIR"},
        "labels": NNUNET_LABELS,
        "regions_class_order": REGIONS_CLASS_ORDER,
        "numTraining": n,
        "file_ending": ".nii.gz",
    }
    (folder / "dataset.json").write_text(json.dumps(dataset))


def _env(root: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        nnUNet_raw=str(root / "raw"),
        nnUNet_preprocessed=str(root / "preprocessed"),
        nnUNet_results=str(root / "results"),
        nnUNet_n_proc_DA="0",
        nnUNet_def_n_proc="1",
        nnUNet_compile="f",
        OMP_NUM_THREADS="1",
        TUMORFAB_NUM_EPOCHS="1",
        TUMORFAB_ITERATIONS="2",
    )
    return env


def _run(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    proc = subprocess.run(args, env=env, cwd=cwd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def preprocessed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny 5-case, 2-channel, 32^3 raw dataset, planned and preprocessed by nnU-Net (3d_fullres)."""
    root = tmp_path_factory.mktemp("nnunet")
    _write_raw_dataset(root / "raw")
    plan = Path(sys.executable).parent / "nnUNetv2_plan_and_preprocess"
    env = {**_env(root), "nnUNet_n_proc_DA": "1"}  # the planner sets torch's threads to it
    _run(
        [str(plan), "-d", str(DATASET_ID), "-c", "3d_fullres", "-np", "1", "--verify_dataset_integrity"],
        env,
        root,
    )
    return root


def _train(root: Path, trainer: str) -> Path:
    cmd = [sys.executable, "-m", "custom_components", "nnunet-train", str(DATASET_ID), "3d_fullres", "0"]
    _run([*cmd, "-tr", trainer, "-device", "cpu"], _env(root), REPO)
    out = root / "results" / DATASET / f"{trainer}__nnUNetPlans__3d_fullres" / "fold_0"
    assert (out / "checkpoint_final.pth").is_file()
    return out


@pytest.mark.slow
def test_dtss_trainer_trains_and_predicts_through_the_launcher(preprocessed: Path) -> None:
    out = _train(preprocessed, "nnUNetTrainerDTSS")
    log = "".join(p.read_text() for p in out.glob("training_log_*.txt"))
    assert "DTSS on real training cases with probability 0.5" in log
    pred = preprocessed / "pred"
    images = preprocessed / "raw" / DATASET / "imagesTr"
    cmd = [sys.executable, "-m", "custom_components", "nnunet-predict", "-i", str(images), "-o", str(pred)]
    args = ["-d", str(DATASET_ID), "-c", "3d_fullres", "-f", "0", "-tr", "nnUNetTrainerDTSS", "-device", "cpu"]
    _run([*cmd, *args, "-npp", "1", "-nps", "1", "--disable_tta"], _env(preprocessed), REPO)
    assert len(list(pred.glob("case*.nii.gz"))) == 5


@pytest.mark.slow
def test_dtss_mas_trainer_trains_through_the_launcher(preprocessed: Path) -> None:
    out = _train(preprocessed, "nnUNetTrainerDTSSMAS")
    log = "".join(p.read_text() for p in out.glob("training_log_*.txt"))
    assert "MAS: " in log and "real cases" in log
