"""TF-Aug synthesis as MONAI inference: per-case seeding, the SupervisedEvaluator + TFAugCaseWriter, resume."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from monai.data import DataLoader, Dataset
from monai.engines import PrepareBatchExtraInput, SupervisedEvaluator
from monai.transforms import Compose, LoadImaged, SelectItemsd
from scipy import ndimage

from custom_components.data import read_datalist, write_datalist
from custom_components.networks import ClasswiseIntensity
from custom_components.synthesis.tf_aug import TFAugCaseWriter, case_seed, plan_cases
from custom_components.transforms import ApplySeeded, ApplySeededd, MaskPool, RoiGaussianBlurd, TumorMaskAugmentd

S = 24
AFFINE = np.diag([2.0, 2.0, 2.0, 1.0])


def _tumour() -> np.ndarray:
    """Oedema box with an ET box and an NCR box inside (internal labels)."""
    lab = np.zeros((S, S, S), np.uint8)
    lab[8:16, 9:15, 8:16] = 2
    lab[10:14, 10:14, 10:14] = 3
    lab[11:13, 11:13, 11:13] = 1
    return lab


@pytest.fixture
def inputs(tmp_path: Path) -> dict:
    """Two 'healthy' scans in [-1, 1] with brain masks, and a real tumour mask for the pool."""
    rng = np.random.default_rng(0)
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, S)] * 3, indexing="ij"))
    brain = ((grid**2).sum(0) < 0.85).astype(np.uint8)
    healthy = []
    for i in range(2):
        x = np.where(brain > 0, rng.uniform(-0.6, 0.6, (S, S, S)), -1.0).astype(np.float32)
        nib.save(nib.Nifti1Image(x, AFFINE), tmp_path / f"h{i}_t1n.nii")
        nib.save(nib.Nifti1Image(brain, AFFINE), tmp_path / f"h{i}_brain.nii")
        healthy.append(
            {
                "case_id": f"h{i}",
                "image": [str(tmp_path / f"h{i}_t1n.nii")],
                "brain_mask": str(tmp_path / f"h{i}_brain.nii"),
            }
        )
    nib.save(nib.Nifti1Image(_tumour(), AFFINE), tmp_path / "real_seg.nii")
    return {"healthy": healthy, "pool": MaskPool([str(tmp_path / "real_seg.nii")]), "root": tmp_path}


def _synthesis(pool: MaskPool) -> Compose:
    return Compose(
        [
            TumorMaskAugmentd("brain_mask", pool, num_masks=(1, 2), max_shift=3, min_voxels=10),
            RoiGaussianBlurd("image", roi_key="roi", mask_key="brain_mask", sigma=1.0, truncated=2.0),
        ]
    )


def _writer(inputs: dict, out: Path, num_cases: int = 3, network: ClasswiseIntensity | None = None) -> TFAugCaseWriter:
    network = network or ClasswiseIntensity(1, a_init=[0.5, 1.5, 2.5], b_init=[-0.6, 0.2, 0.9])
    cases = plan_cases(inputs["healthy"], num_cases, seed=7)
    return TFAugCaseWriter(cases, out, network, _synthesis(inputs["pool"]), qc_cases=1)


def _run(inputs: dict, out: Path, num_cases: int = 3, network: ClasswiseIntensity | None = None) -> TFAugCaseWriter:
    """The bundle's inference: a SupervisedEvaluator over the pending cases with the writer as handler."""
    writer = _writer(inputs, out, num_cases, network)
    writer.check()
    preprocessing = Compose(
        [
            LoadImaged(["image", "brain_mask"], image_only=True, ensure_channel_first=True),
            ApplySeededd("seed", writer.synthesis),
            SelectItemsd(["case_id", "image", "label", "brain_mask", "tf_aug_params"]),
        ]
    )
    dataset = Dataset(writer.pending(), preprocessing)
    if len(dataset) > 0:
        evaluator = SupervisedEvaluator(
            device="cpu",
            val_data_loader=DataLoader(dataset, batch_size=1),
            network=writer.network,
            prepare_batch=PrepareBatchExtraInput("label"),
            val_handlers=[writer],
        )
        evaluator.run()
    writer.write_datalist()
    return writer


def _nii(path: str | Path) -> np.ndarray:
    return np.asarray(nib.load(str(path)).dataobj)


def test_item_seeded_draw_depends_on_the_item_only():
    pool_masks = MaskPool([_tumour()])
    brain = np.ones((1, S, S, S), np.uint8)
    augment = TumorMaskAugmentd("brain_mask", pool_masks, num_masks=(1, 2), max_shift=4, min_voxels=1)
    seeded = ApplySeededd("seed", augment)
    items = [{"seed": case_seed(0, i), "brain_mask": brain} for i in range(3)]
    forward = [seeded(it)["label"] for it in items]
    backward = [seeded(it)["label"] for it in reversed(items)][::-1]
    assert all(np.array_equal(a, b) for a, b in zip(forward, backward, strict=True))
    assert not np.array_equal(forward[0], forward[1])  # other seed, other draw
    assert "label" not in items[0]  # the input item is not modified
    with pytest.raises(KeyError, match="seed"):
        seeded({"brain_mask": brain})
    assert ApplySeededd("seed", augment, allow_missing_keys=True)({"brain_mask": brain}).keys() == {"brain_mask"}
    # the array version: the seed is an argument
    assert np.array_equal(ApplySeeded(augment)({"brain_mask": brain}, items[1]["seed"])["label"], forward[1])
    with pytest.raises(TypeError, match="Randomizable"):
        ApplySeeded(SelectItemsd("image"))
    with pytest.raises(ValueError, match="exactly one seed key"):
        ApplySeededd(["seed", "other"], augment)


def test_evaluator_writes_cases_with_the_tf_aug_equation(inputs):
    out = inputs["root"] / "coarse"
    writer = _run(inputs, out)
    data = read_datalist(out / "datalist.json")
    assert [it["case_id"] for it in data["training"]] == ["tfaug-00000", "tfaug-00001", "tfaug-00002"]
    a, b = writer.network.a.detach().numpy()[:, 0], writer.network.b.detach().numpy()[:, 0]
    for i, item in enumerate(data["training"]):
        healthy = inputs["healthy"][i % 2]  # round robin
        x, brain = _nii(healthy["image"][0]), _nii(healthy["brain_mask"]) > 0
        y, label = _nii(item["image"][0]), _nii(item["label"])
        assert item["provenance"]["seed"] == case_seed(7, i) and label.any()
        assert np.array_equal(_nii(item["roi"]), (label > 0).astype(np.uint8))
        assert np.array_equal(y[label == 0], x[label == 0])  # outside m_s: the healthy scan bit for bit
        # inside class c: clip(a_c * B(x) + b_c, -1, 1), B the brain-normalised Gaussian blur
        w = brain.astype(np.float64)
        num = ndimage.gaussian_filter(x * w, 1.0, truncate=2.0, mode="nearest")
        den = ndimage.gaussian_filter(w, 1.0, truncate=2.0, mode="nearest")
        for k, c in enumerate((1, 2, 3)):
            sel = label == c
            np.testing.assert_allclose(y[sel], np.clip(a[k] * num[sel] / den[sel] + b[k], -1, 1), atol=2e-5)
        assert nib.load(item["image"][0]).affine.tolist() == AFFINE.tolist()
    assert y.max() == 1.0  # ET at a = 2.5, b = 0.9 exceeds 1: the clip acted
    assert sorted(p.name for p in (out / "qc").iterdir()) == ["tfaug-00000.png"]


def test_resume_skips_complete_cases_and_refuses_other_settings(inputs):
    out = inputs["root"] / "coarse"
    first = _run(inputs, out)
    files = {p: p.read_bytes() for p in sorted(out.rglob("*.nii"))}
    assert first.pending() == []  # a rerun with the same settings has nothing to make
    roi = out / "tfaug-00001" / "tfaug-00001_roi.nii"
    roi.write_bytes(roi.read_bytes()[:200])  # a truncated file: that case is made again, identically
    assert [c["case_id"] for c in first.pending()] == ["tfaug-00001"]
    _run(inputs, out)
    assert {p: p.read_bytes() for p in sorted(out.rglob("*.nii"))} == files
    more = _run(inputs, out, num_cases=4)  # case i does not depend on how many cases there are
    assert list(more.written) == ["tfaug-00003"] and {p: p.read_bytes() for p in files} == files
    assert len(read_datalist(out / "datalist.json")["training"]) == 4
    other = ClasswiseIntensity(1, a_init=[1.0, 1.0, 1.0], b_init=[0.0, 0.0, 0.0])
    with pytest.raises(ValueError, match=r"tfaug-00000_provenance.json: this case was made with other settings"):
        _run(inputs, out, network=other)
    (out / "tfaug-00003" / "tfaug-00003_provenance.json").unlink()
    with pytest.raises(RuntimeError, match="tfaug-00003_provenance.json: case tfaug-00003 was not made"):
        _writer(inputs, out, num_cases=4).write_datalist()  # the evaluator did not run


def _bundle_synthesis(inputs: dict, out: Path, seed: int) -> list[dict]:
    """The pipeline's tf_aug_synthesise_s<seed> at toy size: the bundle's own inference with ``seed: <seed>``."""
    from tests.bundle_utils import run_workflow

    root = inputs["root"]
    healthy, real = root / "healthy.json", root / "real.json"
    write_datalist(healthy, {"modalities": ["t1n"], "labels": "internal", "training": inputs["healthy"]})
    case = {"case_id": "r0", "image": inputs["healthy"][0]["image"], "label": str(root / "real_seg.nii")}
    write_datalist(real, {"modalities": ["t1n"], "labels": "internal", "training": [case]})
    params, _ = ClasswiseIntensity(1, a_init=[0.5, 1.5, 2.5], b_init=[-0.6, 0.2, 0.9]).save(root / "models")
    overrides = {"healthy_datalist": str(healthy), "real_datalist": str(real), "intensity_params": str(params)}
    tiny = {"num_cases": 2, "qc_cases": 0, "num_workers": 0, "aug_max_shift": 3, "aug_min_voxels": 10}
    run_workflow("tf_aug", ["common.yaml", "inference.yaml"], "inference", **overrides, **tiny, device="cpu",
                 output_dir=str(out), seed=seed)  # fmt: skip
    return read_datalist(out / "coarse" / "datalist.json")["training"]


def test_two_seeds_give_different_synthetic_cases(inputs):
    """Synthesis per seed: the bundle's ``seed`` draws TF-Aug's masks and their placement, so two seeds give other
    cases on the same healthy scans, and the same seed the same cases."""
    root = inputs["root"]
    seed0, seed1, seed0_again = (_bundle_synthesis(inputs, root / n, s) for n, s in (("a", 0), ("b", 1), ("c", 0)))
    for i, (a, b, again) in enumerate(zip(seed0, seed1, seed0_again, strict=True)):
        assert a["provenance"]["healthy_case_id"] == b["provenance"]["healthy_case_id"] == f"h{i}"  # round robin
        assert (a["provenance"]["seed"], b["provenance"]["seed"]) == (case_seed(0, i), case_seed(1, i))
        for key, first in (("label", lambda x: x), ("image", lambda x: x[0])):
            assert np.array_equal(_nii(first(a[key])), _nii(first(again[key]))), (i, key)
            assert not np.array_equal(_nii(first(a[key])), _nii(first(b[key]))), (i, key)
        assert _nii(a["label"]).any() and _nii(b["label"]).any()


# ---- intensity_init: moments ----------------------------------------------------------------------------------
REAL_MEAN = {1: -0.7, 2: 0.3, 3: 0.6}  # NCR, ED, ET: known contrast of the phantom's real tumour
REAL_STD = {1: 0.08, 2: 0.12, 3: 0.15}


def _moment_pairs(inputs: dict) -> list[dict]:
    """(healthy, real) pairs: the fixture's healthy scans, and a real phantom whose class c voxels are drawn from
    N(REAL_MEAN[c], REAL_STD[c]) (already brain-normalised, as the bundle's transforms deliver them)."""
    rng = np.random.default_rng(1)
    label = _tumour()
    real = rng.uniform(-0.5, 0.5, label.shape).astype(np.float32)
    for c in (1, 2, 3):
        real[label == c] = rng.normal(REAL_MEAN[c], REAL_STD[c], int((label == c).sum()))
    return [
        {**h, "real_image": real[None], "real_label": label[None], "real_id": "r0", "healthy_id": h["case_id"]}
        for h in inputs["healthy"]
    ]


def _moment_transform(pool: MaskPool) -> Compose:
    return Compose([LoadImaged(["image", "brain_mask"], image_only=True, ensure_channel_first=True), _synthesis(pool)])


def test_moment_init_recovers_known_class_means(inputs):
    from custom_components.synthesis.tf_aug import moment_intensities

    pairs = _moment_pairs(inputs)
    start = moment_intensities(pairs, _moment_transform(inputs["pool"]), num_channels=1, draws=4, seed=3)
    assert np.array(start["real_mean"])[:, 0] == pytest.approx([REAL_MEAN[c] for c in (1, 2, 3)], abs=0.03)
    assert start["matched"] == [["spread"]] * 3
    # on fresh draws (another seed: other masks and places), I(B(x_h)) has the real class means within 0.05 and
    # spreads near the real ones; the identity leaves the healthy tissue's mean (about 0 here)
    network = ClasswiseIntensity(1, a_init=start["a"], b_init=start["b"])
    fresh = _moment_transform(inputs["pool"])
    fresh.set_random_state(seed=11)
    values: dict[int, list[np.ndarray]] = {1: [], 2: [], 3: []}
    for _ in range(3):
        for pair in pairs:
            out = fresh(dict(pair))
            image, label = out["image"][None].float(), out["label"][None]
            synthetic = network(image, label)[0, 0].detach().numpy()
            for c in values:
                values[c].append(synthetic[label[0, 0].numpy() == c])
    for c in (1, 2, 3):
        v = np.concatenate(values[c])
        assert abs(v.mean() - REAL_MEAN[c]) < 0.05, (c, v.mean())
        if c != 1:  # NCR has 8 voxels a mask here: its spread varies too much between draws to compare
            assert v.std() == pytest.approx(REAL_STD[c], rel=0.3)


def test_moment_init_guards_flat_tissue_and_leaves_the_transform_alone(inputs):
    from custom_components.synthesis.tf_aug import initial_intensities, moment_intensities

    pairs = _moment_pairs(inputs)
    transform = _moment_transform(inputs["pool"])

    def flat(d: dict) -> dict:  # blurred tissue of constant value 0.1: no spread to match
        out = transform(d)
        out["image"] = out["image"] * 0 + 0.1
        return out

    start = moment_intensities(pairs, flat, num_channels=1, min_std=0.02)
    assert start["matched"] == [["mean"]] * 3
    assert np.array(start["a"])[:, 0] == pytest.approx([1.0, 1.0, 1.0])
    # b = real mean - a * blurred mean, exactly the moments it reports
    expected_b = np.array(start["real_mean"])[:, 0] - 0.1
    assert np.array(start["b"])[:, 0] == pytest.approx(expected_b, abs=1e-5)
    # a is clamped to a_range
    narrow = moment_intensities(pairs, transform, num_channels=1, a_range=(0.9, 1.1))
    assert all(0.9 <= a[0] <= 1.1 for a in narrow["a"])
    # the training's transform keeps its own random stream: the same draw as an untouched copy seeded alike
    transform.set_random_state(seed=5)
    twin = _moment_transform(inputs["pool"])
    twin.set_random_state(seed=5)
    moment_intensities(pairs, transform, num_channels=1)
    assert np.array_equal(transform(dict(pairs[0]))["label"], twin(dict(pairs[0]))["label"])
    # identity: the given start, unchanged
    assert initial_intensities("identity", pairs, transform, 1, a_init=[1.0, 2.0, 3.0], b_init=0.5) == {
        "method": "identity",
        "a": [1.0, 2.0, 3.0],
        "b": 0.5,
    }
    with pytest.raises(ValueError, match="intensity_init must be one of"):
        initial_intensities("median", pairs, transform, 1)
