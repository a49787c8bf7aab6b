"""Per-epoch training curves as a CSV file beside the checkpoints (the report plots them; MLflow, when enabled,
records the same ``engine.state.metrics``). MONAI's ``MetricsSaver`` keeps only the latest values and Ignite has no
file logger, hence this handler."""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path

from ignite.engine import Engine, Events

from custom_components.data.atomic import atomic_write_text

EPOCH_METRICS_FILE = "epoch_metrics.csv"


def read_epoch_metrics(path: str | os.PathLike) -> list[dict[str, float]]:
    """The rows of an epoch-metrics CSV (:class:`EpochMetricsWriter`) as floats (empty cells dropped)."""
    with open(path, newline="") as f:
        return [{k: float(v) for k, v in row.items() if v not in ("", None)} for row in csv.DictReader(f)]


class EpochMetricsWriter:
    """Append ``engine.state.metrics`` (numbers only) as one row per epoch to ``<save_dir>/epoch_metrics.csv``,
    rewritten atomically after every epoch; a resumed run keeps the rows of the epochs it does not redo (read at
    its first completed epoch, so a ``CheckpointLoader`` attached after this handler has restored the epoch).

    Args:
        save_dir: folder of the file (the run's models folder).
        filename: file name.
    """

    def __init__(self, save_dir: str | os.PathLike, filename: str = EPOCH_METRICS_FILE) -> None:
        self.path = Path(save_dir) / filename
        # None: the earlier rows are not read yet (see epoch_completed)
        self.rows: list[dict[str, float]] | None = None

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self.started)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.epoch_completed)

    def started(self, engine: Engine) -> None:
        """Read the file again at the first completed epoch of this run."""
        self.rows = None

    def epoch_completed(self, engine: Engine) -> None:
        if self.rows is None:  # a resumed run keeps the rows of the epochs before the first one it runs
            first = engine.state.epoch
            self.rows = [r for r in read_epoch_metrics(self.path) if r["epoch"] < first] if self.path.is_file() else []
        row = {"epoch": float(engine.state.epoch)}
        row.update({k: float(v) for k, v in engine.state.metrics.items() if isinstance(v, (int, float))})
        self.rows.append(row)
        keys = list(dict.fromkeys(k for r in self.rows for k in r))
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=keys, lineterminator="\n")
        writer.writeheader()
        writer.writerows({k: (int(v) if k == "epoch" else f"{v:.6g}") for k, v in r.items()} for r in self.rows)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.path, out.getvalue())
