"""Every bundle uses the same config key names and meanings (the table in docs/architecture.md)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
BUNDLES = ("dtss_mas_seg", "tf_aug", "tf_gan")
# key -> default every bundle's common.yaml gives it (None: bundle-specific value, but the key must exist)
SHARED_COMMON = {
    "bundle_root": ".",
    "device": "$torch.device('cuda:0' if torch.cuda.is_available() else 'cpu')",
    "dataset_dir": None,
    "output_dir": "$@bundle_root + '/runs'",
    "models_dir": "$@output_dir + '/models'",
    "modalities": None,
    "seed": 0,
    "num_workers": None,
}
# the training configs of each bundle (a workflow with a trainer)
TRAIN_CONFIGS = {
    "dtss_mas_seg": ["train.yaml"],
    "tf_aug": ["train.yaml"],
    "tf_gan": ["train.yaml", "train_pix2pix.yaml"],
}
# names that one bundle used for a shared meaning; none may come back
RETIRED = {
    "epochs": "max_epochs",
    "resume": "resume_checkpoint",
    "ckpt_dir": "models_dir",
    "pix2pix_ckpt_dir": "pix2pix_models_dir",
    "num_epochs": "max_epochs",
    "model_dir": "models_dir",
}
# configs that are overrides (only their differences) -> the configs they are loaded after
OVERRIDES_OF = {"inference_pix2pix.yaml": ("inference.yaml",), "train_pix2pix.yaml": ("train.yaml",)}
# run aliases a workflow may define, all written as "@run"
ALIASES = ("training", "inference", "evaluating")
# MONAI's own tracking keys (`--tracking mlflow` fills them); no bundle defines its own
TRACKING = ("tracking", "tracking_uri", "experiment_name", "run_name", "save_execute_config")


def _load(bundle: str, name: str) -> dict:
    return yaml.safe_load((REPO / "bundles" / bundle / "configs" / name).read_text()) or {}


def _merged(bundle: str, name: str) -> dict:
    """A config with the configs it overrides loaded first (top-level keys, as MONAI merges files)."""
    merged: dict = {}
    for base in (*OVERRIDES_OF.get(name, ()), name):
        merged.update(_load(bundle, base))
    return merged


def _configs(bundle: str) -> list[str]:
    return sorted(p.name for p in (REPO / "bundles" / bundle / "configs").glob("*.yaml"))


@pytest.mark.parametrize("bundle", BUNDLES)
def test_common_defines_the_shared_keys(bundle: str) -> None:
    common = _load(bundle, "common.yaml")
    for key, default in SHARED_COMMON.items():
        assert key in common, f"{bundle}/configs/common.yaml: missing shared key {key!r}"
        if default is not None:
            assert common[key] == default, f"{bundle}: {key} is {common[key]!r}, expected {default!r}"


@pytest.mark.parametrize("bundle", BUNDLES)
def test_no_retired_names_and_one_alias_form(bundle: str) -> None:
    for name in _configs(bundle):
        config = _load(bundle, name)
        for old, new in RETIRED.items():
            assert old not in config, f"{bundle}/configs/{name}: {old!r} is spelt {new!r} in every bundle"
        for alias in ALIASES:
            if alias in config:
                assert config[alias] == "@run", f'{bundle}/configs/{name}: write `{alias}: "@run"`'
        for key in TRACKING:
            assert key not in config, f"{bundle}/configs/{name}: tracking goes through MONAI's --tracking"
        if name != "common.yaml":
            # paths and shared values are set in common.yaml; a self-contained inference config (the Model Zoo
            # reads inference.* alone) repeats them with the same values
            common = _load(bundle, "common.yaml")
            for key in ("output_dir", "models_dir", "bundle_root", "dataset_dir", "seed", "modalities"):
                if name.startswith("inference"):
                    assert config.get(key, common[key]) == common[key], f"{bundle}/configs/{name}: {key} differs"
                else:
                    assert key not in config, f"{bundle}/configs/{name}: {key!r} belongs in common.yaml"


@pytest.mark.parametrize("bundle", BUNDLES)
def test_training_keys(bundle: str) -> None:
    for name in TRAIN_CONFIGS[bundle]:
        config = _merged(bundle, name)
        assert isinstance(config.get("max_epochs"), int), f"{bundle}/configs/{name}: max_epochs"
        assert "resume_checkpoint" in config and config["resume_checkpoint"] is None, (
            f"{bundle}/configs/{name}: resume_checkpoint must default to null (a fresh run); resuming is explicit"
        )
        assert config.get("training") == "@run"


@pytest.mark.parametrize("bundle", BUNDLES)
def test_models_live_under_output_dir(bundle: str, tmp_path: Path) -> None:
    """Resolved: every model / checkpoint path of every workflow is under <output_dir>/models."""
    from monai.bundle import ConfigParser

    paths = {"model_path", "intensity_params", "generator_checkpoint", "pix2pix_models_dir"}
    for name in [n for n in _configs(bundle) if n not in ("common.yaml",) and not n.startswith("multi_gpu")]:
        parser = ConfigParser()
        files = ("common.yaml", *OVERRIDES_OF.get(name, ()), name)
        parser.read_config([str(REPO / "bundles" / bundle / "configs" / f) for f in files])
        parser["bundle_root"] = str(tmp_path)
        out = Path(parser.get_parsed_content("output_dir"))
        models = Path(parser.get_parsed_content("models_dir"))
        assert out == tmp_path / "runs" and models == out / "models"
        for key in paths & set(parser.config):
            value = Path(parser.get_parsed_content(key))
            assert models in (value, *value.parents), f"{bundle}/configs/{name}: {key} = {value} not under {models}"


def _components(node: object) -> list[dict]:
    """Every ``{_target_: ...}`` mapping inside a parsed YAML tree."""
    found: list[dict] = []
    if isinstance(node, dict):
        if "_target_" in node:
            found.append(node)
        for value in node.values():
            found += _components(value)
    elif isinstance(node, list):
        for value in node:
            found += _components(value)
    return found


@pytest.mark.parametrize("bundle", BUNDLES)
def test_training_writers_run_on_rank0_only(bundle: str) -> None:
    """Handlers that only write (statistics, checkpoints, saved parameters) are disabled on ranks > 0 by
    MONAI's `_disabled_: "@is_not_rank0"`, so a multi-process run writes them once."""
    assert _load(bundle, "common.yaml")["is_not_rank0"].startswith("$torch.distributed.is_available()")
    for name in TRAIN_CONFIGS[bundle]:
        writers = [
            c
            for c in _components(_merged(bundle, name))
            if c["_target_"].rsplit(".", 1)[-1] in ("StatsHandler", "CheckpointSaver", "MetricsSaver")
            or c["_target_"].endswith(("Saver", "Writer"))
        ]
        # the best-model saver holds state every rank restores (the best metric); Ignite's DiskSaver under it
        # writes on rank 0 only
        writers = [c for c in writers if not c.get("save_key_metric")]
        assert writers, f"{bundle}/configs/{name}: no writer handlers found"
        for c in writers:
            # "@is_not_rank0", or "$@is_not_rank0 or <another condition>"
            assert str(c.get("_disabled_")).lstrip("$").split(" or ")[0] == "@is_not_rank0", (
                f"{bundle}/configs/{name}: {c['_target_']} writes on every rank"
            )


@pytest.mark.parametrize("bundle", BUNDLES)
def test_workflow_steps_are_named(bundle: str) -> None:
    """`initialize` / `run` / `finalize` steps call named functions; no bare expression evaluated for its side
    effect (such as ``$len(@items)`` to make the loader run)."""
    for name in _configs(bundle):
        config = _load(bundle, name)
        for section in ("initialize", "run", "finalize"):
            for step in config.get(section) or []:
                assert not str(step).startswith("$len("), f"{bundle}/configs/{name}: {section} step {step!r}"


@pytest.mark.parametrize("bundle", BUNDLES)
def test_multi_gpu_configs_extend_the_steps(bundle: str) -> None:
    """A multi-process config adds its steps to the single-process ones (MONAI's "+" merge) instead of restating
    them, so a fix to a step lands in both."""
    for name in [n for n in _configs(bundle) if n.startswith("multi_gpu")]:
        config = _load(bundle, name)
        restated = {"initialize", "run", "finalize"} & set(config)
        assert not restated, f"{bundle}/configs/{name} restates {sorted(restated)}; extend them with '+<key>'"
        assert {"+initialize", "+finalize"} <= set(config), f"{bundle}/configs/{name}"
