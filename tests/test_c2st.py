"""The classifier two-sample test of realism: AUC by hand and against scikit-learn, patch centres by brute force,
balanced folds grouped by case (no case, nor a bootstrap copy of it, in both the training and the test part),
chance for two samples of one distribution and near 1 for flat blobs against textured phantoms, each beside its
real-vs-real null, equal set sizes, determinism."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from scipy import ndimage
from sklearn.metrics import roc_auc_score

from custom_components.quality import (
    C2STSettings,
    c2st_scores,
    cross_validated_auc,
    fold_splits,
    paired_folds,
    patch_features,
    split_half_test,
    two_sample_test,
)
from custom_components.quality.c2st import FEATURES, auc, case_averaged_means, group_features, patch_centres
from custom_components.quality.realism import RealismCase

N = 24
FAST = C2STSettings(n_repeats=2, n_boot=60, n_perm=30, max_folds=3)


def _phantom(cid: str, seed: int, flat: bool) -> RealismCase:
    """A 24^3 one-channel case: a sphere of oedema (radius 7) around a necrotic core (radius 3.5; too small for
    an 8^3 patch half inside it), no ET. Textured: smoothed noise around each class's mean; flat: the class means
    blurred (sigma 1 voxel), as TF-Aug's coarse tumours."""
    rng = np.random.default_rng(seed)
    centre = N / 2 - 0.5 + rng.uniform(-1.5, 1.5, 3)
    r = np.sqrt(((np.stack(np.meshgrid(*[np.arange(N)] * 3, indexing="ij")) - centre[:, None, None, None]) ** 2).sum(0))
    label = np.where(r < 3.5, 1, np.where(r < 7, 2, 0)).astype(np.uint8)
    base = np.select([label == 1, label == 2], [-0.5, 0.4], 0.0)
    if flat:
        tumour = ndimage.gaussian_filter(base, 1.0)
    else:
        tumour = base + 0.3 * ndimage.gaussian_filter(rng.normal(size=base.shape), 1.0) / 0.18
    image = np.where(label > 0, tumour, 0.05 * rng.normal(size=base.shape))
    return RealismCase(cid, image[None].astype(np.float32), label, (1.0, 1.0, 1.0))


def test_auc_is_mann_whitney_and_matches_sklearn() -> None:
    # positives 3, 1; negatives 0, 1, 2: pairs won 3 + 3 + 1 (ties count half): (2 + 0.5 + 1 + 2 + ... ) by hand
    scores, labels = np.array([3.0, 1.0, 0.0, 1.0, 2.0]), np.array([1, 1, 0, 0, 0])
    # 3 beats all three (3); 1 beats 0 (1), ties 1 (0.5), loses to 2: 4.5 of 6
    assert auc(scores, labels) == pytest.approx(4.5 / 6)
    rng = np.random.default_rng(0)
    s, y = rng.integers(0, 5, 200).astype(float), rng.integers(0, 2, 200)
    assert auc(s, y) == pytest.approx(roc_auc_score(y, s))


def test_patch_centres_brute_force() -> None:
    rng = np.random.default_rng(0)
    mask = ndimage.binary_opening(rng.random((14, 13, 12)) < 0.8)
    patch, min_inside = 6, 0.5
    got = {tuple(c) for c in patch_centres(mask, patch, min_inside)}
    expected = set()
    for c in np.argwhere(mask):
        lo = c - patch // 2
        if (lo >= 0).all() and (lo + patch <= mask.shape).all():
            cube = mask[tuple(slice(a, a + patch) for a in lo)]
            if cube.mean() >= min_inside:
                expected.add(tuple(c))
    assert got == expected and len(got) > 10


def test_patch_features_of_a_flat_blob_and_its_texture() -> None:
    flat, textured = _phantom("f", 0, flat=True), _phantom("t", 0, flat=False)
    settings = C2STSettings(n_patches=16)
    f = patch_features(flat, None, settings, np.random.default_rng(0))
    t = patch_features(textured, None, settings, np.random.default_rng(0))
    assert f.shape == t.shape == (16, len(FEATURES))
    hp = FEATURES.index("highpass_std")
    assert f[:, hp].max() < 0.5 * t[:, hp].min()  # the flat blob has no fine texture
    # too few voxels of a class for any patch (the core), or none at all (ET): no rows
    assert patch_features(textured, (1,), settings, np.random.default_rng(0)).shape == (0, len(FEATURES))
    assert patch_features(textured, (3,), settings, np.random.default_rng(0)).shape == (0, len(FEATURES))


def test_folds_are_balanced_and_grouped_by_case() -> None:
    rng = np.random.default_rng(0)
    labels = np.r_[np.ones(7, int), np.zeros(7, int)]
    labels = rng.permutation(labels)
    folds = paired_folds(labels, 3, rng)
    for f in range(3):
        held = labels[folds == f]
        assert (held == 1).sum() == (held == 0).sum() >= 2
    with pytest.raises(ValueError, match="as many cases of each label"):
        paired_folds(np.array([1, 1, 0]), 2, rng)
    # a bootstrap sample: entries 0 and 3 are copies of case 5, entries 1 and 2 of case 8; 4 patches per entry
    ids = np.array([5, 8, 8, 5, 1, 2])
    case_folds = np.array([0, 1, 0, 1, 0, 1])
    case_of_patch = np.repeat(np.arange(6), 4)
    tested = []
    for train, test in fold_splits(case_folds, case_of_patch, ids):
        assert not set(ids[case_of_patch[train]]) & set(ids[case_of_patch[test]])  # no case on both sides
        tested += list(test)
    assert sorted(tested) == list(range(24))  # every patch tested exactly once


def test_grouped_cross_validation_does_not_learn_case_identity() -> None:
    # 8 cases, each its own tight cluster of patches, labels unrelated to the features: a model that saw a case's
    # patches in training would recognise its cluster (8 points in 6-D are linearly separable); grouped by case it
    # is at chance
    rng = np.random.default_rng(0)
    aucs = []
    for _ in range(20):
        cases = [c + 0.01 * rng.normal(size=(16, 6)) for c in rng.normal(size=(8, 1, 6))]
        labels = rng.permutation(np.r_[np.ones(4, int), np.zeros(4, int)])
        aucs.append(cross_validated_auc(cases, labels, paired_folds(labels, 4, rng)))
    assert 0.35 < np.mean(aucs) < 0.65


def test_one_distribution_gives_chance_and_flat_blobs_give_one() -> None:
    textured = [_phantom(f"t{i}", i, flat=False) for i in range(12)]
    flat = [_phantom(f"f{i}", 100 + i, flat=True) for i in range(6)]
    same = c2st_scores(textured[:6], textured[6:], ["t1"], classes=(), settings=FAST)  # the whole tumour only
    assert same["ci_low"] < 0.5 < same["ci_high"] and abs(same["auc"] - 0.5) < 0.2 and same["p_value"] > 0.05
    far = c2st_scores(flat, textured[6:], ["t1"], null_real=textured[:6], settings=FAST)
    assert far["auc"] > 0.95 and far["ci_low"] > 0.5 and far["p_value"] < 0.05
    assert far["per_class"]["ED"]["auc"] > 0.95
    # per class the AUC only (no resampling) unless asked; the headline always has its interval and p-value
    assert far["per_class"]["ED"]["ci_low"] is None and far["per_class"]["ED"]["p_value"] is None
    assert far["ci_low"] is not None and far["p_value"] is not None
    # both at 6 cases per side; the null (the other 6 textured cases, 3 against 3) contains 0.5
    assert far["n_cases_per_side"] == 6 and far["null_pool"] == "null_real" and far["n_null_pool"] == 6
    assert far["null"]["n_cases_per_side"] == 3 and far["null"]["ci_low"] < 0.5 < far["null"]["ci_high"]
    assert "the null uses 3 cases per side, the comparison 6" in far["note"]
    # classes without patches: None and why
    assert far["per_class"]["ET"]["auc"] is None and "needs 2 cases with patches" in far["per_class"]["ET"]["reason"]
    assert far["features"] == [f"t1 {f}" for f in FEATURES] and far["settings"]["n_perm"] == 30
    # what it sees: the case-averaged feature means of each side (the whole tumour's patches, stream 0 / 1); the
    # flat blobs have less than half the real high-pass spread
    means, hp = far["feature_means"], FEATURES.index("highpass_std")
    real_feats = group_features(textured[6:], None, FAST, 1)
    assert means["real"] == pytest.approx(np.mean([f.mean(0) for f in real_feats], axis=0).tolist())
    assert means["synthetic"][hp] < 0.5 * means["real"][hp]
    assert case_averaged_means([np.array([[1.0, 2.0], [3.0, 4.0]]), np.array([[5.0, 0.0]])]) == [3.5, 1.5]
    assert case_averaged_means([]) is None
    every = c2st_scores(
        flat, textured[6:], ["t1"], (2,), textured[:6], dataclasses.replace(FAST, per_class_intervals=True)
    )
    assert every["per_class"]["ED"]["ci_low"] > 0.5 and every["per_class"]["ED"]["p_value"] < 0.05


def test_equal_set_sizes_and_determinism() -> None:
    rng = np.random.default_rng(0)
    synthetic = [rng.normal(size=(8, 3)) + 1.0 for _ in range(7)]
    real = [rng.normal(size=(8, 3)) for _ in range(3)]
    result = two_sample_test(synthetic, real, FAST)
    assert result["n_cases_per_side"] == 3 and result["n_patches_per_case"] == 8 and result["reason"] is None
    assert result == two_sample_test(synthetic, real, FAST)  # same seed, same numbers
    assert result != two_sample_test(synthetic, real, dataclasses.replace(FAST, seed=1))
    # the null at 3 cases per side from a pool of 7 (two disjoint halves of 3); of 5: 2
    assert split_half_test(synthetic, 3, FAST)["n_cases_per_side"] == 3
    assert split_half_test(synthetic[:5], 3, FAST)["n_cases_per_side"] == 2
    # fewer than 2 cases on a side: no test
    lone = two_sample_test(synthetic, real[:1], FAST)
    assert lone["auc"] is None and lone["ci_low"] is None and "got 7 and 1" in lone["reason"]
    assert split_half_test(real, 3, FAST)["auc"] is None


def test_the_null_is_computed_once_per_pool(monkeypatch) -> None:
    from custom_components.quality import c2st

    rng = np.random.default_rng(3)
    pool = [rng.normal(size=(8, 3)) for _ in range(6)]
    calls = []
    real_test = c2st.split_half_test
    monkeypatch.setattr(c2st, "_NULL_CACHE", {})
    monkeypatch.setattr(c2st, "split_half_test", lambda *a, **k: calls.append(a) or real_test(*a, **k))
    first = c2st.cached_split_half_test(pool, 3, FAST, 1)
    assert first == real_test(pool, 3, FAST, 1) and len(calls) == 1
    # equal features (a copy, not the same objects): the cached result, as a copy the caller may change
    again = c2st.cached_split_half_test([p.copy() for p in pool], 3, FAST, 1)
    assert again == first and again is not first and len(calls) == 1
    # another set size, stream or pool is computed anew
    c2st.cached_split_half_test(pool, 2, FAST, 1)
    c2st.cached_split_half_test(pool, 3, FAST, 2)
    c2st.cached_split_half_test(pool[:5], 3, FAST, 1)
    assert len(calls) == 4


def test_parallel_cross_validations_equal_the_serial_ones(monkeypatch) -> None:
    """FAST's 92 cross-validations a test run in forked processes (2 CPUs or more); every random choice is drawn
    before them, so the result is the serial one to the last digit, and the same as one cross-validation by hand."""
    from custom_components.data import parallel
    from custom_components.quality import c2st

    rng = np.random.default_rng(5)
    synthetic = [rng.normal(size=(8, 3)) + 0.5 for _ in range(5)]
    real = [rng.normal(size=(8, 3)) for _ in range(5)]
    forked = []
    real_pool = parallel.ProcessPoolExecutor
    monkeypatch.setattr(parallel, "ProcessPoolExecutor", lambda *a, **k: forked.append(a) or real_pool(*a, **k))
    monkeypatch.setattr(parallel.os, "sched_getaffinity", lambda pid: {0, 1})
    parallel = two_sample_test(synthetic, real, FAST)
    assert len(forked) == 1 and forked[0][0] == 2
    monkeypatch.setattr(c2st, "PARALLEL_FROM", 10**9)
    assert two_sample_test(synthetic, real, FAST) == parallel and len(forked) == 1
    # the AUC by hand: the repeats' subsamples, then each repeat's folds, from the test's generator in that order
    gen = np.random.default_rng([FAST.seed, 1, 0])
    draws = [([synthetic[i] for i in gen.choice(5, 5, replace=False)], [real[i] for i in gen.choice(5, 5, replace=False)])
             for _ in range(FAST.n_repeats)]  # fmt: skip
    labels = np.r_[np.ones(5, int), np.zeros(5, int)]
    by_hand = [cross_validated_auc([*s, *r], labels, paired_folds(labels, FAST.max_folds, gen)) for s, r in draws]
    assert parallel["auc"] == float(np.mean(by_hand))
