"""``fabricate``: synthetic datasets by DTSS / CarveMix (offline) and TF (the pipeline's stages) on tiny demo data."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import time
from pathlib import Path
from types import SimpleNamespace

import nibabel as nib
import numpy as np
import pytest
import yaml

from custom_components.data.datalist import read_datalist, write_datalist
from custom_components.data.demo import make_demo_data
from custom_components.data.loader import load_datalist
from custom_components.data.validation import validate_datalist
from custom_components.handlers import EpochMetricsWriter, read_epoch_metrics
from custom_components.pipeline import fabricate as fab
from custom_components.pipeline.experiment import Experiment
from custom_components.pipeline.summary import _montages
from custom_components.synthesis.methods import MAX_PER_SOURCE, get_method
from custom_components.synthesis.offline import OfflineCaseWriter, plan_offline
from custom_components.synthesis.tf_aug import case_seed, mask_source_cases


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> dict[str, Path]:
    """4 mm demo data: 4 real training cases, 2 held out, 1 healthy scan."""
    root = tmp_path_factory.mktemp("fabricate_demo")
    return make_demo_data(root, n_healthy=1, n_tumour=6, spacing=4.0, seed=0, verbose=False)


def _run(method: str, n: int, real: Path, out: Path, **kwargs) -> Path:
    lines: list[str] = []
    kwargs.setdefault("frd", False)
    return fab.fabricate(method, n, real, out, log=lines.append, stream=io.StringIO(), **kwargs)


def _snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    """Every file under ``folder``: content and mtime."""
    return {
        str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns)
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _case_files(out: Path) -> dict[str, bytes]:
    """Case folders and montages (not the realism / gallery page, which name the output folder)."""
    return {
        str(p.relative_to(out)): p.read_bytes()
        for p in sorted(out.rglob("*"))
        if p.is_file() and (re.match(r"(dtss|carvemix)-\d+", p.relative_to(out).parts[0]) or p.suffix == ".png")
    }


def test_limits() -> None:
    assert get_method("carvemix").max_cases(4) == 12
    assert get_method("dtss").max_cases(4) == 4 * MAX_PER_SOURCE
    assert get_method("tf").max_cases(8, n_healthy=3) == 3 * MAX_PER_SOURCE
    assert get_method("pix2pix").max_cases(8, n_healthy=3000) == 99999
    items = [{"case_id": f"c{i}", "image": [f"c{i}.nii"], "label": f"c{i}_seg.nii"} for i in range(4)]
    pairs = [(c["target"]["case_id"], c["source"]["case_id"]) for c in plan_offline("carvemix", items, 12, seed=3)]
    assert len(set(pairs)) == 12 and all(t != s for t, s in pairs)
    # case i does not depend on how many cases are asked for
    assert plan_offline("carvemix", items, 5, seed=3) == plan_offline("carvemix", items, 12, seed=3)[:5]
    dtss = plan_offline("dtss", items, 6, seed=1)
    assert [c["target"]["case_id"] for c in dtss] == ["c0", "c1", "c2", "c3", "c0", "c1"]
    assert [c["seed"] for c in dtss] == [case_seed(1, i) for i in range(6)]
    with pytest.raises(ValueError, match="at most|1 .. 12"):
        plan_offline("carvemix", items, 13)


def test_tf_aug_source_cases_are_the_real_mask_cases(tmp_path) -> None:
    """TF-Aug / TF provenance: the real cases whose labels were its masks, each once, however the path is spelt."""
    real = [
        {"case_id": f"c{i}", "image": [f"c{i}.nii"], "label": str(tmp_path / "r" / f"c{i}_seg.nii")} for i in range(3)
    ]
    (tmp_path / "r").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "r")
    masks = [
        str(tmp_path / "r" / "c2_seg.nii"),
        str(tmp_path / "link" / "c0_seg.nii"),
        str(tmp_path / "r/../r/c2_seg.nii"),
    ]
    assert mask_source_cases(masks[:1], real) == ["c2"]
    assert mask_source_cases(masks, real) == ["c2", "c0"]  # a combined mask names all its cases, each once
    with pytest.raises(ValueError, match=r"healthy_t1n\.nii: TF-Aug source mask is the label of none of the 3"):
        mask_source_cases([str(tmp_path / "healthy_t1n.nii")], real)


def test_dtss_rerun_with_larger_n_adds_only_the_missing_cases(demo, tmp_path) -> None:
    out = tmp_path / "dtss"
    datalist = _run("dtss", 3, demo["tumour"], out)
    assert datalist == out / "datalist.json"
    first = _snapshot(out / "dtss-00000") | {
        f"gallery/{p.name}": (p.read_bytes(), p.stat().st_mtime_ns) for p in (out / "gallery").glob("*.png")
    }
    before = {p.name for p in out.iterdir() if p.is_dir() and p.name.startswith("dtss-")}
    assert before == {"dtss-00000", "dtss-00001", "dtss-00002"}
    kept = {k: v for k, v in _snapshot(out).items() if k.startswith(("dtss-", "gallery/dtss"))}

    _run("dtss", 5, demo["tumour"], out)
    after = {p.name for p in out.iterdir() if p.is_dir() and p.name.startswith("dtss-")}
    assert after - before == {"dtss-00003", "dtss-00004"}
    now = _snapshot(out)
    for name, (content, mtime) in kept.items():  # the first 3 cases: byte-identical, not rewritten
        assert now[name] == (content, mtime), name
    assert first  # (the montages are part of what is kept)

    data = read_datalist(out / "datalist.json")
    assert data["labels"] == "internal" and data["modalities"] == ["t1n", "t1c", "t2w", "t2f"]
    items = data["training"]
    assert [i["case_id"] for i in items] == [f"dtss-{i:05d}" for i in range(5)]
    real = read_datalist(demo["tumour"])["training"]
    for i, item in enumerate(items):
        prov = item["synthetic"] and item["provenance"]
        assert prov["method"] == "dtss" and prov["case_index"] == i and prov["seed"] == case_seed(0, i)
        assert prov["source_cases"] == [real[i % len(real)]["case_id"]]
        assert prov["parameters"]["transform"] == "DeformationTumorSynthesisd"
        label = np.asarray(nib.load(item["label"]).dataobj)
        src = np.asarray(nib.load(real[i % len(real)]["label"]).dataobj)
        assert set(np.unique(label)) <= {0, 1, 2, 3} and (label > 0).sum() >= (src > 0).sum()  # DTSS only grows
        image = np.asarray(nib.load(item["image"][0]).dataobj)
        assert image.dtype == np.float32 and image.min() >= -1.0 and image.max() <= 1.0
    assert validate_datalist(out / "datalist.json") == []
    manifest = json.loads((out / "fabricate.json").read_text())
    assert manifest["method"] == "dtss" and manifest["seed"] == 0 and manifest["n"] == 5
    assert manifest["real"]["path"] == str(Path(demo["tumour"]).resolve()) and len(manifest["real"]["sha256"]) == 64
    # the gallery page shows every case's montage, linked relative to the page
    page = out / "gallery" / "index.html"
    sources = re.findall(r"<img[^>]*\ssrc='([^']+)'", page.read_text())
    assert sources == [f"dtss-{i:05d}.png" for i in range(5)]
    assert all((page.parent / s).is_file() for s in sources)
    realism = json.loads((out / "realism.json").read_text())
    assert realism["n_synthetic"] == 5 and realism["n_real"] == 2 and realism["encoder"] is None


@pytest.mark.slow
def test_interrupted_run_finishes_with_identical_results(demo, tmp_path, monkeypatch) -> None:
    whole = tmp_path / "whole"
    _run("dtss", 4, demo["tumour"], whole)

    out = tmp_path / "interrupted"
    made = []
    original = OfflineCaseWriter.make

    def make_then_stop(self, case):
        if len(made) == 2:
            raise KeyboardInterrupt
        made.append(case["case_id"])
        return original(self, case)

    monkeypatch.setattr(OfflineCaseWriter, "make", make_then_stop)
    with pytest.raises(KeyboardInterrupt):
        _run("dtss", 4, demo["tumour"], out)
    # the datalist lists the complete cases; nothing half-written is left
    assert [i["case_id"] for i in read_datalist(out / "datalist.json")["training"]] == ["dtss-00000", "dtss-00001"]
    assert not [p for p in out.rglob(".*") if p.is_file()]
    monkeypatch.setattr(OfflineCaseWriter, "make", original)
    _run("dtss", 4, demo["tumour"], out)
    assert _case_files(out) == _case_files(whole)
    assert (out / "datalist.json").read_bytes() == (whole / "datalist.json").read_bytes()


def test_carvemix_small(demo, tmp_path) -> None:
    out = tmp_path / "carvemix"
    _run("carvemix", 2, demo["tumour"], out)
    kept = {k: v for k, v in _snapshot(out).items() if k.startswith(("carvemix-", "gallery/carvemix"))}
    _run("carvemix", 3, demo["tumour"], out)
    now = _snapshot(out)
    assert all(now[k] == v for k, v in kept.items())
    items = read_datalist(out / "datalist.json")["training"]
    assert [i["case_id"] for i in items] == ["carvemix-00000", "carvemix-00001", "carvemix-00002"]
    pairs = [tuple(i["provenance"]["source_cases"]) for i in items]
    assert len(set(pairs)) == 3 and all(t != s for t, s in pairs)
    for item in items:  # outside the carved region the target is unchanged
        target = next(
            r
            for r in read_datalist(demo["tumour"])["training"]
            if r["case_id"] == item["provenance"]["source_cases"][0]
        )
        lab, tlab = (np.asarray(nib.load(f).dataobj) for f in (item["label"], target["label"]))
        assert (lab > 0).any() and (lab != tlab).any()
    assert validate_datalist(out / "datalist.json") == []


def test_too_many_cases_is_refused_before_any_output(demo, tmp_path) -> None:
    out = tmp_path / "too_many"
    with pytest.raises(fab.FabricateError, match=r"--n 13 is more than carvemix can make: at most 12 \(4 real"):
        _run("carvemix", 13, demo["tumour"], out)
    with pytest.raises(fab.FabricateError, match=f"at most {4 * MAX_PER_SOURCE}"):
        _run("dtss", 4 * MAX_PER_SOURCE + 1, demo["tumour"], out)
    assert not out.exists()


def test_real_case_without_tumour_names_its_label(demo, tmp_path) -> None:
    data = read_datalist(demo["tumour"])
    item = data["training"][1]
    ref = nib.load(item["label"])
    empty = tmp_path / "empty_seg.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros(ref.shape, np.uint8), ref.affine), str(empty))
    data["training"][1] = {**item, "label": str(empty)}
    real = write_datalist(tmp_path / "real.json", data)
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=re.escape(str(empty))) as err:
        _run("dtss", 2, real, out)
    assert "tumour" in str(err.value).splitlines()[-1]
    assert not out.exists()


def test_output_folder_holding_another_dataset_is_refused(demo, tmp_path) -> None:
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("someone else's data\n")
    before = _snapshot(other)
    with pytest.raises(fab.FabricateError, match=re.escape(str(other / "notes.txt"))):
        _run("dtss", 1, demo["tumour"], other)
    assert _snapshot(other) == before

    out = tmp_path / "dtss"
    _run("dtss", 1, demo["tumour"], out)
    before = _snapshot(out)
    for method, kwargs in (("carvemix", {}), ("dtss", {"seed": 1})):
        with pytest.raises(fab.FabricateError, match=re.escape(str(out / "fabricate.json"))) as err:
            _run(method, 1, demo["tumour"], out, **kwargs)
        assert "--overwrite" in str(err.value)
    assert _snapshot(out) == before
    # --overwrite replaces this command's outputs only
    (out / "keep.txt").write_text("kept\n")
    _run("carvemix", 1, demo["tumour"], out, overwrite=True)
    names = {p.name for p in out.iterdir()}
    assert "dtss-00000" not in names and {"carvemix-00000", "keep.txt", "fabricate.json"} <= names
    assert json.loads((out / "fabricate.json").read_text())["method"] == "carvemix"


def test_progress_lines_and_bar() -> None:
    lines: list[str] = []
    with fab.Progress(3, "case", lines.append, io.StringIO()) as p:
        for k in range(3):
            p.step(f"c{k}")
    assert [line.split(" ...")[0] for line in lines] == ["case 1/3 c0", "case 2/3 c1", "case 3/3 c2"]
    assert all("ETA" in line for line in lines)

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    term, lines = Terminal(), []
    with fab.Progress(2, "case", lines.append, term) as p:
        p.step("a")
        p.step("b")
    assert not lines and "2/2" in term.getvalue()


def test_epoch_watcher_reports_training_stages(tmp_path) -> None:
    """Progress comes from the epoch-metrics CSV a stage's training writes below <work>/<stage> (no log lines)."""
    work = tmp_path / "work"
    (work / "overrides").mkdir(parents=True)
    (work / "overrides" / "train.json").write_text(json.dumps({"max_epochs": 4}))
    (work / "overrides" / "refine.json").write_text(json.dumps({"num_cases": 2}))  # not a training stage
    (work / "overrides" / "old.json").write_text(json.dumps({"max_epochs": 9}))
    old = EpochMetricsWriter(work / "old" / "models")  # the file of an earlier run is not reported
    for epoch in (1, 2, 3):
        old.epoch_completed(_epoch_done(epoch))
    os.utime(old.path, (1, 1))
    lines: list[str] = []
    watcher = fab.EpochWatcher(work, lines.append, io.StringIO(), every_s=0.0)
    time.sleep(0.05)  # file times may lag time.time() by a clock tick
    EpochMetricsWriter(work / "refine").epoch_completed(_epoch_done(1))
    train = EpochMetricsWriter(work / "train" / "models")
    train.path.parent.mkdir(parents=True)
    for damaged in ("", "epoch,loss\nx,y\n", "epoch,loss\n1,0.5,7\n", "loss\n0.5\n"):  # no progress, no error
        train.path.write_text(damaged)
        watcher.poll()
    assert lines == []
    train.path.unlink()
    train.epoch_completed(_epoch_done(1))
    watcher.poll()
    watcher.poll()  # nothing new: no line
    for epoch in (2, 3, 4):
        train.epoch_completed(_epoch_done(epoch))
    watcher.poll()
    assert [r["epoch"] for r in read_epoch_metrics(train.path)] == [1, 2, 3, 4]
    assert [line.split(" ...")[0] for line in lines] == ["train: epoch 1/4", "train: epoch 4/4"]
    assert lines[-1].endswith("ETA 0 s")
    with watcher:  # the thread starts and stops cleanly
        pass


def _epoch_done(epoch: int) -> SimpleNamespace:
    """What EpochMetricsWriter reads of a trainer at the end of ``epoch``."""
    return SimpleNamespace(state=SimpleNamespace(epoch=epoch, metrics={"loss": 1.0 / epoch}))


def test_nnunet_format(demo, tmp_path) -> None:
    pytest.importorskip("custom_components.export.nnunet", reason="custom_components.export.nnunet not merged yet")
    out = tmp_path / "nn"
    lines: list[str] = []
    fab.fabricate("dtss", 2, demo["tumour"], out, fmt="nnunet", frd=False, log=lines.append, stream=io.StringIO())
    (dataset,) = (out / "nnunet").glob("Dataset*")
    sources = {
        f"syn_{i['case_id']}": i["provenance"]["source_cases"] for i in read_datalist(out / "datalist.json")["training"]
    }
    real = [i["case_id"] for i in load_datalist(demo["tumour"], check="none")]
    assert len(sources) == 2 and all(len(s) == 1 and s[0] in real for s in sources.values())
    splits = json.loads((dataset / "splits_final.json").read_text())
    assert sorted(v for f in splits for v in f["val"]) == sorted(real)
    for fold in splits:  # each DTSS case trains exactly the folds that do not validate on its source case
        assert {s for s in sources if s in fold["train"]} == {
            s for s, src in sources.items() if src[0] not in fold["val"]
        }
    removed = json.loads((dataset / "dataset.json").read_text())["provenance"]["synthetic_removed_per_fold"]
    assert sum(removed) == 2 and any(f"{removed} of 2 per fold" in line for line in lines)


def test_registration_gate_leaves_only_the_work_folder(demo, tmp_path) -> None:
    config = tmp_path / "strict.yaml"
    config.write_text(
        yaml.safe_dump({"demo": {"n_healthy": 1, "n_tumour": 6, "spacing": 4.0}, "min_brain_dice": 0.9999})
    )
    out = tmp_path / "tf_gate"
    from custom_components.synthesis.healthy_prep import RegistrationQualityError

    with pytest.raises(RegistrationQualityError, match="brain Dice"):
        _run("tf_aug", 1, demo["tumour"], out, healthy=demo["healthy"], config=config)
    assert {p.name for p in out.iterdir()} == {"work"}
    assert list((out / "work" / "prepare_healthy").glob("*.png"))  # the QC of the failed scan


@pytest.mark.slow
def test_tf_end_to_end_tiny(demo, tmp_path) -> None:
    """TF (TF-Aug + TF-GAN) through the pipeline's stages at tiny budgets; a rerun skips every stage."""
    config = tmp_path / "tiny.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "demo": {"n_healthy": 1, "n_tumour": 6, "spacing": 4.0, "seed": 0},
                "seg": {"filters": [4, 8, 16], "crop_size": [32, 32, 32], "phase1_epochs": 1, "val_interval": 1},
                "tf_aug": {"epochs": 1, "crop_size": [32, 32, 32]},
                "tf_gan": {"epochs": 1, "patch_size": [64, 64, 64], "overrides": {"epoch_length": 1}},
                "qc_cases": 0,
            }
        )
    )
    out = tmp_path / "tf"
    real_items = load_datalist(demo["tumour"], require=["label"], check="none")
    healthy_ids = {i["case_id"] for i in load_datalist(demo["healthy"], check="none")}
    lines: list[str] = []
    fab.fabricate("tf", 2, demo["tumour"], out, healthy=demo["healthy"], config=config, frd=False, log=lines.append)
    data = read_datalist(out / "datalist.json")
    assert [i["case_id"] for i in data["training"]] == ["tfaug-00000", "tfaug-00001"]
    assert data["modalities"] == ["t1n"] and validate_datalist(out / "datalist.json") == []
    for i, item in enumerate(data["training"]):
        prov = item["provenance"]
        assert prov["method"] == "tf" and prov["seed"] == case_seed(0, i)
        # the real cases whose masks it used (as many as its mask components), the healthy scan under its own key
        assert prov["source_cases"] == mask_source_cases(prov["source_masks"], real_items)
        assert 1 <= len(prov["source_cases"]) <= len(prov["source_masks"])
        assert prov["healthy_case_id"] in healthy_ids and prov["healthy_case_id"] not in prov["source_cases"]
        assert Path(item["image"][0]).parent == out / item["case_id"]
    assert (out / "gallery" / "index.html").is_file() and len(list((out / "gallery").glob("*.png"))) == 2
    done = [line for line in lines if "done in" in line]
    assert [line.split("] ")[1].split(":")[0] for line in done] == [
        "prepare_healthy",
        "seg_phase1_s0",
        "tf_aug_train_s0",
        "tf_aug_synthesise_s0",
        "tf_gan_train_s0",
        "tf_gan_refine_s0",
    ]
    # the pipeline report draws the first seed's TF cases as fabricate's gallery does (one function)
    cfg = fab._tf_config("tf", 2, demo["tumour"], demo["healthy"], out, 0, config, len(real_items))
    drawn = _montages(Experiment(cfg), tmp_path / "qc", get_method("tf"), 2, False)
    assert [p.read_bytes() for p in drawn] == [(out / "gallery" / f"tfaug-0000{i}.png").read_bytes() for i in (0, 1)]
    lines.clear()
    fab.fabricate("tf", 2, demo["tumour"], out, healthy=demo["healthy"], config=config, frd=False, log=lines.append)
    assert sum("up to date, skipped" in line for line in lines) == 6
    shutil.rmtree(out / "work" / "tf_gan_refine_s0")  # the cases in <out> are links or copies: still whole
    assert validate_datalist(out / "datalist.json") == []


def test_brats_folder_as_real_data(demo, tmp_path) -> None:
    """A BraTS folder is read with make_brats_datalist; its datalist is kept in <out>/work."""
    root = tmp_path / "BraTS"
    for item in read_datalist(demo["tumour"])["training"][:2]:
        case = root / item["case_id"]
        case.mkdir(parents=True)
        for modality, image in zip(("t1n", "t1c", "t2w", "t2f"), item["image"], strict=True):
            shutil.copy(image, case / f"{item['case_id']}-{modality}.nii.gz")
        shutil.copy(item["label"], case / f"{item['case_id']}-seg.nii.gz")  # internal values = BraTS 2023's
        shutil.copy(item["brain_mask"], case / f"{item['case_id']}-brainmask.nii.gz")
    out = tmp_path / "out"
    _run("carvemix", 2, root, out)
    manifest = json.loads((out / "fabricate.json").read_text())
    assert manifest["real"]["kind"] == "brats_folder" and manifest["real"]["path"] == str(root.resolve())
    kept = read_datalist(out / "work" / "real_datalist.json")
    assert [i["case_id"] for i in kept["training"]] == sorted(p.name for p in root.iterdir())
    assert validate_datalist(out / "datalist.json") == []
    assert "skipped" in json.loads((out / "realism.json").read_text())  # no held-out section
    with pytest.raises(fab.FabricateError, match="at most 2"):
        _run("carvemix", 3, root, tmp_path / "other")


def test_cli_refusal(demo, tmp_path, capsys) -> None:
    from custom_components.cli import fabricate as cli_fabricate

    with pytest.raises(SystemExit) as stop:
        cli_fabricate("carvemix", 13, str(demo["tumour"]), str(tmp_path / "out"), frd=False)
    assert stop.value.code == 1
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.endswith("at most 12 (4 real training cases give 4 x 3 ordered (target, source) pairs)")
    with pytest.raises(SystemExit):
        cli_fabricate("gan", 1, str(demo["tumour"]), str(tmp_path / "out"))
    assert "--method must be one of dtss, carvemix, tf_aug, tf, pix2pix" in capsys.readouterr().err
