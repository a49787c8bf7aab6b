"""Classifier two-sample test (C2ST) of realism: can a classifier tell a method's tumours from real ones?

Distances between sets (Frechet, W1, FRD) need a floor to mean anything, and with a handful of cases the floor and
the distance are dominated by set size and degenerate covariances: flat blurred blobs can sit below the
real-vs-real floor. A C2ST asks the direct question instead, with a calibrated answer: AUC 0.5 = the classifier
cannot tell the two sets apart, 1 = it always can.

- **Samples: patches inside the tumour.** Per case and class group (``"all"``: the whole tumour, label > 0, the
  headline; and each class NCR, ED, ET alone), ``n_patches`` patch centres are drawn uniformly among the voxels of
  the group whose ``patch``-voxel cube (default 8^3) lies in the volume and has at least ``min_inside`` (0.5) of
  its voxels in the group (drawn with replacement when fewer centres qualify, so every case gives the same number
  of patches and weighs the same). A case whose group has no such centre contributes nothing to that group (thin
  ED shells, small NCR cores): a class is tested where it is large enough.
- **Features per patch** (:data:`FEATURES`, per modality, on the brain-normalised image of
  :class:`~custom_components.quality.realism.RealismCase`, over the patch's voxels in the group, voxel units):
  mean, standard deviation, 10th and 90th percentile of the intensity; standard deviation of the high-pass image
  (image minus its Gaussian smoothing with ``sigma`` = 1 voxel: fine texture); mean gradient magnitude (central
  differences). Local texture statistics rather than FRD's ~1000 radiomics: a few hundred patches cannot fit
  1000 weights, and these six name what a coarse blob lacks (texture, dark core, rim).
- **Classifier:** scikit-learn ``LogisticRegression`` (L2, C=1, liblinear: lbfgs took 70 times as long on a loaded
  2-core machine) on features standardised on the training part.
- **Cross-validation grouped by case, balanced:** with ``n`` cases per side, synthetic and real cases are dealt
  separately into ``min(n, max_folds)`` folds, so each fold holds out as many synthetic as real cases and no case
  has patches in both the training and the test part (:func:`paired_folds`, :func:`fold_splits`). The AUC
  (Mann-Whitney, :func:`auc`) is computed **within each fold** (its held-out synthetic patches against its
  held-out real ones, scored by the one model trained without them) and averaged over folds. Two estimators that
  look natural are biased below 0.5 when there is nothing to find, because the held-out case is missing from its
  own class's training mean: leave-one-case-out (the training set is unbalanced against the held-out class) and
  pooling out-of-fold scores across folds (the issue's probe: 0.33 for two halves of real cases); on 60 random
  4-against-4 splits of the demo's 12 real phantoms the within-fold mean was 0.52 (SD 0.18).
- **Equal set sizes:** ``n = min(n_synthetic, n_real)`` cases per side (cases with patches); each of
  ``n_repeats`` repeats subsamples ``n`` cases of the larger side and deals new folds; the AUC is the mean over
  repeats.
- **Per class:** the whole tumour's test (the headline) has the interval and p-value below; each class alone has its
  AUC and null AUC only, unless ``per_class_intervals`` (the resampling is most of the test's time, and three
  classes would make it four times as long).
- **95 % interval:** percentile bootstrap over cases with refitting: ``n`` synthetic and ``n`` real cases drawn
  with replacement (from the cases of repeat ``b mod n_repeats``) and the whole cross-validation rerun, every copy
  of a held-out case left out of that fold's training. Resampling only the held-out scores (no refit) gave
  intervals that held 0.5 in 76 % of no-signal splits at 4 cases per side (37 % at 2); with refitting, 30 of 30.
- **Permutation p-value:** the synthetic/real labels permuted across the cases of a repeat (case level: a case's
  patches keep one label), the whole cross-validation rerun; ``p = (1 + #{AUC_perm >= AUC}) / (1 + n_perm)``.
  A permuted AUC is that of one repeat, whose spread is wider than the mean's: the p-value is conservative. With
  ``n`` cases per side there are only ``C(2n, n)`` labellings: at 4 per side p cannot go below about 1/35.
- **Real-vs-real null, same set sizes:** the same test between two disjoint halves of a real pool, each repeat a
  new random split, at ``n`` cases per side: what the test gives when there is nothing to find (about 0.5). The
  pool is the real cases compared against, or a separate set of real cases when given (``null_real``: e.g. the
  real training cases, since a comparison against ``n`` held-out cases needs ``2 n`` for a null at the same size).
  With fewer than ``2 n`` cases in the pool the null uses the largest equal halves and says so
  (``null.n_cases_per_side`` below ``n_cases_per_side``, and ``note``).

A test needs at least 2 cases with patches on each side (training folds need both labels); otherwise its values
are None with a ``reason``. Cost: features take milliseconds per case; the fits dominate: ``(n_repeats + n_boot +
n_perm) x folds`` logistic regressions of a few ms each (scikit-learn's input checks included), two tests (method
and null) per class group. Every random choice of a test is drawn first, then its cross-validations run on every
CPU the process may use (forked workers, :func:`_cross_validations`): the result does not depend on the CPU count.
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any, Protocol

import numpy as np
from scipy import ndimage, stats
from sklearn.linear_model import LogisticRegression

from custom_components.data.labels import INTERNAL_CLASSES, TUMOUR_CLASSES
from custom_components.data.parallel import fork_map
from custom_components.transforms.texture import highpass

FEATURES: tuple[str, ...] = ("mean", "std", "p10", "p90", "highpass_std", "gradient")
WHOLE_TUMOUR = "all"
# a test with this many cross-validations or more runs them on every CPU (the demo's whole-tumour tests: 305 each)
PARALLEL_FROM = 64


class TumourCase(Protocol):
    """What the test reads of a case (a :class:`~custom_components.quality.realism.RealismCase`)."""

    image: np.ndarray
    label: np.ndarray


@dataclass(frozen=True)
class C2STSettings:
    """Settings of the C2ST (see the module docstring).

    Args:
        patch: patch side in voxels.
        n_patches: patches per case and class group.
        min_inside: least fraction of a patch's voxels in the group.
        sigma: Gaussian sigma (voxels) of the smoothing the high-pass image subtracts.
        n_repeats: subsamples / splits averaged.
        n_boot: bootstrap resamples of cases for the 95 % interval.
        n_perm: label permutations for the p-value.
        max_folds: most cross-validation folds.
        per_class_intervals: also give each class (NCR, ED, ET) its bootstrap interval and permutation p-value;
            False (default): the classes get their AUC only and the whole tumour, the headline, both (the
            resampling is most of the test's time).
        seed: seed of every random choice (patches, subsamples, folds, bootstrap, permutations).
    """

    patch: int = 8
    n_patches: int = 32
    min_inside: float = 0.5
    sigma: float = 1.0
    n_repeats: int = 5
    n_boot: int = 200
    n_perm: int = 100
    max_folds: int = 10
    per_class_intervals: bool = False
    seed: int = 0


def feature_names(modalities: Sequence[str]) -> list[str]:
    """Names of the feature columns: ``"<modality> <feature>"``, modality-major."""
    return [f"{m} {f}" for m in modalities for f in FEATURES]


# ---- samples ----------------------------------------------------------------------------------------
def mask_box(mask: np.ndarray, margin: int) -> tuple[slice, ...]:
    """Slices of the bounding box of a non-empty ``mask`` plus ``margin`` voxels, clipped to the array."""
    idx = np.argwhere(mask)
    lo = np.maximum(idx.min(0) - margin, 0)
    hi = np.minimum(idx.max(0) + margin + 1, mask.shape)
    return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))


def patch_centres(mask: np.ndarray, patch: int, min_inside: float) -> np.ndarray:
    """Voxels ``(k, 3)`` of ``mask`` whose cube ``[c - patch // 2, c - patch // 2 + patch)`` lies in the array and
    has at least ``min_inside`` of its voxels in ``mask``."""
    half = patch // 2
    inside = ndimage.uniform_filter(mask.astype(np.float64), patch, mode="constant")
    ok = mask & (inside >= min_inside - 1e-9)
    for axis, size in enumerate(mask.shape):
        index = [slice(None)] * mask.ndim
        index[axis] = np.r_[0 : min(half, size), max(size - patch + half + 1, 0) : size]
        ok[tuple(index)] = False
    return np.argwhere(ok)


def patch_features(
    case: TumourCase, classes: Sequence[int] | None, settings: C2STSettings, rng: np.random.Generator
) -> np.ndarray:
    """Features ``(n_patches, len(FEATURES) * C)`` of patches inside a class group of one case, ``(0, ...)``
    when no patch qualifies.

    Args:
        case: brain-normalised image ``(C, X, Y, Z)`` and internal label.
        classes: label values of the group (None: the whole tumour, label > 0).
        settings: patch size, count, ``min_inside``, high-pass ``sigma``.
        rng: draws the patch centres.
    """
    mask = np.isin(case.label, classes) if classes is not None else case.label > 0
    n_feat = len(FEATURES) * case.image.shape[0]
    if not mask.any():
        return np.zeros((0, n_feat))
    box = mask_box(mask, settings.patch + int(np.ceil(3 * settings.sigma)))
    inside = mask[box]
    centres = patch_centres(inside, settings.patch, settings.min_inside)
    if not len(centres):
        return np.zeros((0, n_feat))
    centres = centres[rng.choice(len(centres), settings.n_patches, replace=len(centres) < settings.n_patches)]
    maps = []
    for channel in case.image[(slice(None), *box)].astype(np.float64):
        high = highpass(channel, settings.sigma)
        gradient = np.sqrt(sum(g**2 for g in np.gradient(channel)))
        maps.append((channel, high, gradient))
    rows = []
    for c in centres:
        cube = tuple(slice(int(a) - settings.patch // 2, int(a) - settings.patch // 2 + settings.patch) for a in c)
        voxels = inside[cube]
        row = []
        for channel, high, gradient in maps:
            v, hp, grad = channel[cube][voxels], high[cube][voxels], gradient[cube][voxels]
            row += [v.mean(), v.std(), *np.percentile(v, (10, 90)), hp.std(), grad.mean()]
        rows.append(row)
    return np.asarray(rows)


def group_features(
    cases: Sequence[TumourCase], classes: Sequence[int] | None, settings: C2STSettings, stream: int
) -> list[np.ndarray]:
    """Patch features of every case that has patches in the group (cases without are left out). Case ``i``'s
    patches are drawn from ``default_rng([seed, 0, stream, i])``."""
    feats = [
        patch_features(case, classes, settings, np.random.default_rng([settings.seed, 0, stream, i]))
        for i, case in enumerate(cases)
    ]
    return [f for f in feats if len(f)]


def case_averaged_means(features: Sequence[np.ndarray]) -> list[float] | None:
    """Each feature's mean over a case's patches, averaged over the cases (every case weighs the same); None without
    cases.

    Args:
        features: per case, its patches' features ``(n_patches, n_features)`` (:func:`group_features`).
    """
    if not features:
        return None
    return [float(v) for v in np.mean([f.mean(0) for f in features], axis=0)]


# ---- the test ---------------------------------------------------------------------------------------
def auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """ROC AUC of ``scores`` for ``labels`` (1 positive, 0 negative), ties counted half (Mann-Whitney U)."""
    labels = np.asarray(labels, bool)
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    ranks = stats.rankdata(scores)
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def paired_folds(labels: np.ndarray, max_folds: int, rng: np.random.Generator) -> np.ndarray:
    """Fold of every case: the cases of each label shuffled and dealt round-robin into ``min(n, max_folds)`` folds
    (``n`` cases per label), so every fold holds out as many cases of one label as of the other.

    Args:
        labels: per-case label (0 / 1), as many of each.
        max_folds: most folds.
        rng: shuffles the cases.
    """
    labels = np.asarray(labels)
    n = int((labels == 1).sum())
    if n != int((labels == 0).sum()):
        raise ValueError(f"paired folds need as many cases of each label, got {n} and {int((labels == 0).sum())}")
    folds = np.empty(len(labels), dtype=int)
    for value in (0, 1):
        idx = np.flatnonzero(labels == value)
        folds[rng.permutation(idx)] = np.arange(len(idx)) % min(n, max_folds)
    return folds


def fold_splits(
    case_folds: np.ndarray, case_of_patch: np.ndarray, case_ids: np.ndarray | None = None
) -> list[tuple[np.ndarray, np.ndarray]]:
    """``(train, test)`` patch indices per fold: the fold's cases are tested; training leaves out every patch of a
    case held out in the fold, also of its copies in other folds (a bootstrap sample holds a case more than once).

    Args:
        case_folds: fold of every case entry.
        case_of_patch: case entry of every patch.
        case_ids: identity of every case entry (default: all distinct).
    """
    case_folds = np.asarray(case_folds)
    ids = np.arange(len(case_folds)) if case_ids is None else np.asarray(case_ids)
    splits = []
    for f in np.unique(case_folds):
        held_out = np.isin(ids, ids[case_folds == f])
        splits.append((np.flatnonzero(~held_out[case_of_patch]), np.flatnonzero(case_folds[case_of_patch] == f)))
    return splits


def fold_aucs(x: np.ndarray, y: np.ndarray, splits: Sequence[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """Per fold, the AUC of the held-out patches' decision values from the logistic regression (standardised
    features) trained on the fold's training patches; NaN where the training part lacks a label. (The AUC does
    not depend on the intercept, so a bootstrap sample's unequal classes need no weights.)"""
    out = []
    for train, test in splits:
        if len(np.unique(y[train])) < 2:
            out.append(np.nan)
            continue
        mean, std = x[train].mean(0), x[train].std(0)
        std[std == 0] = 1.0
        model = LogisticRegression(solver="liblinear").fit((x[train] - mean) / std, y[train])
        out.append(auc(model.decision_function((x[test] - mean) / std), y[test]))
    return np.asarray(out)


def cross_validated_auc(
    cases: Sequence[np.ndarray],
    labels: np.ndarray,
    folds: np.ndarray,
    case_ids: np.ndarray | None = None,
) -> float | None:
    """Mean over balanced folds grouped by case of the AUC of the fold's held-out synthetic patches against its
    held-out real ones, scored by the one model trained without them (None when no fold can be trained).

    Args:
        cases: ``(patches, features)`` per case entry.
        labels: 1 (synthetic) or 0 (real) per entry, as many of each.
        folds: fold of every entry (:func:`paired_folds`).
        case_ids: identity of every entry (copies of a case in a bootstrap sample share one).
    """
    case_of_patch = np.repeat(np.arange(len(cases)), [len(c) for c in cases])
    splits = fold_splits(folds, case_of_patch, case_ids)
    aucs = fold_aucs(np.concatenate(cases), np.asarray(labels)[case_of_patch], splits)
    return None if np.isnan(aucs).all() else float(np.nanmean(aucs))


def _cross_validations(jobs: Sequence[tuple[Sequence[np.ndarray], np.ndarray, np.ndarray, np.ndarray | None]]) -> list:
    """:func:`cross_validated_auc` of every ``(cases, labels, folds, case_ids)`` job, in order: in processes forked
    from this one (:func:`~custom_components.data.parallel.fork_map`), one per CPU this process may use, when there
    are several CPUs and :data:`PARALLEL_FROM` jobs or more (liblinear is single-threaded; each job is
    deterministic, so the results equal the serial ones)."""
    return fork_map(lambda i: cross_validated_auc(*jobs[i]), len(jobs), min_items=PARALLEL_FROM)


def _unavailable(reason: str, n: int) -> dict[str, Any]:
    keys = ("auc", "ci_low", "ci_high", "p_value", "n_patches_per_case")
    return {**dict.fromkeys(keys), "n_cases_per_side": n, "reason": reason}


def _test(
    draws: Sequence[tuple[Sequence[np.ndarray], Sequence[np.ndarray]]], settings: C2STSettings, rng: np.random.Generator
) -> dict[str, Any]:
    """AUC (mean over the draws), bootstrap interval and permutation p-value of ``(synthetic, real)`` draws of
    ``n`` cases per side. Every random choice (folds, bootstrap samples, permutations) is drawn first, in one
    order, then the cross-validations run (:func:`_cross_validations`)."""
    n = len(draws[0][0])
    labels = np.r_[np.ones(n, int), np.zeros(n, int)]
    jobs = [([*s, *r], labels, paired_folds(labels, settings.max_folds, rng), None) for s, r in draws]
    for b in range(settings.n_boot):
        s, r = draws[b % len(draws)]
        pick = np.r_[rng.integers(n, size=n), n + rng.integers(n, size=n)]
        jobs.append(([[*s, *r][i] for i in pick], labels, paired_folds(labels, settings.max_folds, rng), pick))
    for k in range(settings.n_perm):
        s, r = draws[k % len(draws)]
        permuted = rng.permutation(labels)
        jobs.append(([*s, *r], permuted, paired_folds(permuted, settings.max_folds, rng), None))
    aucs = _cross_validations(jobs)
    value = float(np.mean(aucs[: len(draws)]))
    boots = [v for v in aucs[len(draws) : len(draws) + settings.n_boot] if v is not None]
    exceed = sum(v is not None and v >= value for v in aucs[len(draws) + settings.n_boot :])
    low, high = np.percentile(boots, (2.5, 97.5)) if boots else (None, None)
    return {
        "auc": value,
        "ci_low": None if low is None else float(low),
        "ci_high": None if high is None else float(high),
        "p_value": (1 + exceed) / (1 + settings.n_perm) if settings.n_perm else None,
        "n_cases_per_side": n,
        "n_patches_per_case": len(draws[0][0][0]),
        "reason": None,
    }


def two_sample_test(
    synthetic: Sequence[np.ndarray], real: Sequence[np.ndarray], settings: C2STSettings, stream: int = 0
) -> dict[str, Any]:
    """C2ST of per-case patch features, ``n = min(len(synthetic), len(real))`` cases per side (the larger side
    subsampled anew in each repeat): ``{"auc", "ci_low", "ci_high", "p_value", "n_cases_per_side",
    "n_patches_per_case", "reason"}``, None values with the reason when a side has fewer than 2 cases.

    Args:
        synthetic, real: ``(patches, features)`` per case.
        settings: repeats, bootstrap, permutations, folds, seed.
        stream: second seed component (independent tests under one seed).
    """
    n = min(len(synthetic), len(real))
    if n < 2:
        return _unavailable(f"needs 2 cases with patches per side, got {len(synthetic)} and {len(real)}", n)
    rng = np.random.default_rng([settings.seed, 1, stream])
    draws = [
        (
            [synthetic[i] for i in rng.choice(len(synthetic), n, replace=False)],
            [real[i] for i in rng.choice(len(real), n, replace=False)],
        )
        for _ in range(settings.n_repeats)
    ]
    return _test(draws, settings, rng)


def split_half_test(pool: Sequence[np.ndarray], n: int, settings: C2STSettings, stream: int = 0) -> dict[str, Any]:
    """The real-vs-real null: the C2ST between two disjoint random halves of ``pool`` of ``min(n, len(pool) // 2)``
    cases each (a new split per repeat); same keys as :func:`two_sample_test`."""
    m = min(n, len(pool) // 2)
    if m < 2:
        return _unavailable(f"needs 2 cases with patches per half, the real pool has {len(pool)}", m)
    rng = np.random.default_rng([settings.seed, 2, stream])
    draws = []
    for _ in range(settings.n_repeats):
        perm = rng.permutation(len(pool))
        draws.append(([pool[i] for i in perm[:m]], [pool[i] for i in perm[m : 2 * m]]))
    return _test(draws, settings, rng)


def content_digest(arrays: Iterable[np.ndarray]) -> str:
    """SHA-256 of the shapes, dtypes and contents of ``arrays``: equal inputs, not equal objects, share a cache key."""
    digest = hashlib.sha256()
    for array in arrays:
        array = np.ascontiguousarray(array)
        digest.update(f"{array.shape}{array.dtype}".encode() + array.tobytes())
    return digest.hexdigest()


# nulls already computed in this process, keyed by the content of their pool's features (every method of a report
# is compared with the same real cases, so it shares one null per class group and set size)
_NULL_CACHE: dict[tuple[Any, ...], dict[str, Any]] = {}
_NULL_CACHE_SIZE = 64


def cached_split_half_test(
    pool: Sequence[np.ndarray], n: int, settings: C2STSettings, stream: int = 0
) -> dict[str, Any]:
    """:func:`split_half_test`, computed once per process for the same pool features, ``n``, settings and stream
    (a SHA-256 of the features is the key, so equal inputs, not equal objects, share a result)."""
    key = (content_digest(pool), n, settings, stream)
    if key not in _NULL_CACHE:
        if len(_NULL_CACHE) >= _NULL_CACHE_SIZE:
            _NULL_CACHE.pop(next(iter(_NULL_CACHE)))
        _NULL_CACHE[key] = split_half_test(pool, n, settings, stream)
    return copy.deepcopy(_NULL_CACHE[key])


def c2st_scores(
    synthetic: Sequence[TumourCase],
    real: Sequence[TumourCase],
    modalities: Sequence[str],
    classes: Sequence[int] = TUMOUR_CLASSES,
    null_real: Sequence[TumourCase] | None = None,
    settings: C2STSettings = C2STSettings(),
) -> dict[str, Any]:
    """The C2ST of ``synthetic`` against ``real`` per class group, each with its real-vs-real null, as a JSON-ready
    dict: the whole tumour's test at the top level (``auc``, ``ci_low``, ``ci_high``, ``p_value``,
    ``n_cases_per_side``, ``n_patches_per_case``, ``reason``, ``null``: the same keys), ``per_class``: {class name:
    the same}, ``features``, ``feature_means`` (what the classifier sees: each feature's mean over the whole tumour's
    patches, averaged over the cases of each side, ``{"synthetic": [...], "real": [...]}`` in the order of
    ``features``; None for a side without patches), ``settings``, ``null_pool`` (``"real"`` or ``"null_real"``),
    ``n_null_pool`` and ``note`` (None, or why the null is smaller than the comparison).

    Args:
        synthetic, real: the cases (brain-normalised images, internal labels).
        modalities: channel names (feature names).
        classes: internal class values tested alone.
        null_real: real cases for the null (default: ``real``).
        settings: see :class:`C2STSettings`.
    """
    groups = [(WHOLE_TUMOUR, None)] + [(INTERNAL_CLASSES.get(c, str(c)), (c,)) for c in classes]
    pool = real if null_real is None else null_real
    entries = {}
    means: dict[str, list[float] | None] = {}
    for g, (name, values) in enumerate(groups):
        full = g == 0 or settings.per_class_intervals
        test_settings = settings if full else replace(settings, n_boot=0, n_perm=0)
        fs = group_features(synthetic, values, settings, 3 * g)
        fr = group_features(real, values, settings, 3 * g + 1)
        if g == 0:
            means = {"synthetic": case_averaged_means(fs), "real": case_averaged_means(fr)}
        fp = fr if null_real is None else group_features(pool, values, settings, 3 * g + 2)
        entry = two_sample_test(fs, fr, test_settings, stream=g)
        entry["null"] = cached_split_half_test(fp, max(entry["n_cases_per_side"], 2), test_settings, stream=g)
        entries[name] = entry
    head = entries.pop(WHOLE_TUMOUR)
    n, m = head["n_cases_per_side"], head["null"]["n_cases_per_side"]
    note = None
    if m < n:
        note = (
            f"the null uses {m} cases per side, the comparison {n}: the real pool has {len(pool)} cases, "
            f"{2 * n} are needed for equal sizes"
        )
    return {
        **head,
        "per_class": entries,
        "features": feature_names(modalities),
        "feature_means": means,
        "settings": asdict(settings),
        "null_pool": "real" if null_real is None else "null_real",
        "n_null_pool": len(pool),
        "note": note,
    }
