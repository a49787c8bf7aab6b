"""The Model Zoo's CI (``ci/verify_bundle.py``, full mode) on every bundle of this repository and on every bundle
that ``export-bundle`` writes: each check reads ``configs/inference.*`` alone with ``configs/metadata.json``.

The repository bundles are checked in this process on a copy with fake weights (``models/model.pt`` made from the
inference config's ``network_def``, as the Zoo makes them); the exported bundles in a fresh process where this
repository is not importable (their code is the vendored ``scripts/custom_components``), as the Zoo runs them.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from monai.bundle import ConfigParser, verify_net_in_out

from custom_components.export.zoo_bundle import VENDOR_IMPORT, export_bundle
from tests.bundle_utils import PROJECT_ONLY, REPO, SCHEMA, bundle_dir
from tests.tf_aug_data import make_aug_inputs
from tests.tf_gan_data import make_data

BUNDLES = ("dtss_mas_seg", "tf_aug", "tf_gan")
_spec = importlib.util.spec_from_file_location("zoo_verify_bundle", REPO / "ci" / "verify_bundle.py")
zoo = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(zoo)

# runs ci/verify_bundle.py with the repository NOT importable: no site initialisation (the editable install's path
# hook is not installed), site-packages appended by hand, the project-only packages blocked
LAUNCHER = """
import runpy, sys
script, site, blocked = sys.argv[1], sys.argv[2], set(filter(None, sys.argv[3].split(",")))
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in blocked:
            raise ModuleNotFoundError(f"{name} is not installed for the exported bundle", name=name)
sys.meta_path.insert(0, Block())
sys.path = [p for p in sys.path if p and p != "."] + [site]
sys.argv = [script, *sys.argv[4:]]
runpy.run_path(script, run_name="__main__")
"""


def _schema() -> Path:
    if not SCHEMA.is_file():
        pytest.skip(f"bundle schema not found at {SCHEMA} (../shared is absent)")
    return SCHEMA


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Small inputs for each bundle's inference workflow (the properties check initialises it)."""
    root = tmp_path_factory.mktemp("zoo_data")
    aug = make_aug_inputs(root / "aug")
    gan = make_data(root / "gan")
    return {"aug": aug, "gan": gan, "tumour": aug["real_datalist"]}


def _overrides(bundle: str, folder: Path, data: dict[str, Any], out: Path) -> dict[str, Any]:
    """Config overrides of the properties check: the data, the bundle's own models/model.pt, an output folder."""
    weights = str(folder / "models" / "model.pt")
    if bundle == "dtss_mas_seg":
        return {
            "datalist": data["tumour"],
            "infer_section": "validation",
            "model_path": weights,
            "output_dir": str(out),
        }
    if bundle == "tf_aug":
        aug = {k: v for k, v in data["aug"].items() if k != "allow_identity_intensity"}
        return {**aug, "intensity_params": weights, "output_dir": str(out)}
    return {"coarse_datalist": str(data["gan"]["coarse"]), "generator_checkpoint": weights, "output_dir": str(out)}


def _assert_all_pass(results: dict[str, tuple[bool, str]], where: str) -> None:
    assert list(results) == list(zoo.CHECKS)
    failed = {k: msg for k, (ok, msg) in results.items() if not ok}
    assert not failed, f"{where}: {failed}"


def _fake_weights(bundle: str, path: Path) -> Path:
    """The Zoo's fake weights: network_def of the inference config alone (with the metadata), default values."""
    parser = ConfigParser()
    parser.read_config(str(bundle_dir(bundle) / "configs" / "inference.yaml"))
    parser.read_meta(str(bundle_dir(bundle) / "configs" / "metadata.json"))
    torch.manual_seed(0)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(parser.get_parsed_content("network_def").state_dict(), path)
    return path


@pytest.mark.parametrize("bundle", BUNDLES)
def test_inference_config_alone_resolves_and_agrees_with_common(bundle: str) -> None:
    """inference.yaml alone defines everything inference uses, and every value it shares with common.yaml is the
    same, so ``[common.yaml, inference.yaml]`` (the pipeline's and READMEs' command) is the same workflow."""
    configs = bundle_dir(bundle) / "configs"
    inference, common = (yaml.safe_load((configs / f).read_text()) for f in ("inference.yaml", "common.yaml"))
    shared = (set(inference) & set(common)) - {"imports"}
    assert {"network_def", "bundle_root", "device"} <= set(inference)
    differ = {k: (common[k], inference[k]) for k in shared if common[k] != inference[k]}
    assert not differ, f"{bundle}: inference.yaml and common.yaml disagree on {differ}"
    parser = ConfigParser()
    parser.read_config(str(configs / "inference.yaml"))
    parser.read_meta(str(configs / "metadata.json"))
    for key in ("network_def", "inferer", "device"):
        assert parser.get_parsed_content(key) is not None


@pytest.mark.parametrize("bundle", BUNDLES)
def test_zoo_checks_repo_bundle(bundle: str, data: dict[str, Any], tmp_path: Path) -> None:
    folder = tmp_path / bundle
    shutil.copytree(bundle_dir(bundle), folder)
    assert not (folder / "models").exists()  # weights are not in the repository: the Zoo's fake weights are made
    results = zoo.verify(folder, _schema(), _overrides(bundle, folder, data, tmp_path / "out"))
    _assert_all_pass(results, bundle)
    assert "written to models/model.pt" in results["fake_weights"][1]
    # the fake weights are network_def's: they load into the network common.yaml (training) builds too
    if bundle != "tf_aug":  # tf_aug's training network_def is in train.yaml (its initial a, b)
        parser = ConfigParser()
        parser.read_config([str(bundle_dir(bundle) / "configs" / "common.yaml")])
        parser.get_parsed_content("network_def").load_state_dict(torch.load(folder / "models" / "model.pt"))
    assert (folder / "models" / "verify_model.ts").is_file()


def test_zoo_check_failures_are_reported(tmp_path: Path) -> None:
    """A bundle that reads common.yaml values from its inference config fails the Zoo's network checks (as all three
    did before), and a version missing from the changelog fails the version check; the rest still run."""
    folder = tmp_path / "dtss_mas_seg"
    shutil.copytree(bundle_dir("dtss_mas_seg"), folder)
    cfg = yaml.safe_load((folder / "configs" / "inference.yaml").read_text())
    for key in ("filters", "network_name", "in_channels", "modalities", "crop_size", "out_channels"):
        cfg.pop(key)
    (folder / "configs" / "inference.yaml").write_text(yaml.safe_dump(cfg))
    meta = json.loads((folder / "configs" / "metadata.json").read_text())
    meta["version"] = "9.9.9"
    (folder / "configs" / "metadata.json").write_text(json.dumps(meta))
    results = zoo.verify(folder, _schema(), checks=("files", "version", "fake_weights", "net_in_out", "torchscript"))
    assert {k: ok for k, (ok, _) in results.items()} == {
        "files": False,  # no models/model.pt: the fake weights could not be made
        "version": False,
        "fake_weights": False,
        "net_in_out": False,
        "torchscript": False,
    }
    assert "9.9.9 is not a key of changelog" in results["version"][1]
    assert "network_name" in results["fake_weights"][1] or "filters" in results["fake_weights"][1]


def test_tf_aug_network_single_input_form() -> None:
    """tf_aug's network for the checks: image channels then the label channel in, the image out; a_c x + b_c inside
    class c (hand-computed), x elsewhere, and the same as the two-argument form the synthesis uses."""
    configs = bundle_dir("tf_aug") / "configs"
    meta = json.loads((configs / "metadata.json").read_text())["network_data_format"]
    assert meta["inputs"]["image"]["num_channels"] == 2 and meta["outputs"]["pred"]["num_channels"] == 1
    verify_net_in_out(
        net_id="network_def", meta_file=str(configs / "metadata.json"), config_file=str(configs / "inference.yaml"),
        device="cpu", any=8,
    )  # fmt: skip
    parser = ConfigParser()
    parser.read_config(str(configs / "inference.yaml"))
    net = parser.get_parsed_content("network_def")
    with torch.no_grad():
        net.a.copy_(torch.tensor([[2.0], [3.0], [4.0]]))
        net.b.copy_(torch.tensor([[0.5], [-0.5], [0.25]]))
    x = torch.rand(1, 1, 4, 4, 4)
    label = torch.zeros(1, 1, 4, 4, 4)
    label[0, 0, 0, 0, 0], label[0, 0, 1, 1, 1], label[0, 0, 2, 2, 2] = 1, 2, 3
    stacked = torch.cat([x, label], 1)
    y = net(stacked).detach()
    assert y.shape == (1, 1, 4, 4, 4)
    torch.testing.assert_close(y[0, 0, 0, 0, 0], 2 * x[0, 0, 0, 0, 0] + 0.5)
    torch.testing.assert_close(y[0, 0, 1, 1, 1], 3 * x[0, 0, 1, 1, 1] - 0.5)
    torch.testing.assert_close(y[0, 0, 2, 2, 2], 4 * x[0, 0, 2, 2, 2] + 0.25)
    torch.testing.assert_close(y[label == 0], x[label == 0])
    torch.testing.assert_close(y, net(x, label).detach())
    scripted = torch.jit.script(net)
    torch.testing.assert_close(scripted(stacked), y)
    with pytest.raises(ValueError, match="images then the label channel"):
        net(x)


def _run_verify_exported(folder: Path, overrides: dict[str, Any], tmp: Path) -> tuple[int, str]:
    meta = json.loads((folder / "configs" / "metadata.json").read_text())
    required = {name.lower() for name in meta.get("required_packages_version", {})}
    blocked = [mod for mod, dist in PROJECT_ONLY.items() if dist not in required]
    launcher = tmp / "launch_verify.py"
    launcher.write_text(LAUNCHER)
    props = tmp / "properties_overrides.json"
    props.write_text(json.dumps(overrides))
    cmd = [
        sys.executable, "-S", str(launcher), str(REPO / "ci" / "verify_bundle.py"), sysconfig.get_paths()["purelib"],
        ",".join(blocked), str(folder), "--schema", str(_schema()), "--properties_overrides", str(props),
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["OMP_NUM_THREADS"] = "1"
    proc = subprocess.run(cmd, cwd=str(tmp), env=env, capture_output=True, text=True, timeout=600)
    return proc.returncode, proc.stdout + proc.stderr


@pytest.mark.slow
@pytest.mark.parametrize("bundle", BUNDLES)
def test_zoo_checks_exported_bundle(bundle: str, data: dict[str, Any], tmp_path: Path) -> None:
    weights = _fake_weights(bundle, tmp_path / "weights" / "model.pt")
    folder = export_bundle(bundle, tmp_path / "export", weights=[str(weights)], zip=False)
    assert yaml.safe_load((folder / "configs" / "inference.yaml").read_text())["imports"][0] == VENDOR_IMPORT
    moved = tmp_path / "elsewhere" / bundle
    shutil.copytree(folder, moved)
    code, out = _run_verify_exported(moved, _overrides(bundle, moved, data, tmp_path / "out"), tmp_path)
    line = next((x for x in out.splitlines() if x.startswith("ZOO_RESULTS ")), None)
    assert line is not None, out[-4000:]
    results = json.loads(line.split(" ", 1)[1])
    assert results == dict.fromkeys(zoo.CHECKS, True), out[-4000:]
    assert code == 0
    # the bundle's own weights were checked (not replaced by fake ones), and they are the given file
    assert "models/model.pt loads into it" in out
    assert (moved / "models" / "model.pt").read_bytes() == weights.read_bytes()


def test_tf_aug_model_pt_is_what_synthesis_loads(tmp_path: Path) -> None:
    """tf_aug's models/model.pt (network_def's state_dict, as the Zoo and an exported bundle hold it) is read by
    intensity_params into the synthesis network."""
    state = {"a": torch.tensor([[1.5], [0.5], [2.0]]), "b": torch.tensor([[0.1], [-0.2], [0.3]])}
    torch.save(state, tmp_path / "model.pt")
    parser = ConfigParser()
    parser.read_config(str(bundle_dir("tf_aug") / "configs" / "inference.yaml"))
    parser["intensity_params"] = str(tmp_path / "model.pt")
    parser["device"] = "$torch.device('cpu')"
    net = parser.get_parsed_content("network")
    torch.testing.assert_close(net.a.detach(), state["a"])
    torch.testing.assert_close(net.b.detach(), state["b"])
