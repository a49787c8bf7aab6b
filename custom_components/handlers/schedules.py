"""TF-GAN's lambda_c schedule (paper section 3.1.2: the hinge weight decreases linearly over training) as MONAI's
``ParamSchedulerHandler``, built from the bundle's settings."""

from __future__ import annotations

from collections.abc import Sized

from ignite.engine import Engine, Events
from monai.handlers import ParamSchedulerHandler

SCHEDULE_STEPS: tuple[str, ...] = ("iteration", "epoch")


def hinge_weight_schedule(
    trainer: Engine,
    start: float,
    end: float,
    max_epochs: int,
    epoch_length: int | None,
    loader: Sized,
    per: str = "iteration",
) -> ParamSchedulerHandler:
    """A linear schedule of ``trainer.state.lambda_c``: ``start`` before the first iteration (epoch), ``end``
    before the last, set before each one (the trainer reads ``state.lambda_c`` in its G step).

    Args:
        trainer: the engine whose state gets ``lambda_c``.
        start: lambda_c at the first step.
        end: lambda_c at the last step.
        max_epochs: epochs of the training.
        epoch_length: iterations per epoch (None: one pass over ``loader``).
        loader: the trainer's data loader (its length is the epoch length when ``epoch_length`` is None).
        per: "iteration" (a new value every iteration) or "epoch" (every epoch).

    Raises:
        ValueError: ``per`` is neither "iteration" nor "epoch".
    """
    if per not in SCHEDULE_STEPS:
        raise ValueError(f"lambda_schedule must be one of {SCHEDULE_STEPS}, got {per!r}")
    per_epoch = per == "epoch"
    steps = max_epochs if per_epoch else max_epochs * (epoch_length or len(loader))
    return ParamSchedulerHandler(
        parameter_setter=lambda value: setattr(trainer.state, "lambda_c", value),
        value_calculator="linear",
        vc_kwargs={"initial_value": start, "max_value": end, "step_constant": 1, "step_max_value": steps},
        epoch_level=per_epoch,
        event=Events.EPOCH_STARTED if per_epoch else Events.ITERATION_STARTED,
        name="lambda_c",
    )
