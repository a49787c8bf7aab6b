"""MAS (DSMA eqs. 6-13), the per-sample weighted Dice loss (eqs. 14-15), the MAS-aware trainer and the two-phase dataset."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from ignite.engine import Engine, Events
from monai.data import list_data_collate
from monai.losses import DiceLoss

from custom_components.data.keys import SynthesisKeys
from custom_components.engines.seg_data import TwoPhaseDataset
from custom_components.engines.seg_trainer import SegmentationTrainer, TwoPhaseLRLambda
from custom_components.handlers import OutputExistsError, check_output_dir
from custom_components.handlers.mas import (
    REAL_DICE_METRIC,
    MASHandler,
    MASStatistics,
    hard_prediction,
    mas_eta,
    mas_theta,
    mas_weight,
    real_case_evaluator,
    region_dice_per_sample,
)
from custom_components.losses.weighted_dice import SampleWeightedDiceLoss

# Dyadic parameters keep every boundary exact in floating point:
# eta = 0.5, theta = 0.125, beta = 0.25 -> plateau [0.375, 0.625], discard points q1 = 0.125, q2 = 0.875,
# a = -1 / (beta (2 theta + beta)) = -1 / (0.25 * 0.5) = -8.
ETA, THETA, BETA = 0.5, 0.125, 0.25


@pytest.mark.parametrize(
    ("dice", "expected"),
    [
        # plateau, both ends included (eq. 6, first case)
        (0.375, 1.0),
        (0.5, 1.0),
        (0.625, 1.0),
        # lower flank: -8 (0.25 - 0.125)(0.25 - 0.875) = -8 * 0.125 * -0.625 = 0.625
        (0.25, 0.625),
        # lower flank: -8 (0.3125 - 0.125)(0.3125 - 0.875) = -8 * 0.1875 * -0.5625 = 0.84375
        (0.3125, 0.84375),
        # lower flank near the discard point: -8 (0.1875 - 0.125)(0.1875 - 0.875) = 8 * 0.0625 * 0.6875 = 0.34375
        (0.1875, 0.34375),
        # upper flank, mirror images: -8 (0.75 - 0.125)(0.75 - 0.875) = -8 * 0.625 * -0.125 = 0.625
        (0.75, 0.625),
        (0.6875, 0.84375),
        (0.8125, 0.34375),
        # discard points and beyond (eq. 6, third case): exactly 0
        (0.125, 0.0),
        (0.875, 0.0),
        (0.0625, 0.0),
        (0.9375, 0.0),
        (0.0, 0.0),
        (1.0, 0.0),
    ],
)
def test_mas_weight_hand_computed(dice: float, expected: float) -> None:
    assert mas_weight(dice, ETA, THETA, BETA) == pytest.approx(expected, abs=1e-12)
    assert float(mas_weight(torch.tensor([dice], dtype=torch.float64), ETA, THETA, BETA)[0]) == pytest.approx(
        expected, abs=1e-12
    )


def test_mas_weight_borders_of_unit_interval() -> None:
    # eta - theta - beta < 0: the lower discard point is not reached, Dice 0 takes the parabola's value.
    # eta = 0.125, theta = 0.0625, beta = 0.25: q1 = -0.1875, q2 = 0.4375, beta (2 theta + beta) = 0.09375;
    # w(0) = -(0 + 0.1875)(0 - 0.4375) / 0.09375 = 0.08203125 / 0.09375 = 0.875
    assert mas_weight(0.0, 0.125, 0.0625, 0.25) == pytest.approx(0.875, abs=1e-12)
    # mirror case at 1: eta = 0.875 -> q2 = 1.1875 > 1, w(1) = -(1 - 0.5625)(1 - 1.1875) / 0.09375 = 0.875
    assert mas_weight(1.0, 0.875, 0.0625, 0.25) == pytest.approx(0.875, abs=1e-12)
    # a plateau reaching past 1 gives weight 1 at Dice 1
    assert mas_weight(1.0, 0.9, 0.2, 0.1) == 1.0
    # continuity at the plateau's edges and at the discard points
    eps = 1e-9
    assert mas_weight(0.375 - eps, ETA, THETA, BETA) == pytest.approx(1.0, abs=1e-6)
    assert mas_weight(0.625 + eps, ETA, THETA, BETA) == pytest.approx(1.0, abs=1e-6)
    assert mas_weight(0.125 + eps, ETA, THETA, BETA) == pytest.approx(0.0, abs=1e-6)


def test_mas_weight_symmetry_range_and_types() -> None:
    x = np.linspace(0.0, 1.0, 201)
    w = mas_weight(x, ETA, THETA, BETA)
    assert isinstance(w, np.ndarray) and w.shape == x.shape and w.dtype == np.float64
    assert (w >= 0).all() and (w <= 1).all()
    # centrally symmetric about eta = 0.5 on a grid symmetric about it
    np.testing.assert_allclose(w, w[::-1], atol=1e-12)
    # monotone: increasing below eta, decreasing above
    assert (np.diff(w[:101]) >= -1e-12).all() and (np.diff(w[100:]) <= 1e-12).all()
    # numpy and torch agree, shapes are kept, torch keeps its dtype
    grid = x.reshape(3, 67)
    wt = mas_weight(torch.from_numpy(grid).float(), 0.61, 0.07, 0.1)
    assert wt.dtype == torch.float32 and wt.shape == (3, 67)
    np.testing.assert_allclose(wt.numpy(), mas_weight(grid.astype(np.float32), 0.61, 0.07, 0.1), atol=1e-6)
    assert isinstance(mas_weight(0.5, 0.5, 0.1, 0.1), float)


def test_mas_weight_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="beta"):
        mas_weight(0.5, 0.5, 0.1, 0.0)
    with pytest.raises(ValueError, match="theta"):
        mas_weight(0.5, 0.5, -0.1, 0.1)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        mas_weight(np.array([0.2, 1.5]), 0.5, 0.1, 0.1)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        mas_weight(torch.tensor([float("nan")]), 0.5, 0.1, 0.1)


def test_mas_eta_theta() -> None:
    dice = [0.2, 0.5, 0.8, 0.9]
    assert mas_eta(dice) == pytest.approx(0.6)  # eq. 7: (0.2 + 0.5 + 0.8 + 0.9) / 4
    assert mas_theta(dice) == pytest.approx((0.9 - 0.2) / 2 + 2e-5)  # eq. 8 with the paper's c
    assert mas_theta(torch.tensor(dice), c=0.0) == pytest.approx(0.35)
    assert mas_theta([0.7]) == pytest.approx(2e-5)
    with pytest.raises(ValueError):
        mas_eta([])
    with pytest.raises(ValueError):
        mas_theta([0.5, 1.2])


def test_region_dice_per_sample() -> None:
    pred = torch.zeros(3, 4, 4, 4, dtype=torch.long)
    target = torch.zeros_like(pred)
    # sample 0: target ET 8 voxels, prediction ET on 4 of them plus 4 NCR elsewhere
    target[0, :2, :2, :2] = 3
    pred[0, :2, :2, 0] = 3
    pred[0, 2:, 2:, 0] = 1
    # ET: 2*4/(4+8) = 2/3; TC = {1,3}: pred 8 voxels, overlap 4 -> 2*4/(8+8) = 0.5; WT likewise 0.5
    # sample 1: perfect oedema, no ET/TC in the target -> only WT counts -> 1
    target[1, 0, 0, :] = 2
    pred[1, 0, 0, :] = 2
    # sample 2: no tumour in the target -> undefined (NaN)
    pred[2, 0, 0, 0] = 2
    dice = region_dice_per_sample(pred, target)
    assert dice[0].item() == pytest.approx((2 / 3 + 0.5 + 0.5) / 3)
    assert dice[1].item() == pytest.approx(1.0)
    assert math.isnan(dice[2].item())
    # (B, 1, ...) inputs give the same; labels outside the internal convention are refused
    torch.testing.assert_close(region_dice_per_sample(pred[:, None], target[:, None]), dice, equal_nan=True)
    with pytest.raises(ValueError, match="internal labels"):
        region_dice_per_sample(pred, target * 2)


def test_hard_prediction_matches_argmax() -> None:
    torch.manual_seed(0)
    logits = torch.randn(2, 4, 5, 6, 7)
    logits[0, :, 0, 0, 0] = 1.0  # a tie: the lowest channel wins, as with torch.argmax
    labels = hard_prediction(logits)
    assert labels.dtype == torch.uint8 and labels.shape == (2, 5, 6, 7)
    torch.testing.assert_close(labels.long(), logits.argmax(1))


class _FakeEngine(Engine):
    """An engine whose iterations return given per-sample MAS outputs."""

    def __init__(self, outputs: list[dict]) -> None:
        self._outputs = outputs
        super().__init__(lambda engine, batch: self._outputs[batch])


def test_mas_handler_statistics_and_weights(tmp_path) -> None:
    # epoch 1: real cases a (two crops, 0.5 and 0.7 -> 0.6), b 0.4, c 0.8; a real crop without tumour (NaN) is
    # ignored; the synthetic samples do not enter the statistics
    epoch1 = [
        {
            "sample_dice": torch.tensor([0.5, 0.4, 0.95]),
            "is_synthetic": torch.tensor([False, False, True]),
            "mas": torch.tensor([False, False, True]),
            "sample_weight": torch.tensor([1.0, 1.0, 1.0]),
            "case_id": ["a", "b", "a#online0"],
        },
        {
            "sample_dice": torch.tensor([0.7, 0.8, float("nan")]),
            "is_synthetic": torch.tensor([False, False, False]),
            "mas": torch.tensor([False, False, False]),
            "sample_weight": torch.tensor([1.0, 1.0, 1.0]),
            "case_id": ["a", "c", "d"],
        },
    ]
    handler = MASHandler(beta=0.1, c=2e-5, log_dir=tmp_path / "mas")
    engine = _FakeEngine(epoch1)
    handler.attach(engine)
    assert not handler.ready
    # before statistics exist: fixed weights
    base = torch.tensor([1.0, 0.5])
    apply = torch.tensor([True, True])
    assert torch.equal(handler.weights(torch.tensor([0.1, 0.9]), base, apply), base)
    engine.run([0, 1], max_epochs=1)
    # eq. 7 over cases: (0.6 + 0.4 + 0.8) / 3 = 0.6; eq. 8: (0.8 - 0.4) / 2 + 2e-5
    assert handler.eta == pytest.approx(0.6)
    assert handler.theta == pytest.approx(0.2 + 2e-5)
    m = engine.state.metrics
    assert m["mas_eta"] == pytest.approx(0.6) and m["mas_theta"] == pytest.approx(0.20002)
    assert m["mas_real_cases"] == 3
    assert m["mas_synthetic_samples"] == 1 and m["mas_weight_mean"] == 1.0
    assert "mas_eta_applied" not in m
    log = (tmp_path / "mas" / "epoch_0001.csv").read_text().splitlines()
    assert log[0] == "case_id,source,synthetic,mas,dice,weight" and len(log) == 7
    assert log[3] == "a#online0,train,1,1,0.950000,1.000000"
    # weights for epoch 2: plateau [0.39998, 0.80002], flanks of width 0.1
    dice = torch.tensor([0.6, 0.85, 0.35, 0.2, float("nan"), 0.6])
    base = torch.tensor([1.0, 1.0, 1.0, 1.0, 0.7, 0.5])
    apply = torch.tensor([True, True, True, True, True, False])
    w = handler.weights(dice, base, apply)
    lo, hi, beta = 0.6 - 0.20002, 0.6 + 0.20002, 0.1
    expect_085 = -(0.85 - (lo - beta)) * (0.85 - (hi + beta)) / (beta * (2 * 0.20002 + beta))
    expect_035 = -(0.35 - (lo - beta)) * (0.35 - (hi + beta)) / (beta * (2 * 0.20002 + beta))
    np.testing.assert_allclose(w.numpy(), [1.0, expect_085, expect_035, 0.0, 0.7, 0.5], rtol=1e-5, atol=1e-6)
    assert 0.1 < expect_085 < 0.9 and 0.1 < expect_035 < 0.9
    # disabled: statistics kept, fixed weights used
    handler.enabled = False
    assert torch.equal(handler.weights(dice, base, apply), base)
    # checkpoint round trip
    other = MASHandler()
    other.load_state_dict(handler.state_dict())
    assert (other.eta, other.theta) == (handler.eta, handler.theta)


def _oedema_everywhere(seen: list[bool]):
    def inferer(x: torch.Tensor, network: torch.nn.Module) -> torch.Tensor:
        seen.append(network.training)
        logits = torch.zeros(x.shape[0], 4, *x.shape[2:])
        logits[:, 2] = 1.0  # predicts oedema everywhere
        return logits

    return inferer


def _real_case(case_id: str, oedema_slices: int) -> dict:
    label = torch.zeros(1, 1, 4, 4, 4)
    label[..., :oedema_slices] = 2
    return {"image": torch.zeros(1, 1, 4, 4, 4), "label": label, "case_id": [case_id]}


def test_mas_handler_real_eval_before_first_epoch_and_after_each(tmp_path) -> None:
    net = torch.nn.Conv3d(1, 4, 1)
    seen: list[bool] = []
    # half the volume oedema, predicted everywhere: WT Dice = 2*32/(64+32) = 2/3; a quarter: 2*16/(64+16) = 0.4
    loader = [_real_case("a", 2), _real_case("b", 1)]
    evaluator = real_case_evaluator(net, loader, inferer=_oedema_everywhere(seen))
    handler = MASHandler(evaluator=evaluator, log_dir=tmp_path)
    ready_at_first_iteration = []
    engine = _FakeEngine([{"sample_dice": torch.tensor([0.1]), "case_id": ["a"]}])
    engine.add_event_handler(Events.ITERATION_STARTED, lambda e: ready_at_first_iteration.append(handler.ready))
    handler.attach(engine)
    net.train()
    engine.run([0], max_epochs=2)
    # evaluated (eval mode, both cases) before the first epoch (no statistics yet), then after epochs 1 and 2
    assert seen == [False] * 6 and net.training
    assert ready_at_first_iteration == [True, True]
    # eq. 7: (2/3 + 0.4) / 2; eq. 8: (2/3 - 0.4) / 2 + c; the training sample (0.1) does not enter them
    assert handler.eta == pytest.approx((2 / 3 + 0.4) / 2)
    assert handler.theta == pytest.approx((2 / 3 - 0.4) / 2 + 2e-5)
    m = engine.state.metrics
    assert m["mas_real_cases"] == 2 and m["mas_theta_degenerate"] == 0 and m["mas_eval_seconds"] >= 0
    log = (tmp_path / "epoch_0001.csv").read_text().splitlines()
    assert log[1:] == [
        "a,train,0,0,0.100000,1.000000",
        "a,real_eval,0,0,0.666667,1.000000",
        "b,real_eval,0,0,0.400000,1.000000",
    ]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert [(h["after_epoch"], h["when"]) for h in summary["history"] if "after_epoch" in h] == [
        (0, "start"),
        (1, "end"),
        (2, "end"),
    ]
    assert summary["degenerate"] is False


def test_mas_handler_evaluates_only_from_phase2(tmp_path) -> None:
    net = torch.nn.Conv3d(1, 4, 1)
    seen: list[bool] = []
    loader = [_real_case("a", 2), _real_case("b", 1)]
    handler = MASHandler(evaluator=real_case_evaluator(net, loader, inferer=_oedema_everywhere(seen)), start_epoch=2)
    engine = _FakeEngine([{"sample_dice": torch.tensor([0.1]), "case_id": ["a"]}])
    handler.attach(engine)
    engine.run([0], max_epochs=3)
    # phase 1 = epochs 1-2: the first evaluation (two cases) is after epoch 2 (for epoch 3), then after epoch 3
    assert len(seen) == 4
    # resuming with the saved statistics (the model's after its last epoch) does not evaluate again at the start
    resumed = MASHandler(evaluator=real_case_evaluator(net, loader, inferer=_oedema_everywhere(seen)), start_epoch=2)
    resumed.load_state_dict(handler.state_dict())
    engine2 = _FakeEngine([{"sample_dice": torch.tensor([0.1]), "case_id": ["a"]}])
    resumed.attach(engine2)
    engine2.state.epoch = 3
    resumed.epoch_started(engine2)
    assert len(seen) == 4 and resumed.eta == handler.eta


def test_mas_with_one_real_case_warns(tmp_path, caplog) -> None:
    net = torch.nn.Conv3d(1, 4, 1)
    evaluator = real_case_evaluator(net, [_real_case("a", 2)], inferer=_oedema_everywhere([]))
    handler = MASHandler(evaluator=evaluator, log_dir=tmp_path)
    engine = _FakeEngine([{"sample_dice": torch.tensor([0.1]), "case_id": ["a"]}])
    handler.attach(engine)
    with caplog.at_level("WARNING", logger="custom_components.handlers.mas"):
        engine.run([0], max_epochs=1)
    assert "degenerates to theta = c" in caplog.text
    # eq. 8 with one case: theta = 0 / 2 + c
    assert handler.theta == pytest.approx(2e-5) and handler.eta == pytest.approx(2 / 3)
    assert engine.state.metrics["mas_theta_degenerate"] == 1.0 and handler.degenerate
    assert json.loads((tmp_path / "summary.json").read_text())["degenerate"] is True


def test_mas_weights_first_iteration_from_phase1_checkpoint(tmp_path) -> None:
    """Phase 2 from a phase-1 checkpoint with phase2_start_epoch 0: MAS weights the synthetic samples of the
    very first iteration (eqs. 6-8 with the loaded model's Dice on the real cases), not the fixed weight."""
    from custom_components.networks import build_segmentation_network, load_network_weights

    torch.manual_seed(0)
    phase1 = build_segmentation_network("dynunet", 1, 4, [4, 8, 8])
    torch.save(phase1.state_dict(), tmp_path / "model.pt")
    net = load_network_weights(build_segmentation_network("dynunet", 1, 4, [4, 8, 8]), tmp_path / "model.pt")
    g = torch.Generator().manual_seed(1)

    def case(cid: str, r: int) -> dict:
        label = torch.zeros(1, 8, 8, 8)
        label[:, 4 - r : 4 + r, 4 - r : 4 + r, 2:6] = 2
        label[:, 3:5, 3:5, 3:5] = 3
        return {"image": torch.randn(1, 8, 8, 8, generator=g) + label, "label": label, "case_id": cid}

    real = [case("a", 2), case("b", 3), case("c", 1)]
    synthetic = [case("s0", 2), case("s1", 3)]
    ds = TwoPhaseDataset(real, augment=lambda d: d, synthetic=synthetic, phase2_start_epoch=0, synthetic_weight=0.37)
    loader = torch.utils.data.DataLoader(ds, batch_size=3, collate_fn=list_data_collate)
    real_loader = torch.utils.data.DataLoader(real, batch_size=1)
    mas = MASHandler(beta=0.5, evaluator=real_case_evaluator(net, real_loader))
    trainer = SegmentationTrainer(
        device="cpu", max_epochs=1, train_data_loader=loader, network=net,
        optimizer=torch.optim.SGD(net.parameters(), lr=0.0), loss_function=SampleWeightedDiceLoss(), mas=mas,
        decollate=False,
    )  # fmt: skip
    first = []
    trainer.add_event_handler(Events.ITERATION_COMPLETED(once=1), lambda e: first.append(dict(e.state.output)))
    trainer.run()
    # hand-computed statistics of the loaded model on the real cases (eval mode, no gradients)
    net.eval()
    with torch.no_grad():
        dice = [float(region_dice_per_sample(hard_prediction(net(c["image"][None])), c["label"])[0]) for c in real]
    eta, theta = float(np.mean(dice)), (max(dice) - min(dice)) / 2 + 2e-5
    assert mas.history[0]["when"] == "start" and mas.history[0]["eta"] == pytest.approx(eta, abs=1e-6)
    out = first[0]
    syn = out["is_synthetic"].bool()
    assert int(syn.sum()) == 3
    expected = mas_weight(out["sample_dice"][syn].double(), eta, theta, 0.5)
    torch.testing.assert_close(out["sample_weight"][syn].double(), expected, atol=1e-5, rtol=0)
    assert not torch.allclose(out["sample_weight"][syn], torch.full((3,), 0.37))
    assert torch.equal(out["sample_weight"][~syn], torch.ones(3))


def test_sample_weighted_dice_loss() -> None:
    torch.manual_seed(0)
    logits = torch.randn(3, 4, 6, 6, 6)
    target = torch.randint(0, 4, (3, 1, 6, 6, 6)).float()
    loss = SampleWeightedDiceLoss()
    reference = DiceLoss(include_background=False, to_onehot_y=True, softmax=True, reduction="none")
    per_sample = reference(logits, target).reshape(3, -1).mean(1)
    np.testing.assert_allclose(loss.per_sample(logits, target).numpy(), per_sample.numpy(), rtol=1e-6)
    # unit weights: MONAI's mean Dice loss
    assert loss(logits, target).item() == pytest.approx(reference(logits, target).mean().item(), rel=1e-6)
    # eq. 15: w_b * L_b averaged over the batch (not renormalised by the weights)
    w = torch.tensor([1.0, 0.0, 0.25])
    assert loss(logits, target, w).item() == pytest.approx(((per_sample * w).sum() / 3).item(), rel=1e-6)
    # a perfect prediction has a (near) zero Dice loss
    perfect = torch.nn.functional.one_hot(target[:, 0].long(), 4).permute(0, 4, 1, 2, 3).float() * 100
    assert loss(perfect, target).item() < 1e-4
    with pytest.raises(ValueError, match="weights"):
        loss(logits, target, torch.ones(2))


def _batch(n_real: int, n_syn: int) -> dict:
    g = torch.Generator().manual_seed(1)
    label = torch.zeros(n_real + n_syn, 1, 8, 8, 8)
    label[:, :, 2:6, 2:6, 2:6] = 2
    label[:, :, 3:5, 3:5, 3:5] = 3
    return {
        "image": torch.randn(n_real + n_syn, 2, 8, 8, 8, generator=g),
        "label": label,
        "is_synthetic": torch.tensor([False] * n_real + [True] * n_syn),
        "mas": torch.tensor([False] * n_real + [True] * n_syn),
        "weight": torch.tensor([1.0] * n_real + [0.5] * n_syn),
        "case_id": [f"r{i}" for i in range(n_real)] + [f"s{i}" for i in range(n_syn)],
    }


def test_segmentation_trainer_weights_loss_per_sample() -> None:
    torch.manual_seed(0)
    net = torch.nn.Conv3d(2, 4, 3, padding=1)
    criterion = SampleWeightedDiceLoss()
    mas = MASHandler(beta=0.1)
    batches = [_batch(2, 2), _batch(2, 2)]
    trainer = SegmentationTrainer(
        device="cpu",
        max_epochs=2,
        train_data_loader=batches,
        network=net,
        optimizer=torch.optim.SGD(net.parameters(), lr=0.0),
        loss_function=criterion,
        mas=mas,
        decollate=False,
    )
    records = []

    @trainer.on(Events.ITERATION_COMPLETED)
    def _record(engine: Engine) -> None:
        out = engine.state.output
        records.append((engine.state.epoch, out["sample_dice"].clone(), out["sample_weight"].clone(), out["loss"]))

    trainer.run()
    with torch.no_grad():
        logits = net(batches[0]["image"])
        dice = region_dice_per_sample(logits.argmax(1), batches[0]["label"][:, 0].long())
        per_sample = criterion.per_sample(logits, batches[0]["label"])
    # epoch 1: no statistics yet -> the batch's fixed weights (1 real, 0.5 synthetic)
    epoch, d, w, loss = records[0]
    torch.testing.assert_close(d, dice)
    torch.testing.assert_close(w, torch.tensor([1.0, 1.0, 0.5, 0.5]))
    assert loss.item() == pytest.approx((per_sample * w).mean().item(), rel=1e-5)
    # epoch 2 (lr 0: same network): eta/theta from the real samples of epoch 1, MAS weights for the synthetic ones
    real = dice[:2].tolist()
    eta, theta = float(np.mean(real)), (max(real) - min(real)) / 2 + 2e-5
    assert mas.eta == pytest.approx(eta) and mas.theta == pytest.approx(theta)
    epoch, d, w, loss = records[2]
    assert epoch == 2
    expected = torch.tensor([1.0, 1.0, *mas_weight(dice[2:].double(), eta, theta, 0.1).tolist()], dtype=torch.float32)
    torch.testing.assert_close(w, expected, rtol=1e-5, atol=1e-6)
    assert loss.item() == pytest.approx((per_sample * expected).mean().item(), rel=1e-5)


def test_two_phase_lr_lambda() -> None:
    net = torch.nn.Linear(1, 1)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-4, weight_decay=1e-5)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, TwoPhaseLRLambda(2, 1e-4, 1e-5))
    lrs = []
    for _ in range(4):  # engine epochs 1..4, one scheduler step after each
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    np.testing.assert_allclose(lrs, [1e-4, 1e-4, 1e-5, 1e-5])
    opt0 = torch.optim.AdamW(net.parameters(), lr=1e-4)
    torch.optim.lr_scheduler.LambdaLR(opt0, TwoPhaseLRLambda(0, 1e-4, 1e-5))
    assert opt0.param_groups[0]["lr"] == pytest.approx(1e-5)


def _case(k: int) -> dict:
    label = torch.zeros(1, 4, 4, 4)
    label[0, 1:3, 1:3, 1:3] = 2
    return {"image": torch.full((1, 4, 4, 4), float(k)), "label": label, "case_id": f"c{k}"}


def test_two_phase_dataset() -> None:
    def online(d: dict) -> dict:
        d = dict(d)
        d["image"] = d["image"] + 100
        d["is_synthetic"] = True
        return d

    def unapplied(d: dict) -> dict:
        return {**d, "is_synthetic": False}

    real = [_case(k) for k in range(3)]
    synthetic = [{**_case(10 + k), "case_id": f"s{k}"} for k in range(2)]
    ds = TwoPhaseDataset(
        real, augment=lambda d: d, online=[online, unapplied], synthetic=synthetic, phase2_start_epoch=1,
        synthetic_weight=0.5, synthetic_mas=False,
    )  # fmt: skip
    assert len(ds) == 3 and ds.phase == 1
    samples = ds[1]
    assert len(samples) == 1 and samples[0]["case_id"] == "c1" and samples[0]["is_synthetic"] is False
    assert samples[0]["weight"] == 1.0 and samples[0]["mas"] is False
    ds.set_epoch(2)
    assert ds.phase == 2 and ds.samples_per_case() == 4
    real_s, dtss_s, unapplied_s, syn_s = ds[1]
    assert dtss_s["is_synthetic"] and dtss_s["mas"] and dtss_s["weight"] == 0.5 and dtss_s["case_id"] == "c1#online0"
    assert float(dtss_s["image"][0, 0, 0, 0]) == 101.0
    # an online transform that did not apply yields a real sample of the same case
    assert not unapplied_s["is_synthetic"] and unapplied_s["case_id"] == "c1" and unapplied_s["weight"] == 1.0
    # synthetic datalist items: not MAS-weighted here, fixed weight, cycled over epochs: index (epoch-1)*3 + i mod 2
    assert syn_s["is_synthetic"] and not syn_s["mas"] and syn_s["weight"] == 0.5
    assert [ds[i][-1]["case_id"] for i in range(3)] == ["s1", "s0", "s1"]
    ds.set_epoch(3)
    assert [ds[i][-1]["case_id"] for i in range(3)] == ["s0", "s1", "s0"]
    # the real case is never modified by online synthesis
    assert float(real[1]["image"].max()) == 1.0
    with pytest.raises(ValueError):
        TwoPhaseDataset([], augment=lambda d: d)


def test_check_output_dir(tmp_path) -> None:
    assert check_output_dir(tmp_path / "new") == tmp_path / "new"
    (tmp_path / "run" / "models").mkdir(parents=True)
    (tmp_path / "run" / "models" / "model.pt").write_bytes(b"x")
    with pytest.raises(OutputExistsError, match="models"):
        check_output_dir(tmp_path / "run")
    assert check_output_dir(tmp_path / "run", overwrite=True) == tmp_path / "run"
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        check_output_dir(tmp_path / "run", resume_checkpoint=str(tmp_path / "missing.pt"))


# ------------------------------------------------------------------ the parts of MAS, one by one
class _FixedLogits(torch.nn.Module):
    """A 'network' that returns given logits (a parameter, so the step has something to differentiate)."""

    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.logits = torch.nn.Parameter(logits.clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits * 1.0


def test_iteration_weighted_loss_by_hand() -> None:
    """Two real + two synthetic samples, oedema only (16 voxels each, 4 of them oedema in the label); the prediction
    (one-hot logits of height 30) overlaps it in I of P voxels, so the sample accuracy is WT's Dice 2I / (P + 4) and
    the Dice loss (eq. 14, classes NCR, ED, ET; NCR and ET absent in both: loss 0) is (1 - (2I + s) / (P + 4 + s)) / 3
    with MONAI's smoothing s = 1e-5. MAS with eta 0.5, theta 0.125, beta 0.25 (plateau [0.375, 0.625], a = -8)."""
    overlaps = [(4, 4), (4, 2), (4, 1), (2, 2)]  # (P, I): r0, r1 real; s0, s1 synthetic
    label = torch.zeros(4, 1, 2, 2, 4)
    label.view(4, -1)[:, :4] = 2  # voxels 0-3 are oedema
    logits = torch.zeros(4, 4, 2, 2, 4)
    for b, (p, i) in enumerate(overlaps):
        pred = torch.zeros(16, dtype=torch.long)
        pred[4 - i : 4 - i + p] = 2  # i of the p predicted voxels lie in 0-3
        logits[b].view(4, -1)[:, :] = 30.0 * torch.nn.functional.one_hot(pred, 4).T.float()
    batch = {
        "image": torch.zeros(4, 1, 2, 2, 4),
        "label": label,
        SynthesisKeys.SYNTHETIC: torch.tensor([False, False, True, True]),
        SynthesisKeys.MAS: torch.tensor([False, False, True, True]),
        SynthesisKeys.WEIGHT: torch.tensor([1.0, 1.0, 0.3, 0.3]),
        SynthesisKeys.CASE_ID: ["r0", "r1", "r0#online0", "r1#online0"],
    }
    net = _FixedLogits(logits)
    mas = MASHandler(beta=0.25)
    mas.load_state_dict({"eta": 0.5, "theta": 0.125})
    trainer = SegmentationTrainer(
        device="cpu", max_epochs=1, train_data_loader=[batch], network=net,
        optimizer=torch.optim.SGD(net.parameters(), lr=0.0), loss_function=SampleWeightedDiceLoss(), mas=mas,
        decollate=False,
    )  # fmt: skip
    trainer.run()
    out = trainer.state.output
    # accuracies 2I / (P + 4): 1, 0.5, 0.25, 2/3
    torch.testing.assert_close(out[SynthesisKeys.SAMPLE_DICE], torch.tensor([1.0, 0.5, 0.25, 2 / 3]))
    # real: weight 1; synthetic (eq. 6): -8 (0.25 - 0.125)(0.25 - 0.875) = 0.625 and
    # -8 (2/3 - 1/8)(2/3 - 7/8) = 8 * 13/24 * 5/24 = 65/72
    torch.testing.assert_close(out[SynthesisKeys.SAMPLE_WEIGHT], torch.tensor([1.0, 1.0, 0.625, 65 / 72]))
    s = 1e-5
    losses = [(1 - (2 * i + s) / (p + 4 + s)) / 3 for p, i in overlaps]
    weights = [1.0, 1.0, 0.625, 65 / 72]
    expected = sum(w * v for w, v in zip(weights, losses, strict=True)) / 4  # eq. 15: mean over the batch
    assert out["loss"].item() == pytest.approx(expected, abs=1e-6)
    assert out[SynthesisKeys.SYNTHETIC].tolist() == [False, False, True, True]
    assert out[SynthesisKeys.CASE_ID] == ["r0", "r1", "r0#online0", "r1#online0"]
    # MAS disabled: the batch's fixed weights
    mas.enabled = False
    trainer.run()  # a second run of one epoch (the state is reset)
    torch.testing.assert_close(trainer.state.output[SynthesisKeys.SAMPLE_WEIGHT], torch.tensor([1.0, 1.0, 0.3, 0.3]))
    expected_fixed = sum(w * v for w, v in zip([1.0, 1.0, 0.3, 0.3], losses, strict=True)) / 4
    assert trainer.state.output["loss"].item() == pytest.approx(expected_fixed, abs=1e-6)


def test_mas_statistics_by_hand() -> None:
    stats = MASStatistics(beta=0.25, c=2e-5)
    assert not stats.ready and stats.update({}) == {} and not stats.ready
    base, apply = torch.tensor([1.0, 0.5, 0.5]), torch.tensor([False, True, True])
    # without statistics: the fixed weights
    assert torch.equal(stats.weights(torch.tensor([0.5, 0.25, 0.9]), base, apply), base)
    # eq. 7: (0.75 + 0.5 + 0.25) / 3 = 0.5; eq. 8: (0.75 - 0.25) / 2 + 2e-5 = 0.25002
    out = stats.update({"a": 0.75, "b": 0.5, "c": 0.25})
    assert out == {
        "eta": pytest.approx(0.5),
        "theta": pytest.approx(0.25002),
        "real_cases": 3.0,
        "theta_degenerate": 0.0,
    }
    assert stats.ready and stats.eta == pytest.approx(0.5)
    # plateau [0.24998, 0.75002]; a = -1 / (0.25 (0.50004 + 0.25)): 0.9 on the upper flank, NaN keeps its base weight
    dice = torch.tensor([0.5, 0.9, float("nan")])
    a = -1 / (0.25 * (2 * 0.25002 + 0.25))
    flank = a * (0.9 - (0.5 - 0.25002 - 0.25)) * (0.9 - (0.5 + 0.25002 + 0.25))
    torch.testing.assert_close(stats.weights(dice, base, apply), torch.tensor([1.0, flank, 0.5]))
    # one case: eq. 8 gives theta = c and the statistics say so
    single = MASStatistics().update({"a": 0.4})
    assert single["theta"] == pytest.approx(2e-5) and single["theta_degenerate"] == 1.0
    other = MASStatistics()
    other.load_state_dict(stats.state_dict())
    assert (other.eta, other.theta) == (stats.eta, stats.theta)


def test_real_case_evaluator_per_case_dice_equals_direct_computation() -> None:
    torch.manual_seed(0)
    net = torch.nn.Conv3d(2, 4, 3, padding=1)
    g = torch.Generator().manual_seed(3)
    cases = []
    for k in range(3):
        label = torch.zeros(1, 6, 6, 6)
        if k < 2:  # the third case has no tumour: no accuracy
            label[:, 1:5, 1:5, 1:4] = 2
            label[:, 2:4, 2:4, 2 : 3 + k] = 3
        cases.append({"image": torch.randn(2, 6, 6, 6, generator=g), "label": label, "case_id": f"c{k}"})
    loader = torch.utils.data.DataLoader(cases, batch_size=2)
    evaluator = real_case_evaluator(net, loader)
    net.train()
    state = torch.get_rng_state()
    evaluator.run()
    after_evaluator = torch.get_rng_state()
    # the same random draws as iterating the loader once (the bundle's numbers do not change)
    torch.set_rng_state(state)
    for _ in loader:
        pass
    assert torch.equal(torch.get_rng_state(), after_evaluator)
    assert net.training  # back in training mode
    with torch.no_grad():
        net.eval()
        direct = {
            c["case_id"]: float(region_dice_per_sample(hard_prediction(net(c["image"][None])), c["label"])[0])
            for c in cases[:2]
        }
    details = evaluator.state.metric_details[REAL_DICE_METRIC]
    assert details.keys() == {"c0", "c1"}
    for cid, d in direct.items():
        assert details[cid] == pytest.approx(d, abs=1e-7)
    assert evaluator.state.metrics[REAL_DICE_METRIC] == pytest.approx(np.mean(list(direct.values())))


def test_synthesis_keys_are_defined_once() -> None:
    """The per-sample key strings are written out only in custom_components/data/keys.py: the MAS data flow's modules
    and the online synthesis transforms use SynthesisKeys."""
    import ast
    from pathlib import Path

    package = Path(__file__).resolve().parents[1] / "custom_components"
    flow = {"engines/seg_trainer.py", "engines/seg_data.py", "handlers/mas.py", "losses/weighted_dice.py"}
    specific = {"is_synthetic", "sample_dice", "sample_weight"}  # generic ones ("case_id", "weight") only in the flow
    found: dict[str, set[str]] = {}
    for path in package.rglob("*.py"):
        rel = path.relative_to(package).as_posix()
        strings = {n.value for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.Constant)}
        keys = {k.value for k in SynthesisKeys} if rel in flow else specific
        hits = strings & keys
        if hits and rel != "data/keys.py":
            found[rel] = hits
    assert found == {}
    assert {k.value for k in SynthesisKeys} == {
        "case_id",
        "is_synthetic",
        "mas",
        "weight",
        "sample_dice",
        "sample_weight",
    }


def test_mas_eval_interval_reuses_the_last_statistics(tmp_path) -> None:
    """eval_interval 2 from start_epoch 0: the evaluator runs at the start (no statistics), after epochs 2 and 4;
    epochs 1-2 apply the start's statistics, epochs 3-4 those after epoch 2."""
    net = torch.nn.Conv3d(1, 4, 1)
    calls: list[int] = []

    def growing_oedema(x: torch.Tensor, network: torch.nn.Module) -> torch.Tensor:
        # evaluation e (two cases each) predicts oedema on the first p = 1, 3, 4 of the 4 slices
        p = [1, 3, 4][len(calls) // 2]
        calls.append(p)
        logits = torch.zeros(x.shape[0], 4, *x.shape[2:])
        logits[:, 0] = 1.0
        logits[..., :p] = torch.tensor([0.0, 0.0, 2.0, 0.0]).view(1, 4, 1, 1, 1)
        return logits

    # case a: oedema on 2 slices, b: on 1; WT Dice 2 min(p, g) / (p + g)
    loader = [_real_case("a", 2), _real_case("b", 1)]
    handler = MASHandler(evaluator=real_case_evaluator(net, loader, inferer=growing_oedema), eval_interval=2)
    engine = _FakeEngine([{"sample_dice": torch.tensor([0.1]), "case_id": ["a"]}])
    handler.attach(engine)
    applied = []
    engine.add_event_handler(Events.EPOCH_COMPLETED, lambda e: applied.append(e.state.metrics["mas_eta_applied"]))
    engine.run([0], max_epochs=4)
    assert calls == [1, 1, 3, 3, 4, 4]  # three evaluations of the two cases
    assert [h["after_epoch"] for h in handler.history if "after_epoch" in h] == [0, 2, 4]
    eta0 = (2 / 3 + 1.0) / 2  # p = 1: a 2/3, b 1
    eta2 = (0.8 + 0.5) / 2  # p = 3: a 4/5, b 2/4
    eta4 = (2 / 3 + 0.4) / 2  # p = 4: a 4/6, b 2/5
    np.testing.assert_allclose(applied, [eta0, eta0, eta2, eta2])
    assert handler.eta == pytest.approx(eta4) and handler.theta == pytest.approx((2 / 3 - 0.4) / 2 + 2e-5)
    # reuse epochs have no new statistics and no evaluation time
    assert [handler.evaluates_after(k) for k in range(1, 5)] == [False, True, False, True]
    with pytest.raises(ValueError, match="eval_interval"):
        MASHandler(eval_interval=0)
