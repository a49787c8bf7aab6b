"""Installable anywhere: the wheel ships the bundles (``custom_components/bundles``), one function finds the bundles
folder (``find_bundles_dir``: ``--bundles-dir``, ``$TUMORFAB_BUNDLES_DIR``, the installed copy, the checkout's), and
an installed copy runs its own bundles from any working directory."""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from setuptools import find_namespace_packages

from custom_components.export.zoo_bundle import BUNDLES_ENV, find_bundles_dir

REPO = Path(__file__).resolve().parents[1]


def test_the_package_list_names_every_subpackage_and_the_bundles() -> None:
    """pyproject.toml lists its packages (automatic discovery cannot map bundles/ into the package): every subpackage,
    and custom_components.bundles from the top-level bundles/."""
    tomllib = pytest.importorskip("tomllib")
    setuptools_cfg = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    found = find_namespace_packages(where=str(REPO), include=["custom_components*"])
    assert sorted(setuptools_cfg["packages"]) == sorted([*found, "custom_components.bundles"])
    assert setuptools_cfg["package-dir"] == {"custom_components.bundles": "bundles"}


def test_find_bundles_dir_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--bundles-dir, else $TUMORFAB_BUNDLES_DIR, else (in this checkout: no installed copy) the top-level bundles/;
    a named folder that does not exist is refused, naming where it came from."""
    given, env = tmp_path / "given", tmp_path / "env"
    given.mkdir()
    env.mkdir()
    monkeypatch.delenv(BUNDLES_ENV, raising=False)
    assert find_bundles_dir() == REPO / "bundles"
    monkeypatch.setenv(BUNDLES_ENV, str(env))
    assert find_bundles_dir() == env.resolve()
    assert find_bundles_dir(given) == given.resolve()
    with pytest.raises(FileNotFoundError, match="--bundles-dir"):
        find_bundles_dir(tmp_path / "missing")
    monkeypatch.setenv(BUNDLES_ENV, str(tmp_path / "missing"))
    with pytest.raises(FileNotFoundError, match=BUNDLES_ENV):
        find_bundles_dir()


def test_bundles_dir_flag(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    """``--bundles-dir``: a folder that does not exist exits 2 naming it (fabricate, export-bundle); a given one is
    ``$TUMORFAB_BUNDLES_DIR`` while the command runs (the stages it starts inherit it) and is unset again after."""
    import fire

    from custom_components import cli

    monkeypatch.delenv(BUNDLES_ENV, raising=False)
    missing = str(tmp_path / "missing")
    fabricate = ["fabricate", "dtss", "1", str(tmp_path / "real.json"), str(tmp_path / "out")]
    for command in (fabricate, ["export-bundle", "dtss_mas_seg", str(tmp_path / "export")]):
        with pytest.raises(SystemExit) as exit_info:
            fire.Fire(cli.COMMANDS, command=[*command, "--bundles-dir", missing])
        assert exit_info.value.code == 2 and missing in capsys.readouterr().err
    seen = []
    monkeypatch.setattr(
        "custom_components.pipeline.fabricate.fabricate", lambda *a, **k: seen.append(find_bundles_dir())
    )
    fire.Fire(cli.COMMANDS, command=[*fabricate, "--bundles-dir", str(tmp_path)])
    assert seen == [tmp_path.resolve()] and BUNDLES_ENV not in os.environ


def _run(cmd: list[str], cwd: Path, env: dict[str, str]) -> tuple[str, str]:
    """stdout and stderr of a command that must succeed."""
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, f"{cmd}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout, proc.stderr


# in the installed copy: the command the pipeline would run for dtss_mas_seg (its configs found by find_bundles_dir),
# with one extra id that prints where the bundle and the package came from (common.yaml imports custom_components)
PROBE = """
import json, sys
from pathlib import Path
from custom_components.pipeline.runner import bundle_command
probe = {"probe": "$print('PROBE', custom_components.__file__, @bundle_root)"}
print(json.dumps(bundle_command("dtss_mas_seg", ["common.yaml"], probe, Path("overrides.json"), run_id="probe")))
"""


@pytest.mark.slow
def test_installed_wheel_runs_its_own_bundles_from_any_folder(tmp_path: Path) -> None:
    """Build the wheel from a copy of the project (nothing written into the checkout), install it with
    ``pip --target`` (first on PYTHONPATH: the checkout's editable finder comes after the path, so the installed copy
    is imported), and from a folder outside the repository run ``fabricate --help`` and a dtss_mas_seg bundle
    command whose configs, bundle_root and code are all the installed copy's."""
    src, site, work = tmp_path / "src", tmp_path / "site", tmp_path / "work"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    for name in ("custom_components", "bundles"):
        shutil.copytree(REPO / name, src / name, ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, src / name)
    pip, offline = [sys.executable, "-m", "pip"], ["-q", "--disable-pip-version-check", "--no-deps", "--no-index"]
    _run([*pip, "wheel", *offline, "--no-build-isolation", "-w", "wheel", str(src)], tmp_path, dict(os.environ))
    wheel = next((tmp_path / "wheel").glob("custom_components-*.whl"))
    _run([*pip, "install", *offline, "--target", str(site), str(wheel)], tmp_path, dict(os.environ))
    site = site.resolve()
    packaged = site / "custom_components" / "bundles"
    assert (packaged / "dtss_mas_seg" / "configs" / "metadata.json").is_file()
    assert (packaged / "tf_gan" / "docs" / "README.md").is_file() and (packaged / "tf_aug" / "LICENSE").is_file()

    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in (BUNDLES_ENV, "TUMORFAB_BUNDLE", "PYTHONPATH")}
    env |= {"PYTHONPATH": str(site), "OMP_NUM_THREADS": "1"}
    help_text = "".join(_run([sys.executable, "-m", "custom_components", "fabricate", "--help"], work, env))
    assert "--bundles_dir" in help_text, help_text  # fire's help (on stderr) names the flag
    command = json.loads(_run([sys.executable, "-c", PROBE], work, env)[0])
    configs = [Path(c) for c in ast.literal_eval(command[command.index("--config_file") + 1])]
    assert configs[0].resolve() == packaged / "dtss_mas_seg" / "configs" / "common.yaml"
    assert Path(command[command.index("--bundle_root") + 1]).resolve() == packaged / "dtss_mas_seg"
    out = _run(command, work, env)[0]
    probe = next(line.split() for line in out.splitlines() if line.startswith("PROBE"))
    assert Path(probe[1]).resolve() == site / "custom_components" / "__init__.py"
    assert Path(probe[2]).resolve() == packaged / "dtss_mas_seg"
