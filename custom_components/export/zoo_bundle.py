"""Export a bundle of this project as a self-contained MONAI Model Zoo style folder (and zip).

``python -m custom_components export-bundle NAME --out DIR [--weights FILE ...]`` writes ``DIR/NAME/``::

    configs/            the bundle's configs; every config with an ``imports`` list gets ``$import scripts`` first
    docs/README.md      the bundle's README plus a section on the exported copy
    LICENSE
    scripts/__init__.py puts scripts/ first on sys.path, so ``import custom_components`` loads the vendored copy
    scripts/custom_components/   the part of this package the bundle imports (:func:`bundle_modules`: the modules its
                        configs name, what they import, and their packages' ``__init__``); not the pipeline,
                        the CLI or the demo-data code
    models/             the weights given with --weights (same file names)
    large_files.yml     every file in models/ with its md5 (url empty: the file travels with the bundle)

and ``DIR/NAME.zip`` (``NAME/...`` inside, the layout ``monai.bundle`` reads from zips), so the bundle runs where
only MONAI and its dependencies are installed.

Why ``$import scripts`` and not a ``sys.path.insert`` expression: MONAI 1.6.1's ``ReferenceResolver`` evaluates
every ``$import ...`` item of a config before any other expression, and ``ConfigExpression`` executes only the
first statement of an import item (``$import sys; sys.path.insert(...)`` imports ``sys`` and nothing else).
A ``sys.path.insert`` expression would therefore run after ``$import custom_components`` had already failed (or
found another copy). Importing the package ``scripts`` runs its ``__init__``, which inserts the vendored folder;
``scripts`` itself is found because ``python -m monai.bundle`` puts the working directory first on
``sys.path`` - run the exported bundle from its folder, as Model Zoo bundles with ``scripts/`` are run.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.resources
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import yaml

PACKAGE_DIR = Path(__file__).resolve().parents[1]
# the bundles folder when no --bundles-dir is given (find_bundles_dir); the commands' --bundles-dir sets it for the
# stages they start
BUNDLES_ENV = "TUMORFAB_BUNDLES_DIR"
VENDOR_IMPORT = "$import scripts"
# the config value that points at the weights in models/ (named in the exported README)
WEIGHT_SETTINGS: dict[str, str] = {
    "dtss_mas_seg": "model_path",
    "tf_aug": "intensity_params",
    "tf_gan": "generator_checkpoint",
}
_IGNORE = shutil.ignore_patterns("__pycache__", "*.pyc", "*.pyo", "*.egg-info")
_REFERENCE = re.compile(r"custom_components(?:\.[A-Za-z_][A-Za-z0-9_]*)*")
_IMPORTS_LINE = re.compile(r"^imports:[ \t]*(#.*)?\n", re.MULTILINE)

SCRIPTS_INIT = '''"""Vendored code of this exported bundle (a copy of the custom_components package).

The configs import this package first (``$import scripts``); importing it puts this folder at the front of
``sys.path``, so the configs' ``$import custom_components`` and ``_target_: custom_components...`` load the copy
in ``scripts/custom_components`` and nothing else has to be installed besides MONAI and its dependencies.
Run ``python -m monai.bundle run ...`` from the bundle folder (the working directory is how ``scripts`` is found).
"""

import os
import sys

VENDOR_DIR = os.path.dirname(os.path.abspath(__file__))

_loaded = sys.modules.get("custom_components")
if _loaded is not None and not os.path.abspath(getattr(_loaded, "__file__", "") or "").startswith(VENDOR_DIR + os.sep):
    raise ImportError(
        f"custom_components is already imported from {getattr(_loaded, '__file__', None)}, not from this bundle's "
        f"{VENDOR_DIR}; run the exported bundle in a fresh Python process"
    )
if sys.path[:1] != [VENDOR_DIR]:
    if VENDOR_DIR in sys.path:
        sys.path.remove(VENDOR_DIR)
    sys.path.insert(0, VENDOR_DIR)
'''


def find_bundles_dir(bundles_dir: str | os.PathLike | None = None) -> Path:
    """The folder that holds the bundles (``<folder>/<name>/configs/...``), the one place that decides it.

    In order: ``bundles_dir`` (the commands' ``--bundles-dir``), else ``$TUMORFAB_BUNDLES_DIR``, else the copy
    installed with the package (``custom_components/bundles``: a wheel ships the repository's ``bundles/`` there),
    else the top-level ``bundles/`` of the checkout the package is imported from (an editable install or a source
    tree on ``sys.path``).

    Raises:
        FileNotFoundError when the chosen folder is not a directory, or no bundles folder is found.
    """
    chosen = bundles_dir or os.environ.get(BUNDLES_ENV)
    if chosen:
        folder = Path(chosen).expanduser().resolve()
        if not folder.is_dir():
            source = "--bundles-dir" if bundles_dir else f"${BUNDLES_ENV}"
            raise FileNotFoundError(f"{folder}: the bundles folder ({source}) is not a directory")
        return folder
    packaged = importlib.resources.files(PACKAGE_DIR.name) / "bundles"
    if isinstance(packaged, Path) and packaged.is_dir():
        return packaged
    checkout = PACKAGE_DIR.parent / "bundles"
    if not checkout.is_dir():
        raise FileNotFoundError(
            f"no bundles folder: neither {packaged} (installed) nor {checkout} (checkout) exists; "
            f"pass --bundles-dir or set ${BUNDLES_ENV}"
        )
    return checkout


def md5sum(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """MD5 of a file (the hash type Model Zoo's large_files.yml uses)."""
    h = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def vendor_config_text(text: str, source: str = "config") -> str:
    """A YAML config's text with ``$import scripts`` as the first entry of its top-level ``imports`` list.

    Everything else (comments, order, values) is kept; a config without ``imports`` is returned unchanged.

    Raises:
        ValueError naming ``source`` when ``imports`` is not a block list the entry can be inserted into.
    """
    data = yaml.safe_load(text) or {}
    if "imports" not in data:
        return text
    if not isinstance(data["imports"], list):
        raise ValueError(f"{source}: top-level 'imports' must be a list, got {type(data['imports']).__name__}")
    if data["imports"][:1] == [VENDOR_IMPORT]:
        return text
    match = _IMPORTS_LINE.search(text)
    if match is None:
        raise ValueError(f"{source}: 'imports' must be a YAML block list ('imports:' on its own line)")
    following = text[match.end() :]
    indent = re.match(r"[ \t]*", following).group(0) if following.lstrip(" \t").startswith("-") else "  "
    entry = f"{indent}# the vendored custom code (scripts/custom_components) before everything else\n"
    entry += f"{indent}- {VENDOR_IMPORT}\n"
    out = text[: match.end()] + entry + following
    new = yaml.safe_load(out)
    if new.get("imports") != [VENDOR_IMPORT, *data["imports"]] or {k: v for k, v in new.items() if k != "imports"} != {
        k: v for k, v in data.items() if k != "imports"
    }:
        raise ValueError(f"{source}: could not insert {VENDOR_IMPORT!r} into its 'imports' list")
    return out


def _vendor_config(src: Path, dst: Path) -> None:
    if src.suffix in (".yaml", ".yml"):
        dst.write_text(vendor_config_text(src.read_text(), str(src)))
    elif src.suffix == ".json" and src.name != "metadata.json":
        data = json.loads(src.read_text())
        if isinstance(data, dict) and isinstance(data.get("imports"), list) and data["imports"][:1] != [VENDOR_IMPORT]:
            data["imports"] = [VENDOR_IMPORT, *data["imports"]]
        dst.write_text(json.dumps(data, indent=4) + "\n")
    else:
        shutil.copy2(src, dst)


def _large_files(models: Path, bundle: Path) -> list[dict[str, Any]]:
    return [
        {"path": f.relative_to(bundle).as_posix(), "url": "", "hash_val": md5sum(f), "hash_type": "md5"}
        for f in sorted(models.rglob("*"))
        if f.is_file()
    ]


def _export_notes(name: str, large_files: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    setting = WEIGHT_SETTINGS.get(name)
    lines = [
        "",
        "## This exported copy",
        "",
        f"Exported from the `{name}` bundle (version {meta.get('version', '?')}) of the tumour synthesis project; "
        "it runs with MONAI and the packages of `configs/metadata.json` (`required_packages_version`) only.",
        "The code the configs instantiate is vendored in `scripts/custom_components`; every config with an "
        "`imports` list imports `scripts` first, which puts that folder first on `sys.path`. Run the commands "
        "from this folder (`python -m monai.bundle` finds `scripts` in the working directory):",
        "",
        "```bash",
        f"cd {name}",
        "python -m monai.bundle run --config_file \"['configs/common.yaml','configs/inference.yaml']\" \\",
        "    --meta_file configs/metadata.json --logging_file configs/logging.conf --bundle_root . ...",
        "```",
        "",
    ]
    if large_files:
        lines.append(
            "Weights (`large_files.yml` lists them with their md5; the url is empty because they travel with the "
            "bundle, and `python -m monai.bundle download_large_files --bundle_path .` checks their hashes):"
        )
        lines += [""] + [f"- `{f['path']}` (md5 `{f['hash_val']}`)" for f in large_files]
        if setting:
            lines += ["", f"Point the configs at them with `--{setting} {large_files[0]['path']}`."]
    else:
        lines += ["No weights were exported (`models/` is empty; train the bundle or add them with `--weights`)."]
    return "\n".join(lines) + "\n"


def _module_file(name: str) -> Path | None:
    """The file of the longest importable prefix of a dotted ``custom_components...`` name (None: none)."""
    parts = name.split(".")[1:]
    for n in range(len(parts), -1, -1):
        stem = PACKAGE_DIR.joinpath(*parts[:n])
        for f in (stem / "__init__.py", stem.with_suffix(".py") if n else None):
            if f is not None and f.is_file():
                return f
    return None


def _imported_names(path: Path) -> list[str]:
    """``custom_components`` names a module imports, at module level or inside functions."""
    names: list[str] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names += [node.module] + [f"{node.module}.{a.name}" for a in node.names]
    return [n for n in names if n == PACKAGE_DIR.name or n.startswith(PACKAGE_DIR.name + ".")]


def bundle_modules(config_files: Iterable[str | os.PathLike]) -> list[Path]:
    """The files of this package a bundle needs: every module its configs name (``_target_``, ``$`` expressions,
    ``imports``), every module those import (also inside functions), and the ``__init__`` of each package on
    the way, so the vendored copy imports exactly as the installed package does.

    Args:
        config_files: the bundle's config files.

    Returns:
        package files (absolute paths), sorted.
    """
    todo = [PACKAGE_DIR.name]
    for f in config_files:
        todo += _REFERENCE.findall(Path(f).read_text())
    seen: set[Path] = set()
    while todo:
        path = _module_file(todo.pop())
        if path is None or path in seen:
            continue
        seen.add(path)
        package = path.parent
        while package != PACKAGE_DIR.parent:
            todo.append(".".join(package.relative_to(PACKAGE_DIR.parent).parts))
            package = package.parent
        todo += _imported_names(path)
    return sorted(seen)


def export_bundle(
    name: str,
    out: str | os.PathLike,
    weights: str | os.PathLike | Sequence[str | os.PathLike] | None = None,
    zip: bool = True,
    overwrite: bool = False,
    bundles_dir: str | os.PathLike | None = None,
) -> Path:
    """Write the self-contained bundle folder ``<out>/<name>`` (and ``<out>/<name>.zip``).

    Args:
        name: bundle name (a folder of ``bundles/``).
        out: output folder (created).
        weights: weight file(s) copied into ``models/`` under their own names and listed in ``large_files.yml``.
        zip: also write ``<out>/<name>.zip``.
        overwrite: replace an existing export (folder and zip).
        bundles_dir: where the bundles live (default: :func:`find_bundles_dir`'s).

    Returns:
        The exported bundle folder.

    Raises:
        FileNotFoundError naming a missing bundle or weight file; FileExistsError when the export exists and not
        ``overwrite``; ValueError for two weights with one file name.
    """
    src = find_bundles_dir(bundles_dir) / name
    meta_file = src / "configs" / "metadata.json"
    if not meta_file.is_file():
        raise FileNotFoundError(f"{meta_file}: not a bundle (bundles: {', '.join(_bundle_names(src.parent))})")
    files = [Path(w) for w in ([weights] if isinstance(weights, str | os.PathLike) else list(weights or []))]
    for w in files:
        if not w.is_file():
            raise FileNotFoundError(f"{w}: weight file not found")
    names = [w.name for w in files]
    if len(set(names)) != len(names):
        raise ValueError(f"weight files must have distinct names, got {names}")
    out = Path(out)
    dest, archive = out / name, out / f"{name}.zip"
    if not overwrite and (dest.exists() or (zip and archive.exists())):
        raise FileExistsError(f"{dest if dest.exists() else archive}: exists; remove it or pass --overwrite")
    out.mkdir(parents=True, exist_ok=True)

    with tempfile.TemporaryDirectory(prefix=f".{name}.", dir=out) as tmp:
        build = Path(tmp) / name
        (build / "configs").mkdir(parents=True)
        for cfg in sorted((src / "configs").iterdir()):
            if cfg.is_file():
                _vendor_config(cfg, build / "configs" / cfg.name)
        for extra in ("docs", "LICENSE"):
            path = src / extra
            if path.is_dir():
                shutil.copytree(path, build / extra, ignore=_IGNORE)
            elif path.is_file():
                shutil.copy2(path, build / extra)
        scripts = build / "scripts"
        for module in bundle_modules(p for p in (src / "configs").iterdir() if p.is_file()):
            target = scripts / module.relative_to(PACKAGE_DIR.parent)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(module, target)
        (scripts / "__init__.py").write_text(SCRIPTS_INIT)
        models = build / "models"
        models.mkdir()
        for w in files:
            shutil.copy2(w, models / w.name)
        large = _large_files(models, build)
        (build / "large_files.yml").write_text(yaml.safe_dump({"large_files": large}, sort_keys=False))
        readme = build / "docs" / "README.md"
        readme.parent.mkdir(exist_ok=True)
        meta = json.loads(meta_file.read_text())
        readme.write_text(
            (readme.read_text() if readme.is_file() else f"# {name}\n") + _export_notes(name, large, meta)
        )
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(build, dest)
    if zip:
        tmp_zip = shutil.make_archive(str(out / f".{name}.zip.tmp"), "zip", root_dir=out, base_dir=name)
        os.replace(tmp_zip, archive)
    return dest


def _bundle_names(root: Path) -> list[str]:
    return (
        sorted(p.name for p in root.iterdir() if (p / "configs" / "metadata.json").is_file()) if root.is_dir() else []
    )
