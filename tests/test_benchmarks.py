"""benchmarks/bench_train_throughput.py (phase-2 throughput per arm) and benchmarks/gpu_check.sh (the first check
on a CUDA machine): plans, timing helpers, phantoms, and a tiny end-to-end measurement."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch
from ignite.engine import Engine, Events

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "benchmarks" / "bench_train_throughput.py"
GPU_CHECK = REPO / "benchmarks" / "gpu_check.sh"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    """The benchmark script as a module (benchmarks/ is not a package)."""
    spec = importlib.util.spec_from_file_location("bench_train_throughput", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _run(cmd: list[str], timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, env=ENV, cwd=str(REPO), timeout=timeout)


# ---- gpu_check.sh ------------------------------------------------------------------------------------


def test_gpu_check_dry_run_lists_every_step(tmp_path: Path) -> None:
    out = tmp_path / "gpu"
    proc = _run(["bash", str(GPU_CHECK), "--dry-run", "--out", str(out), "--python", sys.executable])
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    steps = {line.split("]")[0][1:]: line for line in lines if line.startswith("[")}
    assert list(steps) == [
        "demo_data", "prepare_healthy", "dtss_mas_seg_train", "tf_aug_train", "tf_aug_synthesise", "tf_gan_train",
        "throughput",
    ]  # fmt: skip
    bench = steps["throughput"]
    assert "bench_train_throughput.py" in bench and "--device cuda:0" in bench
    assert "--arms baseline dtss dtss_mas carvemix tf" in bench and "--size 240 240 155" in bench
    for bundle in ("dtss_mas_seg", "tf_aug", "tf_gan"):
        line = steps[f"{bundle}_train"]
        assert "-m monai.bundle run training" in line
        assert f"bundles/{bundle}/configs/train.yaml" in line
    # every training runs on the GPU, short
    overrides = "\n".join(line for line in lines if line.startswith("# ") or line.startswith("  "))
    assert overrides.count('"device": "cuda:0"') == 4 and '"max_epochs": 2' in overrides
    assert not out.exists()  # a dry run writes nothing


@pytest.mark.slow
def test_gpu_check_refuses_without_cuda(tmp_path: Path) -> None:
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here: the refusal is for machines without it")
    proc = _run(["bash", str(GPU_CHECK), "--out", str(tmp_path / "gpu"), "--python", sys.executable])
    assert proc.returncode == 2
    assert "CUDA is not available" in proc.stderr
    assert not (tmp_path / "gpu" / "logs").exists()


def test_gpu_check_script_is_valid_bash() -> None:
    assert _run(["bash", "-n", str(GPU_CHECK)]).returncode == 0


# ---- bench_train_throughput.py: plan and helpers -----------------------------------------------------


def test_bench_dry_run_prints_one_command_per_run() -> None:
    proc = _run([sys.executable, str(BENCH), "--dry-run", "--arms", "baseline", "tf", "--num-workers", "0", "2"])
    assert proc.returncode == 0, proc.stderr
    commands = [line for line in proc.stdout.splitlines() if "--child" in line]
    assert len(commands) == 4
    for arm, nw in (("baseline", 0), ("baseline", 2), ("tf", 0), ("tf", 2)):
        assert sum(f"--arms {arm} --num-workers {nw} " in c for c in commands) == 1
    assert "240x240x155" in proc.stdout


def test_bench_rejects_bad_arguments() -> None:
    proc = _run([sys.executable, str(BENCH), "--dry-run", "--iterations", "0"])
    assert proc.returncode == 2 and "--iterations" in proc.stderr
    proc = _run([sys.executable, str(BENCH), "--dry-run", "--arms", "nope"])
    assert proc.returncode == 2


def test_epochs_cover_the_iterations(bench: ModuleType) -> None:
    assert bench.epochs_for(4, cases=4, batch_size=2) == 2
    assert bench.epochs_for(5, cases=4, batch_size=2) == 3
    assert bench.epochs_for(1, cases=5, batch_size=2) == 1
    assert bench.epochs_for(7, cases=5, batch_size=2) == 3  # 3 iterations per epoch (the last batch is short)


def test_arm_overrides_switch_one_method_each(bench: ModuleType, tmp_path: Path) -> None:
    args = bench.parse_args(["--iterations", "4", "--crop", "64", "--num-workers", "2"])
    data = {"datalist": "/d/datalist.json", "synthetic_datalist": "/d/synthetic.json"}
    expected = {
        "baseline": (False, False, False, []),
        "dtss": (True, False, False, []),
        "dtss_mas": (True, True, False, []),
        "carvemix": (False, False, True, []),
        "tf": (False, False, False, ["/d/synthetic.json"]),
    }
    for arm, (dtss, mas, carvemix, synthetic) in expected.items():
        o = bench.arm_overrides(arm, args, data, tmp_path / arm)
        assert (o["use_dtss"], o["use_mas"], o["use_carvemix"], o["synthetic_datalists"]) == (
            dtss,
            mas,
            carvemix,
            synthetic,
        ), arm
        assert o["phase2_start_epoch"] == 0 and o["init_checkpoint"] is None and o["max_epochs"] == 2
        assert o["val_interval"] > o["max_epochs"]  # no validation inside the measurement
        assert o["crop_size"] == [64, 64, 64] and o["num_workers"] == 2 and o["amp"] is False
        assert o["train#real_dataset#num_workers"] == 0  # caches filled by one thread (MONAI reader race)
    with pytest.raises(ValueError, match="unknown arm"):
        bench.arm_overrides("pix2pix", args, data, tmp_path)


def test_phantom_case_is_deterministic_and_plausible(bench: ModuleType) -> None:
    image, label = bench.phantom_case((48, 40, 32), seed=3)
    again, label_again = bench.phantom_case((48, 40, 32), seed=3)
    other, _ = bench.phantom_case((48, 40, 32), seed=4)
    assert image.shape == (4, 48, 40, 32) and image.dtype == np.int16 and label.shape == (48, 40, 32)
    np.testing.assert_array_equal(image, again)
    np.testing.assert_array_equal(label, label_again)
    assert not np.array_equal(image, other)
    assert set(np.unique(label)) == {0, 1, 2, 3}  # internal convention: NCR, ED, ET
    brain = image[0] > 0
    assert 0.03 < brain.mean() < 0.6  # what the brain-mask inference accepts
    assert not (label[~brain] > 0).any()  # the tumour lies inside the brain
    # T1c: the enhancing rim is brighter than the necrotic core
    assert image[1][label == 3].mean() > image[1][label == 1].mean()


def test_iteration_timer_and_handler_timing_on_an_engine(bench: ModuleType) -> None:
    class Owner:
        def __init__(self) -> None:
            self.calls = 0

        def epoch_completed(self, engine: Engine) -> None:
            self.calls += 1
            time.sleep(0.02)

    def slow_batches():
        for i in range(3):
            time.sleep(0.01)
            yield {"image": torch.zeros(2 + i, 1)}

    class Loader:
        def __iter__(self):
            return slow_batches()

    engine = Engine(lambda e, b: time.sleep(0.005))
    owner, other = Owner(), Owner()
    engine.add_event_handler(Events.EPOCH_COMPLETED, owner.epoch_completed)
    engine.add_event_handler(Events.EPOCH_COMPLETED(every=1), owner.epoch_completed)  # Ignite wraps filtered ones
    engine.add_event_handler(Events.EPOCH_COMPLETED, other.epoch_completed)
    times = bench.time_handlers_of(engine, owner, lambda: None)
    timer = bench.IterationTimer(lambda: None)
    timer.attach(engine)
    engine.run(Loader(), max_epochs=2)
    assert owner.calls == 4 and other.calls == 2
    assert len(times["EPOCH_COMPLETED"]) == 4 and all(t >= 0.015 for t in times["EPOCH_COMPLETED"])
    s = timer.summary()
    assert s["iterations"] == 6 and s["steady_iterations"] == 4  # the first iteration of each epoch left out
    assert timer.first_of_epoch == [True, False, False, True, False, False]
    assert timer.samples == [2, 3, 4, 2, 3, 4] and s["samples_per_iteration"] == 3
    assert 0.0 < s["stall_fraction"] < 1.0 and 0.0 < s["stall_fraction_all"] < 1.0
    assert s["loader_wait_s"] >= 0.008 and s["step_s"] >= 0.004
    assert s["iteration_s"] == pytest.approx(s["loader_wait_s"] + s["step_s"])


def test_handler_timing_without_owner_wraps_nothing(bench: ModuleType) -> None:
    engine = Engine(lambda e, b: None)
    engine.add_event_handler(Events.EPOCH_COMPLETED, lambda e: None)
    assert bench.time_handlers_of(engine, None, lambda: None) == {}


# ---- bench_train_throughput.py end to end ---------------------------------------------------------------


@pytest.mark.slow
def test_bench_tiny_measurement(tmp_path: Path) -> None:
    out = tmp_path / "throughput.json"
    cmd = [
        sys.executable, str(BENCH), "--size", "48", "48", "48", "--crop", "32", "--filters", "4", "8", "16", "32",
        "--iterations", "2", "--arms", "baseline", "dtss_mas", "--num-workers", "0", "--synthesis-samples", "2",
        "--workdir", str(tmp_path / "work"), "--json", str(out),
    ]  # fmt: skip
    proc = _run(cmd, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(out.read_text())
    rows = {r["arm"]: r for r in result["rows"]}
    assert list(rows) == ["baseline", "dtss_mas"] and all(r["num_workers"] == 0 for r in rows.values())
    for r in rows.values():
        assert r["iterations"] == 2 and r["epochs"] == 1 and r["shape"] == [48, 48, 48]
        assert r["iteration_s"] > 0 and r["step_s"] > 0 and r["iterations_per_s"] > 0
        assert 0.0 <= r["stall_fraction"] <= 1.0 and 0.0 <= r["stall_fraction_all"] <= 1.0
        assert r["peak_rss_mb"] > 0 and r["cuda_peak_allocated_mb"] is None
    base, dsma = rows["baseline"], rows["dtss_mas"]
    # phase 2 from the first iteration: a DTSS sample joins every real sample of the batch
    assert base["samples_per_iteration"] == 2 and dsma["samples_per_iteration"] == 4
    assert base["synthesis_s_per_sample"] == {} and base["mas_s_per_epoch"] is None
    assert dsma["synthesis_s_per_sample"]["DeformationTumorSynthesisd"] > 0
    assert dsma["mas_timed"] is True and dsma["mas_s_per_epoch"] > 0 and dsma["mas_start_s"] > 0
    # the table: one row per (arm, num_workers)
    table = proc.stdout.splitlines()
    assert any(line.startswith("baseline   0 ") for line in table)
    assert any(line.startswith("dtss_mas   0 ") for line in table)


# ---- bench_loader_stall.py end to end -------------------------------------------------------------------


@pytest.mark.slow
def test_loader_stall_of_tf_gan_training_writes_only_into_its_temporary_folder(tmp_path: Path) -> None:
    from tests.tf_gan_data import make_data, train_overrides

    data = make_data(tmp_path / "data")
    earlier = tmp_path / "earlier_run"  # a stage's overrides name an earlier run's folders: left alone
    overrides = train_overrides(data, earlier)
    overrides_file = tmp_path / "overrides.json"
    overrides_file.write_text(json.dumps(overrides))
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    out = tmp_path / "stall.json"
    cmd = [
        sys.executable, str(REPO / "benchmarks" / "bench_loader_stall.py"), "--bundle", "tf_gan",
        "--overrides", str(overrides_file), "--num-workers", "0", "1", "--epochs", "2", "--json", str(out),
    ]  # fmt: skip
    proc = _run(cmd, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = json.loads(out.read_text())
    assert [r["num_workers"] for r in rows] == [0, 1]
    for r in rows:
        # 2 coarse cases, batch 1: 2 iterations per epoch, of which the second of each epoch is steady-state
        assert r["iterations"] == 4 and r["steady_iterations"] == 2 and r["samples_per_iteration"] == 1
        assert r["step_s"] > 0 and r["loader_wait_s"] >= 0 and 0.0 <= r["stall_fraction"] <= 1.0
        assert r["iteration_s"] == pytest.approx(r["step_s"] + r["loader_wait_s"])
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == [*before, Path("stall.json")]
    assert any(line.startswith(" 0     2 ") for line in proc.stdout.splitlines())
