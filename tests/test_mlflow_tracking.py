"""``--tracking mlflow`` for every training config: MONAI's default local store and a real ``mlflow server``
(127.0.0.1 only) given as ``tracking_uri``; the logged values are read back with ``MlflowClient``."""

from __future__ import annotations

import csv
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient
from monai.bundle import ConfigWorkflow
from monai.utils import path_to_sqlite_uri

from custom_components.data.demo import make_demo_data
from custom_components.networks import build_segmentation_network
from tests.bundle_utils import bundle_dir
from tests.tf_aug_data import make_aug_inputs
from tests.tf_gan_data import make_data, train_overrides

# end-to-end runs: `make unit` leaves them out, `make test` runs them
pytestmark = pytest.mark.slow

MLFLOW = Path(sys.executable).parent / "mlflow"


class MlflowServer:
    """An ``mlflow server`` on 127.0.0.1 (sqlite backend, local artifact root), started in its own process group."""

    def __init__(self, root: Path) -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.uri = f"http://127.0.0.1:{self.port}"
        self.log = root / "server.log"
        cmd = [
            str(MLFLOW), "server", "--host", "127.0.0.1", "--port", str(self.port),
            "--backend-store-uri", path_to_sqlite_uri(root / "mlflow.db"),
            "--default-artifact-root", str(root / "artifacts"), "--workers", "1",
        ]  # fmt: skip
        # no background job runners: the server is one uvicorn process (plus the launcher)
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        with self.log.open("w") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)

    def wait_ready(self, timeout: float = 180.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"mlflow server exited with {self.proc.returncode}: {self.log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=2) as r:
                    if r.status == 200:
                        return self.uri
            except OSError:
                time.sleep(0.5)
        pytest.fail(f"mlflow server did not answer on {self.uri} within {timeout} s: {self.log.read_text()[-3000:]}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)  # the server's own process group (start_new_session)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=20)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    """Started when first requested (it boots while the first tests run), always terminated."""
    srv = MlflowServer(tmp_path_factory.mktemp("mlflow_server"))
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def gan_data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return make_data(tmp_path_factory.mktemp("trk_gan_data"))


def run_tracked(bundle: str, configs: list[str], **override: Any) -> ConfigWorkflow:
    """``python -m monai.bundle run training ... --tracking mlflow`` in-process."""
    root = bundle_dir(bundle)
    override.setdefault("bundle_root", str(root))
    wf = ConfigWorkflow(
        config_file=[str(root / "configs" / c) for c in configs],
        meta_file=str(root / "configs" / "metadata.json"),
        logging_file=str(root / "configs" / "logging.conf"),
        workflow_type="train",
        run_id="training",
        tracking="mlflow",
        **override,
    )
    wf.initialize()
    wf.run()
    wf.finalize()
    return wf


def only_run(client: MlflowClient, experiment: str) -> Any:
    exp = client.get_experiment_by_name(experiment)
    assert exp is not None, f"no experiment {experiment!r}"
    (run,) = client.search_runs([exp.experiment_id])
    assert run.info.status == "FINISHED"
    return run


def history(client: MlflowClient, run: Any, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, key))


def logged_config(client: MlflowClient, run: Any, tmp: Path) -> dict[str, Any]:
    """The executed config logged as the run's artifact."""
    (artifact,) = [a.path for a in client.list_artifacts(run.info.run_id)]
    assert artifact.endswith(".json")
    return json.loads(Path(client.download_artifacts(run.info.run_id, artifact, str(tmp))).read_text())


def test_tf_gan_local_store(server: MlflowServer, gan_data: dict[str, Path], tmp_path: Path) -> None:
    """MONAI's default store (<output_dir>/mlruns.db): losses per iteration, every loss term per epoch, the
    lambda_c schedule, learning rates and the executed config."""
    overrides = train_overrides(gan_data, tmp_path, max_epochs=2)
    overrides.pop("output_dir")  # the default "$@bundle_root + '/runs'" keeps MONAI's artifact path valid
    run_tracked("tf_gan", ["common.yaml", "train.yaml"], **overrides, bundle_root=str(tmp_path))
    client = MlflowClient(path_to_sqlite_uri(tmp_path / "runs" / "mlruns.db"))
    run = only_run(client, "monai_experiment")
    loss = history(client, run, "train_loss")
    assert [s for s, _ in loss] == [1, 2, 3, 4]  # 2 coarse cases x 2 epochs
    epoch_loss = history(client, run, "epoch_loss")
    assert [s for s, _ in epoch_loss] == [1, 2]
    for epoch, mean in epoch_loss:
        assert mean == pytest.approx(np.mean([v for s, v in loss if (s - 1) // 2 + 1 == epoch]), rel=1e-6)
    for term in ("g_adv_patch", "g_adv_global", "g_hinge", "g_perceptual", "d_loss", "d_patch", "d_global"):
        assert len(history(client, run, f"epoch_{term}")) == 2
    # lambda_c falls linearly from 10 to 1 over the 4 iterations: 7 after iteration 2, 1 after iteration 4
    assert history(client, run, "lambda_c") == [(1, pytest.approx(7.0)), (2, pytest.approx(1.0))]
    assert history(client, run, "lr_g") == [(1, pytest.approx(2e-4)), (2, pytest.approx(1e-4))]
    assert history(client, run, "lr_d") == [(1, pytest.approx(1e-4)), (2, pytest.approx(5e-5))]
    config = logged_config(client, run, tmp_path / "artifact")
    assert config["hinge_margin"] == 0.05 and config["lambda_hinge_start"] == 10.0


def test_pix2pix_to_server(server: MlflowServer, gan_data: dict[str, Path], tmp_path: Path) -> None:
    uri = server.wait_ready()
    overrides = train_overrides(gan_data, tmp_path, max_epochs=1)
    overrides.pop("output_dir")
    run_tracked(
        "tf_gan", ["common.yaml", "train.yaml", "train_pix2pix.yaml"], **overrides, bundle_root=str(tmp_path),
        tracking_uri=uri, experiment_name="pix2pix", run_name="tiny",
    )  # fmt: skip
    assert not (tmp_path / "runs" / "mlruns.db").exists()  # everything went to the server
    client = MlflowClient(uri)
    run = only_run(client, "pix2pix")
    assert run.info.run_name == "tiny"
    assert [s for s, _ in history(client, run, "train_loss")] == [1, 2]
    for key in ("epoch_loss", "epoch_g_l1", "epoch_g_adv_patch", "epoch_d_loss", "lr_g", "lr_d"):
        assert len(history(client, run, key)) == 1, key
    assert "lambda_c" not in run.data.metrics  # Pix2Pix has no hinge schedule
    assert logged_config(client, run, tmp_path / "artifact")["lambda_l1"] == 100.0


def test_tf_aug_to_server(server: MlflowServer, tmp_path: Path) -> None:
    """A plain --output_dir breaks MONAI's default path of the executed config (documented); an explicit
    save_execute_config file is logged instead."""
    inputs = make_aug_inputs(tmp_path / "data")
    torch.manual_seed(0)
    ckpt = tmp_path / "seg_model.pt"
    torch.save(build_segmentation_network("dynunet", 1, 4, (8, 16, 32)).state_dict(), ckpt)
    uri = server.wait_ready()
    run_tracked(
        "tf_aug", ["common.yaml", "train.yaml"],
        healthy_datalist=inputs["healthy_datalist"], real_datalist=inputs["real_datalist"],
        output_dir=str(tmp_path / "run"), encoder_checkpoint=str(ckpt), encoder_filters=[8, 16, 32], max_epochs=2,
        crop_size=[32, 32, 32], aug_min_voxels=10, num_workers=0, tracking_uri=uri, experiment_name="tf_aug",
        save_execute_config=str(tmp_path / "executed.json"),
    )  # fmt: skip
    client = MlflowClient(uri)
    run = only_run(client, "tf_aug")
    assert len(history(client, run, "train_loss")) == 4  # 3 (healthy, real) pairs in batches of 2, 2 epochs
    learned = json.loads((tmp_path / "run" / "models" / "intensity.json").read_text())
    for cls in ("NCR", "ED", "ET"):
        for name in ("a", "b"):
            values = history(client, run, f"{name}_{cls}_t1n")
            assert [s for s, _ in values] == [1, 2]
            assert values[-1][1] == pytest.approx(learned[cls][name][0])  # the final a / b
    assert [s for s, _ in history(client, run, "epoch_loss")] == [1, 2]
    assert logged_config(client, run, tmp_path / "artifact")["max_epochs"] == 2


def _csv(path: Path) -> list[dict[str, str]]:
    with path.open() as f:
        return list(csv.DictReader(f))


def test_dtss_mas_seg_to_server(server: MlflowServer, tmp_path: Path) -> None:
    """Losses, validation Dice, the phase, the learning rate and the MAS statistics (eta, theta, weights)."""
    demo = make_demo_data(tmp_path / "demo", n_healthy=1, n_tumour=4, spacing=4.0, seed=0, verbose=False)["tumour"]
    uri = server.wait_ready()
    run_tracked(
        "dtss_mas_seg", ["common.yaml", "train.yaml"], datalist=str(demo), bundle_root=str(tmp_path),
        max_epochs=2, phase2_start_epoch=1, crop_size=[32, 32, 32], filters=[4, 8, 16, 32], batch_size=2,
        num_workers=0, amp=False, sw_batch_size=1, tracking_uri=uri, experiment_name="dtss_mas_seg",
    )  # fmt: skip
    client = MlflowClient(uri)
    run = only_run(client, "dtss_mas_seg")
    assert [s for s, _ in history(client, run, "train_loss")] == [1, 2, 3, 4]  # 3 real cases, batches of 2
    assert [v for _, v in history(client, run, "lr_group_0")] == pytest.approx([1e-4, 1e-4, 1e-5, 1e-5])
    assert history(client, run, "phase") == [(1, 1.0), (2, 2.0)]
    assert [s for s, _ in history(client, run, "val_mean_dice")] == [1, 2]  # the validator's handler
    # eta / theta after every epoch from the evaluation pass over the real cases (eval mode), recorded beside
    # the per-sample MAS log (its `real_eval` rows)
    mas = tmp_path / "runs" / "mas"
    for epoch in (1, 2):
        rows = _csv(mas / f"epoch_{epoch:04d}.csv")
        real = [float(r["dice"]) for r in rows if r["source"] == "real_eval" and r["dice"] != "nan"]
        assert len(real) == 3  # every real training case, not the training crops
        (eta,) = [v for s, v in history(client, run, "mas_eta") if s == epoch]
        (theta,) = [v for s, v in history(client, run, "mas_theta") if s == epoch]
        assert eta == pytest.approx(np.mean(real), abs=1e-6)
        assert theta == pytest.approx((max(real) - min(real)) / 2 + 2e-5, abs=1e-6)
    # phase 2: the weights of the DTSS samples, and the statistics they were computed with (epoch 1's)
    synthetic = [float(r["weight"]) for r in _csv(mas / "epoch_0002.csv") if r["synthetic"] == "1"]
    assert history(client, run, "mas_weight_mean") == [(2, pytest.approx(np.mean(synthetic), abs=1e-6))]
    assert history(client, run, "mas_eta_applied")[0][1] == history(client, run, "mas_eta")[0][1]
    assert logged_config(client, run, tmp_path / "artifact")["mas_beta"] == 0.1
