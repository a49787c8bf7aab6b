"""Model Zoo checks and sharing: TorchScript export (``ckpt_export``), network input/output checks
(``verify_net_in_out``) against ``metadata.json``, and self-contained exported bundles that run where this
repository is not importable."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from monai.apps.utils import HashCheckError
from monai.bundle import ConfigParser, ckpt_export, download_large_files, load_bundle_config, verify_net_in_out
from monai.data import load_net_with_metadata

from custom_components.data.datalist import read_datalist
from custom_components.data.demo import make_demo_data
from custom_components.export.zoo_bundle import VENDOR_IMPORT, export_bundle, vendor_config_text
from custom_components.networks import build_segmentation_network
from custom_components.networks.classwise_intensity import ClasswiseIntensity
from custom_components.networks.tf_gan import TFGANGenerator
from tests.bundle_utils import PROJECT_ONLY, REPO, bundle_dir
from tests.tf_aug_data import make_aug_inputs
from tests.tf_gan_data import make_data

SEG_TINY: dict[str, Any] = {"filters": [4, 8, 16, 32]}
GAN_TINY: dict[str, Any] = {"gen_channels": [8] * 6}
# `python -m monai.bundle` with the repository NOT importable: no site initialisation (so the editable install's
# path hook is not installed), site-packages appended by hand, the PROJECT_ONLY packages blocked, and the working
# directory first on sys.path as `python -m` puts it
LAUNCHER = """
import os, runpy, sys
site, blocked = sys.argv[1], set(filter(None, sys.argv[2].split(",")))
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in blocked:
            raise ModuleNotFoundError(f"{name} is not installed for the exported bundle", name=name)
sys.meta_path.insert(0, Block())
sys.path[0] = os.getcwd()
sys.path.append(site)
sys.argv = ["monai.bundle", *sys.argv[3:]]
runpy.run_module("monai.bundle", run_name="__main__", alter_sys=True)
print("CUSTOM_COMPONENTS_FILE", sys.modules["custom_components"].__file__)
"""


def _parser(bundle: str, configs: list[str], **override: Any) -> ConfigParser:
    root = bundle_dir(bundle) / "configs"
    parser = ConfigParser()
    parser.read_config([str(root / c) for c in configs])
    parser.read_meta(str(root / "metadata.json"))
    for k, v in override.items():
        parser[k] = v
    return parser


@pytest.mark.parametrize(
    ("bundle", "tiny", "key_shapes"),
    [
        ("dtss_mas_seg", SEG_TINY, {"in": 4, "out": 4, "divisor": 8}),
        ("tf_gan", GAN_TINY, {"in": 4, "out": 1, "divisor": 32}),
    ],
)
def test_ckpt_export_and_verify(bundle: str, tiny: dict[str, Any], key_shapes: dict[str, int], tmp_path: Path) -> None:
    root = bundle_dir(bundle) / "configs"
    meta, common = str(root / "metadata.json"), str(root / "common.yaml")
    # the smallest (n=1) and a larger input the metadata allows both fit the network
    for n in (1, 2):
        verify_net_in_out(net_id="network_def", meta_file=meta, config_file=common, device="cpu", n=n, **tiny)
    parser = _parser(bundle, ["common.yaml"], **tiny)
    torch.manual_seed(0)
    net = parser.get_parsed_content("network_def").eval()
    ckpt = tmp_path / "model.pt"
    torch.save(net.state_dict(), ckpt)
    ts = tmp_path / "model.ts"
    ckpt_export(
        net_id="network_def", filepath=str(ts), ckpt_file=str(ckpt), meta_file=meta, config_file=common,
        bundle_root=str(bundle_dir(bundle)), **tiny,
    )  # fmt: skip
    scripted, ts_meta, extra = load_net_with_metadata(str(ts), more_extra_files=("common.json",))
    assert isinstance(scripted, torch.jit.ScriptModule)
    fmt = ts_meta["network_data_format"]
    assert fmt["inputs"]["image"]["num_channels"] == key_shapes["in"]
    assert fmt["outputs"]["pred"]["num_channels"] == key_shapes["out"]
    assert b"network_def" in extra["common.json"]
    side = 2 * key_shapes["divisor"]
    x = torch.rand(1, key_shapes["in"], side, side + key_shapes["divisor"], side)
    with torch.no_grad():
        expected, got = net(x), scripted(x)
    assert got.shape == (1, key_shapes["out"], *x.shape[2:])
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


def test_vendor_config_text_keeps_everything_else() -> None:
    for bundle in ("dtss_mas_seg", "tf_aug", "tf_gan"):
        for cfg in sorted((bundle_dir(bundle) / "configs").glob("*.yaml")):
            text = cfg.read_text()
            new = vendor_config_text(text, str(cfg))
            before, after = yaml.safe_load(text), yaml.safe_load(new)
            if "imports" in before:
                assert after["imports"] == [VENDOR_IMPORT, *before["imports"]]
                assert new.count("\n#") == text.count("\n#")  # top-level comments kept
            assert {k: v for k, v in after.items() if k != "imports"} == {
                k: v for k, v in before.items() if k != "imports"
            }
            assert vendor_config_text(new) == new  # idempotent


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def _run_exported(folder: Path, bundle: str, args: list[str]) -> str:
    """Run ``python -m monai.bundle`` in the exported folder with the repository not importable; its stdout."""
    meta = yaml.safe_load((folder / "configs" / "metadata.json").read_text())
    required = {name.lower() for name in meta.get("required_packages_version", {})}
    blocked = [mod for mod, dist in PROJECT_ONLY.items() if dist not in required]
    launcher = folder.parent / "launch_exported.py"
    launcher.write_text(LAUNCHER)
    site = sysconfig.get_paths()["purelib"]
    cmd = [sys.executable, "-S", str(launcher), site, ",".join(blocked), "run", *args]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["OMP_NUM_THREADS"] = "1"
    proc = subprocess.run(cmd, cwd=str(folder), env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{bundle}: {proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


def _export_and_copy(bundle: str, weights: list[Path], tmp_path: Path) -> Path:
    out = export_bundle(bundle, tmp_path / "export", weights=[str(w) for w in weights])
    assert out == tmp_path / "export" / bundle
    names = zipfile.ZipFile(tmp_path / "export" / f"{bundle}.zip").namelist()
    for member in ("configs/metadata.json", "scripts/__init__.py", "scripts/custom_components/__init__.py"):
        assert f"{bundle}/{member}" in names
    assert not any("__pycache__" in n for n in names)
    zipped = load_bundle_config(str(tmp_path / "export" / f"{bundle}.zip"), "common.yaml")
    assert zipped["imports"][0] == VENDOR_IMPORT
    with pytest.raises(FileExistsError):
        export_bundle(bundle, tmp_path / "export")
    large = yaml.safe_load((out / "large_files.yml").read_text())["large_files"]
    assert large == [
        {"path": f"models/{w.name}", "url": "", "hash_val": _md5(w), "hash_type": "md5"} for w in sorted(weights)
    ]
    for cfg in (bundle_dir(bundle) / "configs").iterdir():
        assert (out / "configs" / cfg.name).is_file()
    # the copy outside the repository is what runs
    moved = tmp_path / "elsewhere" / bundle
    shutil.copytree(out, moved)
    assert REPO not in moved.parents
    return moved


def _check_vendored(stdout: str, folder: Path) -> None:
    line = next(x for x in stdout.splitlines() if x.startswith("CUSTOM_COMPONENTS_FILE"))
    assert Path(line.split(maxsplit=1)[1]) == folder / "scripts" / "custom_components" / "__init__.py"


@pytest.mark.slow
def test_export_dtss_mas_seg_runs_inference(tmp_path: Path) -> None:
    demo = make_demo_data(tmp_path / "demo", n_healthy=1, n_tumour=4, spacing=4.0, seed=0, verbose=False)["tumour"]
    torch.manual_seed(0)
    weights = tmp_path / "model.pt"
    torch.save(build_segmentation_network("dynunet", 4, 4, SEG_TINY["filters"]).state_dict(), weights)
    folder = _export_and_copy("dtss_mas_seg", [weights], tmp_path)
    # the Model Zoo large-file check: the hash in large_files.yml matches the weights (a changed file fails)
    download_large_files(bundle_path=str(folder))
    out = tmp_path / "out"
    stdout = _run_exported(
        folder, "dtss_mas_seg",
        ["inference", "--config_file", "['configs/common.yaml','configs/inference.yaml']",
         "--meta_file", "configs/metadata.json", "--logging_file", "configs/logging.conf", "--bundle_root", ".",
         "--datalist", str(demo), "--infer_section", "validation", "--model_path", "models/model.pt",
         "--output_dir", str(out), "--filters", str(SEG_TINY["filters"]), "--crop_size", "[32,32,32]",
         "--sw_batch_size", "1", "--num_workers", "0"],
    )  # fmt: skip
    _check_vendored(stdout, folder)
    (case,) = read_datalist(demo)["validation"]
    pred = out / "predictions" / f"{case['case_id']}.nii.gz"
    assert pred.is_file()
    (folder / "models" / "model.pt").write_bytes(b"changed")
    with pytest.raises(HashCheckError, match="md5 hash check of existing file failed"):
        download_large_files(bundle_path=str(folder))


@pytest.mark.slow
def test_export_tf_aug_runs_synthesis(tmp_path: Path) -> None:
    inputs = make_aug_inputs(tmp_path / "data")
    params = ClasswiseIntensity(1, a_init=[1.1, 0.9, 1.2], b_init=[-0.1, 0.05, 0.2], channel_names=["t1n"])
    weights = list(params.save(tmp_path / "weights"))
    folder = _export_and_copy("tf_aug", weights, tmp_path)
    out = tmp_path / "out"
    stdout = _run_exported(
        folder, "tf_aug",
        ["--config_file", "['configs/common.yaml','configs/inference.yaml']", "--meta_file", "configs/metadata.json",
         "--logging_file", "configs/logging.conf", "--bundle_root", ".",
         "--healthy_datalist", inputs["healthy_datalist"], "--real_datalist", inputs["real_datalist"],
         "--intensity_params", "models/intensity.json", "--output_dir", str(out), "--num_cases", "2",
         "--qc_cases", "1", "--aug_min_voxels", "10"],
    )  # fmt: skip
    _check_vendored(stdout, folder)
    items = read_datalist(out / "coarse" / "datalist.json")["training"]
    assert [i["case_id"] for i in items] == ["tfaug-00000", "tfaug-00001"]
    assert all(i["provenance"]["intensity"] == params.to_dict() for i in items)
    assert (out / "coarse" / "qc" / "tfaug-00000.png").is_file()


@pytest.mark.slow
def test_export_tf_gan_runs_refinement(tmp_path: Path) -> None:
    data = make_data(tmp_path / "data")
    torch.manual_seed(0)
    weights = tmp_path / "model.pt"
    torch.save(TFGANGenerator(1, 1, 3, GAN_TINY["gen_channels"], residual=True).state_dict(), weights)
    folder = _export_and_copy("tf_gan", [weights], tmp_path)
    out = tmp_path / "out"
    stdout = _run_exported(
        folder, "tf_gan",
        ["--config_file", "['configs/common.yaml','configs/inference.yaml']", "--meta_file", "configs/metadata.json",
         "--logging_file", "configs/logging.conf", "--bundle_root", ".", "--coarse_datalist", str(data["coarse"]),
         "--output_dir", str(out), "--gen_channels", str(GAN_TINY["gen_channels"]), "--patch_size", "[64,64,64]",
         "--num_workers", "0", "--generator_checkpoint", "models/model.pt"],
    )  # fmt: skip
    _check_vendored(stdout, folder)
    refined = read_datalist(out / "refined" / "datalist.json")["training"]
    assert [i["case_id"] for i in refined] == [i["case_id"] for i in read_datalist(data["coarse"])["training"]]
    # the exported weights (models/model.pt of the exported bundle) refined the cases
    assert all(i["provenance"]["generator_checkpoint"] == "models/model.pt" for i in refined)
