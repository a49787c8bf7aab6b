"""Per-case caches of online synthesis (DTSS, CarveMix): same outputs with and without, LRU bound, keys."""

from __future__ import annotations

import copy
import multiprocessing
import pickle

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from scipy import ndimage

from custom_components.transforms import (
    CarveMix,
    CarveMixd,
    CaseCache,
    DeformationTumorSynthesis,
    DeformationTumorSynthesisd,
    signed_distance,
    signed_distance_box,
)
from custom_components.transforms.case_cache import label_digest, tight_box

SHAPE = (34, 36, 30)


def _case(seed: int, n_ch: int = 2, shape: tuple[int, int, int] = SHAPE) -> tuple[np.ndarray, np.ndarray]:
    """A small brain in [-1, 1] with a three-class lesion (NCR core, ET rim, ED shell) at a seed-dependent place."""
    rng = np.random.default_rng(seed)
    grid = np.indices(shape, dtype=np.float32)
    mid = [(s - 1) / 2 for s in shape]
    brain = sum(((grid[a] - mid[a]) / (0.45 * shape[a])) ** 2 for a in range(3)) <= 1
    centre = [m + rng.uniform(-3, 3) for m in mid]
    radius = rng.uniform(5, 8)
    dist = np.sqrt(sum(((grid[a] - centre[a]) * (1.0, 1.2, 0.9)[a]) ** 2 for a in range(3)))
    label = np.zeros(shape, np.uint8)
    label[dist <= radius] = 2
    label[dist <= 0.7 * radius] = 3
    label[dist <= 0.4 * radius] = 1
    image = (
        rng.normal(0.0, 0.15, (n_ch, *shape))
        + np.array([0.0, 0.3, 0.6, 0.9])[label] * np.arange(1, n_ch + 1)[:, None, None, None] / n_ch
    )
    image = np.where(brain, np.clip(image, -0.95, 1.0), -1.0).astype(np.float32)
    return image, label[None]


def _same(a: tuple, b: tuple) -> bool:
    """Same dtypes and values bit for bit. Exact on any CPU: the cache only keeps what the uncached path computes
    (the same numpy / scipy operations on the same box, in the same order, no torch kernels), so cached and
    uncached outputs are the same floats."""
    return all(
        np.asarray(x).dtype == np.asarray(y).dtype and np.array_equal(np.asarray(x), np.asarray(y))
        for x, y in zip(a, b, strict=True)
    )


# the cache itself ------------------------------------------------------------------------------


def test_case_cache_lru_bound_and_order():
    cache = CaseCache(2)
    for key in "abc":
        cache.put(key, np.zeros(10, np.uint8))
    assert len(cache) == 2 and "a" not in cache and cache.nbytes == 20
    assert cache.get("b") is not None  # b is now the most recent: adding d evicts c
    cache.put("d", np.zeros(3))
    assert set(cache._entries) == {"b", "d"} and cache.hits == 1
    assert cache.get("c") is None and cache.misses == 1
    off = CaseCache(0)
    off.put("a", 1)
    assert len(off) == 0 and not off.enabled and off.get("a") is None
    with pytest.raises(ValueError, match="non-negative"):
        CaseCache(-1)
    # pickling (spawned workers, deepcopy) keeps the bound, not the entries
    clone = pickle.loads(pickle.dumps(cache))
    assert clone.max_cases == 2 and len(clone) == 0 and len(copy.deepcopy(cache)) == 0 and len(cache) == 2


def test_label_digest_identifies_the_label():
    _, a = _case(0)
    _, b = _case(1)  # same shape, another lesion
    box_a, box_b = tight_box(a[0] > 0), tight_box(b[0] > 0)
    digest_a = label_digest(a[0][box_a], SHAPE, box_a)
    assert digest_a == label_digest(a[0].copy()[box_a], SHAPE, box_a)  # content, not array identity
    assert digest_a != label_digest(b[0][box_b], SHAPE, box_b)
    changed = a[0].copy()
    changed[box_a][changed[box_a] == 3] = 1  # same lesion, other classes
    assert digest_a != label_digest(changed[box_a], SHAPE, box_a)
    assert tight_box(np.zeros((4, 4, 4), bool)) is None
    mask = np.zeros((5, 6, 7), bool)
    mask[1, 2:4, 6] = True
    assert tight_box(mask) == (slice(1, 2), slice(2, 4), slice(6, 7))
    assert tight_box(mask[0:2, :, 0:7].any(axis=2)) == (slice(1, 2), slice(2, 4))  # 2D path


# DTSS ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [{}, {"sigma": 0.0}, {"masked_blur": False}, {"sigma": 2.3, "collision_probs": (0.0, 0.5, 0.5)}],
    ids=["default", "no-blur", "plain-blur", "wide-blur"],
)
def test_dtss_cached_equals_uncached(kwargs):
    cases = [_case(s) for s in (0, 1, 2)]
    cached = DeformationTumorSynthesis(cache_size=4, **kwargs).set_random_state(7)
    plain = DeformationTumorSynthesis(cache_size=0, **kwargs).set_random_state(7)
    # the same case several times, then other cases, then back
    for i in (0, 0, 0, 1, 2, 1, 0, 2):
        out_c, out_p = cached(*cases[i]), plain(*cases[i])
        assert _same(out_c, out_p)
        assert not np.array_equal(out_c[1], cases[i][1])  # something was synthesised
    assert len(cached.cache) == 3 and cached.cache.misses == 3 and cached.cache.hits == 5
    assert len(plain.cache) == 0


def test_dtss_lru_eviction_keeps_bound_and_outputs():
    cases = [_case(s) for s in (3, 4, 5)]
    cached = DeformationTumorSynthesis(cache_size=2).set_random_state(1)
    plain = DeformationTumorSynthesis(cache_size=0).set_random_state(1)
    for i in (0, 1, 2, 0, 1, 2, 2):
        assert _same(cached(*cases[i]), plain(*cases[i]))
        assert len(cached.cache) <= 2
    # cyclic use of three cases in a two-case cache: every visit but the repeated last one misses
    assert cached.cache.misses == 6 and cached.cache.hits == 1


def test_dtss_changed_label_or_image_is_not_stale():
    image, label = _case(6)
    cached = DeformationTumorSynthesis(cache_size=4).set_random_state(2)
    plain = DeformationTumorSynthesis(cache_size=0).set_random_state(2)
    assert _same(cached(image, label), plain(image, label))
    # the same case with an edited label (same shape, same id in a datalist): new key, fresh invariants
    edited = label.copy()
    edited[0][edited[0] == 3] = 1
    assert _same(cached(image, edited), plain(image, edited)) and len(cached.cache) == 2
    # the same label with another image: the entry's image digest differs, so it is recomputed
    brighter = np.clip(image + 0.05, -1, 1).astype(np.float32)
    assert _same(cached(brighter, label), plain(brighter, label))
    assert len(cached.cache) == 2 and cached.cache.misses == 3 and cached.cache.hits == 0
    assert _same(cached(brighter, label), plain(brighter, label)) and cached.cache.hits == 1
    # another case of the same shape gets its own entry
    other_image, other_label = _case(7)
    assert _same(cached(other_image, other_label), plain(other_image, other_label)) and len(cached.cache) == 3


def test_dtss_dictionary_warm_and_types():
    image, label = _case(8, n_ch=3)
    data = {
        "image": MetaTensor(torch.as_tensor(image)),
        "label": MetaTensor(torch.as_tensor(label, dtype=torch.float32)),
    }
    cached = DeformationTumorSynthesisd(keys=("image", "label"), cache_size=2).set_random_state(5)
    plain = DeformationTumorSynthesisd(keys=("image", "label"), cache_size=0).set_random_state(5)
    cached.warm(data)
    assert len(cached.dtss.cache) == 1 and cached.dtss.cache.nbytes > 0
    for _ in range(3):
        out_c, out_p = cached(data), plain(data)
        assert isinstance(out_c["image"], MetaTensor) and out_c["dtss_applied"] and out_p["dtss_applied"]
        assert torch.equal(out_c["image"], out_p["image"]) and torch.equal(out_c["label"], out_p["label"])
    assert cached.dtss.cache.misses == 1 and cached.dtss.cache.hits == 3
    # a case without tumour still raises, cached or not
    with pytest.raises(ValueError, match="no tumour"):
        cached({"image": image, "label": np.zeros_like(label)})


def _draw_in_child(transform, case, queue) -> None:
    out = transform(*case)
    queue.put((len(transform.cache), transform.cache.hits, np.asarray(out[0]), np.asarray(out[1])))


def test_dtss_cache_per_process():
    """A forked worker starts with the parent's entries and keeps its own; outputs stay the same."""
    if "fork" not in multiprocessing.get_all_start_methods():
        pytest.skip("fork start method not available on this platform")
    case_a, case_b = _case(9), _case(10)
    parent = DeformationTumorSynthesis(cache_size=4).set_random_state(3)
    parent.warm(*case_a)
    ctx = multiprocessing.get_context("fork")
    for case, hits in ((case_a, 1), (case_b, 0)):
        queue = ctx.Queue()
        child = ctx.Process(target=_draw_in_child, args=(parent, case, queue))
        child.start()
        n_entries, child_hits, img, lab = queue.get(timeout=120)
        child.join(timeout=60)
        assert child_hits == hits and n_entries == (1 if hits else 2)
        # the child drew the parent's state's next values: the parent draws the same now
        expected = DeformationTumorSynthesis(cache_size=0).set_random_state(3)
        expected.R.set_state(parent.R.get_state())
        ref_img, ref_lab = expected(*case)
        assert np.array_equal(img, ref_img) and np.array_equal(lab, ref_lab)
    # the parent's cache is untouched by its children
    assert len(parent.cache) == 1


# CarveMix --------------------------------------------------------------------------------------


def test_signed_distance_box_equals_whole_volume():
    rng = np.random.default_rng(0)
    for trial in range(12):
        shape = tuple(int(s) for s in rng.integers(10, 30, size=3))
        mask = ndimage.binary_dilation(rng.random(shape) > 0.993, iterations=int(rng.integers(1, 4)))
        if trial % 3 == 0:
            mask[0] |= rng.random(shape[1:]) > 0.9  # a lesion on the volume's edge
        if not mask.any():
            continue
        for spacing in (None, (2.0, 1.0, 1.0), (0.5, 0.7, 1.3)):
            whole = signed_distance(mask, spacing)
            inv = signed_distance_box(mask, spacing)
            assert np.array_equal(inv.distance, whole[inv.box]) and inv.depth == abs(float(whole.min()))
            outside = np.ones(shape, bool)
            outside[inv.box] = False
            assert (whole[outside] > inv.depth).all()  # never carved, whatever the draw
    with pytest.raises(ValueError, match="empty"):
        signed_distance_box(np.zeros((4, 4, 4), bool))


def test_carvemix_cached_equals_uncached():
    cases = [_case(s) for s in (11, 12, 13)]
    cached = CarveMix(cache_size=2).set_random_state(4)
    plain = CarveMix(cache_size=0).set_random_state(4)
    # (target, source) pairs: one source repeatedly, then others (three sources through a two-case cache)
    for t, s in ((0, 1), (2, 1), (0, 1), (1, 0), (1, 2), (0, 1), (2, 0)):
        img, lab, src_img, src_lab = *cases[t], *cases[s]
        out_c, out_p = cached(img, lab, src_img, src_lab), plain(img, lab, src_img, src_lab)
        assert _same(out_c[:2], out_p[:2]) and out_c[2] == out_p[2]
        assert len(cached.cache) <= 2
    assert cached.cache.hits == 2 and cached.cache.misses == 5
    # mixed dtypes and torch inputs follow np.where's promotion, then the target's type
    img, lab = cases[0]
    src_img, src_lab = cases[1][0].astype(np.float64), cases[1][1].astype(np.float32)
    out_c = cached(torch.as_tensor(img), lab, src_img, src_lab)
    out_p = plain(torch.as_tensor(img), lab, src_img, src_lab)
    assert isinstance(out_c[0], torch.Tensor) and torch.equal(out_c[0], out_p[0]) and np.array_equal(out_c[1], out_p[1])
    # a source whose label changed gets fresh invariants
    edited = cases[1][1].copy()
    edited[0, tight_box(edited[0] > 0)[0].start] = 0
    assert _same(cached(img, lab, cases[1][0], edited)[:2], plain(img, lab, cases[1][0], edited)[:2])


def test_carvemixd_cache_keyed_by_lesion():
    cases = [_case(s) for s in (14, 15)]
    source = [{"image": i, "label": la} for i, la in cases]
    target = {"image": cases[0][0][:, ::-1].copy(), "label": cases[0][1][:, ::-1].copy()}
    cached = CarveMixd(("image", "label"), source, cache_size=1).set_random_state(9)
    plain = CarveMixd(("image", "label"), source, cache_size=0).set_random_state(9)
    for _ in range(6):
        out_c, out_p = cached(target), plain(target)
        assert out_c["is_synthetic"] and np.array_equal(out_c["image"], out_p["image"])
        assert np.array_equal(out_c["label"], out_p["label"]) and len(cached.mixer.cache) == 1


def test_two_phase_dataset_warms_the_caches_when_phase_2_starts():
    """Entering phase 2, TwoPhaseDataset fills every online transform's cache with every real case (also inside a
    Compose), without drawing: the samples are those of an uncached dataset with the same seeds."""
    from monai.transforms import Compose

    from custom_components.engines import TwoPhaseDataset

    real = []
    for seed in (1, 2, 3):
        image, label = _case(seed)
        real.append({"image": torch.as_tensor(image), "label": torch.as_tensor(label), "case_id": f"c{seed}"})

    def make(cache_size: int) -> tuple[TwoPhaseDataset, DeformationTumorSynthesisd]:
        dtss = DeformationTumorSynthesisd(keys=("image", "label"), cache_size=cache_size)
        online = Compose([dtss]).set_random_state(7)  # seeds its transforms (after Compose's own seeding)
        return TwoPhaseDataset(real, augment=lambda d: d, online=[online], phase2_start_epoch=1), dtss

    warmed, dtss = make(cache_size=8)
    plain, _ = make(cache_size=0)
    warmed.set_epoch(1)
    assert len(dtss.dtss.cache) == 0  # phase 1: nothing to warm
    for ds in (warmed, plain):
        ds.set_epoch(2)
    assert len(dtss.dtss.cache) == len(real)
    for index in range(len(real)):
        for a, b in zip(warmed[index], plain[index], strict=True):
            assert torch.equal(torch.as_tensor(a["image"]), torch.as_tensor(b["image"]))
            assert torch.equal(torch.as_tensor(a["label"]), torch.as_tensor(b["label"]))
