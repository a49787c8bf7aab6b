"""Realism scores: Frechet and Wasserstein distances against hand-computed values, distances and real-vs-real
floors at equal set sizes (by hand from the splits), boundary sharpness ratios, the encoder features, the Frechet
Radiomics Distance (frd-score) against frd-score's own statistics and on phantoms with noise tumours, the line for
a distance below its floor, and the `realism` CLI (with the C2ST; the C2ST itself: tests/test_c2st.py)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from custom_components.data.atomic import save_nifti
from custom_components.data.datalist import write_datalist
from custom_components.networks import build_segmentation_network
from custom_components.quality.realism import (
    RealismCase,
    below_floor,
    boundary_sharpness,
    format_table,
    frd_case_features,
    frd_from_features,
    frechet_distance,
    load_cases,
    matched_splits,
    realism_scores,
    wasserstein,
)

N = 16


def test_frechet_distance_hand_computed() -> None:
    # 1-D: means 1 and 3, variances (ddof=1) 2 and 8: 4 + 2 + 8 - 2 * sqrt(16) = 6
    assert frechet_distance(np.array([[0.0], [2.0]]), np.array([[1.0], [5.0]])) == pytest.approx(6.0)
    # 2-D with orthogonal covariances diag(2, 0) and diag(0, 2): |(1, -2)|^2 + 2 + 2 - 0 = 9
    a = np.array([[0.0, 0.0], [2.0, 0.0]])
    b = np.array([[0.0, 1.0], [0.0, 3.0]])
    assert frechet_distance(a, b) == pytest.approx(9.0)
    # a shifted copy: only the mean term remains; identical sets: 0
    rng = np.random.default_rng(0)
    x = rng.normal(size=(5, 8))  # fewer samples than dimensions: rank-deficient covariance
    assert frechet_distance(x, x + np.arange(8)) == pytest.approx(float((np.arange(8) ** 2).sum()), abs=1e-6)
    assert frechet_distance(x, x) == pytest.approx(0.0, abs=1e-6)
    # a single vector on a side: zero covariance
    assert frechet_distance(np.array([[1.0]]), np.array([[0.0], [2.0]])) == pytest.approx(0.0 + 0.0 + 2.0)
    with pytest.raises(ValueError, match="equal dimension"):
        frechet_distance(np.zeros((2, 2)), np.zeros((2, 3)))


def test_wasserstein_hand_computed() -> None:
    assert wasserstein([np.array([0.0, 1.0]), np.array([3.0])], [np.array([5.0, 6.0, 8.0])]) == pytest.approx(5.0)
    assert wasserstein([np.array([0.0, 1.0])], [np.array([0.0, 3.0])]) == pytest.approx(1.0)
    assert wasserstein([], [np.array([1.0])]) is None


def _case(cid: str, seed: int, scale: float = 1.0) -> RealismCase:
    """A 16^3 two-channel case: a cube tumour (NCR core, ET shell, ED rim) with class-dependent intensity."""
    rng = np.random.default_rng(seed)
    label = np.zeros((N, N, N), np.uint8)
    lo = 3 + seed % 3
    label[lo : lo + 9, lo : lo + 9, lo : lo + 9] = 2
    label[lo + 2 : lo + 7, lo + 2 : lo + 7, lo + 2 : lo + 7] = 3
    label[lo + 3 : lo + 6, lo + 3 : lo + 6, lo + 3 : lo + 6] = 1
    base = np.select([label == 1, label == 2, label == 3], [-0.6, 0.4, 0.8], 0.0)
    grid = np.stack(np.meshgrid(*[np.arange(N)] * 3, indexing="ij"))
    brain = ((grid - 7.5) ** 2).sum(0) < 7.9**2  # a skull-stripped head: constant background outside
    brain |= label > 0
    image = np.stack([base + 0.1 * rng.normal(size=base.shape), -base + 0.1 * rng.normal(size=base.shape)])
    image = np.where(brain, image, -2.0)
    return RealismCase(cid, (scale * image).astype(np.float32), label, (1.0, 1.0, 1.0))


class Identity(nn.Module):
    """A one-level 'encoder' whose features are the image itself: masked GAP = class mean intensity."""

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [x]


def test_matched_splits_give_equal_disjoint_sets() -> None:
    for n_real, n_syn in ((4, 3), (5, 8), (8, 2), (2, 1)):
        splits = matched_splits(n_real, n_syn, 6, seed=0)
        assert len(splits) == 6
        for a, b, s in splits:
            size = min(n_real // 2, n_syn)
            assert len(a) == len(s) == size and len(b) == n_real - n_real // 2
            assert not set(a) & set(b) and set(a) | set(b) <= set(range(n_real))
            assert len(set(s)) == size and set(s) <= set(range(n_syn))
    # the real halves depend on the real set only, not on how many synthetic cases there are
    halves = [(list(a), list(b)) for a, b, _ in matched_splits(6, 3, 4, 0)]
    assert halves == [(list(a), list(b)) for a, b, _ in matched_splits(6, 9, 4, 0)]
    assert matched_splits(1, 5, 4, 0) == []


def test_distances_and_floors_compare_equal_set_sizes() -> None:
    # distance: synthetic subset S against real half B; floor: real half A against B (by hand from the splits)
    real = [_case(f"r{i}", i) for i in range(4)]
    other = [_case(f"s{i}", 10 + i, scale=1.5) for i in range(3)]
    same = realism_scores(real, real, ["a", "b"], Identity(), levels=1, n_splits=5, frd=False, c2st=None)
    diff = realism_scores(other, real, ["a", "b"], Identity(), levels=1, n_splits=5, frd=False, c2st=None)
    assert diff["set_sizes"] == [2, 2] and diff["c2st"] is None and diff["summary"]["c2st_auc"] is None
    splits = matched_splits(4, 3, 5, 0)
    # the Frechet distance with the identity encoder is that of the per-case class means
    means_s = np.stack([[c.image[ch][c.label == 3].mean() for ch in range(2)] for c in other])
    means_r = np.stack([[c.image[ch][c.label == 3].mean() for ch in range(2)] for c in real])
    fd = np.mean([frechet_distance(means_s[s], means_r[b]) for _, b, s in splits])
    floor = np.mean([frechet_distance(means_r[a], means_r[b]) for a, b, _ in splits])
    assert diff["frechet"]["ET"]["distance"] == pytest.approx(fd, rel=1e-3)
    assert diff["frechet"]["ET"]["floor"] == pytest.approx(floor, rel=1e-3)
    vals_s = [c.image[1][c.label == 2] for c in other]
    vals_r = [c.image[1][c.label == 2] for c in real]
    w1 = np.mean([wasserstein([vals_s[i] for i in s], [vals_r[i] for i in b]) for _, b, s in splits])
    assert diff["wasserstein"]["ED"]["b"]["distance"] == pytest.approx(w1, rel=1e-5)
    for name in ("NCR", "ED", "ET"):
        assert same["frechet"][name]["floor"] == pytest.approx(diff["frechet"][name]["floor"])  # real set only
        assert same["frechet"][name]["floor"] > 0
        assert diff["frechet"][name]["distance"] > same["frechet"][name]["floor"]
        for m in ("a", "b"):
            assert same["wasserstein"][name][m]["floor"] == diff["wasserstein"][name][m]["floor"]
            assert diff["wasserstein"][name][m]["distance"] > same["wasserstein"][name][m]["floor"]
    for m in ("a", "b"):
        assert same["sharpness"][m]["ratio"] == pytest.approx(1.0)
    # a set that is one real case repeated is at distance 0 from it
    twins = realism_scores(real[:1] * 2, real[:1] * 4, ["a", "b"], Identity(), levels=1, frd=False, c2st=None)
    assert twins["summary"]["frechet"] == pytest.approx(0.0, abs=1e-6) and twins["summary"]["wasserstein"] == 0.0
    scaled = [RealismCase(c.case_id, 1.5 * c.image, c.label, c.zooms) for c in real]
    ratio = realism_scores(scaled, real, ["a", "b"], None, n_splits=2, frd=False, c2st=None)
    assert ratio["frechet"] == {}  # no encoder, no Frechet distance
    assert ratio["summary"]["sharpness_ratio"] == pytest.approx(1.5)  # gradients scale with intensity
    # one real case: all against all, no floor
    single = realism_scores(other, real[:1], ["a", "b"], Identity(), levels=1, frd=False, c2st=None)
    assert single["frechet"]["ET"]["floor"] is None and single["summary"]["wasserstein_floor"] is None
    assert single["set_sizes"] == [3, 1] and np.isfinite(single["summary"]["frechet"])


def test_a_distance_below_its_floor_gets_a_line() -> None:
    result = {
        "summary": {"frechet": 10.5, "frechet_floor": 17.4, "wasserstein": 0.3, "wasserstein_floor": 0.18},
        "set_sizes": [2, 2],
        "n_synthetic": 8,
        "n_real": 4,
    }
    lines = below_floor(result)
    assert len(lines) == 1 and lines[0].startswith("Frechet 10.5 is below its floor 17.4 (sets of 2 vs 2 cases)")


def test_boundary_sharpness_hand_computed() -> None:
    label = np.zeros((N, N, N), np.uint8)
    label[4:12, 4:12, 4:12] = 2
    image = (label > 0).astype(np.float32)[None] * 2.0
    case = RealismCase("c", image, label, (1.0, 1.0, 1.0))
    # central differences across the step: every border voxel sees (2 - 0) / 2 = 1 per crossing axis;
    # averaged over the border voxels (face, edge and corner voxels cross 1, 2 or 3 axes)
    inner_faces, outer = 6 * 6 * 6, 6 * 8 * 8
    inner_edges, inner_corners = 12 * 6, 8
    expected = ((inner_faces + outer) * 1.0 + inner_edges * np.sqrt(2.0) + inner_corners * np.sqrt(3.0)) / (
        inner_faces + outer + inner_edges + inner_corners
    )
    assert boundary_sharpness(case)[0] == pytest.approx(expected)
    # spacing 2 mm halves the gradient per mm
    case2 = RealismCase("c", image, label, (2.0, 2.0, 2.0))
    assert boundary_sharpness(case2)[0] == pytest.approx(expected / 2)


@pytest.mark.filterwarnings("ignore:invalid value:RuntimeWarning")  # frd-score's covariance before its column drop
def test_frd_from_features_is_frd_scores_statistics_and_distance(monkeypatch: pytest.MonkeyPatch) -> None:
    # frd-score's own v1 statistics (NaN cases dropped, z-score on D1, non-finite columns dropped) on the same
    # feature vectors, its extraction replaced by the vectors, then its full-dimensional distance and log
    from frd_score import frd as frd_lib

    rng = np.random.default_rng(0)
    d = 300
    ref = rng.normal(size=(6, d)) * rng.uniform(0.5, 2.0, d)
    other = 0.3 + rng.normal(size=(5, d)) * rng.uniform(0.5, 2.0, d)
    ref[:, 7] = 1.0  # constant on the reference: infinite z-scores, the column is dropped
    other[2, 11] = np.nan  # a case with a NaN feature is dropped
    sets = {"ref": ref, "other": other}

    def extracted(files: str, **kwargs: object) -> tuple:
        return sets[files], [{f"f{i}": 0.0 for i in range(d)}], None

    monkeypatch.setattr(frd_lib, "compute_features", extracted)
    mu, sigma, _, _ = frd_lib.calculate_feature_statistics(
        ["ref", "other"], "zscore", frd_lib.V1_DEFAULT_NORM_RANGE, None, norm_ref=frd_lib.NORM_REF_D1
    )
    expected = np.log(frd_lib.calculate_frechet_distance(mu[0], sigma[0], mu[1], sigma[1]))
    got, reason = frd_from_features(list(ref), [*other, None])  # None: a case without features
    assert reason is None and got == pytest.approx(expected, abs=1e-4)
    assert np.exp(frd_from_features(list(ref), list(ref))[0]) == pytest.approx(0.0, abs=1e-6)  # identical: 0
    # fewer than two cases with features on a side: no distance, and why
    value, reason = frd_from_features(list(ref), [other[0], other[2]])
    assert value is None and "at least 2 cases" in reason


def _noise_tumour(case: RealismCase, rng: np.random.Generator) -> RealismCase:
    """The case with its tumour voxels replaced by white noise of the same mean and standard deviation."""
    image = case.image.copy()
    tumour = case.label > 0
    for ch in range(len(image)):
        vals = image[ch][tumour]
        image[ch][tumour] = rng.normal(vals.mean(), vals.std(), vals.size)
    return RealismCase(case.case_id, image, case.label, case.zooms)


@pytest.mark.slow
def test_frd_at_equal_set_sizes_misses_noise_tumours_that_the_c2st_sees() -> None:
    def first_channel(case: RealismCase) -> RealismCase:
        return RealismCase(case.case_id, case.image[:1], case.label, case.zooms)

    real = [first_channel(_case(f"r{i}", i)) for i in range(6)]
    clean = [first_channel(_case(f"s{i}", 10 + i)) for i in range(4)]
    noisy = [_noise_tumour(c, np.random.default_rng(k)) for k, c in enumerate(clean)]
    same = realism_scores(real, real, ["a"], n_splits=4, c2st=None)
    far = realism_scores(noisy, real, ["a"], n_splits=4)
    assert same["frd_package"] == "frd-score 1.0.1" and far["set_sizes"] == [3, 3]
    # the floor depends on the real set only
    assert same["frd"]["a"]["floor"] == pytest.approx(far["frd"]["a"]["floor"])
    assert far["summary"]["frd"] == far["frd"]["a"]["distance"] and far["frd"]["a"]["reason"] is None
    assert far["summary"]["frd_floor"] == pytest.approx(same["summary"]["frd_floor"])
    # white-noise tumours (same mean and spread as the phantoms'): at 3 cases against 3, with ~1000 radiomic
    # features z-scored on 3 reference cases, FRD stays below its real-vs-real floor, and the report says so;
    # the C2ST tells them from real at once, its real-vs-real null does not
    assert far["frd"]["a"]["distance"] < far["frd"]["a"]["floor"]
    assert any(line.startswith("FRD ") for line in below_floor(far))
    c2st = far["c2st"]
    assert c2st["auc"] > 0.95 and c2st["ci_low"] > 0.5 and c2st["n_cases_per_side"] == 4
    assert c2st["null"]["n_cases_per_side"] == 3 and c2st["null"]["ci_low"] < 0.5 < c2st["null"]["ci_high"]
    assert "the null uses 3 cases per side, the comparison 4" in c2st["note"]
    table = format_table(far)
    assert table.startswith("C2ST") and "FRD v1" in table and "is below its floor" in table


def test_frd_skips_a_tumour_too_small_to_measure(caplog: pytest.LogCaptureFixture) -> None:
    case = _case("tiny", 0)
    label = np.zeros_like(case.label)
    label[8, 8, 8:11] = 2  # 3 voxels in a row: one voxel after PyRadiomics resamples to 2 mm
    assert frd_case_features([RealismCase("tiny", case.image, label, case.zooms)]) == [[None, None]]
    assert "no radiomic features for case tiny" in caplog.text


def test_frd_disabled_or_missing_gives_none_with_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    real = [_case(f"r{i}", i) for i in range(2)]
    off = realism_scores(real, real, ["a", "b"], n_splits=2, frd=False, c2st=None)
    assert off["summary"]["frd"] is None and off["summary"]["frd_floor"] is None and off["frd_package"] is None
    assert off["frd"]["b"] == {"distance": None, "floor": None, "reason": "disabled (frd=False)"}
    monkeypatch.setitem(sys.modules, "frd_score", None)  # as if frd-score were not installed
    missing = realism_scores(real, real, ["a", "b"], n_splits=2, c2st=None)
    assert missing["summary"]["frd"] is None and "frd-score not importable" in missing["frd"]["a"]["reason"]
    assert "frd-score not importable" in format_table(missing)


def _write_datalist(root: Path, cases: list[RealismCase], name: str, labels: str = "internal") -> Path:
    items = []
    for c in cases:
        files = [str(save_nifti(c.image[ch], np.eye(4), root / f"{c.case_id}_{m}.nii.gz")) for ch, m in enumerate("ab")]
        lab = c.label.copy()
        if labels == "brats2021":
            lab[lab == 3] = 4
        items.append(
            {
                "case_id": c.case_id,
                "image": files,
                "label": str(save_nifti(lab, np.eye(4), root / f"{c.case_id}_seg.nii.gz")),
            }
        )
    return write_datalist(root / name, {"labels": labels, "modalities": ["a", "b"], "training": items})


def test_cli_prints_finite_numbers_and_writes_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from custom_components.cli import realism

    real = _write_datalist(tmp_path, [_case(f"r{i}", i) for i in range(4)], "real.json", labels="brats2021")
    syn = _write_datalist(tmp_path, [_case(f"s{i}", 10 + i, 1.3) for i in range(2)], "syn.json")
    null = _write_datalist(tmp_path, [_case(f"n{i}", 20 + i) for i in range(4)], "null.json")
    torch.manual_seed(0)
    net = build_segmentation_network("dynunet", 2, 4, (4, 8, 16, 32))
    ckpt = tmp_path / "model.pt"
    torch.save(net.state_dict(), ckpt)
    out = tmp_path / "realism.json"
    realism(
        str(syn),
        str(real),
        encoder=str(ckpt),
        out=str(out),
        filters="4,8,16,32",
        n_splits=3,
        null_real=str(null),
        n_perm=20,
    )
    printed = capsys.readouterr().out
    assert printed.startswith("C2ST") and "Frechet" in printed and "sharpness" in printed and "FRD v1" in printed
    result = json.loads(out.read_text())
    assert result["n_synthetic"] == 2 and result["n_real"] == 4 and result["set_sizes"] == [2, 2]
    for key in ("frechet", "frechet_floor", "wasserstein", "wasserstein_floor", "sharpness_ratio", "frd", "frd_floor"):
        assert np.isfinite(result["summary"][key]), key
    # the C2ST: 2 cases per side, its null on the 4 other real cases (2 against 2)
    c2st = result["c2st"]
    assert c2st["n_cases_per_side"] == 2 and c2st["null"]["n_cases_per_side"] == 2 and c2st["null_pool"] == "null_real"
    assert 0.0 <= c2st["ci_low"] <= c2st["auc"] <= c2st["ci_high"] <= 1.0 and 0.0 < c2st["p_value"] <= 1.0
    assert result["summary"]["c2st_auc"] == c2st["auc"] and result["null_real"] == str(null.resolve())
    assert set(c2st["per_class"]) == {"NCR", "ED", "ET"} and c2st["features"][0] == "a mean"
    realism(str(syn), str(real), out=str(out), n_splits=3, frd=False, c2st=False)
    assert json.loads(out.read_text())["c2st"] is None and "C2ST: not computed" in capsys.readouterr().out
    assert [len(result["frechet"][c]["per_level"]) for c in ("NCR", "ED", "ET")] == [3, 3, 3]
    # labels were mapped from BraTS 2021 (4 -> ET) on load
    cases, mods = load_cases(real, ["b"])
    assert mods == ["b"] and cases[0].image.shape[0] == 1 and set(np.unique(cases[0].label)) == {0, 1, 2, 3}
    with pytest.raises(SystemExit):
        realism(str(syn), str(tmp_path / "missing.json"))


def test_frd_features_are_extracted_once_per_case_content(monkeypatch: pytest.MonkeyPatch) -> None:
    """A case whose image, whole-tumour mask and voxel size equal one already measured (a copy, another id) reuses
    its vectors; another image, mask or voxel size is measured anew, and every call gives the same vectors. New
    cases are measured in forked processes when there are 2 CPUs or more, with the serial vectors."""
    from frd_score import frd as frd_lib

    from custom_components.data import parallel
    from custom_components.quality import realism

    usable_cpus = parallel.usable_cpus
    monkeypatch.setattr(parallel, "usable_cpus", lambda limit=8: 1)  # serial: the calls are counted here
    monkeypatch.setattr(realism, "_FRD_CACHE", {})
    calls = []
    extract = frd_lib.process_image_mask_pair
    monkeypatch.setattr(frd_lib, "process_image_mask_pair", lambda *a, **k: calls.append(a) or extract(*a, **k))
    case = _case("a", 0)
    n = len(case.image)
    first = frd_case_features([case])
    assert len(calls) == n and len(first[0]) == n
    copy = RealismCase("other id", case.image.copy(), case.label.copy(), case.zooms)
    again = frd_case_features([copy, case])
    assert len(calls) == n
    assert all(np.array_equal(a, b) for a, b in zip(first[0], again[0], strict=True))
    assert all(np.array_equal(a, b) for a, b in zip(first[0], again[1], strict=True))
    # ED relabelled ET: the same whole-tumour mask, so the same vectors (FRD reads label > 0)
    relabelled = np.where(case.label == 2, 3, case.label).astype(case.label.dtype)
    frd_case_features([RealismCase("a", case.image, relabelled, case.zooms)])
    assert len(calls) == n
    brighter = RealismCase("a", case.image + 0.1, case.label, case.zooms)
    coarser = RealismCase("a", case.image, case.label, (2.0, 2.0, 2.0))
    serial = frd_case_features([brighter, coarser])
    assert len(calls) == 3 * n
    monkeypatch.setattr(realism, "_FRD_CACHE", {})
    monkeypatch.setattr(parallel, "usable_cpus", usable_cpus)
    monkeypatch.setattr(parallel.os, "sched_getaffinity", lambda pid: {0, 1})
    forked = frd_case_features([brighter, coarser])
    assert len(calls) == 3 * n  # measured in the forked processes
    assert all(np.array_equal(a, b) for s, f in zip(serial, forked, strict=True) for a, b in zip(s, f, strict=True))
