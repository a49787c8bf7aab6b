"""Phase-2 sampling of dtss_mas_seg's TwoPhaseDataset: the real-only control with the synthetic arms' samples per
step (``real_per_case``), the TF paper's union sampling (``sampling="union"``), and the bundle's wiring of both."""

from __future__ import annotations

import csv
from collections import Counter

import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser
from monai.data import list_data_collate
from monai.transforms import Compose, RandFlipd, RandSpatialCropd
from torch.utils.data import DataLoader

from custom_components.data.datalist import read_datalist, write_datalist
from custom_components.data.demo import make_demo_data
from custom_components.engines import TwoPhaseDataset
from tests.bundle_utils import REPO, run_workflow

SIZE, CROP, OFFSET = 12, 6, 10_000


def _real(n: int) -> list[dict]:
    """n cases whose voxel values encode the case and the position: case k holds k * OFFSET + its flat index, so a
    crop's minimum (at its low corner, whatever the flips) names the case and the crop's origin."""
    grid = torch.arange(SIZE**3, dtype=torch.float32).reshape(1, SIZE, SIZE, SIZE)
    return [
        {"case_id": f"r{k}", "image": grid + k * OFFSET, "label": torch.zeros(1, SIZE, SIZE, SIZE)} for k in range(n)
    ]


def _synthetic(m: int) -> list[dict]:
    return [{**case, "case_id": f"s{j}", "image": case["image"] + 10 * OFFSET} for j, case in enumerate(_real(m))]


def _augment(seed: int) -> Compose:
    augment = Compose(
        [
            RandSpatialCropd(["image", "label"], roi_size=[CROP] * 3, random_size=False),
            RandFlipd(["image", "label"], prob=0.5, spatial_axis=0),
        ]
    )
    augment.set_random_state(seed)
    return augment


def _batches(ds: TwoPhaseDataset) -> list[dict]:
    return list(DataLoader(ds, batch_size=2, shuffle=False, collate_fn=list_data_collate))


def _origin(image: torch.Tensor) -> tuple[int, ...]:
    """(case, x, y, z) of a crop from :func:`_real`'s values."""
    low = int(image.min())
    return (low // OFFSET, *np.unravel_index(low % OFFSET, (SIZE,) * 3))


def test_real_matched_batches_hold_twice_the_real_crops_and_no_synthetic():
    real = _real(4)
    baseline = _batches(TwoPhaseDataset(real, _augment(0)))
    control = _batches(TwoPhaseDataset(real, _augment(0), real_per_case=1))
    synthetic_arm = _batches(TwoPhaseDataset(real, _augment(0), synthetic=_synthetic(4), synthetic_per_case=1))
    assert len(baseline) == len(control) == len(synthetic_arm) == 2  # same steps per epoch
    for base, ctrl, syn in zip(baseline, control, synthetic_arm, strict=True):
        # twice the baseline's real crops per step: the synthetic arm's samples per step, all of them real
        assert ctrl["image"].shape[0] == 2 * base["image"].shape[0] == syn["image"].shape[0] == 4
        assert ctrl["is_synthetic"].tolist() == [False] * 4 and sum(syn["is_synthetic"].tolist()) == 2
        assert ctrl["mas"].tolist() == [False] * 4 and ctrl["weight"].tolist() == [1.0] * 4
        # each index's two crops are of its own case, beside each other in the batch
        assert ctrl["case_id"] == [c for c in base["case_id"] for _ in range(2)]
        assert [_origin(x)[0] for x in ctrl["image"]] == [int(c[1:]) for c in ctrl["case_id"]]
        # independent augmentation: the two crops of one case differ (own crop centre)
        first, second = ctrl["image"][0::2], ctrl["image"][1::2]
        assert all(_origin(a) != _origin(b) for a, b in zip(first, second, strict=True))
        assert all(a.shape == (1, CROP, CROP, CROP) for a in ctrl["image"])


def test_real_per_case_fractional_and_phase1():
    ds = TwoPhaseDataset(_real(4), lambda d: dict(d), real_per_case=0.5, phase2_start_epoch=1)
    # phase 1 is real-only sampling, one sample per index, whatever real_per_case says
    assert [len(ds[i]) for i in range(4)] == [1, 1, 1, 1] and ds.samples_per_case() == 1
    ds.set_epoch(2)
    # floor((i + 1) / 2) - floor(i / 2) extra crops: indices 1 and 3, as synthetic_per_case's rule
    assert [len(ds[i]) for i in range(4)] == [1, 2, 1, 2]
    assert [ds.samples_per_case(index=i) for i in range(4)] == [1, 2, 1, 2]
    assert ds.synthetic_per_epoch() == 0 and not any(s["is_synthetic"] for i in range(4) for s in ds[i])


def test_union_sampling_keeps_the_baselines_samples_per_epoch_and_walks_the_union():
    n, m = 4, 2
    ds = TwoPhaseDataset(_real(n), lambda d: dict(d), synthetic=_synthetic(m), sampling="union", synthetic_mas=False)
    # the union in its evenly interleaved order (s(p) = floor(2p / 6)): r0 r1 s0 r2 r3 s1; an epoch walks 4 places
    expected = {1: ["r0", "r1", "s0", "r2"], 2: ["r3", "s1", "r0", "r1"], 3: ["s0", "r2", "r3", "s1"]}
    used: Counter[str] = Counter()
    for epoch in range(1, 7):
        ds.set_epoch(epoch)
        samples = [ds[i] for i in range(len(ds))]
        # one sample per index, n indices: the baseline's samples per epoch (and per step at any batch size)
        assert len(ds) == n and all(len(s) == 1 for s in samples) and ds.samples_per_case() == 1
        ids = [s[0]["case_id"] for s in samples]
        if epoch in expected:
            assert ids == expected[epoch], epoch
        syn = [s[0] for s in samples if s[0]["is_synthetic"]]
        # floor or ceil of n m / (n + m) = 1.33 synthetic samples per epoch
        assert len(syn) in (1, 2) and len(syn) == ds.synthetic_per_epoch()
        assert all(s["case_id"].startswith("s") and not s["mas"] for s in syn)
        assert all(s[0]["case_id"].startswith("r") == (not s[0]["is_synthetic"]) for s in samples)
        used.update(ids)
    # 6 epochs x 4 = 24 draws = 4 passes over the 6 items: every union item equally often, synthetic fraction 2/6
    assert used == Counter({c: 4 for c in ("r0", "r1", "r2", "r3", "s0", "s1")})


def test_union_without_synthetic_is_phase1_sampling():
    ds = TwoPhaseDataset(_real(3), lambda d: dict(d), sampling="union")
    for epoch in (1, 2, 5):
        ds.set_epoch(epoch)
        assert [[s["case_id"] for s in ds[i]] for i in range(3)] == [["r0"], ["r1"], ["r2"]]


def test_sampling_refusals():
    real = _real(2)
    with pytest.raises(ValueError, match="sampling must be one of"):
        TwoPhaseDataset(real, dict, sampling="mixed")
    with pytest.raises(ValueError, match="real_per_case must be >= 0"):
        TwoPhaseDataset(real, dict, real_per_case=-1)
    with pytest.raises(ValueError, match=r"online synthesis \(DTSS, CarveMix\).*sampling='companion'"):
        TwoPhaseDataset(real, dict, online=[dict], sampling="union")
    with pytest.raises(ValueError, match="real_per_case 1 adds crops per index.*sampling='companion'"):
        TwoPhaseDataset(real, dict, real_per_case=1, sampling="union")


def _bundle_dataset(**overrides) -> TwoPhaseDataset:
    """dtss_mas_seg's train#dataset as train.yaml builds it, on in-memory cases instead of a datalist."""
    configs = REPO / "bundles" / "dtss_mas_seg" / "configs"
    parser = ConfigParser()
    parser.read_config([str(configs / "common.yaml"), str(configs / "train.yaml")])
    real = _real(3)
    values = {
        "train#real_items": real,
        "train#real_dataset": real,
        "train#synthetic_dataset": _synthetic(2),
        "crop_size": [CROP] * 3,
        **overrides,
    }
    for key, value in values.items():
        parser[key] = value
    return parser.get_parsed_content("train#dataset")


def test_bundle_keys_reach_the_dataset():
    default = _bundle_dataset()
    assert (default.sampling, default.real_per_case, len(default.online)) == ("companion", 0.0, 1)
    control = _bundle_dataset(use_dtss=False, real_per_case=1)
    assert control.real_per_case == 1.0 and control.samples_per_case(phase=2) == 2 + 1  # + 1 synthetic companion
    union = _bundle_dataset(use_dtss=False, synthetic_sampling="union")
    assert union.sampling == "union" and union.samples_per_case(phase=2) == 1
    # the bundle's default DTSS cannot be drawn from a union (MONAI wraps the dataset's ValueError)
    with pytest.raises(RuntimeError) as info:
        _bundle_dataset(synthetic_sampling="union")
    assert isinstance(info.value.__cause__, ValueError) and "online synthesis" in str(info.value.__cause__)


@pytest.mark.slow
def test_bundle_trains_the_control_and_union_sampling(tmp_path):
    """One phase-2 epoch through the bundle's workflow: the MAS log lists every training sample of the epoch."""
    demo = make_demo_data(tmp_path / "demo", n_healthy=1, n_tumour=4, spacing=4.0, seed=0, verbose=False)["tumour"]
    data = read_datalist(demo)
    synthetic = tmp_path / "synthetic.json"  # 2 demo cases stand in for a synthetic datalist (internal labels)
    write_datalist(
        synthetic, {"labels": "internal", "modalities": data["modalities"], "training": data["training"][:2]}
    )
    common = {
        "datalist": str(demo), "crop_size": [32, 32, 32], "filters": [4, 8, 16, 32], "batch_size": 2,
        "num_workers": 0, "device": "cpu", "amp": False, "sw_batch_size": 1, "max_epochs": 1,
        "phase2_start_epoch": 0, "use_dtss": False, "use_mas": False,
    }  # fmt: skip
    runs = {
        "control": {"real_per_case": 1},
        "union": {"synthetic_sampling": "union", "synthetic_datalists": [str(synthetic)]},
    }
    rows = {}
    for name, extra in runs.items():
        out = tmp_path / name
        run_workflow(
            "dtss_mas_seg", ["common.yaml", "train.yaml"], "train", "training", output_dir=str(out), **common, **extra
        )
        with (out / "mas" / "epoch_0001.csv").open() as f:
            rows[name] = [(r["case_id"], r["synthetic"]) for r in csv.DictReader(f) if r["source"] == "train"]
    real = sorted(item["case_id"] for item in data["training"])  # 3 real training cases
    # the control: each real case twice (two crops per index), nothing synthetic
    assert sorted(rows["control"]) == sorted((c, "0") for c in real for _ in range(2))
    # union: the baseline's 3 samples per epoch, from the union of 3 real and 2 synthetic cases (positions 0-2 of
    # r0 r1 s0 r2 s1: floor(3 * 2 / 5) = 1 synthetic)
    assert len(rows["union"]) == 3 and sum(s == "1" for _, s in rows["union"]) == 1
