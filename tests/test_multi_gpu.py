"""Multi-process runs of the bundles on the CPU (torchrun, gloo): DDP training of dtss_mas_seg (MAS statistics
reduced over the ranks) and tf_gan, sharded tf_aug synthesis and sharded tf_gan refinement (every case exactly
once in the merged datalist, the same files as one process writes)."""

from __future__ import annotations

import ast
import csv
import json
import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from custom_components.data.datalist import read_datalist, write_datalist
from custom_components.data.demo import make_demo_data
from custom_components.distributed import merge_shard_datalists, shard_items, shard_path
from custom_components.handlers import read_epoch_metrics
from custom_components.handlers.mas import mas_weight
from custom_components.networks.tf_gan import TFGANGenerator
from tests.bundle_utils import REPO, bundle_dir, run_workflow
from tests.float_order import assert_nifti_folders_agree
from tests.tf_aug_data import make_aug_inputs
from tests.tf_gan_data import make_data, tiny, train_overrides

TORCHRUN = Path(sys.executable).parent / "torchrun"
NPROC = 2


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(
    bundle: str, configs: list[str], overrides: dict[str, Any], work: Path, run_id: str = "run"
) -> dict[int, str]:
    """Run ``torchrun --nproc_per_node=2 -m monai.bundle run`` on the bundle's configs plus an override file;
    returns each rank's stdout (torchrun's per-rank log files)."""
    root = bundle_dir(bundle)
    work.mkdir(parents=True, exist_ok=True)
    override_file = work / "overrides.json"
    override_file.write_text(json.dumps(overrides))
    config_files = [str(root / "configs" / c) for c in configs] + [str(override_file)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    # gloo on a loaded 2-core machine now and then aborts a rank ("terminate called without an active
    # exception", SIGABRT) before the run starts; such a run is repeated once, anything else fails at once
    for attempt in range(2):
        logs = work / f"torchrun_logs_{attempt}"
        cmd = [
            str(TORCHRUN), f"--nproc_per_node={NPROC}", f"--master_port={_free_port()}", "--log-dir", str(logs),
            "--tee", "3", "-m", "monai.bundle", "run", run_id,
            "--config_file", repr(config_files),
            "--meta_file", str(root / "configs" / "metadata.json"),
            "--logging_file", str(root / "configs" / "logging.conf"),
            "--bundle_root", str(root),
        ]  # fmt: skip
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=str(work), timeout=400)
        if proc.returncode == 0 or "terminate called without an active exception" not in proc.stdout + proc.stderr:
            break
        if "output_dir" in overrides:  # the repeat starts clean
            shutil.rmtree(overrides["output_dir"], ignore_errors=True)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    out = {}
    for rank in range(NPROC):
        (log,) = logs.glob(f"*/attempt_0/{rank}/stdout.log")
        out[rank] = log.read_text()
    for rank, text in out.items():
        assert f"rank {rank} of {NPROC}, backend gloo" in text  # a real process group per rank
    return out


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*.nii*"))}


# ---------------------------------------------------------------------------------------------- helpers
def test_sharding_helpers(tmp_path: Path) -> None:
    items = [f"case{i}" for i in range(7)]
    shards = [shard_items(items, r, 3) for r in range(3)]
    assert shards == [["case0", "case3", "case6"], ["case1", "case4"], ["case2", "case5"]]
    with pytest.raises(ValueError, match="cannot be shared by 8 processes"):
        shard_items(items, 0, 8)
    # MONAI's partition_dataset without padding: every item on exactly one rank, for any count of items and ranks
    for n in range(1, 12):
        for w in range(1, n + 1):
            parts = [shard_items(list(range(n)), r, w) for r in range(w)]
            assert sorted(i for part in parts for i in part) == list(range(n))
    assert shard_path(tmp_path / "datalist.json", 1, 3).name == "datalist.shard001-of-003.json"
    # merge: canonical order, every case once; a duplicate or a missing case is an error naming the shards
    for r, part in enumerate(shards):
        data = {"labels": "internal", "training": [{"case_id": c, "image": [f"{c}.nii"]} for c in part]}
        shard_path(tmp_path / "datalist.json", r, 3).write_text(json.dumps(data))
    partial = json.loads(shard_path(tmp_path / "datalist.json", 2, 3).read_text())
    partial["training"].append({"case_id": "case9", "image": ["case9.nii"]})
    shard_path(tmp_path / "partial.json", 0, 1).write_text(json.dumps(partial))
    with pytest.raises(
        ValueError, match=r"missing: \['case0', 'case1', 'case3', 'case4', 'case6'\], unexpected: \['case9'\]"
    ):
        merge_shard_datalists(tmp_path / "partial.json", 1, case_ids=items)
    with pytest.raises(FileNotFoundError, match="partial.shard000-of-002.json: datalist file not found"):
        merge_shard_datalists(tmp_path / "partial.json", 2)
    merged = merge_shard_datalists(tmp_path / "datalist.json", 3, case_ids=items)
    data = read_datalist(merged)
    assert [i["case_id"] for i in data["training"]] == items and data["labels"] == "internal"
    assert data["training"][0]["image"] == [str(tmp_path / "case0.nii")]
    assert not list(tmp_path.glob("datalist.shard*"))
    for r in range(2):
        shard_path(tmp_path / "two.json", r, 2).write_text(
            json.dumps({"training": [{"case_id": "same", "image": ["x.nii"]}]})
        )
    with pytest.raises(ValueError, match="appears in two shards"):
        merge_shard_datalists(tmp_path / "two.json", 2)


# ---------------------------------------------------------------------------------------------- dtss_mas_seg
def _csv(path: Path) -> list[dict[str, str]]:
    with path.open() as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_dtss_mas_seg_ddp_training_shares_mas_statistics(tmp_path: Path) -> None:
    """2 ranks, 2 real training cases: each rank sees one case per epoch, yet both use the eta/theta of both."""
    demo = make_demo_data(tmp_path / "demo", n_healthy=1, n_tumour=4, spacing=4.0, seed=0, verbose=False)["tumour"]
    data = read_datalist(demo)
    cases = data["training"] + data["validation"]
    data["training"], data["validation"] = cases[:2], cases[2:]  # every rank validates one case
    write_datalist(tmp_path / "split.json", data)
    out = tmp_path / "run"
    overrides = {
        "datalist": str(tmp_path / "split.json"), "output_dir": str(out), "max_epochs": 2, "phase2_start_epoch": 1,
        "crop_size": [32, 32, 32], "filters": [4, 8, 16, 32], "batch_size": 1, "num_workers": 0, "amp": False,
        "sw_batch_size": 1,
        # statistics from the training passes, gathered over the ranks (the evaluation pass of the default
        # mas_real_eval runs on every rank over all real cases and needs no gathering)
        "mas_real_eval": "training",
        # every rank reports the MAS statistics it ended with (full precision)
        "+finalize": ["$print('MAS_STATE', repr(@train#mas.state_dict()))"],
    }  # fmt: skip
    logs = torchrun(
        "dtss_mas_seg", ["common.yaml", "train.yaml", "multi_gpu_train.yaml"], overrides, tmp_path / "w", "training"
    )
    states = [ast.literal_eval(re.search(r"MAS_STATE (\{.*\})", logs[r]).group(1)) for r in range(NPROC)]
    assert states[0] == states[1] and states[0]["eta"] is not None  # identical on both ranks, bit for bit
    # rank 0's MAS log holds the samples of both ranks; eta_1 is the mean over both real cases
    epoch1, epoch2 = _csv(out / "mas" / "epoch_0001.csv"), _csv(out / "mas" / "epoch_0002.csv")
    assert sorted(r["case_id"] for r in epoch1) == sorted(c["case_id"] for c in cases[:2])
    dice1 = [float(r["dice"]) for r in epoch1]
    eta1, theta1 = float(np.mean(dice1)), (max(dice1) - min(dice1)) / 2 + 2e-5
    dice2 = [float(r["dice"]) for r in epoch2 if r["synthetic"] == "0"]
    assert states[0]["eta"] == pytest.approx(np.mean(dice2), abs=1e-6)
    # phase 2: the DTSS samples of *both* ranks were weighted with the gathered eta_1 / theta_1
    synthetic = [r for r in epoch2 if r["synthetic"] == "1"]
    assert len(synthetic) == 2 and len({r["case_id"] for r in synthetic}) == 2
    for r in synthetic:
        assert float(r["weight"]) == pytest.approx(mas_weight(float(r["dice"]), eta1, theta1, 0.1), abs=2e-5)
    full = torch.load(out / "models" / "checkpoint_final.pt", map_location="cpu", weights_only=False)
    assert full["trainer"]["iteration"] == 2 and full["trainer"]["epoch_length"] == 1  # one case per rank
    assert full["mas"] == states[0]
    assert not any(k.startswith("module.") for k in full["model"])
    for name in ("checkpoint_final.pt", "model.pt"):
        assert (out / "models" / name).is_file()
    # one row per epoch, written by rank 0 alone
    assert [r["epoch"] for r in read_epoch_metrics(out / "models" / "epoch_metrics.csv")] == [1, 2]
    assert f"saved final checkpoint: {out / 'models' / 'checkpoint_final.pt'}" in logs[0]
    assert "saved final checkpoint" not in logs[1]  # rank 1 writes nothing


# ---------------------------------------------------------------------------------------------- tf_gan
@pytest.fixture(scope="module")
def gan_data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return make_data(tmp_path_factory.mktemp("mg_gan_data"))


@pytest.mark.slow
def test_tf_gan_ddp_training(gan_data: dict[str, Path], tmp_path: Path) -> None:
    overrides = train_overrides(gan_data, tmp_path, max_epochs=2)
    overrides.pop("device")  # multi_gpu_train.yaml picks cuda:<LOCAL_RANK> or cpu
    logs = torchrun(
        "tf_gan", ["common.yaml", "train.yaml", "multi_gpu_train.yaml"], overrides, tmp_path / "work", "training"
    )
    models = tmp_path / "models"
    assert {p.name for p in models.iterdir()} == {"model.pt", "checkpoint_final.pt", "epoch_metrics.csv"}
    # one row per epoch, written by rank 0 alone
    assert [r["epoch"] for r in read_epoch_metrics(models / "epoch_metrics.csv")] == [1, 2]
    full = torch.load(models / "checkpoint_final.pt", weights_only=True)
    # 2 coarse cases shared by 2 ranks: one iteration per rank and epoch
    assert (full["trainer"]["max_epochs"], full["trainer"]["iteration"], full["trainer"]["epoch_length"]) == (2, 2, 1)
    assert not any(k.startswith("module.") for k in full["generator"])  # the DDP wrapper is not saved
    g_state = torch.load(models / "model.pt", weights_only=True)
    assert g_state.keys() == full["generator"].keys()
    # checkpoints and statistics come from rank 0 only
    for name in ("model.pt", "checkpoint_final.pt"):
        assert f"saved final checkpoint: {models / name}" in logs[0]
        assert f"saved final checkpoint: {models / name}" not in logs[1]
    assert "Epoch[2] Metrics" in logs[0] and "Epoch[2] Metrics" not in logs[1]
    # the epoch means of the loss terms are averaged over the ranks: rank 0's iteration alone differs
    iteration = re.findall(r"Epoch: 2/2, Iter: 1/1 -- .*? loss: ([0-9.]+)", logs[0])
    epoch = re.findall(r"Epoch\[2\] Metrics -- .*?epoch_loss: ([0-9.]+)", logs[0])
    assert len(iteration) == len(epoch) == 1 and iteration[0] != epoch[0]


@pytest.mark.slow
def test_tf_gan_sharded_refinement(gan_data: dict[str, Path], tmp_path: Path) -> None:
    """The sharded refinement config, its ranks run one after the other (no process group): rank 1, then rank 0
    merges; the result equals a single-process refinement byte for byte."""
    torch.manual_seed(0)
    (tmp_path / "models").mkdir()
    torch.save(TFGANGenerator(1, 1, 3, [8] * 6, residual=True).state_dict(), tmp_path / "models" / "model.pt")
    configs = ["common.yaml", "inference.yaml", "multi_gpu_inference.yaml"]
    sharded = tmp_path / "sharded"
    for rank in (1, 0):
        run_workflow("tf_gan", configs, "infer", **tiny(gan_data, tmp_path, refined_dir=str(sharded), shard_rank=rank, num_shards=2))  # fmt: skip
        shard = shard_path(sharded / "datalist.json", rank, 2)
        assert shard.is_file() == (rank == 1)  # rank 0's shard is merged and removed at once
    single = tmp_path / "single"
    run_workflow("tf_gan", configs[:2], "infer", **tiny(gan_data, tmp_path, refined_dir=str(single)))
    merged, reference = read_datalist(sharded / "datalist.json"), read_datalist(single / "datalist.json")
    ids = [i["case_id"] for i in read_datalist(gan_data["coarse"])["training"]]
    assert [i["case_id"] for i in merged["training"]] == ids == [i["case_id"] for i in reference["training"]]
    assert {k: v for k, v in merged.items() if k != "training"} == {
        k: v for k, v in reference.items() if k != "training"
    }
    # both runs are in this process (same threads, one case per batch): every case runs the very same float
    # operations in the same order, so the files match byte for byte on any CPU
    assert _files(sharded) == _files(single) and len(_files(single)) == 4 * len(ids)
    assert not list(sharded.glob("datalist.shard*"))


# ---------------------------------------------------------------------------------------------- tf_aug
@pytest.fixture(scope="module")
def aug_data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return make_aug_inputs(tmp_path_factory.mktemp("mg_aug"))


@pytest.mark.slow
def test_tf_aug_sharded_synthesis(aug_data: dict[str, Any], tmp_path: Path) -> None:
    num_cases = 5
    overrides = {**aug_data, "num_cases": num_cases, "output_dir": str(tmp_path / "run")}
    logs = torchrun("tf_aug", ["common.yaml", "inference.yaml", "multi_gpu_inference.yaml"], overrides, tmp_path / "w")
    coarse = tmp_path / "run" / "coarse"
    ids = [f"tfaug-{i:05d}" for i in range(num_cases)]
    merged = read_datalist(coarse / "datalist.json")
    assert [i["case_id"] for i in merged["training"]] == ids  # every case exactly once, in case order
    assert [i["provenance"]["case_index"] for i in merged["training"]] == list(range(num_cases))
    assert not list(coarse.glob("datalist.shard*"))
    # rank r made the cases i with i % 2 == r, and nothing else
    for rank, text in logs.items():
        written = sorted(re.findall(r"(tfaug-\d{5}): written", text))
        assert written == [c for i, c in enumerate(ids) if i % NPROC == rank]
    assert "merged 2 shard datalist(s), 5 case(s)" in logs[0] and "merged" not in logs[1]
    # the same datalist and files as one process makes: the ranks ran one thread each, this process may run
    # several, so the ROI blur's convolution may sum in another order; labels, ROI and brain masks (integers)
    # must match bit for bit, images to float32 rounding
    single = tmp_path / "single"
    run_workflow("tf_aug", ["common.yaml", "inference.yaml"], "infer", **overrides, synthesis_dir=str(single))
    assert json.loads((coarse / "datalist.json").read_text()) == json.loads((single / "datalist.json").read_text())
    assert len(assert_nifti_folders_agree(coarse, single)) == 4 * num_cases
    assert (coarse / "qc" / "tfaug-00000.png").is_file() and not (coarse / "qc" / "tfaug-00001.png").exists()
