"""MONAI Decathlon-style datalists: read, resolve and write.

A datalist is a JSON object whose list-valued sections (``training``, ``validation``, ``test``, ...)
hold items such as ``{"image": [t1.nii.gz, ...] | "t1.nii.gz", "label": "seg.nii.gz", "case_id": ...}``.
Paths are relative to the datalist file unless absolute. Other top-level keys (``labels``: the label
convention of the ``label`` files, ``modalities``, ``description``, ...) are metadata.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from custom_components.data.atomic import atomic_write_text
from custom_components.data.labels import check_convention

PATH_KEYS: tuple[str, ...] = ("image", "label", "brain_mask", "roi", "source_image", "source_label")
NIFTI_SUFFIXES: tuple[str, ...] = (".nii.gz", ".nii")


def is_nifti(name: str | os.PathLike) -> bool:
    """Whether a file name has a NIfTI extension (and a name before it)."""
    name = Path(name).name
    return any(name.endswith(s) and len(name) > len(s) for s in NIFTI_SUFFIXES)


def nifti_stem(name: str | os.PathLike) -> str:
    """A file's name without its NIfTI extension (``.nii.gz`` or ``.nii``); other names are kept whole."""
    name = Path(name).name
    for suffix in NIFTI_SUFFIXES:
        if name.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return name


def source_name(img: Any) -> str | None:
    """The file a MetaTensor (or anything with a ``meta`` dict) was loaded from, to name it in messages; None
    when unknown. MONAI records the first file of a multi-file image; of a collated batch, the first item's.

    Args:
        img: the loaded image or label.
    """
    meta = getattr(img, "meta", None)
    name = meta.get("filename_or_obj") if isinstance(meta, Mapping) else None
    if isinstance(name, list | tuple):
        name = name[0] if name else None
    if isinstance(name, bytes):
        name = name.decode()
    return str(name) if isinstance(name, str | os.PathLike) and str(name) else None


def case_id_of(item: Mapping[str, Any]) -> str | None:
    """The project's one case-id rule: an item's ``case_id``, else the NIfTI stem of its first listed image.

    The first image *as listed* (before any modality selection), so that the same datalist item has the
    same id in every bundle whatever modalities it selects. None when the item names no image.
    """
    if item.get("case_id") not in (None, ""):
        return str(item["case_id"])
    image = item.get("image")
    first = image[0] if isinstance(image, list | tuple) and image else image
    if not isinstance(first, str | os.PathLike) or not str(first):
        return None
    return nifti_stem(first)


def _resolve(value: Any, base: Path) -> Any:
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if isinstance(value, str):
        # normalise lexically, never follow symlinks: the file name MONAI records (and names outputs
        # after) must stay the one in the datalist, not that of a link's target
        return value if os.path.isabs(value) else os.path.normpath(os.path.join(base, value))
    if isinstance(value, list | tuple):
        return [_resolve(v, base) for v in value]
    return value


def _relativise(value: Any, base: Path) -> Any:
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if isinstance(value, str):
        p = Path(value)
        if not p.is_absolute():
            return value
        try:
            return os.path.relpath(p, base)
        except ValueError:  # different drive on Windows
            return value
    if isinstance(value, list | tuple):
        return [_relativise(v, base) for v in value]
    return value


def read_datalist(path: str | os.PathLike) -> dict[str, Any]:
    """Read a datalist JSON and return it with every path key resolved to an absolute path.

    Args:
        path: the datalist file.

    Raises:
        FileNotFoundError / ValueError naming the file when it is missing or not a datalist.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: datalist file not found")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a datalist must be a JSON object with list sections such as 'training'")
    base = path.parent.resolve()
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, list) and all(isinstance(v, dict) for v in value):
            out[key] = [{k: (_resolve(v, base) if k in PATH_KEYS else v) for k, v in item.items()} for item in value]
        else:
            out[key] = value
    return out


def write_datalist(path: str | os.PathLike, data: dict[str, Any]) -> Path:
    """Write a datalist atomically, storing paths relative to the datalist's folder.

    Args:
        path: destination JSON file.
        data: datalist object; path keys may hold absolute paths.
    """
    path = Path(path)
    base = path.parent.resolve()
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, list) and all(isinstance(v, dict) for v in value):
            out[key] = [{k: (_relativise(v, base) if k in PATH_KEYS else v) for k, v in item.items()} for item in value]
        else:
            out[key] = value
    atomic_write_text(path, json.dumps(out, indent=2) + "\n")
    return path


def select_modalities(
    images: Sequence[str], available: Sequence[str] | None, wanted: Sequence[str], where: str
) -> list[str]:
    """The image files of ``wanted`` modalities, in that order, picked by name.

    Args:
        images: an item's image files, in the order of the datalist's top-level ``modalities``.
        available: the datalist's top-level ``modalities`` (None: the files are taken as given, and
            their number must equal ``len(wanted)``).
        wanted: modalities to keep, in channel order.
        where: the datalist and item, for error messages.
    """
    images, wanted = list(images), [str(m) for m in wanted]
    if available is None:
        if len(images) != len(wanted):
            raise ValueError(
                f"{where}: {len(images)} image file(s) but {len(wanted)} modalities requested "
                f"({', '.join(wanted)}) and the datalist has no top-level 'modalities' to select them by name"
            )
        return images
    available = list(available)
    if len(images) != len(available):
        raise ValueError(
            f"{where}: {len(images)} image file(s) but the datalist's 'modalities' lists {len(available)} "
            f"({', '.join(available)})"
        )
    missing = [m for m in wanted if m not in available]
    if missing:
        raise ValueError(f"{where}: modalities {missing} not in the datalist's modalities {available}")
    return [images[available.index(m)] for m in wanted]


def label_convention_of(
    datalist: str | os.PathLike | Mapping[str, Any], label_convention: str | None = None, source: str = ""
) -> str:
    """The label convention of a datalist's ``label`` files.

    Args:
        datalist: datalist JSON file, or its already-read content.
        label_convention: explicit convention; must agree with the datalist's top-level ``labels`` when
            that is present. None: the datalist's ``labels``, else ``brats2023``.
        source: name of the datalist for error messages (default: the path).
    """
    data = datalist if isinstance(datalist, Mapping) else read_datalist(datalist)
    source = source or str(datalist if not isinstance(datalist, Mapping) else "<datalist>")
    declared = data.get("labels")
    try:
        if label_convention is None:
            return check_convention(str(declared) if declared is not None else "brats2023")
        check_convention(label_convention)
    except ValueError as e:
        raise ValueError(f"{source}: {e}") from e
    if declared is not None and declared != label_convention:
        raise ValueError(
            f"{source}: the datalist declares labels {declared!r} but label_convention is {label_convention!r}; "
            "set label_convention to the datalist's convention (or null to use it)"
        )
    return label_convention
