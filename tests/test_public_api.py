"""Public API: every name a bundle config or the docs use is importable from its subpackage, and every
subpackage exports its public classes and functions (each transform with its ``d`` version), as MONAI does."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import re
from pathlib import Path

import pytest
from monai.transforms import MapTransform, Transform

import custom_components

REPO = Path(__file__).resolve().parents[1]
SUBPACKAGES = ("transforms", "networks", "losses", "handlers", "engines", "data")
CONFIGS = sorted((REPO / "bundles").glob("*/configs/*.yaml")) + sorted((REPO / "bundles").glob("*/configs/*.json"))
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")), *sorted((REPO / "bundles").glob("*/docs/*.md"))]
REFERENCE = re.compile(r"custom_components(?:\.[A-Za-z_][A-Za-z0-9_]*)+")
IMPORT = re.compile(r"from (custom_components(?:\.\w+)*) import \(?([\w, \n]+)\)?")


def _resolve(dotted: str) -> object:
    """Import the longest module prefix of ``dotted`` and get the remaining attributes."""
    parts = dotted.split(".")
    for n in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:n]))
        except ModuleNotFoundError:
            continue
        for attr in parts[n:]:
            obj = getattr(obj, attr)
        return obj
    raise ImportError(dotted)


def _references(paths: list[Path]) -> dict[str, list[str]]:
    refs: dict[str, list[str]] = {}
    for path in paths:
        text = path.read_text()
        for ref in REFERENCE.findall(text):
            refs.setdefault(ref.rstrip("."), []).append(str(path.relative_to(REPO)))
        for module, names in IMPORT.findall(text):
            for name in (n.split(" as ")[0].strip() for n in names.replace("\n", ",").split(",")):
                if name:
                    refs.setdefault(f"{module}.{name}", []).append(str(path.relative_to(REPO)))
    return refs


def _public_path(ref: str) -> str | None:
    """For ``custom_components.<subpackage>.<module>.<Name>...`` the public path ``<subpackage>.<Name>``."""
    parts = ref.split(".")
    if len(parts) >= 4 and parts[1] in SUBPACKAGES:
        module = importlib.import_module(f"custom_components.{parts[1]}")
        if parts[3] in module.__all__:
            return f"custom_components.{parts[1]}.{parts[3]}"
    return None


CONFIG_REFS = _references(CONFIGS)
DOC_REFS = _references(DOCS)


def test_references_found() -> None:
    # the scan itself works: the configs use the loader and the transforms
    assert "custom_components.data.load_datalist" in CONFIG_REFS
    assert "custom_components.transforms.MapBratsLabelsd" in CONFIG_REFS


@pytest.mark.parametrize("ref", sorted(CONFIG_REFS))
def test_config_reference_importable_from_subpackage(ref: str) -> None:
    obj = _resolve(ref)
    assert obj is not None, ref
    parts = ref.split(".")
    if len(parts) >= 3 and parts[1] in SUBPACKAGES and not inspect.ismodule(obj):
        sub = importlib.import_module(f"custom_components.{parts[1]}")
        # configs name the public path (custom_components.transforms.X), not the module inside the subpackage
        assert _public_path(ref) is None, f"{CONFIG_REFS[ref][0]}: use {_public_path(ref)} instead of {ref}"
        assert parts[2] in sub.__all__, (
            f"{CONFIG_REFS[ref][0]}: {parts[2]} is not exported by custom_components.{parts[1]}"
        )


@pytest.mark.parametrize("ref", sorted(DOC_REFS))
def test_doc_reference_importable(ref: str) -> None:
    _resolve(ref)
    public = _public_path(ref)
    if public is not None:
        _resolve(public)


@pytest.mark.parametrize("sub", SUBPACKAGES)
def test_subpackage_exports_its_public_names(sub: str) -> None:
    package = importlib.import_module(f"custom_components.{sub}")
    for name in package.__all__:
        assert hasattr(package, name), f"custom_components.{sub}.__all__ lists {name} but it is not defined"
    exported = set(package.__all__)
    for info in pkgutil.iter_modules(package.__path__):
        module = importlib.import_module(f"custom_components.{sub}.{info.name}")
        for name, obj in vars(module).items():
            if name.startswith("_") or getattr(obj, "__module__", None) != module.__name__:
                continue
            if inspect.isclass(obj) and (sub != "data" or info.name not in ("demo", "healthy_prep")):
                assert name in exported, f"class {module.__name__}.{name} is not exported by custom_components.{sub}"


def test_every_transform_has_array_and_dict_versions() -> None:
    import custom_components.transforms as t

    transforms = {n for n in t.__all__ if inspect.isclass(getattr(t, n)) and issubclass(getattr(t, n), Transform)}
    dict_versions = {n for n in transforms if issubclass(getattr(t, n), MapTransform)}
    for name in dict_versions:
        assert name.endswith("d") and name[:-1] in transforms, f"{name} has no array version {name[:-1]}"
    for name in transforms - dict_versions:
        assert f"{name}d" in dict_versions, f"{name} has no dictionary version {name}d"


def test_issue_examples_import() -> None:
    from custom_components.networks import ClasswiseIntensity, TFGANGenerator
    from custom_components.transforms import (
        BrainMaskd,
        DeformationTumorSynthesisd,
        MapBratsLabelsd,
        RoiGaussianBlurd,
        RoiMaskd,
        TumorMaskAugmentd,
    )

    assert ClasswiseIntensity.__module__ == "custom_components.networks.classwise_intensity"
    assert TFGANGenerator.__module__.startswith("custom_components.networks")
    assert RoiMaskd.__module__ == BrainMaskd.__module__.replace("brain_mask", "roi_mask")
    assert all(
        c.__module__.startswith("custom_components.transforms")
        for c in (DeformationTumorSynthesisd, MapBratsLabelsd, RoiGaussianBlurd, TumorMaskAugmentd)
    )
    assert custom_components.__version__
