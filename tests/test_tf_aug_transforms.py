"""TF-Aug transforms: mask augmentation, ROI blur, class-wise intensity, and learning a, b."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import torch
from ignite.engine import Events
from monai.data import MetaTensor
from scipy import ndimage
from torch.utils.data import DataLoader

from custom_components.data.labels import to_internal
from custom_components.engines.tf_aug_trainer import ClasswiseIntensitySaver, TFAugTrainer
from custom_components.losses import ClasswisePerceptualLoss
from custom_components.networks import ClasswiseIntensity, FrozenEncoder, build_segmentation_network
from custom_components.transforms.mask_augment import MaskPool, TumorMaskAugment, TumorMaskAugmentd, combine
from custom_components.transforms.roi_blur import RoiGaussianBlur, RoiGaussianBlurd

S = 40


def _tumour(shape=(S, S, S), lo=(10, 12, 14)) -> np.ndarray:
    """Hand-built mask: oedema box, ET box inside, NCR box inside the ET (internal labels)."""
    lab = np.zeros(shape, np.uint8)
    x, y, z = lo
    lab[x : x + 10, y : y + 6, z : z + 10] = 2
    lab[x + 2 : x + 6, y + 1 : y + 4, z + 1 : z + 5] = 3
    lab[x + 3 : x + 5, y + 2 : y + 3, z + 3 : z + 4] = 1
    return lab


def _fixed(pool, **kw) -> TumorMaskAugment:
    """Augmentation with every random parameter pinned (scale 1, no rotation / flip / shift)."""
    args = {"num_masks": 1, "scale_range": (1, 1), "rotate_range": 0, "flip_prob": 0, "max_shift": 0, "min_voxels": 1}
    args.update(kw)
    return TumorMaskAugment(pool, **args)


# ------------------------------------------------------------------------------------ mask augmentation
@pytest.mark.parametrize("order", [0, 1])
def test_identity_and_flip_are_exact(order):
    lab = _tumour()
    brain = np.ones((1, S, S, S), np.uint8)
    assert np.array_equal(_fixed([lab], interp_order=order)(brain)[0], lab)
    flipped = _fixed([lab], interp_order=order, flip_prob=1.0)(brain)[0]
    expected = np.zeros_like(lab)
    box = (slice(10, 20), slice(12, 18), slice(14, 24))
    expected[box] = lab[box][::-1, ::-1, ::-1]  # mirrored about the tumour's own centre
    assert np.array_equal(flipped, expected)


def test_scale_doubles_extent_about_the_centre_and_multiplies_class_volumes():
    lab = _tumour()
    out = _fixed([lab], interp_order=0, scale_range=(2, 2))(np.ones((S, S, S)))[0]
    idx = np.nonzero(out)
    # source box [10, 20) x [12, 18) x [14, 24), centres 14.5, 14.5, 18.5: doubled box about them
    assert [(int(i.min()), int(i.max())) for i in idx] == [(5, 24), (9, 20), (9, 28)]
    for c in (1, 2, 3):
        assert (out == c).sum() == 8 * (lab == c).sum()


def test_shift_moves_the_mask_by_the_drawn_vector():
    lab = _tumour()
    t = _fixed([lab], max_shift=(3, 0, 2))
    t.set_random_state(4)
    out = t(np.ones((S, S, S)))[0]
    shift = t.params["components"][0]["shift"]
    assert shift != [0, 0, 0] and shift[1] == 0 and abs(shift[0]) <= 3 and abs(shift[2]) <= 2
    assert np.array_equal(out, np.roll(lab, shift, axis=(0, 1, 2)))


def test_rotation_keeps_class_nesting_and_volume():
    lab = _tumour()
    t = _fixed([lab], rotate_range=(0, 0, 45))
    t.set_random_state(1)
    out = t(np.ones((S, S, S)))[0]
    assert abs(t.params["components"][0]["rotate_deg"][2]) > 5
    assert not np.array_equal(out, lab)
    assert abs(int((out > 0).sum()) - int((lab > 0).sum())) < 0.1 * (lab > 0).sum()
    # the NCR (1) stays inside ET (3) inside the tumour: every NCR voxel has tumour neighbours only
    assert set(np.unique(out).tolist()) == {0, 1, 2, 3}
    core = ndimage.binary_dilation(out == 1)
    assert np.all(out[core] > 0)


def test_precedence_when_masks_overlap():
    base = np.array([2, 2, 3, 1, 0, 2], np.uint8)
    patch = np.array([3, 1, 2, 2, 2, 0], np.uint8)
    assert combine(base.copy(), patch, (3, 1, 2)).tolist() == [3, 1, 3, 1, 2, 2]
    assert combine(base.copy(), patch, (2, 1, 3)).tolist() == [2, 2, 2, 2, 2, 2]
    # two real masks combined: ED of one over the ET of the other -> ET wins whatever the order
    a = np.zeros((S, S, S), np.uint8)
    a[10:20, 10:20, 10:20] = 2
    b = np.zeros((S, S, S), np.uint8)
    b[15:25, 15:25, 15:25] = 3
    for seed in range(4):
        t = _fixed([a, b], num_masks=2)
        t.set_random_state(seed)
        out = t(np.ones((S, S, S)))[0]
        assert np.all(out[15:25, 15:25, 15:25] == 3)
        assert np.all(out[10:15, 10:20, 10:20] == 2)
    t = _fixed([a, b], num_masks=2, precedence=(2, 1, 3))
    out = t(np.ones((S, S, S)))[0]
    assert np.all(out[15:20, 15:20, 15:20] == 2)


def test_mask_is_clipped_to_the_brain_and_keeps_metadata():
    lab = _tumour()
    brain = np.zeros((1, S, S, S), np.uint8)
    brain[:, :, :15] = 1  # half of the tumour (y 12..17) lies outside
    affine = torch.diag(torch.tensor([2.0, 2.0, 2.0, 1.0]))
    brain_t = MetaTensor(torch.as_tensor(brain), affine=affine)
    d = TumorMaskAugmentd(
        "brain_mask", [lab], num_masks=1, scale_range=(1, 1), rotate_range=0, flip_prob=0, max_shift=0, min_voxels=1
    )({"brain_mask": brain_t})
    out = d["label"]
    assert isinstance(out, MetaTensor) and torch.equal(out.affine, affine)
    out = out.numpy()[0]
    assert not np.any(out[brain[0] == 0])
    assert np.array_equal(out[:, :15], lab[:, :15])
    assert np.array_equal(d["roi"].numpy()[0], (out > 0).astype(np.uint8))
    assert d["tf_aug_params"]["voxels"] == int((out > 0).sum())


def test_too_small_masks_are_redrawn_then_error():
    lab = _tumour()
    brain = np.zeros((S, S, S), np.uint8)
    brain[:, 12:15, :] = 1  # y 12..14: half of the tumour (y 12..17) with shift <= 0, less with shift > 0
    t = _fixed([lab], max_shift=(0, 3, 0), min_fraction=0.5)
    t.set_random_state(0)
    out = t(brain)[0]
    assert (out > 0).sum() >= 0.5 * (lab > 0).sum()
    assert t.params["components"][0]["shift"][1] <= 0
    # several seeds: at least one needed redraws, and all results satisfy the minimum
    attempts = []
    for seed in range(8):
        t.set_random_state(seed)
        assert (t(brain)[0] > 0).sum() >= 0.5 * (lab > 0).sum()
        assert t.params["components"][0]["shift"][1] <= 0
        attempts.append(t.params["attempts"])
    assert max(attempts) > 1
    brain_t = MetaTensor(torch.as_tensor(brain[None]), meta={"filename_or_obj": "/data/healthy_007_mask.nii.gz"})
    impossible = _fixed([lab], min_voxels=10_000, max_retries=3)
    with pytest.raises(RuntimeError, match=r"healthy_007_mask.*after 3 draws"):
        impossible(brain_t)


def test_same_seed_same_mask_and_pool_validation(tmp_path):
    pool = [_tumour(), _tumour(lo=(20, 22, 5))]
    runs = []
    for _ in range(2):
        t = TumorMaskAugment(pool, min_voxels=1)
        t.set_random_state(123)
        runs.append((t(np.ones((S, S, S)))[0], json.dumps(t.params)))
    assert np.array_equal(runs[0][0], runs[1][0]) and runs[0][1] == runs[1][1]
    # BraTS 2021 files are mapped (4 -> ET 3); bad values and empty masks name the file
    lab21 = _tumour()
    lab21[lab21 == 3] = 4
    f = tmp_path / "case_seg.nii.gz"
    nib.save(nib.Nifti1Image(lab21, np.eye(4)), f)
    assert np.array_equal(MaskPool([str(f)], "brats2021")[0].crop, _tumour()[10:20, 12:18, 14:24])
    with pytest.raises(ValueError, match="case_seg.nii.gz.*4"):
        MaskPool([str(f)], "internal")
    nib.save(nib.Nifti1Image(np.zeros((S, S, S), np.uint8), np.eye(4)), tmp_path / "empty.nii.gz")
    with pytest.raises(ValueError, match="empty.nii.gz: the tumour mask has no tumour voxels"):
        MaskPool([str(tmp_path / "empty.nii.gz")])
    with pytest.raises(FileNotFoundError, match="missing.nii.gz"):
        MaskPool([str(tmp_path / "missing.nii.gz")])
    with pytest.raises(ValueError, match="grid"):
        TumorMaskAugment(pool)(np.ones((S, S, S + 1)))


# ------------------------------------------------------------------------------------------ ROI blur
def _image_and_roi():
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (1, S, S, S)).astype(np.float32)
    roi = (_tumour() > 0)[None]
    return x, roi


def test_roi_blur_outside_untouched_inside_matches_scipy():
    x, roi = _image_and_roi()
    before = x.copy()
    out = RoiGaussianBlur(sigma=2.0, truncated=3.0)(x, roi)
    assert np.array_equal(x, before)  # input not modified
    assert out.dtype == np.float32
    assert np.array_equal(out[~roi], x[~roi])  # bit-identical outside the ROI
    ref = ndimage.gaussian_filter(x[0].astype(np.float64), 2.0, truncate=3.0, mode="nearest")
    np.testing.assert_allclose(out[0][roi[0]], ref[roi[0]], atol=2e-6)
    assert np.abs(out[0][roi[0]] - x[0][roi[0]]).mean() > 0.1  # it did blur


def test_roi_blur_normalised_to_brain_and_dict_form():
    x, roi = _image_and_roi()
    brain = np.zeros((1, S, S, S), np.float32)
    brain[:, 8:, :, :] = 1
    x[brain == 0] = -1.0
    roi = roi & (brain > 0)
    affine = torch.diag(torch.tensor([1.5, 1.5, 1.5, 1.0]))
    data = {"image": MetaTensor(torch.as_tensor(x), affine=affine), "roi": roi, "brain_mask": brain}
    out = RoiGaussianBlurd("image", roi_key="roi", mask_key="brain_mask", sigma=2.0)(data)["image"]
    assert isinstance(out, MetaTensor) and torch.equal(out.affine, affine)
    out = out.numpy()
    num = ndimage.gaussian_filter((x[0] * brain[0]).astype(np.float64), 2.0, truncate=3.0, mode="nearest")
    den = ndimage.gaussian_filter(brain[0].astype(np.float64), 2.0, truncate=3.0, mode="nearest")
    np.testing.assert_allclose(out[0][roi[0]], num[roi[0]] / den[roi[0]], atol=2e-6)
    assert np.array_equal(out[~roi], x[~roi])


# ------------------------------------------------------------------------------- class-wise intensity
def test_classwise_intensity_exact_per_class_and_channel(tmp_path):
    x, _ = _image_and_roi()
    x2 = np.concatenate([x, -x])  # two channels
    lab = _tumour()[None]
    a = [[0.5, 2.0], [1.5, 1.0], [2.0, 0.25]]
    b = [[0.1, 0.0], [-0.2, 0.3], [0.3, -0.4]]
    m = ClasswiseIntensity(2, a_init=a, b_init=b, channel_names=["t1n", "t2w"])
    with torch.no_grad():
        y = m(torch.as_tensor(x2)[None], torch.as_tensor(lab)[None])[0].numpy()
    for k, c in enumerate((1, 2, 3)):
        for ch in range(2):
            sel = lab[0] == c
            expected = x2[ch][sel] * np.float32(a[k][ch]) + np.float32(b[k][ch])
            assert np.array_equal(y[ch][sel], expected)
    assert np.array_equal(y[:, lab[0] == 0], x2[:, lab[0] == 0])
    # the single-input form (images, then the label channel) of the Model Zoo checks gives the same
    with torch.no_grad():
        single = m(torch.as_tensor(np.concatenate([x2, lab.astype(np.float32)]))[None])[0].numpy()
    assert np.array_equal(single, y)
    # gradients reach only the parameters of classes present
    lab_no_ncr = np.where(lab == 1, 3, lab)
    out = m(torch.as_tensor(x2)[None], torch.as_tensor(lab_no_ncr)[None])
    out.sum().backward()
    assert torch.all(m.a.grad[0] == 0) and torch.all(m.b.grad[0] == 0)
    assert torch.all(m.b.grad[1:] != 0)
    # JSON and state_dict round trips, and errors naming the file
    pt, js = m.save(tmp_path / "models")
    assert json.loads(js.read_text())["ET"] == {"a": [2.0, 0.25], "b": [pytest.approx(0.3), pytest.approx(-0.4)]}
    for f in (pt, js):
        loaded = ClasswiseIntensity.from_file(f, num_channels=2)
        assert torch.equal(loaded.a, m.a) and torch.equal(loaded.b, m.b)
    with pytest.raises(ValueError, match="intensity.json.*3 finite numbers"):
        ClasswiseIntensity.from_file(js, num_channels=3)
    with pytest.raises(ValueError, match=r"intensity.pt.*do not fit 3 classes x 1 channels"):
        ClasswiseIntensity.from_file(pt, num_channels=1)
    with pytest.raises(FileNotFoundError, match="nope.json"):
        ClasswiseIntensity.from_file(tmp_path / "nope.json")
    identity = ClasswiseIntensity.from_file(tmp_path / "nope.json", allow_identity=True)
    assert torch.all(identity.a == 1) and torch.all(identity.b == 0)


# ----------------------------------------------------------------------------------------- learning
def test_training_moves_a_b_towards_the_real_tumour_intensities(tmp_path):
    """Real tumours: NCR dark (-0.7), ET bright (0.6), ED like tissue (-0.2); synthetic starts at -0.2."""
    torch.manual_seed(0)
    size = 24
    rng = np.random.default_rng(0)
    lab = np.zeros((size,) * 3, np.uint8)
    lab[6:18, 6:18, 6:18] = 2
    lab[9:15, 9:15, 9:15] = 3
    lab[11:13, 11:13, 11:13] = 1
    targets = {1: -0.7, 2: -0.2, 3: 0.6}

    def healthy():
        return (-0.2 + 0.05 * rng.standard_normal((1, size, size, size))).astype(np.float32)

    def real():
        x = healthy()
        for c, v in targets.items():
            x[0][lab == c] = v + 0.05 * rng.standard_normal(int((lab == c).sum()))
        return x

    label = torch.as_tensor(lab[None]).float()
    data = [
        {
            "image": torch.as_tensor(healthy()),
            "label": label,
            "real_image": torch.as_tensor(real()),
            "real_label": label,
        }
        for _ in range(4)
    ]
    ckpt = tmp_path / "seg.pt"
    torch.save(build_segmentation_network("dynunet", 1, 4, (8, 16, 32)).state_dict(), ckpt)
    encoder = FrozenEncoder.from_checkpoint(ckpt, levels=3, name="dynunet", in_channels=1, filters=(8, 16, 32))
    network = ClasswiseIntensity(1, channel_names=["t1n"])
    trainer = TFAugTrainer(
        "cpu",
        max_epochs=20,
        train_data_loader=DataLoader(data, batch_size=2),
        network=network,
        optimizer=torch.optim.SGD(network.parameters(), lr=1e-2),
        loss_function=ClasswisePerceptualLoss(encoder, levels=3),
        train_handlers=[ClasswiseIntensitySaver(tmp_path / "models", network)],
    )
    losses = []
    trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda e: losses.append(e.state.metrics["epoch_loss"]))
    trainer.run()
    assert losses[-1] < 0.5 * losses[0]
    mean = {c: network.a[k, 0].item() * -0.2 + network.b[k, 0].item() for k, c in enumerate((1, 2, 3))}
    assert abs(mean[3] - 0.6) < 0.6 * abs(-0.2 - 0.6)  # ET brightened towards the real ET
    assert mean[3] > 0.1
    assert abs(mean[1] + 0.7) < 0.6 * abs(-0.2 + 0.7)  # NCR darkened towards the real NCR
    assert abs(mean[2] + 0.2) < 0.1  # ED already matched: stays
    # the per-iteration outputs and the metrics carry the parameters; the saver wrote them
    assert set(trainer.state.output[0]) >= {"loss", "a_ET_t1n", "b_ET_t1n", "a_NCR_t1n"}
    assert trainer.state.metrics["b_ET_t1n"] == pytest.approx(network.b[2, 0].item())
    saved = json.loads((tmp_path / "models" / "intensity.json").read_text())
    assert saved["ET"]["b"] == [pytest.approx(network.b[2, 0].item())]


# ---------------------------------------------------------------------------------------- real data
def test_real_glioma_masks_augment_inside_its_brain(real_case):
    img = nib.load(real_case["image"][0])
    brain = np.asarray(img.dataobj) != 0
    lab = to_internal(np.asarray(nib.load(real_case["label"]).dataobj), "brats2021")
    pool = MaskPool([real_case["label"]], "brats2021")
    assert pool[0].voxels == 3410 + 19746 + 6569
    t = TumorMaskAugmentd("brain_mask", pool, num_masks=(1, 2), min_fraction=0.25)
    t.set_random_state(0)
    d = t({"brain_mask": MetaTensor(torch.as_tensor(brain[None]), affine=torch.as_tensor(img.affine))})
    out = d["label"].numpy()[0]
    assert out.shape == lab.shape and not np.any(out[~brain])
    assert (out > 0).sum() >= 0.25 * pool[0].voxels
    assert set(np.unique(out).tolist()) == {0, 1, 2, 3}
