"""The project's one datalist loader: every bundle, the pipeline and the CLI read items through it.

:func:`load_datalist` reads one section of a Decathlon-style datalist (paths resolved against the
datalist's folder by :func:`~custom_components.data.datalist.read_datalist`), selects modalities by name,
checks the label convention, gives each item its case id by the one rule
(:func:`~custom_components.data.datalist.case_id_of`), rejects duplicate ids and validates every named
file (:func:`~custom_components.data.validation.check_items`) before anything is written.

MONAI's ``load_decathlon_datalist`` is not used: it resolves only ``image``/``label`` and drops the
top-level ``modalities`` / ``labels`` metadata that modality selection and label conventions need.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from custom_components.data.datalist import case_id_of, label_convention_of, read_datalist, select_modalities
from custom_components.data.validation import check_items

__all__ = ["CHECKS", "load_datalist"]

# what ``check`` may ask for: every file read and checked, only their existence, or nothing
CHECKS: tuple[str, ...] = ("full", "exists", "none")


def load_datalist(
    datalist: str | os.PathLike,
    section: str = "training",
    modalities: Sequence[str] | None = None,
    require: Sequence[str] = ("image",),
    keys: Sequence[str] | None = None,
    label_convention: str | None = None,
    check: str = "full",
    require_tumour: bool = True,
    max_items: int | None = None,
) -> list[dict[str, Any]]:
    """Items of one datalist section with absolute paths, selected modalities and a ``case_id`` each.

    Args:
        datalist: datalist JSON file.
        section: list section to read (``training``, ``validation``, ``test``...).
        modalities: modality names to keep as ``image`` channels, in this order, chosen by name from the
            datalist's top-level ``modalities`` (without it, an item must list exactly this many files);
            None keeps every image file.
        require: keys every item must have.
        keys: keys to keep besides ``case_id`` and ``image`` (None: every key of the item).
        label_convention: convention of the ``label`` files; must agree with the datalist's top-level
            ``labels`` when that is present (None: the datalist's ``labels``, else ``brats2023``).
        check: ``"full"`` reads and checks every named file (3D, one grid, label values, no NaN;
            see :mod:`custom_components.data.validation`), ``"exists"`` only checks that the files exist,
            ``"none"`` checks no file.
        require_tumour: with ``check="full"``, report labels without tumour voxels.
        max_items: keep only the first ``max_items`` items (None: all).

    Returns:
        items ``{"case_id", "image": [files], ...}``; the input datalist is not modified.

    Raises:
        FileNotFoundError / KeyError / ValueError naming the datalist (and the offending file).
    """
    if check not in CHECKS:
        raise ValueError(f"check must be one of {', '.join(CHECKS)}, got {check!r}")
    data = read_datalist(datalist)
    source = str(datalist)
    if not isinstance(data.get(section), list):
        raise KeyError(f"{source}: datalist has no section {section!r} (has: {', '.join(sorted(data))})")
    if not data[section]:
        raise ValueError(f"{source}: section {section!r} is empty")
    available = data.get("modalities")
    if available is not None and (
        not isinstance(available, list) or not available or not all(isinstance(m, str) for m in available)
    ):
        raise ValueError(f"{source}: top-level 'modalities' must be a non-empty list of names, got {available!r}")
    labels = label_convention_of(data, label_convention, source)
    wanted = None if modalities is None else [str(m) for m in modalities]
    if wanted is not None and available is not None:
        missing = [m for m in wanted if m not in available]
        if missing:
            raise ValueError(f"{source}: modalities {missing} not in the datalist's modalities {available}")
    raw = data[section] if max_items is None else data[section][: int(max_items)]
    items: list[dict[str, Any]] = []
    seen: dict[str, int] = {}
    for n, item in enumerate(raw):
        where = f"{source}: {section}[{n}]"
        if not isinstance(item, dict):
            raise ValueError(f"{where} is a {type(item).__name__}, expected an object with an 'image' key")
        absent = [k for k in ("image", *require) if k not in item or item[k] in (None, "", [])]
        if absent:
            raise ValueError(f"{where} ({case_id_of(item) or '?'}) has no {', '.join(dict.fromkeys(absent))}")
        case_id = case_id_of(item)
        if case_id in seen:
            raise ValueError(
                f"{source}: duplicate case id {case_id!r} in {section}[{seen[case_id]}] and {section}[{n}]"
            )
        seen[case_id] = n
        images = item["image"] if isinstance(item["image"], list) else [item["image"]]
        if wanted is not None:
            images = select_modalities(images, available, wanted, f"{where} ({case_id})")
        out = {k: v for k, v in item.items() if keys is None or k in keys}
        out.update(case_id=case_id, image=list(images))
        items.append(out)
    if check == "full":
        check_items(
            items, labels=labels, require_tumour=require_tumour, source=source, section=section, modalities=wanted
        )
    elif check == "exists":
        for item in items:
            files = [*item["image"], *(item[k] for k in ("label", "brain_mask", "roi") if isinstance(item.get(k), str))]
            for f in files:
                if not os.path.isfile(f):
                    raise FileNotFoundError(f"{source}: case {item['case_id']}: file not found: {f}")
    return items
