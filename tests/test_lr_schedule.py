"""The segmentation learning-rate schedule (TwoPhaseLRLambda): the paper's step, and the polynomial decay
per phase that the demo and the experiments use, through ``LambdaLR`` stepped once per epoch as in train.yaml."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser

from custom_components.engines import TwoPhaseLRLambda

REPO = Path(__file__).resolve().parents[1]
# (1 - t/4) ** 0.9 for t = 0..3, and (1 - 1/2) ** 0.9, computed by hand
POLY4 = [1.0, 0.771890, 0.535887, 0.287175]
POLY2_LAST = 0.535887


def _epoch_lrs(lr_lambda: TwoPhaseLRLambda, lr: float, epochs: int) -> list[float]:
    """The lr each engine epoch 1..epochs trains with: LambdaLR stepped after every epoch (LrScheduleHandler)."""
    opt = torch.optim.AdamW(torch.nn.Linear(1, 1).parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda)
    lrs = []
    for _ in range(epochs):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return lrs


def test_poly_decays_each_phase() -> None:
    # 4 phase-1 epochs from 1e-3, then 2 phase-2 epochs from 1e-4
    lrs = _epoch_lrs(TwoPhaseLRLambda(4, 1e-3, 1e-4, schedule="poly", max_epochs=6), 1e-3, 6)
    expected = [1e-3 * f for f in POLY4] + [1e-4, 1e-4 * POLY2_LAST]
    np.testing.assert_allclose(lrs, expected, rtol=1e-5)
    # the last epoch of each phase trains at a small but non-zero rate
    assert 0 < lrs[3] < 0.3 * lrs[0] and 0 < lrs[5] < 0.6 * lrs[4]


def test_poly_from_phase2_start_decays_over_the_run() -> None:
    # the TF protocol: the whole run is "phase 2" at lr_phase2 = lr_phase1
    lrs = _epoch_lrs(TwoPhaseLRLambda(0, 3e-3, 3e-3, schedule="poly", max_epochs=4), 3e-3, 4)
    np.testing.assert_allclose(lrs, [3e-3 * f for f in POLY4], rtol=1e-5)
    # the DSMA continuation: the optimizer's lr is lr_phase1, the factor starts at lr_phase2 / lr_phase1
    lrs = _epoch_lrs(TwoPhaseLRLambda(0, 3e-3, 3e-4, schedule="poly", max_epochs=4), 3e-3, 4)
    np.testing.assert_allclose(lrs, [3e-4 * f for f in POLY4], rtol=1e-5)


def test_poly_keeps_the_last_factor_past_max_epochs() -> None:
    f = TwoPhaseLRLambda(2, 1e-3, 1e-4, schedule="poly", max_epochs=4)
    assert [f(e) for e in (3, 4, 10)] == pytest.approx([0.1 * POLY2_LAST] * 3)
    # a phase-1-only run: the step after its final epoch gives lr_phase2, as the step schedule does
    assert TwoPhaseLRLambda(3, 1e-3, 1e-4, schedule="poly", max_epochs=3)(3) == pytest.approx(0.1)


def test_step_schedule_is_the_default_and_unchanged() -> None:
    lrs = _epoch_lrs(TwoPhaseLRLambda(2, 1e-4, 1e-5), 1e-4, 4)
    np.testing.assert_allclose(lrs, [1e-4, 1e-4, 1e-5, 1e-5])
    # max_epochs does not matter to the step schedule
    assert [TwoPhaseLRLambda(2, 1e-4, 1e-5, max_epochs=3)(e) for e in range(6)] == pytest.approx([1, 1] + [0.1] * 4)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"schedule": "cosine", "max_epochs": 4}, "schedule"),
        ({"schedule": "poly"}, "max_epochs"),
        ({"schedule": "poly", "max_epochs": 1}, "max_epochs"),
        ({"schedule": "poly", "max_epochs": 4, "exponent": 0.0}, "exponent"),
    ],
)
def test_bad_arguments(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        TwoPhaseLRLambda(2, 1e-3, 1e-4, **kwargs)


def test_resume_continues_the_checkpointed_schedule() -> None:
    """LambdaLR's state (saved in the bundle's checkpoints) carries the lambda's attributes: a resumed scheduler
    continues the interrupted run's lrs, even when the resumed config names other values."""
    net = torch.nn.Linear(1, 1)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, TwoPhaseLRLambda(4, 1e-3, 1e-4, schedule="poly", max_epochs=6))
    for _ in range(2):
        opt.step()
        sched.step()
    buffer = io.BytesIO()
    torch.save({"optimizer": opt.state_dict(), "lr_scheduler": sched.state_dict()}, buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=False)
    opt2 = torch.optim.AdamW(net.parameters(), lr=1e-3)
    resumed = TwoPhaseLRLambda(4, 1e-3, 1e-4, schedule="poly", max_epochs=8)
    sched2 = torch.optim.lr_scheduler.LambdaLR(opt2, resumed)
    opt2.load_state_dict(state["optimizer"])
    sched2.load_state_dict(state["lr_scheduler"])
    assert resumed.max_epochs == 6 and sched2.last_epoch == 2
    lrs = []
    for _ in range(5):  # engine epochs 3..7: the remaining 4 and one added past max_epochs
        lrs.append(opt2.param_groups[0]["lr"])
        opt2.step()
        sched2.step()
    np.testing.assert_allclose(
        lrs, [1e-3 * POLY4[2], 1e-3 * POLY4[3], 1e-4, 1e-4 * POLY2_LAST, 1e-4 * POLY2_LAST], rtol=1e-5
    )


def _bundle_lambda(**overrides: object) -> TwoPhaseLRLambda:
    parser = ConfigParser()
    configs = REPO / "bundles" / "dtss_mas_seg" / "configs"
    parser.read_config([str(configs / "common.yaml"), str(configs / "train.yaml")])
    for key, value in overrides.items():
        parser[key] = value
    return parser.get_parsed_content("train#lr_lambda")


def test_bundle_config_wires_the_schedule() -> None:
    default = _bundle_lambda()
    assert default.schedule == "step" and default(799) == 1.0 and default(800) == pytest.approx(0.1)
    poly = _bundle_lambda(lr_schedule="poly", max_epochs=6, phase2_start_epoch=4, lr_poly_exponent=0.9)
    assert [poly(e) for e in range(6)] == pytest.approx([*POLY4, 0.1, 0.1 * POLY2_LAST], rel=1e-5)
