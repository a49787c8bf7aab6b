"""Linear schedule of a loss weight stored on ``engine.state`` (TF-GAN's ``lambda_c``: 10 -> 1 over training)."""

from __future__ import annotations

from ignite.engine import Engine, Events

GRANULARITIES: tuple[str, ...] = ("iteration", "epoch")


class LinearLambdaSchedule:
    """Set ``engine.state.<name>`` to a value decreasing (or increasing) linearly from ``start`` to ``end``.

    With ``granularity="iteration"`` the value is updated before every iteration:
    ``start + (end - start) * (k - 1) / (K - 1)`` for iteration ``k`` of ``K = max_epochs * epoch_length``,
    so the first iteration uses exactly ``start`` and the last exactly ``end``. With ``"epoch"`` it is updated
    before every epoch with ``k`` the epoch and ``K = max_epochs``. The value depends only on the iteration
    (epoch) counter, so a run resumed from a checkpoint continues the schedule where it stopped.

    Args:
        start: value at the first iteration (epoch).
        end: value at the last iteration (epoch).
        name: attribute of ``engine.state`` that holds the value (the trainer reads it every iteration).
        granularity: ``"iteration"`` (default, smooth) or ``"epoch"``.
    """

    def __init__(
        self, start: float = 10.0, end: float = 1.0, name: str = "lambda_c", granularity: str = "iteration"
    ) -> None:
        if granularity not in GRANULARITIES:
            raise ValueError(f"granularity must be one of {GRANULARITIES}, got {granularity!r}")
        self.start = float(start)
        self.end = float(end)
        self.name = name
        self.granularity = granularity

    def value(self, step: int, total: int) -> float:
        """The value at 1-based ``step`` of ``total`` steps (clamped to ``[1, total]``)."""
        if total <= 1:
            return self.start
        t = (min(max(step, 1), total) - 1) / (total - 1)
        return self.start + (self.end - self.start) * t

    def attach(self, engine: Engine) -> None:
        """Register the update on ``engine`` (and set the start value right away, so it exists before the run)."""
        setattr(engine.state, self.name, self.start)
        event = Events.ITERATION_STARTED if self.granularity == "iteration" else Events.EPOCH_STARTED
        engine.add_event_handler(event, self)

    def __call__(self, engine: Engine) -> None:
        state = engine.state
        if self.granularity == "iteration":
            if state.epoch_length is None:
                raise ValueError("LinearLambdaSchedule with granularity='iteration' needs a known epoch_length")
            value = self.value(state.iteration, state.max_epochs * state.epoch_length)
        else:
            value = self.value(state.epoch, state.max_epochs)
        setattr(state, self.name, value)
