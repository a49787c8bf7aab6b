"""nnU-Net v2 export (``custom_components.export.nnunet``) and the ``export-nnunet`` command: layout, dataset.json,
label values, splits that never validate on synthetic cases, refusals that write nothing; and, where nnunetv2 is
installed, nnU-Net's own integrity check, planning and preprocessing on the export."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from custom_components.data.datalist import write_datalist
from custom_components.export.nnunet import (
    NNUNET_LABELS,
    evaluate_label_files,
    export_nnunet,
    internal_to_nnunet,
    make_splits,
    nnunet_to_internal,
    removed_per_fold,
)
from tests.bundle_utils import REPO

AFFINE = np.diag([2.0, 2.0, 2.0, 1.0])
# internal values of the tumour blocks: NCR, ED, ET
BLOCKS = {1: (slice(6, 8), slice(6, 8), slice(6, 8)), 2: (slice(3, 6), slice(3, 12), slice(3, 12)), 3: (8, 8, 8)}
EXPORT_VALUE = {1: 2, 2: 1, 3: 3}  # internal NCR -> 2, ED -> 1, ET -> 3 (nnU-Net's BraTS regions)
CONVENTION_VALUE = {"internal": {1: 1, 2: 2, 3: 3}, "brats2021": {1: 1, 2: 2, 3: 4}}
SOURCE = "source_cases"  # the provenance key every synthesis writes


def make_label(shape: tuple[int, ...], convention: str) -> np.ndarray:
    """A label with one block per tumour class, stored with ``convention``'s values."""
    label = np.zeros(shape, dtype=np.uint8)
    for cls, block in BLOCKS.items():
        label[block] = CONVENTION_VALUE[convention][cls]
    return label


def make_datalist(
    root: Path,
    ids: list[str],
    modalities: tuple[str, ...] = ("t1n", "t2f"),
    convention: str = "internal",
    synthetic: bool = False,
    shape: tuple[int, int, int] = (16, 16, 16),
    seed: int = 0,
    sources: list[list[str] | None] | None = None,
) -> Path:
    """A datalist of tiny cases: float32 images (modality m of case i holds values around 100 * (i + 1) + m) and a
    label with a block per tumour class. Synthetic case i names ``sources[i]`` as its ``source_cases`` (None: no
    such key; default: a case of another dataset, so that it trains every fold)."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    items = []
    for i, cid in enumerate(ids):
        images = []
        for m, mod in enumerate(modalities):
            f = root / f"{cid}_{mod}.nii.gz"
            data = (100.0 * (i + 1) + m + rng.random(shape)).astype(np.float32)
            nib.save(nib.Nifti1Image(data, AFFINE), str(f))
            images.append(str(f))
        label = root / f"{cid}_seg.nii.gz"
        nib.save(nib.Nifti1Image(make_label(shape, convention), AFFINE), str(label))
        item = {"case_id": cid, "image": images, "label": str(label)}
        if synthetic:
            derived = sources[i] if sources is not None else ["other_dataset_case"]
            item.update(synthetic=True, provenance={"method": "test", **({} if derived is None else {SOURCE: derived})})
        items.append(item)
    path = root / "datalist.json"
    write_datalist(path, {"labels": convention, "modalities": list(modalities), "training": items})
    return path


@pytest.fixture
def data(tmp_path: Path) -> dict[str, Path]:
    """Two real cases (BraTS 2021 labels: ET is 4) and two synthetic ones (internal labels) whose modalities are
    listed in the other order, so that the export must pick channels by name."""
    real = make_datalist(tmp_path / "real", ["case_a", "case_b"], convention="brats2021")
    syn = make_datalist(tmp_path / "syn", ["s0", "s1"], modalities=("t2f", "t1n"), synthetic=True, seed=1)
    return {"real": real, "syn": syn, "out": tmp_path / "nnUNet_raw"}


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_layout_and_dataset_json(data: dict[str, Path]) -> None:
    inputs = snapshot(data["real"].parent) | snapshot(data["syn"].parent)
    ds = export_nnunet(data["real"], data["out"], synthetic=[data["syn"]], dataset_id=7, name="Toy")
    assert ds == data["out"] / "Dataset007_Toy"
    assert sorted(p.name for p in data["out"].iterdir()) == ["Dataset007_Toy"]  # no temporary folder left
    cases = ["case_a", "case_b", "syn_s0", "syn_s1"]
    assert sorted(p.name for p in (ds / "imagesTr").iterdir()) == [f"{c}_{k:04d}.nii.gz" for c in cases for k in (0, 1)]
    assert sorted(p.name for p in (ds / "labelsTr").iterdir()) == [f"{c}.nii.gz" for c in cases]
    assert sorted(p.name for p in ds.iterdir()) == ["dataset.json", "imagesTr", "labelsTr", "splits_final.json"]
    # 3D .nii.gz channels are copied byte for byte; channel 0 is t1n in both datalists (chosen by name)
    root_r, root_s = data["real"].parent, data["syn"].parent
    assert (ds / "imagesTr" / "case_b_0000.nii.gz").read_bytes() == (root_r / "case_b_t1n.nii.gz").read_bytes()
    assert (ds / "imagesTr" / "case_b_0001.nii.gz").read_bytes() == (root_r / "case_b_t2f.nii.gz").read_bytes()
    assert (ds / "imagesTr" / "syn_s0_0000.nii.gz").read_bytes() == (root_s / "s0_t1n.nii.gz").read_bytes()
    assert (ds / "imagesTr" / "syn_s1_0001.nii.gz").read_bytes() == (root_s / "s1_t2f.nii.gz").read_bytes()

    meta = json.loads((ds / "dataset.json").read_text())
    assert meta["channel_names"] == {"0": "t1n", "1": "t2f"}
    assert meta["labels"] == {"background": 0, "whole tumor": [1, 2, 3], "tumor core": [2, 3], "enhancing tumor": [3]}
    assert meta["labels"] == NNUNET_LABELS
    assert meta["regions_class_order"] == [1, 2, 3]
    assert meta["numTraining"] == 4
    assert meta["file_ending"] == ".nii.gz"
    prov = meta["provenance"]
    assert prov["real"] == str(data["real"].resolve())
    assert prov["synthetic"] == [str(data["syn"].resolve())]
    assert prov["label_conventions"] == {
        str(data["real"].resolve()): "brats2021",
        str(data["syn"].resolve()): "internal",
    }
    assert prov["label_mapping"] == {"background": 0, "NCR": 2, "ED": 1, "ET": 3}
    assert (prov["num_real"], prov["num_synthetic"], prov["num_folds"]) == (2, 2, 2)
    assert prov["images"] == {"copied": 8, "gzipped": 0, "rewritten": 0}
    assert str(data["real"]) in meta["description"] and "syn_" in meta["description"]
    # inputs untouched
    assert snapshot(data["real"].parent) | snapshot(data["syn"].parent) == inputs


def test_label_values_mapped_from_each_convention(data: dict[str, Path]) -> None:
    ds = export_nnunet(data["real"], data["out"], synthetic=[data["syn"]])
    assert ds.name == "Dataset500_TumourSynthesis"
    for case in ("case_a", "syn_s1"):  # brats2021 (ET = 4) and internal (ET = 3) sources
        img = nib.load(str(ds / "labelsTr" / f"{case}.nii.gz"))
        lab = np.asanyarray(img.dataobj)
        assert lab.dtype == np.uint8 and lab.shape == (16, 16, 16)
        expected = np.zeros((16, 16, 16), dtype=np.uint8)
        for cls, block in BLOCKS.items():
            expected[block] = EXPORT_VALUE[cls]
        np.testing.assert_array_equal(lab, expected)
        assert sorted(np.unique(lab).tolist()) == [0, 1, 2, 3]
        ref = nib.load(str(ds / "imagesTr" / f"{case}_0000.nii.gz"))
        np.testing.assert_array_equal(img.affine, ref.affine)
    # nnU-Net's predictions map back to the internal convention
    internal = np.array([0, 1, 2, 3, 3, 2])
    np.testing.assert_array_equal(internal_to_nnunet(internal), [0, 2, 1, 3, 3, 1])
    np.testing.assert_array_equal(nnunet_to_internal(internal_to_nnunet(internal)), internal)
    with pytest.raises(ValueError, match=r"\[4\]"):
        nnunet_to_internal(np.array([0, 4]))


def test_splits_never_validate_on_synthetic(tmp_path: Path) -> None:
    real = make_datalist(tmp_path / "real", ["r0", "r1", "r2"])
    syn = make_datalist(tmp_path / "syn", ["a", "b"], synthetic=True)
    syn2 = make_datalist(tmp_path / "syn2", ["c"], synthetic=True)
    ds = export_nnunet(real, tmp_path / "out", synthetic=[syn, syn2])
    splits = json.loads((ds / "splits_final.json").read_text())
    assert len(splits) == 3  # fewer real cases than 5
    synthetic = {"syn_a", "syn_b", "syn_c"}
    assert sorted(v for s in splits for v in s["val"]) == ["r0", "r1", "r2"]  # every real case validated once
    for s in splits:
        assert not synthetic & set(s["val"])
        assert synthetic <= set(s["train"])
        assert not set(s["train"]) & set(s["val"])
        assert set(s["train"]) | set(s["val"]) == synthetic | {"r0", "r1", "r2"}
    # five folds at most, deterministic, real-only validation
    ids = [f"r{i}" for i in range(12)]
    folds = make_splits(ids, ["syn_x"])
    assert len(folds) == 5 and folds == make_splits(list(reversed(ids)), ["syn_x"])
    assert sorted(len(f["val"]) for f in folds) == [2, 2, 2, 3, 3]
    assert all("syn_x" in f["train"] and "syn_x" not in f["val"] for f in folds)
    assert make_splits([], ["syn_x"]) == [] and make_splits(["r0"]) == []
    assert make_splits(["r0"], ["syn_x"]) == [{"train": ["syn_x"], "val": ["r0"]}]


# synthetic case -> the real cases its provenance names, one per style of synthesis
DERIVED = {
    "syn_dtss_r0": ["r0"],  # DTSS: the target case
    "syn_dtss2_r0": ["r0"],
    "syn_carvemix_r0_r1": ["r0", "r1"],  # CarveMix: target and lesion source
    "syn_tfaug_r2": ["r2"],  # TF-Aug / TF: the real case of its mask (not the healthy scan)
    "syn_tfaug_r1_r2": ["r1", "r2"],  # TF-Aug / TF: a mask combined from two real cases
    "syn_external": ["ext7"],  # derived from a case outside this export: trains every fold
}


def test_folds_never_train_on_cases_derived_from_their_validation_cases() -> None:
    real = ["r0", "r1", "r2"]
    splits = make_splits(real, list(DERIVED), derived_from=DERIVED)
    assert sorted(f["val"][0] for f in splits) == real and all(len(f["val"]) == 1 for f in splits)
    for fold in splits:
        val = set(fold["val"])
        leaked = [s for s in fold["train"] if val & set(DERIVED.get(s, []))]
        assert not leaked, f"fold validating on {val} trains on {leaked}"
        # nothing else is left out: the other real cases and every synthetic case not derived from val
        assert set(fold["train"]) == (set(real) - val) | {s for s, src in DERIVED.items() if not val & set(src)}
    # by hand: r0 is the source of 3 cases (2 DTSS, 1 CarveMix), r1 of 2 (CarveMix, combined mask), r2 of 2
    removed = dict(zip((f["val"][0] for f in splits), removed_per_fold(splits, list(DERIVED)), strict=True))
    assert removed == {"r0": 3, "r1": 2, "r2": 2}
    # the same folds as without provenance, only the training lists are smaller; no provenance: nothing removed
    plain = make_splits(real, list(DERIVED))
    assert [f["val"] for f in plain] == [f["val"] for f in splits]
    assert removed_per_fold(plain, list(DERIVED)) == [0, 0, 0]
    # one real case whose only synthetic case is derived from it: no fold has a training case
    assert make_splits(["r0"], ["syn_a"], derived_from={"syn_a": ["r0"]}) == []


def test_export_leaves_derived_cases_out_of_their_folds(tmp_path: Path) -> None:
    real = make_datalist(tmp_path / "real", ["r0", "r1", "r2"])
    syn = make_datalist(
        tmp_path / "syn",
        ["d0", "c01", "t12", "x"],
        synthetic=True,
        sources=[["r0"], ["r0", "r1"], ["r1", "r2"], ["ext7"]],
    )
    lines: list[str] = []
    ds = export_nnunet(real, tmp_path / "out", synthetic=[syn], log=lines.append)
    splits = json.loads((ds / "splits_final.json").read_text())
    train_of = {f["val"][0]: set(f["train"]) for f in splits}
    assert train_of == {
        "r0": {"r1", "r2", "syn_t12", "syn_x"},
        "r1": {"r0", "r2", "syn_d0", "syn_x"},
        "r2": {"r0", "r1", "syn_d0", "syn_c01", "syn_x"},
    }
    removed = json.loads((ds / "dataset.json").read_text())["provenance"]["synthetic_removed_per_fold"]
    assert removed == [4 - (len(f["train"]) - 2) for f in splits] and sorted(removed) == [1, 2, 2]
    assert (
        len(lines) == 1
        and f"{removed} of 4 per fold" in lines[0]
        and "1 synthetic case(s) derived from none" in lines[0]
    )


def test_tf_aug_case_and_its_refinement_stay_out_of_their_mask_cases_folds(tmp_path: Path) -> None:
    """TF-Aug's writer names the real cases of its (combined) mask, not the healthy scan; a TF-GAN / Pix2Pix case
    keeps that provenance as ``parent``, so both leave the folds that validate on those cases."""
    from monai.transforms import Compose

    from custom_components.networks import ClasswiseIntensity
    from custom_components.synthesis.tf_aug import TFAugCaseWriter, plan_cases

    real = make_datalist(tmp_path / "real", ["r0", "r1", "r2"])
    labels = {i["case_id"]: i["label"] for i in json.loads(real.read_text())["training"]}
    healthy = [{"case_id": "h0", "image": [str(tmp_path / "h0_t1n.nii")], "brain_mask": str(tmp_path / "h0_bm.nii")}]
    writer = TFAugCaseWriter(
        plan_cases(healthy, 2), tmp_path / "tfaug", ClasswiseIntensity(1), Compose([]), qc_cases=0, real_datalist=real
    )
    label = make_label((16, 16, 16), "internal")
    volumes = (np.zeros((1, 16, 16, 16), np.float32), label, label > 0, AFFINE)
    masks = {"components": [{"source": str(real.parent / labels[c])} for c in ("r2", "r0", "r2")]}
    item = writer.write_case(writer.cases[0], *volumes, params=masks)
    assert item["provenance"][SOURCE] == ["r2", "r0"] and item["provenance"]["healthy_case_id"] == "h0"
    with pytest.raises(ValueError, match=r"h0_t1n\.nii: TF-Aug source mask is the label of none of the 3"):
        writer.write_case(writer.cases[1], *volumes, params={"components": [{"source": healthy[0]["image"][0]}]})
    assert not (tmp_path / "tfaug" / writer.cases[1]["case_id"]).exists()  # checked before any file is written
    refined = {**item, "case_id": "refined", "provenance": {"stage": "tf_gan", "parent": item["provenance"]}}
    syn = write_datalist(
        tmp_path / "syn.json", {"labels": "internal", "modalities": ["t1n"], "training": [item, refined]}
    )
    ds = export_nnunet(real, tmp_path / "out", synthetic=[syn], modalities=["t1n"])
    train_of = {f["val"][0]: set(f["train"]) for f in json.loads((ds / "splits_final.json").read_text())}
    both = {f"syn_{item['case_id']}", "syn_refined"}
    assert train_of == {"r0": {"r1", "r2"}, "r1": {"r0", "r2", *both}, "r2": {"r0", "r1"}}


def test_synthetic_case_without_sources_refused_unless_underived_ok(tmp_path: Path) -> None:
    real = make_datalist(tmp_path / "real", ["r0", "r1"])
    syn = make_datalist(tmp_path / "syn", ["s0", "s1"], synthetic=True, sources=[["r0"], None])
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=rf"{syn}: synthetic case 's1' does not name the real cases.*underived_ok"):
        export_nnunet(real, out, synthetic=[syn])
    assert not out.exists()
    ds = export_nnunet(real, out, synthetic=[syn], underived_ok=True)
    splits = json.loads((ds / "splits_final.json").read_text())
    train_of = {f["val"][0]: set(f["train"]) for f in splits}
    # s1 (no sources) trains every fold; s0 still stays out of the fold that validates on r0
    assert train_of == {"r0": {"r1", "syn_s1"}, "r1": {"r0", "syn_s0", "syn_s1"}}
    assert json.loads((ds / "dataset.json").read_text())["provenance"]["underived_ok"] is True
    # without real cases there are no folds, so no provenance is needed; a malformed one is refused even so
    export_nnunet(None, out, synthetic=[syn], dataset_id=501)
    bad = json.loads(syn.read_text())
    bad["training"][0]["provenance"][SOURCE] = "r0"
    syn.write_text(json.dumps(bad))
    with pytest.raises(ValueError, match=r"synthetic case 's0'.*got 'r0'"):
        export_nnunet(real, out, synthetic=[syn], dataset_id=502, underived_ok=True)


def test_synthetic_only_export_has_no_splits(data: dict[str, Path]) -> None:
    ds = export_nnunet(None, data["out"], synthetic=[data["syn"]], dataset_id=501)
    meta = json.loads((ds / "dataset.json").read_text())
    assert meta["channel_names"] == {"0": "t2f", "1": "t1n"}  # the synthetic datalist's own order
    assert meta["numTraining"] == 2 and meta["provenance"]["real"] is None
    assert not (ds / "splits_final.json").exists()


def test_existing_dataset_refused_unless_overwrite(data: dict[str, Path], tmp_path: Path) -> None:
    ds = export_nnunet(data["real"], data["out"])
    before = snapshot(ds)
    with pytest.raises(FileExistsError, match="Dataset500_TumourSynthesis"):
        export_nnunet(data["real"], data["out"], synthetic=[data["syn"]])
    assert snapshot(ds) == before
    # another name with the same id would make nnU-Net's id lookup ambiguous
    with pytest.raises(FileExistsError, match="Dataset500_TumourSynthesis"):
        export_nnunet(data["real"], data["out"], name="Other")
    assert sorted(p.name for p in data["out"].iterdir()) == ["Dataset500_TumourSynthesis"]
    ds2 = export_nnunet(data["real"], data["out"], synthetic=[data["syn"]], overwrite=True)
    assert ds2 == ds and json.loads((ds / "dataset.json").read_text())["numTraining"] == 4
    assert sorted(p.name for p in data["out"].iterdir()) == ["Dataset500_TumourSynthesis"]


def test_mismatched_shape_names_file_and_writes_nothing(data: dict[str, Path]) -> None:
    bad = data["syn"].parent / "s1_seg.nii.gz"
    nib.save(nib.Nifti1Image(make_label((16, 16, 15), "internal"), AFFINE), str(bad))
    with pytest.raises(ValueError, match=rf"{bad}: label shape \(16, 16, 15\) differs"):
        export_nnunet(data["real"], data["out"], synthetic=[data["syn"]])
    assert not data["out"].exists()


def test_bad_labels_and_duplicate_ids_refused(data: dict[str, Path], tmp_path: Path) -> None:
    # the same synthetic datalist twice: every identifier twice
    with pytest.raises(ValueError, match="'syn_s0'.*unique"):
        export_nnunet(data["real"], data["out"], synthetic=[data["syn"], data["syn"]])
    # a label value outside the declared convention (3 is not a BraTS 2021 value)
    real = make_datalist(tmp_path / "r3", ["r"], convention="internal")
    text = json.loads(real.read_text())
    text["labels"] = "brats2021"
    real.write_text(json.dumps(text))
    with pytest.raises(ValueError, match=r"r_seg\.nii\.gz: label values \[3\]"):
        export_nnunet(real, data["out"])
    # a synthetic case passed as real would be validated on
    with pytest.raises(ValueError, match="marked synthetic"):
        export_nnunet(data["syn"], data["out"])
    # channels that the other datalist does not have
    other = make_datalist(tmp_path / "other", ["o"], modalities=("t1n", "t1c"), synthetic=True)
    with pytest.raises(ValueError, match=r"modalities \['t2f'\] not in"):
        export_nnunet(data["real"], data["out"], synthetic=[other])
    with pytest.raises(ValueError, match="dataset_id"):
        export_nnunet(data["real"], data["out"], dataset_id=1000)
    assert not data["out"].exists()


def test_nii_and_single_volume_4d_channels_become_3d_gz(tmp_path: Path) -> None:
    real = make_datalist(tmp_path / "real", ["a", "b"])
    items = json.loads(real.read_text())
    root = tmp_path / "real"
    sources = {}
    for case, kind in (("a", "nii"), ("b", "4d")):
        files = []
        for mod in ("t1n", "t2f"):
            data = np.asanyarray(nib.load(str(root / f"{case}_{mod}.nii.gz")).dataobj)
            sources[case, mod] = data
            name = f"{case}_{mod}.nii" if kind == "nii" else f"{case}_{mod}_4d.nii.gz"
            nib.save(nib.Nifti1Image(data if kind == "nii" else data[..., None], AFFINE), str(root / name))
            files.append(name)
        items["training"][0 if case == "a" else 1]["image"] = files
    real.write_text(json.dumps(items))
    ds = export_nnunet(real, tmp_path / "out")
    for case in ("a", "b"):
        for k, mod in enumerate(("t1n", "t2f")):
            img = nib.load(str(ds / "imagesTr" / f"{case}_{k:04d}.nii.gz"))
            assert img.shape == (16, 16, 16)
            np.testing.assert_array_equal(np.asanyarray(img.dataobj), sources[case, mod])
            np.testing.assert_array_equal(img.affine, AFFINE)
    how = json.loads((ds / "dataset.json").read_text())["provenance"]["images"]
    assert how == {"copied": 0, "gzipped": 2, "rewritten": 2}


def cli(*args: str, command: str = "export-nnunet") -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "custom_components", command, *args]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.slow
def test_cli_export_nnunet(data: dict[str, Path]) -> None:
    args = ["--real", str(data["real"]), "--synthetic", str(data["syn"]), "--out", str(data["out"])]
    done = cli(*args, "--dataset_id", "42", "--name", "Cli")
    assert done.returncode == 0, done.stderr
    ds = data["out"] / "Dataset042_Cli"
    assert done.stdout.strip() == str(ds)
    assert json.loads((ds / "dataset.json").read_text())["numTraining"] == 4
    again = cli(*args, "--dataset_id", "42", "--name", "Cli")
    assert again.returncode == 2 and "Dataset042_Cli: exists" in again.stderr and not again.stdout
    assert cli(*args, "--dataset_id", "42", "--name", "Cli", "--overwrite").returncode == 0
    missing = cli("--real", str(data["real"].parent / "nope.json"), "--out", str(data["out"]))
    assert missing.returncode == 2 and "nope.json" in missing.stderr
    # a synthetic case that does not name its sources: refused, naming the datalist; accepted with --underived_ok
    bare = make_datalist(data["syn"].parent.parent / "bare", ["b0"], synthetic=True, sources=[None])
    args = ["--real", str(data["real"]), "--synthetic", str(bare), "--out", str(data["out"]), "--dataset_id", "43"]
    refused = cli(*args)
    assert refused.returncode == 2 and f"{bare}: synthetic case 'b0'" in refused.stderr
    accepted = cli(*args, "--underived_ok")
    assert accepted.returncode == 0, accepted.stderr
    assert accepted.stdout.strip() == str(data["out"] / "Dataset043_TumourSynthesis")
    assert "[0, 0] of 1 per fold" in accepted.stderr
    # the export's own labels scored as nnU-Net predictions: perfect
    metrics = data["out"] / "metrics.json"
    args = ["--pred", str(ds / "labelsTr"), "--datalist", str(data["real"]), "--section", "training"]
    done = cli(*args, "--out", str(metrics), command="evaluate-labels")
    assert done.returncode == 0, done.stderr
    assert "ET: Dice 1.000  HD95 0.00 mm" in done.stdout
    assert json.loads(metrics.read_text())["mean"]["dice_WT"] == 1.0
    wrong = cli(*args, "--pred_labels", "brats2021", command="evaluate-labels")  # 3 is not a BraTS 2021 value
    assert wrong.returncode == 2 and "case_a.nii.gz: label values [3]" in wrong.stderr


def test_evaluate_label_files_scores_nnunet_predictions(data: dict[str, Path], tmp_path: Path) -> None:
    ds = export_nnunet(data["real"], data["out"])
    pred = tmp_path / "pred"
    pred.mkdir()
    # case_a: the export's own label (a perfect nnU-Net prediction); case_b: the ET block predicted as oedema
    (pred / "case_a.nii.gz").write_bytes((ds / "labelsTr" / "case_a.nii.gz").read_bytes())
    img = nib.load(str(ds / "labelsTr" / "case_b.nii.gz"))
    wrong = np.asanyarray(img.dataobj).copy()
    wrong[wrong == 3] = 1
    nib.save(nib.Nifti1Image(wrong, img.affine, img.header), str(pred / "case_b.nii.gz"))
    out = tmp_path / "metrics.json"
    result = evaluate_label_files(pred, data["real"], section="training", out=out)
    assert json.loads(out.read_text()) == result
    a, b = result["cases"]["case_a"], result["cases"]["case_b"]
    assert (a["dice_ET"], a["dice_TC"], a["dice_WT"], a["hd95_ET"], a["hd95_WT"]) == (1.0, 1.0, 1.0, 0.0, 0.0)
    assert b["dice_ET"] == 0.0 and b["hd95_ET"] == 373.13  # ET missed: the BraTS empty-region values
    assert b["dice_WT"] == 1.0
    assert b["dice_TC"] == pytest.approx(2 * 8 / 17)  # TC: the 8 NCR voxels of 8 NCR + 1 ET
    assert result["mean"]["dice_ET"] == 0.5 and result["pred_labels"] == "nnunet"
    # a prediction missing, or off the label's grid: named, nothing written
    (pred / "case_b.nii.gz").unlink()
    with pytest.raises(FileNotFoundError, match=r"case_b\.nii\.gz: no prediction for case case_b"):
        evaluate_label_files(pred, data["real"], section="training", out=tmp_path / "m2.json")
    nib.save(nib.Nifti1Image(wrong[:15], img.affine), str(pred / "case_b.nii.gz"))
    with pytest.raises(ValueError, match=r"case_b\.nii\.gz: prediction grid \(15, 16, 16\) differs"):
        evaluate_label_files(pred, data["real"], section="training", out=tmp_path / "m2.json")
    assert not (tmp_path / "m2.json").exists()


NNUNET = importlib.util.find_spec("nnunetv2") is not None


@pytest.mark.slow
@pytest.mark.skipif(not NNUNET, reason="nnunetv2 is not installed (pip install -e '.[nnunet]')")
def test_nnunet_verifies_plans_and_preprocesses_export(tmp_path: Path) -> None:
    """nnU-Net's own dataset check, planner and 3d_fullres preprocessing accept the export (32^3, 4 + 2 cases)."""
    real = make_datalist(tmp_path / "real", [f"r{i}" for i in range(4)], convention="brats2021", shape=(32, 32, 32))
    syn = make_datalist(tmp_path / "syn", ["s0", "s1"], synthetic=True, shape=(32, 32, 32), seed=2)
    raw, pre, res = tmp_path / "raw", tmp_path / "preprocessed", tmp_path / "results"
    ds = export_nnunet(real, raw, synthetic=[syn], dataset_id=987, name="Tiny")
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "nnUNet_raw": str(raw),
        "nnUNet_preprocessed": str(pre),
        "nnUNet_results": str(res),
        "nnUNet_n_proc_DA": "1",
    }
    script = (
        "import sys\n"
        "from nnunetv2.experiment_planning.verify_dataset_integrity import verify_dataset_integrity\n"
        "verify_dataset_integrity(sys.argv[1], num_processes=1)\n"
        "from nnunetv2.experiment_planning.plan_and_preprocess_entrypoints import plan_and_preprocess_entry\n"
        "sys.argv = ['nnUNetv2_plan_and_preprocess', '-d', '987', '-c', '3d_fullres', '-np', '1']\n"
        "plan_and_preprocess_entry()\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(ds)], env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = pre / "Dataset987_Tiny"
    plans = json.loads((out / "nnUNetPlans.json").read_text())
    assert "3d_fullres" in plans["configurations"]
    assert json.loads((out / "dataset.json").read_text())["labels"] == NNUNET_LABELS
    # our splits reached the preprocessed folder, where nnU-Net's trainer reads them
    assert json.loads((out / "splits_final.json").read_text()) == json.loads((ds / "splits_final.json").read_text())
    cases = sorted(p.name.split(".")[0] for p in (out / "nnUNetPlans_3d_fullres").iterdir() if p.suffix == ".pkl")
    assert cases == ["r0", "r1", "r2", "r3", "syn_s0", "syn_s1"]
