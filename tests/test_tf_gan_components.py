"""TF-GAN components: networks, losses (hand-computed cases), lambda schedule, trainer iteration, refine helpers."""

from __future__ import annotations

import math
import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from ignite.engine import Engine, Events
from monai.data import DataLoader
from monai.handlers import CheckpointLoader
from monai.networks.blocks import UpSample
from monai.networks.nets import PatchDiscriminator
from torch import nn

from custom_components.engines.gan_trainer import (
    NanSkippingAverage,
    Pix2PixTrainer,
    TFGANTrainer,
    discriminator_accuracy,
    loss_terms,
    training_change,
    tumour_texture,
)
from custom_components.handlers.checkpoints import latest_checkpoint
from custom_components.losses import HingeL1Loss
from custom_components.losses.adversarial import DualHeadAdversarialLoss, bce_with_logits, split_logits
from custom_components.losses.classwise_perceptual import ClasswisePerceptualLoss
from custom_components.networks.frozen_encoder import FrozenEncoder
from custom_components.networks.segmentation import build_segmentation_network
from custom_components.networks.tf_gan import (
    DualHeadDiscriminator,
    TFGANGenerator,
    condition_channels,
    keep_coarse_outside_roi,
    roi_noise,
)
from custom_components.synthesis.tf_gan import GeneratorInputs, case_noise_seed, check_outputs
from custom_components.transforms import BrainMaskd, RoiMaskd, class_interiors, highpass, masked_highpass_std, roi_mask

REPO = Path(__file__).resolve().parents[1]
WIDTHS = (8, 8, 8, 8, 8, 8)


# -- networks ---------------------------------------------------------------------------------------
def test_generator_architecture_and_output() -> None:
    torch.manual_seed(0)
    g = TFGANGenerator(in_channels=1, out_channels=1, num_classes=3, channels=WIDTHS)
    assert not any(isinstance(m, nn.ConvTranspose3d | nn.ConvTranspose2d | nn.ConvTranspose1d) for m in g.modules())
    assert len(g.encoder) == 6  # six resolution levels
    ups = [m for m in g.modules() if isinstance(m, UpSample)]
    assert len(ups) == 5
    for up in ups:
        assert up.upsample_non_trainable.mode == "nearest" and isinstance(up.postconv, nn.Module)
    x = torch.cat([100 * torch.randn(2, 1, 64, 64, 64), torch.zeros(2, 3, 64, 64, 64)], 1)
    y = g(x)
    assert y.shape == (2, 1, 64, 64, 64)
    assert y.min() >= -1 and y.max() <= 1


def test_generator_default_widths_and_input_checks() -> None:
    assert TFGANGenerator().channels == (16, 32, 64, 128, 256, 320)
    g = TFGANGenerator(1, 1, 3, WIDTHS)
    with pytest.raises(ValueError, match="divisible by 32"):
        g(torch.zeros(1, 4, 64, 80, 64))
    with pytest.raises(ValueError, match="one-voxel bottleneck"):
        g(torch.zeros(1, 4, 32, 32, 32))
    with pytest.raises(ValueError, match=r"\(B, 4, H, W, D\)"):
        g(torch.zeros(1, 3, 64, 64, 64))
    # Pix2Pix: label-only input (3 tumour classes + brain)
    p2p = TFGANGenerator(in_channels=0, out_channels=1, num_classes=4, channels=WIDTHS)
    assert p2p(torch.zeros(1, 4, 64, 64, 64)).shape == (1, 1, 64, 64, 64)


def test_untrained_residual_generator_returns_its_input_and_the_hinge_is_zero() -> None:
    torch.manual_seed(0)
    g = TFGANGenerator(1, 1, 3, WIDTHS, residual=True)
    coarse = torch.rand(2, 1, 64, 64, 64) * 2 - 1
    label = torch.zeros(2, 1, 64, 64, 64)
    label[:, :, 20:40, 20:40, 20:40] = 2
    refined = g(torch.cat([coarse, condition_channels(label)], 1))
    assert torch.equal(refined, coarse)  # bit for bit: the output layer starts at zero
    assert HingeL1Loss(margin=0.0)(refined, coarse, label > 0).item() == 0.0
    # the correction is added to the image and clamped to [-1, 1]
    with torch.no_grad():
        g.head.conv.conv.bias.fill_(0.5)
    shifted = g(torch.cat([coarse, condition_channels(label)], 1))
    assert torch.allclose(shifted, (coarse + 0.5).clamp(-1, 1))
    # a direct-output generator predicts the image itself (tanh of a random head): far from its input
    direct = TFGANGenerator(1, 1, 3, WIDTHS)
    assert (direct(torch.cat([coarse, condition_channels(label)], 1)) - coarse).abs().mean() > 0.3
    with pytest.raises(ValueError, match="in_channels .* must equal"):
        TFGANGenerator(in_channels=0, out_channels=1, num_classes=4, channels=WIDTHS, residual=True)


def test_noise_input_keeps_an_untrained_residual_generator_at_the_identity() -> None:
    roi = torch.zeros(2, 1, 64, 64, 64)
    roi[:, :, 20:40, 20:40, 20:40] = 1
    noise = roi_noise(roi, 1, torch.Generator().manual_seed(3))
    # standard normal inside m_roi, exactly 0 outside; the same seed draws the same noise
    assert noise.shape == (2, 1, 64, 64, 64) and torch.all(noise[roi == 0] == 0)
    inside = noise[roi > 0]
    assert abs(float(inside.mean())) < 0.02 and abs(float(inside.std()) - 1) < 0.02
    assert torch.equal(noise, roi_noise(roi, 1, torch.Generator().manual_seed(3)))
    assert not torch.equal(noise, roi_noise(roi, 1, torch.Generator().manual_seed(4)))
    torch.manual_seed(0)
    g = TFGANGenerator(1, 1, 3, WIDTHS, residual=True, noise_channels=1)
    assert g.encoder[0].conv1.conv.in_channels == 5  # image, NCR, ED, ET, noise
    coarse = torch.rand(2, 1, 64, 64, 64) * 2 - 1
    label = (roi * 2).long()
    assert torch.equal(g(torch.cat([coarse, condition_channels(label), noise], 1)), coarse)
    with pytest.raises(ValueError, match=r"\(B, 5, H, W, D\) input \(1 image \+ 3 mask \+ 1 noise"):
        g(torch.cat([coarse, condition_channels(label)], 1))


def test_generator_checkpoints_load_only_with_their_output_form(tmp_path: Path) -> None:
    # a checkpoint written before the residual and upsample options: no such entries, direct output, nearest
    old = TFGANGenerator(1, 1, 3, WIDTHS)
    old_state = {k: v for k, v in old.state_dict().items() if k not in ("residual_output", "upsample_trilinear")}
    torch.save({"generator": old_state}, tmp_path / "old.pt")
    loaded = TFGANGenerator(1, 1, 3, WIDTHS)
    CheckpointLoader(str(tmp_path / "old.pt"), {"generator": loaded}).attach(engine := Engine(lambda e, b: None))
    engine.run([0])
    x = torch.rand(1, 4, 64, 64, 64)
    assert torch.equal(loaded(x), old(x))
    with pytest.raises(RuntimeError, match=r"residual=false \(a checkpoint from before the residual option\)"):
        TFGANGenerator(1, 1, 3, WIDTHS, residual=True).load_state_dict(old_state)
    # a residual checkpoint loads only into a residual generator, and the refusal leaves the flag as built
    residual = TFGANGenerator(1, 1, 3, WIDTHS, residual=True)
    direct = TFGANGenerator(1, 1, 3, WIDTHS)
    with pytest.raises(RuntimeError, match=r"set `residual: true`"):
        direct.load_state_dict(residual.state_dict())
    assert direct.residual_output.item() is False
    TFGANGenerator(1, 1, 3, WIDTHS, residual=True).load_state_dict(residual.state_dict())
    # the same for the upsampling: a checkpoint without the entry is a nearest-neighbour one
    with pytest.raises(RuntimeError, match=r"upsample=nearest \(a checkpoint from before the upsample option\)"):
        TFGANGenerator(1, 1, 3, WIDTHS, upsample="trilinear").load_state_dict(old_state)
    linear = TFGANGenerator(1, 1, 3, WIDTHS, residual=True, upsample="trilinear")
    with pytest.raises(RuntimeError, match=r"set `upsample: trilinear`"):
        residual.load_state_dict(linear.state_dict())
    assert residual.upsample_trilinear.item() is False
    TFGANGenerator(1, 1, 3, WIDTHS, residual=True, upsample="trilinear").load_state_dict(linear.state_dict())


def test_generator_upsampling_is_nearest_or_trilinear() -> None:
    # one decoder upsampling of a 2x2x2 map with values 0 and 1 along the first axis: nearest copies each value
    # into a 2-voxel block (a step between voxels 1 and 2), trilinear (align_corners False) ramps 0, 0.25, 0.75, 1
    x = torch.zeros(1, WIDTHS[1], 2, 2, 2)
    x[:, :, 1] = 1.0
    expected = {"nearest": [0.0, 0.0, 1.0, 1.0], "trilinear": [0.0, 0.25, 0.75, 1.0]}
    for mode, profile in expected.items():
        g = TFGANGenerator(1, 1, 3, WIDTHS, upsample=mode)
        up = g.upsamples[-1]
        interpolated = up.upsample_non_trainable(x)
        assert torch.allclose(interpolated[0, 0, :, 0, 0], torch.tensor(profile))
        assert g(torch.zeros(1, 4, 64, 64, 64)).shape == (1, 1, 64, 64, 64)
    with pytest.raises(ValueError, match="upsample must be one of"):
        TFGANGenerator(1, 1, 3, WIDTHS, upsample="bilinear")


def test_discriminator_accuracy_counts_right_decisions_per_head() -> None:
    # patch head: real logits 3 of 4 positive, fake 1 of 4 negative -> (0.75 + 0.25) / 2; global: all right -> 1
    real = (torch.tensor([1.0, 2.0, -1.0, 3.0]).view(1, 1, 4, 1, 1), torch.tensor([[2.0]]))
    fake = (torch.tensor([1.0, 2.0, -1.0, 3.0]).view(1, 1, 4, 1, 1), torch.tensor([[-2.0]]))
    # per half: real (0.75 + 1) / 2 right, generated (0.25 + 1) / 2 right
    acc = discriminator_accuracy(real, fake)
    assert acc["d_acc"] == pytest.approx((0.5 + 1.0) / 2)
    assert acc["d_acc_real"] == pytest.approx(0.875) and acc["d_acc_fake"] == pytest.approx(0.625)
    # a patch-only discriminator (a bare tensor): that head alone
    assert discriminator_accuracy(real[0], fake[0]) == pytest.approx(
        {"d_acc": 0.5, "d_acc_real": 0.75, "d_acc_fake": 0.25}
    )


def test_discriminator_heads() -> None:
    torch.manual_seed(0)
    d = DualHeadDiscriminator(in_channels=4, channels=(8, 8, 8, 8, 8))
    patch, glob = d(torch.randn(3, 4, 64, 64, 128))
    assert patch.shape == (3, 1, 2, 2, 4)  # five stride-2 stages
    assert glob.shape == (3, 1)
    assert isinstance(d.pool, nn.AdaptiveAvgPool3d) and isinstance(d.global_head, nn.Linear)
    with pytest.raises(ValueError, match=r"\(B, 4, H, W, D\)"):
        d(torch.randn(1, 5, 64, 64, 64))


def test_spectral_norm_discriminator_has_no_instance_norm_and_unit_spectral_norms() -> None:
    torch.manual_seed(0)
    d = DualHeadDiscriminator(4, (8, 8, 8, 8, 8), spectral_norm=True)
    assert not any(isinstance(m, nn.InstanceNorm3d) for m in d.modules())
    assert any(isinstance(m, nn.InstanceNorm3d) for m in DualHeadDiscriminator(4, (8, 8, 8, 8, 8)).modules())
    layers = [m for m in d.modules() if isinstance(m, nn.Conv3d | nn.Linear)]
    assert len(layers) == 7  # five stages, the patch head, the global head
    d.train()
    for _ in range(20):  # power iterations converge while training
        d(torch.randn(1, 4, 64, 64, 64))
    d.eval()
    for layer in layers:
        w = layer.weight.detach().reshape(layer.weight.shape[0], -1)
        assert torch.linalg.matrix_norm(w, ord=2).item() == pytest.approx(1.0, abs=0.05)


def test_condition_channels() -> None:
    label = torch.tensor([0, 1, 2, 3, 0, 2]).reshape(1, 1, 6, 1, 1)
    brain = torch.tensor([0, 1, 1, 1, 1, 1]).reshape(1, 1, 6, 1, 1)
    c = condition_channels(label).reshape(3, 6)
    assert c.tolist() == [[0, 1, 0, 0, 0, 0], [0, 0, 1, 0, 0, 1], [0, 0, 0, 1, 0, 0]]
    c = condition_channels(label, brain=brain).reshape(4, 6)
    assert c[3].tolist() == [0, 0, 0, 0, 1, 0]  # brain and not tumour


# -- hinge L1 (eq. 2) and m_roi ---------------------------------------------------------------------------
def _vec(values: list[float]) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32).reshape(1, 1, len(values), 1, 1)


def test_hinge_zero_within_margin_and_inside_roi() -> None:
    loss = HingeL1Loss(margin=0.1)
    coarse = torch.linspace(-1, 1, 8).reshape(1, 1, 2, 2, 2)
    assert loss(coarse + 0.099, coarse, torch.zeros_like(coarse)).item() == 0.0  # float32: stay below the margin
    assert loss(coarse - 0.05, coarse, torch.zeros_like(coarse)).item() == 0.0
    assert loss(coarse + 5.0, coarse, torch.ones_like(coarse)).item() == 0.0  # inside the ROI: max(0, -margin)


def test_hinge_exact_values_and_linear_growth() -> None:
    loss = HingeL1Loss(margin=0.1)
    coarse = torch.zeros(1, 1, 4, 1, 1)
    roi = _vec([0, 0, 1, 0])
    refined = _vec([0.3, 0.05, 0.5, -0.7]).requires_grad_()
    value = loss(refined, coarse, roi)
    assert value.item() == pytest.approx((0.2 + 0.0 + 0.0 + 0.6) / 4)
    value.backward()
    np.testing.assert_allclose(refined.grad.flatten().numpy(), [0.25, 0.0, 0.0, -0.25])
    # outside the ROI and beyond the margin the loss grows with slope 1 (per voxel, averaged)
    for d in (0.2, 0.5, 1.0):
        assert loss(_vec([d, 0, 0, 0]), coarse, roi).item() == pytest.approx((d - 0.1) / 4)
    assert HingeL1Loss(margin=0.1, reduction="sum")(_vec([0.3, 0, 0, 0.7]), coarse, roi).item() == pytest.approx(0.8)
    with pytest.raises(ValueError, match="non-negative"):
        HingeL1Loss(margin=-0.1)


def test_roi_mask_dilation() -> None:
    label = np.zeros((1, 9, 9, 9), np.uint8)
    label[0, 4, 4, 4] = 3
    assert roi_mask(label, margin=0).sum() == 1
    # the integer points of a ball of radius 2: 1 + 6 + 12 + 8 + 6 = 33
    assert roi_mask(label, margin=2).sum() == 33
    roi = np.zeros_like(label)
    roi[0, 0, 0, 0] = 1
    grown = roi_mask(label, roi, margin=1)
    assert grown.sum() == 7 + 4 and grown.dtype == np.float32  # 6-neighbourhood + corner voxel with 3 neighbours
    d = RoiMaskd(keys=["label", "roi"], margin=1)({"label": torch.as_tensor(label)})
    assert isinstance(d["roi"], torch.Tensor) and d["roi"].sum().item() == 7


# -- class-wise perceptual (eq. 3) --------------------------------------------------------------------
class PointEncoder(nn.Module):
    """Three levels of a fixed 1x1x1 convolution, subsampled by 1, 2, 4 (no receptive field beyond a voxel)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.conv = nn.Conv3d(1, 3, 1)
        for p in self.parameters():
            p.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        f = self.conv(x)
        return [f, f[..., ::2, ::2, ::2], f[..., ::4, ::4, ::4]]


def _blocks_label() -> torch.Tensor:
    """Classes on 4x4x4-aligned blocks of a 16^3 grid (exact at every level with either mask mode)."""
    label = torch.zeros(1, 1, 16, 16, 16)
    label[..., 0:4, 0:4, 0:8] = 1
    label[..., 4:8, 0:8, 0:4] = 2
    label[..., 8:12, 8:12, 8:12] = 3
    return label


@pytest.mark.parametrize("mode", ["area", "nearest"])
def test_perceptual_identical_is_zero_and_outside_voxels_do_not_matter(mode: str) -> None:
    loss = ClasswisePerceptualLoss(PointEncoder(), levels=3, mask_mode=mode)
    torch.manual_seed(0)
    label = _blocks_label()
    img = torch.rand(1, 1, 16, 16, 16)
    assert loss(img, label, img, label).item() == 0.0
    real = torch.rand(1, 1, 16, 16, 16)
    base = loss(img, label, real, label).item()
    assert base > 0
    changed = torch.where(label > 0, img, torch.rand_like(img) * 10)  # new values outside every tumour class
    assert loss(changed, label, real, label).item() == pytest.approx(base, abs=1e-6)
    inside = torch.where(label == 3, img + 1, img)
    assert loss(inside, label, real, label).item() != pytest.approx(base)


def test_perceptual_hand_computed_and_absent_classes_skipped() -> None:
    def identity(x: torch.Tensor) -> list[torch.Tensor]:
        return [x, 2 * x]

    refined = torch.zeros(1, 1, 4, 1, 1)
    refined_label = torch.zeros(1, 1, 4, 1, 1)
    refined[..., :3, 0, 0] = torch.tensor([1.0, 3.0, 5.0]).reshape(1, 1, 3)
    refined_label[..., :3, 0, 0] = torch.tensor([1.0, 1.0, 2.0]).reshape(1, 1, 3)  # class 1 mean 2, class 2 = 5
    real = torch.zeros(1, 1, 4, 1, 1)
    real_label = torch.zeros(1, 1, 4, 1, 1)
    real[..., :2, 0, 0] = torch.tensor([4.0, 7.0]).reshape(1, 1, 2)
    real_label[..., :2, 0, 0] = torch.tensor([1.0, 3.0]).reshape(1, 1, 2)  # class 1 = 4, class 2 absent, 3 only here
    one = ClasswisePerceptualLoss(identity, levels=1)
    assert one(refined, refined_label, real, real_label).item() == pytest.approx(2.0)  # |2 - 4|, class 1 only
    two = ClasswisePerceptualLoss(identity, levels=2)
    assert two(refined, refined_label, real, real_label).item() == pytest.approx((2.0 + 4.0) / 2)
    # batch pairing: sample b against real b % B_r; the mean is over all valid (pair, level, class)
    batch = torch.cat([refined, refined + 1]), torch.cat([refined_label, refined_label])
    assert one(*batch, real, real_label).item() == pytest.approx((2.0 + 1.0) / 2)


def test_perceptual_no_shared_class_is_zero_with_grad() -> None:
    loss = ClasswisePerceptualLoss(PointEncoder(), levels=3)
    refined = torch.rand(1, 1, 16, 16, 16, requires_grad=True)
    label = _blocks_label()
    value = loss(
        refined, torch.where(label == 1, label, 0), torch.rand(1, 1, 16, 16, 16), torch.where(label == 3, label, 0)
    )
    assert value.item() == 0.0 and value.requires_grad
    value.backward()
    assert torch.all(refined.grad == 0)


def test_perceptual_gradient_reaches_image_not_frozen_encoder() -> None:
    torch.manual_seed(0)
    encoder = FrozenEncoder(build_segmentation_network("dynunet", 1, 4, (8, 8, 16)), levels=3)
    loss = ClasswisePerceptualLoss(encoder, levels=3)
    label = _blocks_label()
    img = torch.rand(1, 1, 16, 16, 16)
    assert loss(img, label, img, label).item() == 0.0
    refined = torch.rand(1, 1, 16, 16, 16, requires_grad=True)
    loss(refined, label, img, label).backward()
    assert refined.grad.abs().sum() > 0
    assert all(p.grad is None and not p.requires_grad for p in encoder.parameters())


# -- adversarial (eq. 4) ------------------------------------------------------------------------------
def test_adversarial_terms() -> None:
    adv = DualHeadAdversarialLoss()
    zeros = (torch.zeros(2, 1, 2, 2, 2), torch.zeros(2, 1))
    g_patch, g_global = adv.generator(zeros)
    assert g_patch.item() == pytest.approx(math.log(2)) and g_global.item() == pytest.approx(math.log(2))
    d_patch, d_global = adv.discriminator(zeros, zeros)
    assert d_patch.item() == pytest.approx(math.log(2)) and d_global.item() == pytest.approx(math.log(2))
    confident = adv.discriminator(
        (torch.full((1, 1, 2, 2, 2), 30.0), torch.full((1, 1), 30.0)),
        (torch.full((1, 1, 2, 2, 2), -30.0), torch.full((1, 1), -30.0)),
    )
    assert all(t.item() < 1e-6 for t in confident)
    assert bce_with_logits(torch.tensor([2.0]), False).item() == pytest.approx(math.log(1 + math.e**2))
    # a patch-only discriminator (MONAI PatchDiscriminator returns a list, the last entry is the map)
    pd = PatchDiscriminator(spatial_dims=3, channels=8, in_channels=5, num_layers_d=2, norm="INSTANCE")
    out = pd(torch.randn(1, 5, 32, 32, 32))
    patch, glob = split_logits(out)
    assert patch is out[-1] and glob is None
    assert adv.generator(out)[1].item() == 0.0


# -- lambda_c schedule (hinge_weight_schedule: MONAI's ParamSchedulerHandler, as the bundle configures it) ----
def _run_schedule(granularity: str, max_epochs: int = 3, epoch_length: int = 4) -> list[float]:
    from monai.bundle import ConfigParser
    from monai.handlers import ParamSchedulerHandler

    configs = REPO / "bundles" / "tf_gan" / "configs"
    engine = Engine(lambda e, b: None)
    parser = ConfigParser()
    parser.read_config([str(configs / "common.yaml"), str(configs / "train.yaml")])
    parser["train#trainer"] = engine
    parser["train#dataloader"] = list(range(epoch_length))  # epoch_length: null -> one pass over the loader
    parser.update({"max_epochs": max_epochs, "epoch_length": None, "lambda_schedule": granularity})
    sched = parser.get_parsed_content("trainer_handlers#0")
    assert isinstance(sched, ParamSchedulerHandler)
    sched.attach(engine)
    seen: list[float] = []
    engine.add_event_handler(Events.ITERATION_STARTED, lambda e: seen.append(e.state.lambda_c))
    engine.run(range(epoch_length), max_epochs=max_epochs)
    return seen


def test_lambda_schedule_per_iteration() -> None:
    # lambda_c = 10 at the first of 12 iterations, 1 at the last, linear in between (set before each one)
    seen = _run_schedule("iteration")
    assert len(seen) == 12 and seen[0] == 10.0 and seen[-1] == 1.0
    np.testing.assert_allclose(seen, [10 - 9 * k / 11 for k in range(12)])


def test_lambda_schedule_per_epoch() -> None:
    seen = _run_schedule("epoch")
    assert seen == [10.0] * 4 + [5.5] * 4 + [1.0] * 4


# -- trainer -----------------------------------------------------------------------------------------
def _batch(seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    label = torch.zeros(1, 64, 64, 64)
    label[:, 20:40, 20:40, 20:40] = 2
    label[:, 25:35, 25:35, 25:35] = 3
    label[:, 28:32, 28:32, 28:32] = 1
    return {"image": torch.rand(1, 64, 64, 64, generator=g) * 2 - 1, "label": label, "roi": (label > 0).float()}


def test_trainer_iteration_composes_eq5() -> None:
    torch.manual_seed(0)
    g = TFGANGenerator(1, 1, 3, WIDTHS)
    d = DualHeadDiscriminator(4, (8, 8, 8, 8, 8))
    g0 = [p.detach().clone() for p in g.parameters()]
    d0 = [p.detach().clone() for p in d.parameters()]
    coarse = DataLoader([_batch(0)], batch_size=1)
    real = DataLoader([{k: v for k, v in _batch(1).items() if k != "roi"}], batch_size=1)
    # only the hinge term weighted: the generator total must equal lambda_hinge * hinge
    trainer = TFGANTrainer(
        device="cpu",
        max_epochs=1,
        epoch_length=2,  # two iterations from one-batch loaders: the real loader is cycled
        train_data_loader=coarse,
        real_data_loader=real,
        g_network=g,
        g_optimizer=torch.optim.Adam(g.parameters(), 2e-4, betas=(0.5, 0.999)),
        d_network=d,
        d_optimizer=torch.optim.Adam(d.parameters(), 1e-4, betas=(0.5, 0.999)),
        perceptual_loss=None,
        lambda_patch=0.0,
        lambda_global=0.0,
        lambda_hinge=3.0,
        lambda_perceptual=0.0,
    )
    trainer.run()
    terms = loss_terms(trainer.state.output)
    assert trainer.state.iteration == 2
    assert terms["loss"] == pytest.approx(3.0 * terms["g_hinge"], rel=1e-5)
    assert terms["lambda_c"] == 3.0 and terms["d_loss"] == 0.0
    assert loss_terms(trainer.state.output[0]) == terms  # works on a single dict too
    assert any(not torch.equal(a, b) for a, b in zip(g0, g.parameters(), strict=True))
    # D's loss was weighted 0, so Adam left it unchanged; G's step did not write into D
    assert all(torch.equal(a, b) for a, b in zip(d0, d.parameters(), strict=True))
    assert all(p.requires_grad for p in d.parameters())
    assert trainer.state.output[0]["pred"].shape == (1, 64, 64, 64)
    with pytest.raises(ValueError, match="real_data_loader"):
        TFGANTrainer("cpu", 1, coarse, g, trainer.g_optimizer, d, trainer.d_optimizer)


def test_keep_coarse_outside_roi_hand_case_for_arrays_and_tensors() -> None:
    refined = np.array([[[[0.5, 0.6], [0.7, 0.8]]], [[[-0.5, -0.6], [-0.7, -0.8]]]], np.float32)  # (2, 1, 2, 2)
    coarse = np.zeros_like(refined)
    roi = np.array([[[[1, 0], [0, 2]]]], np.uint8)  # (1, 1, 2, 2): one channel, every image channel follows it
    expected = np.array([[[[0.5, 0.0], [0.0, 0.8]]], [[[-0.5, 0.0], [0.0, -0.8]]]], np.float32)
    np.testing.assert_array_equal(keep_coarse_outside_roi(refined, coarse, roi), expected)
    batch = keep_coarse_outside_roi(
        torch.from_numpy(refined)[None], torch.from_numpy(coarse)[None], torch.tensor(roi)[None]
    )
    assert isinstance(batch, torch.Tensor)
    np.testing.assert_array_equal(batch[0].numpy(), expected)
    with pytest.raises(ValueError, match="shapes differ"):
        keep_coarse_outside_roi(refined, coarse[:1], roi)
    with pytest.raises(ValueError, match="one channel"):
        keep_coarse_outside_roi(refined, coarse, np.ones_like(refined))


@pytest.mark.parametrize("paste", [False, True])
def test_trainer_paste_outside_roi_keeps_the_coarse_anatomy_from_d_and_the_losses(paste: bool) -> None:
    """A residual G that adds 0.3 everywhere: without paste_outside_roi the hinge term sees the change outside m_roi
    (mean max(0, 0.3 - 0.05) over the voxels outside it) and moves G; with it G's output outside m_roi is the coarse
    image, the hinge term and the change outside are 0, the change inside is still 0.3, and a loss of the hinge term
    alone leaves G's weights unchanged (no gradient reaches them)."""
    torch.manual_seed(0)
    g = TFGANGenerator(1, 1, 3, WIDTHS, residual=True)
    nn.init.constant_(g.head.conv.conv.bias, 0.3)
    d = DualHeadDiscriminator(4, (8, 8, 8, 8, 8))
    batch = _batch(0)
    batch["image"] = batch["image"] * 0.5  # in [-0.5, 0.5]: + 0.3 is not clamped
    g0 = [p.detach().clone() for p in g.parameters()]
    real = DataLoader([{k: v for k, v in _batch(1).items() if k != "roi"}], batch_size=1)
    trainer = TFGANTrainer(
        device="cpu",
        max_epochs=1,
        epoch_length=1,
        train_data_loader=DataLoader([batch], batch_size=1),
        real_data_loader=real,
        g_network=g,
        g_optimizer=torch.optim.Adam(g.parameters(), 1e-2),
        d_network=d,
        d_optimizer=torch.optim.Adam(d.parameters(), 1e-4),
        perceptual_loss=None,
        lambda_patch=0.0,
        lambda_global=0.0,
        lambda_hinge=1.0,
        lambda_perceptual=0.0,
        paste_outside_roi=paste,
    )
    trainer.run()
    (out,) = trainer.state.output
    roi = batch["roi"][0] > 0
    pred, coarse = out["pred"][0], batch["image"][0]
    np.testing.assert_allclose((pred - coarse)[roi].numpy(), 0.3, atol=1e-6)
    assert out["change_roi"] == pytest.approx(0.3, abs=1e-6)
    # the texture terms: the real batch's, and the refined tumour's: a shift of every voxel leaves it as the coarse
    # one's; a shift of m_roi alone (here m_roi = the tumour) adds a step at its edge, which the class interiors
    # nearly leave out
    real_case = real.dataset[0]
    assert out["texture_real"] == pytest.approx(tumour_texture(real_case["image"][None], real_case["label"][None]))
    coarse_texture = tumour_texture(batch["image"][None], batch["label"][None])
    if paste:
        stepped = tumour_texture((batch["image"] + 0.3 * batch["roi"])[None], batch["label"][None])
        assert out["texture_refined"] == pytest.approx(stepped, rel=1e-4)
        assert stepped == pytest.approx(coarse_texture, rel=0.05)
    else:
        assert out["texture_refined"] == pytest.approx(coarse_texture, rel=1e-4)
    assert set(trainer.state.metrics) >= {"epoch_texture_refined", "epoch_texture_real"}
    unchanged = all(torch.equal(a, b) for a, b in zip(g0, g.parameters(), strict=True))
    if paste:
        assert torch.equal(pred[~roi], coarse[~roi])
        assert out["g_hinge"] == 0.0 and out["change_outside"] == 0.0
        assert unchanged
    else:
        outside = float((~roi).float().mean())
        assert out["g_hinge"] == pytest.approx(0.25 * outside, rel=1e-4)
        assert not unchanged


def test_pix2pix_trainer_is_the_paired_variant() -> None:
    """Pix2PixTrainer: G(c) from the label map + brain channel, no unpaired real loader, G total = lambda_l1 * L1
    to the paired image when the adversarial heads weigh 0, and only Pix2Pix's terms reported (epoch means too)."""
    torch.manual_seed(0)
    g = TFGANGenerator(0, 1, 4, WIDTHS)
    d = DualHeadDiscriminator(5, (8, 8, 8, 8, 8))
    batch = {**_batch(0), "brain_mask": torch.ones(1, 64, 64, 64)}
    trainer = Pix2PixTrainer(
        device="cpu",
        max_epochs=1,
        train_data_loader=DataLoader([batch], batch_size=1),
        g_network=g,
        g_optimizer=torch.optim.Adam(g.parameters(), 2e-4, betas=(0.5, 0.999)),
        d_network=d,
        d_optimizer=torch.optim.Adam(d.parameters(), 1e-4, betas=(0.5, 0.999)),
        lambda_patch=0.0,
        lambda_global=0.0,
        lambda_l1=2.0,
    )
    trainer.run()
    terms = loss_terms(trainer.state.output)
    d_terms = {"d_loss", "d_patch", "d_global", "d_acc", "d_acc_real", "d_acc_fake"}
    assert set(terms) == set(Pix2PixTrainer.terms) == {"loss", "g_adv_patch", "g_adv_global", "g_l1", *d_terms}
    assert {"g_hinge", "lambda_c", "change_roi"} <= set(TFGANTrainer.terms) and "g_l1" not in TFGANTrainer.terms
    assert terms["loss"] == pytest.approx(2.0 * terms["g_l1"], rel=1e-5) and terms["d_loss"] == 0.0
    assert set(trainer.state.metrics) >= {f"epoch_{k}" for k in Pix2PixTrainer.terms}
    assert not any(k in trainer.state.metrics for k in ("epoch_g_hinge", "epoch_change_roi", "epoch_texture_real"))
    output = trainer.state.output[0]
    assert torch.equal(output["image"], batch["image"]) and output["pred"].shape == (1, 64, 64, 64)


def test_latest_checkpoint(tmp_path: Path) -> None:
    assert latest_checkpoint(tmp_path / "absent") == ""
    assert latest_checkpoint(tmp_path) == ""
    old, new = tmp_path / "checkpoint_epoch=2.pt", tmp_path / "checkpoint_final.pt"
    old.write_bytes(b"a")
    new.write_bytes(b"b")
    (tmp_path / "model.pt").write_bytes(b"c")
    now = time.time()
    os.utime(old, (now - 10, now - 10))
    assert latest_checkpoint(tmp_path) == str(new)


# -- refinement helpers -----------------------------------------------------------------------------
def test_generator_inputs_layout() -> None:
    label = torch.zeros(1, 1, 4, 4, 4)
    label[..., 0, 0, 0] = 3
    batch = {"image": torch.full((1, 1, 4, 4, 4), 0.5), "label": label, "brain_mask": torch.ones(1, 1, 4, 4, 4)}
    x, lab = GeneratorInputs("tf_gan")(batch, "cpu")
    assert x.shape == (1, 4, 4, 4, 4) and torch.all(x[:, 0] == 0.5) and x[0, 3, 0, 0, 0] == 1 and x[:, 1:].sum() == 1
    x, _ = GeneratorInputs("pix2pix")(batch, "cpu")
    assert x.shape == (1, 4, 4, 4, 4) and x[0, 2, 0, 0, 0] == 1 and x[0, 3].sum() == 63
    assert torch.equal(lab, label)


def test_generator_inputs_noise_is_seeded_per_case() -> None:
    label = torch.zeros(2, 1, 8, 8, 8)
    label[:, :, 2:6, 2:6, 2:6] = 2
    roi = (label > 0).float()
    batch = {"image": torch.zeros(2, 1, 8, 8, 8), "label": label, "roi": roi, "case_id": ["a", "b"]}
    prepare = GeneratorInputs("tf_gan", noise_channels=1, seed=7)
    x, _ = prepare(batch, "cpu")
    assert x.shape == (2, 5, 8, 8, 8) and torch.all(x[:, 4][roi[:, 0] == 0] == 0)
    # each case's noise comes from sha256("<seed>:<case_id>"): the same alone or in another batch, and per case
    expected = roi_noise(roi[:1], 1, torch.Generator().manual_seed(case_noise_seed(7, "a")))
    assert torch.equal(x[:1, 4:], expected)
    alone, _ = prepare({k: v[1:] for k, v in batch.items()}, "cpu")
    assert torch.equal(alone[:, 4:], x[1:, 4:]) and not torch.equal(x[0, 4], x[1, 4])
    assert not torch.equal(GeneratorInputs("tf_gan", noise_channels=1, seed=8)(batch, "cpu")[0], x)
    assert case_noise_seed(7, "a") == int.from_bytes(__import__("hashlib").sha256(b"7:a").digest()[:8], "little")
    with pytest.raises(KeyError, match="case_id"):
        prepare({k: v for k, v in batch.items() if k != "case_id"}, "cpu")


def test_tumour_texture_is_the_high_pass_spread_inside_the_tumour_classes() -> None:
    """Hand cases: a linear ramp has no high-pass part (a Gaussian keeps a linear function), a constant shift none at
    all, a scaled image a scaled one; the steps between classes and at the tumour's border are left out (2 voxels
    eroded per class); a batch combines its samples' variances weighted by their interior voxels; NaN without any."""
    ramp = torch.linspace(-0.5, 0.5, 16).reshape(16, 1, 1).expand(16, 16, 16).reshape(1, 1, 16, 16, 16)
    label = torch.zeros(1, 1, 16, 16, 16)
    label[..., 4:12, 4:12, 4:12] = 2  # 8^3 voxels, 4^3 = 64 of them 2 voxels inside
    inside = class_interiors(label[0, 0].numpy(), 2)
    assert inside.sum() == 64 and inside[6:10, 6:10, 6:10].all()
    assert tumour_texture(ramp, label) == pytest.approx(0.0, abs=1e-6)  # float32 rounding only
    noise = torch.from_numpy(np.random.default_rng(0).standard_normal((1, 1, 16, 16, 16))).float()
    image = noise[0].numpy().astype(np.float64)
    expected = float(highpass(image[0], 1.0)[inside].std())
    assert tumour_texture(noise, label) == pytest.approx(expected, rel=1e-5)
    assert tumour_texture(0.5 * noise + 0.3, label) == pytest.approx(0.5 * expected, rel=1e-5)
    assert expected == pytest.approx(masked_highpass_std(image, inside), rel=1e-12)
    # two flat classes side by side (0.5 and -0.5): the whole tumour holds the step between them, the class interiors
    # (3 voxels and more from it) only the tail of the Gaussian
    halves = torch.zeros(1, 1, 24, 24, 24)
    halves[..., 2:12, 2:22, 2:22] = 1
    halves[..., 12:22, 2:22, 2:22] = 2
    flat = torch.where(halves == 1, 0.5, -0.5) * (halves > 0)
    whole = tumour_texture(flat, halves, erode=0)
    assert whole > 0.1 and tumour_texture(flat, halves) < 0.1 * whole
    # two samples: 64 interior voxels of texture t and 8 of texture 0 (a 6^3 class) -> sqrt(64 t^2 / 72)
    small = torch.zeros_like(label)
    small[..., 5:11, 5:11, 5:11] = 1
    batch = tumour_texture(torch.cat([noise, ramp]), torch.cat([label, small]))
    assert batch == pytest.approx(expected * math.sqrt(64 / 72), rel=1e-5)
    assert math.isnan(tumour_texture(noise, torch.zeros_like(label)))
    with pytest.raises(ValueError, match="spatial shape"):
        masked_highpass_std(image, np.ones((4, 4, 4), bool))


def test_nan_skipping_average_leaves_out_undefined_batches() -> None:
    engine = Engine(lambda e, b: b)
    NanSkippingAverage().attach(engine, "texture")
    engine.run([0.2, float("nan"), 0.4], max_epochs=1)
    assert engine.state.metrics["texture"] == pytest.approx(0.3)
    engine.run([float("nan")] * 2, max_epochs=1)
    assert math.isnan(engine.state.metrics["texture"])


def test_training_change_inside_and_outside_the_roi() -> None:
    coarse = -torch.ones(1, 1, 4, 4, 4)
    coarse[..., 1:3, :, :] = 0.0  # brain: 2 x 4 x 4 = 32 voxels
    roi = torch.zeros(1, 1, 4, 4, 4)
    roi[..., 1, :2, :] = 1  # 8 brain voxels in m_roi
    refined = coarse.clone()
    refined[roi > 0] += 0.5
    refined[..., 2, 0, 0] += 0.24  # one of the 24 brain voxels outside m_roi
    refined[..., 0, 0, 0] += 0.3  # background: not counted
    change = training_change(refined, coarse, roi)
    assert change["change_roi"] == pytest.approx(0.5)
    assert change["change_outside"] == pytest.approx(0.24 / 24)


def test_brain_mask_keeps_existing() -> None:
    img = np.zeros((1, 3, 3, 3), np.float32)
    img[0, 1, 1, 1] = 5
    d = BrainMaskd(keys="image")({"image": img})
    assert d["brain_mask"].sum() == 1
    kept = BrainMaskd(keys="image")({"image": img, "brain_mask": np.ones((1, 3, 3, 3))})
    assert kept["brain_mask"].sum() == 27


def test_check_outputs_refuses_inputs_and_previous_runs(tmp_path: Path) -> None:
    ckpt = tmp_path / "model.pt"
    ckpt.write_bytes(b"x")
    item = {"case_id": "c1", "image": [str(tmp_path / "images" / "c1_t1n.nii.gz")], "label": str(tmp_path / "l.nii.gz")}
    with pytest.raises(ValueError, match="overwrite an input"):
        check_outputs([item], tmp_path, tmp_path / "datalist.json", ["t1n"], ckpt)
    with pytest.raises(FileNotFoundError, match="absent.pt"):
        check_outputs([item], tmp_path / "out", tmp_path / "out.json", ["t1n"], tmp_path / "absent.pt")
    (tmp_path / "out.json").write_text("{}")
    with pytest.raises(FileExistsError, match="out.json"):
        check_outputs([item], tmp_path / "out", tmp_path / "out.json", ["t1n"], ckpt)
    assert check_outputs([item], tmp_path / "out", tmp_path / "out.json", ["t1n"], ckpt, overwrite=True)


def test_lambda_schedule_refuses_an_unknown_step() -> None:
    from custom_components.handlers import hinge_weight_schedule

    with pytest.raises(ValueError, match="lambda_schedule must be one of"):
        hinge_weight_schedule(Engine(lambda e, b: None), 10.0, 1.0, 2, None, [0, 1], per="batch")


@pytest.mark.parametrize("channels_last", [False, True])
def test_channels_last_puts_generator_and_discriminator_in_the_3d_channels_last_layout(channels_last: bool) -> None:
    """tf_gan's channels_last (the dtss_mas_seg key of the same name): G's and D's 5-D weights in
    torch.channels_last_3d, and a refinement in that layout equals the default one up to float rounding."""
    from monai.bundle import ConfigParser

    configs = REPO / "bundles" / "tf_gan" / "configs"
    parser = ConfigParser()
    parser.read_config([str(configs / "common.yaml"), str(configs / "train.yaml")])
    small = {"gen_channels": [4] * 6, "disc_channels": [4] * 5, "modalities": ["t1n"], "device": "cpu"}
    parser.update({**small, "channels_last": channels_last})
    torch.manual_seed(0)
    g, d = parser.get_parsed_content("network"), parser.get_parsed_content("d_network")
    for net in (g, d):
        conv = next(p for p in net.parameters() if p.ndim == 5)
        assert conv.is_contiguous(memory_format=torch.channels_last_3d) == channels_last
        assert conv.is_contiguous() != channels_last
    default = ConfigParser()
    default.read_config([str(configs / "common.yaml"), str(configs / "train.yaml")])
    default.update({**small, "channels_last": False})
    torch.manual_seed(0)
    g0 = default.get_parsed_content("network")
    x = torch.randn(1, g0.in_channels + g0.num_classes + g0.noise_channels, 64, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(g(x), g0(x), rtol=1e-4, atol=1e-5)
