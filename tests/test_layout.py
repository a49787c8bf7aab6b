"""No import cycles and no repository-layout assumptions in installed code."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from custom_components.export.zoo_bundle import _REFERENCE

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "custom_components"


def _module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, modules: set[str]) -> set[str]:
    """custom_components modules a file imports anywhere (module level or inside functions)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        else:
            continue
        found |= {n for n in names if n in modules}
    return found


def _graph() -> dict[str, set[str]]:
    files = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {name: _imports(path, set(files)) - {name} for name, path in files.items()}


def _cycle_from(graph: dict[str, set[str]], start: str) -> list[str] | None:
    stack, seen = [(start, [start])], set()
    while stack:
        node, path = stack.pop()
        for nxt in graph[node]:
            if nxt == start:
                return [*path, start]
            if nxt not in seen:
                seen.add(nxt)
                stack.append((nxt, [*path, nxt]))
    return None


GRAPH = _graph()
# a package __init__ re-exporting its modules is not a cycle of the modules themselves
MODULE_GRAPH = {
    m: {n for n in deps if not PACKAGE.joinpath(*n.split(".")[1:], "__init__.py").is_file()}
    for m, deps in GRAPH.items()
}


def test_graph_sees_imports() -> None:
    graph = GRAPH
    assert "custom_components.pipeline.summary" in graph["custom_components.pipeline.experiment"]
    assert "custom_components.data.loader" in graph["custom_components.engines.seg_data"]


@pytest.mark.parametrize("module", sorted(m for m in GRAPH if not m.endswith(("__init__",))))
def test_no_import_cycle(module: str) -> None:
    cycle = _cycle_from(MODULE_GRAPH, module)
    assert cycle is None, " -> ".join(cycle or [])


def test_installed_code_does_not_read_the_repository_layout() -> None:
    """The demo pipeline is package data; no module reads ci/ (which holds what CI and developers run)."""
    from custom_components.cli import DEMO_PIPELINE

    assert DEMO_PIPELINE.is_file() and PACKAGE in DEMO_PIPELINE.parents
    for path in PACKAGE.rglob("*.py"):
        text = path.read_text()
        assert '"ci"' not in text and "ci/pipelines" not in text, f"{path} reads the repository's ci/ folder"
    assert not (REPO / "ci" / "pipelines").exists()
    assert (REPO / "pipelines" / "real_experiment.yaml").is_file()


@pytest.mark.slow
def test_export_copies_only_what_the_bundle_imports(tmp_path: Path) -> None:
    import subprocess
    import sys

    from custom_components.export.zoo_bundle import export_bundle

    folder = export_bundle("tf_gan", tmp_path, zip=False)
    vendored = folder / "scripts" / "custom_components"
    copied = {str(p.relative_to(vendored)) for p in vendored.rglob("*.py")}
    assert {"synthesis/tf_gan.py", "networks/tf_gan.py", "data/loader.py", "transforms/roi_mask.py"} <= copied
    # not the pipeline, the CLI, demo data, healthy-scan preparation, export or another bundle's engine entry point
    assert not {"cli.py", "__main__.py", "export/zoo_bundle.py", "data/demo.py", "synthesis/healthy_prep.py"} & copied
    assert not any(p.startswith("pipeline/") for p in copied) and "synthesis/tf_aug.py" not in copied
    # the copy is complete: every module the configs name imports from it alone
    refs = sorted({r for f in (folder / "configs").glob("*.yaml") for r in _REFERENCE.findall(f.read_text())})
    code = (
        f"import sys; sys.path.insert(0, {str(folder / 'scripts')!r}); import importlib, custom_components\n"
        f"assert custom_components.__file__.startswith({str(vendored)!r}), custom_components.__file__\n"
        f"for ref in {refs!r}:\n"
        "    parts = ref.split('.')\n"
        "    for n in range(len(parts), 0, -1):\n"
        "        try:\n"
        "            obj = importlib.import_module('.'.join(parts[:n])); break\n"
        "        except ModuleNotFoundError:\n"
        "            continue\n"
        "    for attr in parts[n:]:\n"
        "        obj = getattr(obj, attr)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr


def test_package_top_holds_only_the_entry_points() -> None:
    """Every module sits in a subpackage named for its role; the top holds the package and its CLI."""
    top = {p.name for p in PACKAGE.glob("*.py")}
    assert top == {"__init__.py", "__main__.py", "cli.py"}, sorted(top)


def test_data_is_the_bottom_layer() -> None:
    """custom_components.data imports nothing of the package above it."""
    upward = {
        (module, dep)
        for module, deps in GRAPH.items()
        if module.startswith("custom_components.data")
        for dep in deps
        if not dep.startswith("custom_components.data")
    }
    assert not upward, sorted(upward)


# the package's layers, bottom first (docs/architecture.md "Layers"); a module imports only its own layer and below
LAYERS = (
    ("data",),
    ("transforms", "networks", "losses", "distributed"),
    ("handlers", "engines"),
    ("quality", "synthesis", "export", "nnunet"),
    ("pipeline", "cli", "__main__"),
)


def test_imports_point_down_the_layers() -> None:
    level = {sub: i for i, subs in enumerate(LAYERS) for sub in subs}
    subpackages = {m.split(".")[1] for m in GRAPH if m.count(".") >= 1}
    assert subpackages <= set(level), f"subpackages without a layer: {sorted(subpackages - set(level))}"
    upward = sorted(
        (module, dep)
        for module, deps in GRAPH.items()
        if module.count(".") >= 1
        for dep in deps
        if level[dep.split(".")[1]] > level[module.split(".")[1]]
    )
    assert not upward, upward


MAX_FUNCTION_LINES = 120


def test_no_function_is_longer_than_120_lines() -> None:
    """Every function and method of the package, from its ``def`` line to its last line, fits in 120 lines."""
    long = [
        f"{path.relative_to(REPO)}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1} lines)"
        for path in sorted(PACKAGE.rglob("*.py"))
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES
    ]
    assert not long, "split these functions:\n" + "\n".join(long)


# a test module or conftest, imported by name: `tests.test_x`, `tests.conftest`, or bare / relative `test_x`
_TEST_MODULE = re.compile(r"(tests\.)?(test_\w*|conftest)(\..*)?")


def _test_module_imports(source: str) -> list[str]:
    """The test modules and conftests that ``source`` imports (absolute, ``from tests import``, relative)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = ".".join(filter(None, ["tests" if node.level else "", node.module or ""]))
            names = [base, *(f"{base}.{a.name}" for a in node.names)]
        else:
            continue
        found += [n for n in names if _TEST_MODULE.fullmatch(n)]
    return found


def test_no_test_module_imports_another() -> None:
    """Shared test builders live in helper modules (tests/bundle_utils.py, tests/tf_gan_data.py, ...): a test module
    never imports another test module or conftest.py, so each one runs, and is collected, on its own."""
    assert _test_module_imports("from tests.test_a import f\nfrom tests import conftest\nfrom .test_b import g")
    assert _test_module_imports("import tests.test_c\nfrom . import test_d\nfrom tests.conftest import REPO")
    assert not _test_module_imports("from tests.bundle_utils import REPO\nfrom tests import hostile\nimport pytest")
    offenders = {
        str(path.relative_to(REPO)): found
        for path in sorted((REPO / "tests").glob("test_*.py"))
        if (found := _test_module_imports(path.read_text()))
    }
    assert not offenders, offenders
