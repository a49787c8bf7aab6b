"""Realism scores: Frechet and Wasserstein distances against hand-computed values, identical sets at 0 with
the real-vs-real floor, boundary sharpness ratios, the encoder features, and the `realism` CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from custom_components.data.atomic import save_nifti
from custom_components.data.datalist import write_datalist
from custom_components.networks import build_segmentation_network
from custom_components.realism import (
    RealismCase,
    boundary_sharpness,
    frechet_distance,
    load_cases,
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


def test_identical_sets_score_zero_and_floor_is_real_vs_real() -> None:
    real = [_case(f"r{i}", i) for i in range(4)]
    other = [_case(f"s{i}", 10 + i, scale=1.5) for i in range(3)]
    same = realism_scores(real, real, ["a", "b"], Identity(), levels=1, n_splits=5)
    diff = realism_scores(other, real, ["a", "b"], Identity(), levels=1, n_splits=5)
    for name in ("NCR", "ED", "ET"):
        assert same["frechet"][name]["distance"] == pytest.approx(0.0, abs=1e-6)
        for m in ("a", "b"):
            assert same["wasserstein"][name][m]["distance"] == 0.0
            # the floor depends on the real set only
            assert same["wasserstein"][name][m]["floor"] == diff["wasserstein"][name][m]["floor"]
            assert diff["wasserstein"][name][m]["distance"] > same["wasserstein"][name][m]["floor"]
        assert same["frechet"][name]["floor"] == pytest.approx(diff["frechet"][name]["floor"])
        assert same["frechet"][name]["floor"] > 0
        assert diff["frechet"][name]["distance"] > same["frechet"][name]["floor"]
    for m in ("a", "b"):
        assert same["sharpness"][m]["ratio"] == pytest.approx(1.0)
    scaled = [RealismCase(c.case_id, 1.5 * c.image, c.label, c.zooms) for c in real]
    ratio = realism_scores(scaled, real, ["a", "b"], None, n_splits=2)
    assert ratio["frechet"] == {}  # no encoder, no Frechet distance
    assert ratio["summary"]["sharpness_ratio"] == pytest.approx(1.5)  # gradients scale with intensity
    # the Frechet distance with the identity encoder is that of the per-case class means, by hand
    means_s = np.stack([[c.image[ch][c.label == 3].mean() for ch in range(2)] for c in other])
    means_r = np.stack([[c.image[ch][c.label == 3].mean() for ch in range(2)] for c in real])
    assert diff["frechet"]["ET"]["distance"] == pytest.approx(frechet_distance(means_s, means_r), rel=1e-5)
    # one real case: no floor
    single = realism_scores(other, real[:1], ["a", "b"], Identity(), levels=1)
    assert single["frechet"]["ET"]["floor"] is None and single["summary"]["wasserstein_floor"] is None
    assert np.isfinite(single["summary"]["frechet"])


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

    real = _write_datalist(tmp_path, [_case(f"r{i}", i) for i in range(3)], "real.json", labels="brats2021")
    syn = _write_datalist(tmp_path, [_case(f"s{i}", 10 + i, 1.3) for i in range(2)], "syn.json")
    torch.manual_seed(0)
    net = build_segmentation_network("dynunet", 2, 4, (4, 8, 16, 32))
    ckpt = tmp_path / "model.pt"
    torch.save(net.state_dict(), ckpt)
    out = tmp_path / "realism.json"
    realism(str(syn), str(real), encoder=str(ckpt), out=str(out), filters="4,8,16,32", n_splits=3)
    printed = capsys.readouterr().out
    assert "Frechet" in printed and "sharpness" in printed
    result = json.loads(out.read_text())
    assert result["n_synthetic"] == 2 and result["n_real"] == 3
    for key in ("frechet", "frechet_floor", "wasserstein", "wasserstein_floor", "sharpness_ratio"):
        assert np.isfinite(result["summary"][key]), key
    assert [len(result["frechet"][c]["per_level"]) for c in ("NCR", "ED", "ET")] == [3, 3, 3]
    # labels were mapped from BraTS 2021 (4 -> ET) on load
    cases, mods = load_cases(real, ["b"])
    assert mods == ["b"] and cases[0].image.shape[0] == 1 and set(np.unique(cases[0].label)) == {0, 1, 2, 3}
    with pytest.raises(SystemExit):
        realism(str(syn), str(tmp_path / "missing.json"))
