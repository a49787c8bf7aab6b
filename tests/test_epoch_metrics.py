"""The per-epoch metrics CSV of a training (EpochMetricsWriter): one row per epoch, kept across a resume."""

from __future__ import annotations

from pathlib import Path

import pytest
from ignite.engine import Engine

from custom_components.handlers import EpochMetricsWriter, read_epoch_metrics


def test_epoch_metrics_writer_keeps_rows_across_a_resume(tmp_path: Path) -> None:
    writer = EpochMetricsWriter(tmp_path / "models")

    def step(engine: Engine, batch: object) -> None:
        engine.state.metrics["d_acc"] = 0.5 + 0.1 * engine.state.epoch
        engine.state.metrics["note"] = "not a number"

    engine = Engine(step)
    writer.attach(engine)
    engine.run([0], max_epochs=3)
    rows = read_epoch_metrics(tmp_path / "models" / "epoch_metrics.csv")
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    assert [r["d_acc"] for r in rows] == pytest.approx([0.6, 0.7, 0.8])
    assert all("note" not in r for r in rows)
    # a run resumed after epoch 2 redoes epoch 3 and goes on: earlier rows kept, epoch 3 replaced
    resumed = Engine(step)
    EpochMetricsWriter(tmp_path / "models").attach(resumed)
    resumed.load_state_dict({"epoch": 2, "max_epochs": 4, "epoch_length": 1})
    resumed.run([0], max_epochs=4)
    rows = read_epoch_metrics(tmp_path / "models" / "epoch_metrics.csv")
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4]


def test_epoch_metrics_writer_keeps_rows_when_the_checkpoint_loader_comes_after_it(tmp_path: Path) -> None:
    """The bundles attach their CheckpointLoader after the training handlers: the epoch it restores at STARTED
    still decides which earlier rows a resumed run keeps."""
    from monai.handlers import CheckpointLoader, CheckpointSaver

    def step(engine: Engine, batch: object) -> None:
        engine.state.metrics["loss"] = 1.0 / engine.state.epoch

    first = Engine(step)
    EpochMetricsWriter(tmp_path).attach(first)
    CheckpointSaver(str(tmp_path), {"trainer": first}, save_final=True, final_filename="final.pt").attach(first)
    first.run([0], max_epochs=2)
    resumed = Engine(step)
    EpochMetricsWriter(tmp_path).attach(resumed)
    CheckpointLoader(str(tmp_path / "final.pt"), {"trainer": resumed}).attach(resumed)
    resumed.run([0], max_epochs=3)
    rows = read_epoch_metrics(tmp_path / "epoch_metrics.csv")
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    assert [r["loss"] for r in rows] == pytest.approx([1.0, 0.5, 1 / 3])
    # a fresh run into the folder (overwrite) starts a new file
    fresh = Engine(step)
    EpochMetricsWriter(tmp_path).attach(fresh)
    fresh.run([0], max_epochs=1)
    assert [r["epoch"] for r in read_epoch_metrics(tmp_path / "epoch_metrics.csv")] == [1]
