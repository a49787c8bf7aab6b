"""Export datalists of real and synthetic cases as an nnU-Net v2 raw dataset.

:func:`export_nnunet` writes ``<out>/Dataset{dataset_id:03d}_{name}/`` in nnU-Net v2's raw format:

- ``imagesTr/<case>_0000.nii.gz``, ``<case>_0001.nii.gz``, ...: one 3D file per channel, in the order of the
  datalist's top-level ``modalities`` (``.nii.gz`` 3D files are copied byte for byte, ``.nii`` files are
  gzipped, 4D files with one volume are squeezed to 3D);
- ``labelsTr/<case>.nii.gz``: uint8 labels on the first image's header grid, converted from the datalist's label
  convention to the values of nnU-Net's region-based BraTS setup (its ``Dataset137_BraTS21`` conversion):
  1 oedema, 2 necrosis / non-enhancing core, 3 enhancing tumour, with the regions whole tumour (1, 2, 3),
  tumour core (2, 3) and enhancing tumour (3) and ``regions_class_order`` (1, 2, 3);
- ``dataset.json``: ``channel_names``, ``labels``, ``regions_class_order``, ``numTraining``, ``file_ending``
  and a ``description`` / ``provenance`` naming the source datalists;
- ``splits_final.json`` (when there are real cases to validate on): ``min(5, real cases)`` folds, each
  ``{"train": [...], "val": [...]}``, whose ``val`` lists hold real cases only and whose ``train`` lists hold no
  synthetic case derived from one of the fold's ``val`` cases (no leak: a near-copy of a validation case would let
  the validation Dice measure memory). A synthetic case names the real cases it was derived from in its
  provenance's ``source_cases`` (:data:`SOURCE_KEY`; a refined case's are those of its ``parent``, the provenance of
  the case it refined); one without them is refused unless ``underived_ok`` says the synthetic cases are not
  derived from these real cases (then it is in every ``train`` list). nnU-Net's planner copies this file into the
  preprocessed folder, where training uses it.

Synthetic cases are named ``syn_<case_id>`` (:data:`SYNTHETIC_PREFIX`), real ones keep their case id. Every
datalist is read and checked (files exist, 3D, one grid per case, label values of the declared convention) before
anything is written, and the dataset is built in a temporary folder beside the target and renamed into place.
Predictions that nnU-Net writes for this dataset carry the same region-derived values; map them back with
:func:`nnunet_to_internal`, or score a folder of them against a datalist's labels with :func:`evaluate_label_files`
(BraTS ET / TC / WT Dice and HD95 of :func:`custom_components.quality.evaluation.region_metrics`).
"""

from __future__ import annotations

import gzip
import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from custom_components.data.atomic import atomic_write_text
from custom_components.data.datalist import label_convention_of, read_datalist
from custom_components.data.labels import INTERNAL_CLASSES, REGION_NAMES, REGIONS, check_convention, to_internal
from custom_components.data.loader import load_datalist
from custom_components.data.validation import check_items

__all__ = [
    "FILE_ENDING",
    "INTERNAL_TO_NNUNET",
    "NNUNET_LABELS",
    "NNUNET_TO_INTERNAL",
    "REGIONS_CLASS_ORDER",
    "SOURCE_KEY",
    "SYNTHETIC_PREFIX",
    "dataset_folder_name",
    "evaluate_label_files",
    "export_nnunet",
    "internal_to_nnunet",
    "make_splits",
    "nnunet_to_internal",
    "removed_per_fold",
]

logger = logging.getLogger(__name__)

FILE_ENDING: str = ".nii.gz"
SYNTHETIC_PREFIX: str = "syn_"
# provenance key of a synthetic item: the ids of the real cases it was derived from (its source scans or masks)
SOURCE_KEY: str = "source_cases"
MAX_FOLDS: int = 5
SPLIT_SEED: int = 12345  # the seed nnU-Net's own 5-fold split uses
# internal value (0 bg, 1 NCR, 2 ED, 3 ET) -> nnU-Net value; nnU-Net's BraTS regions need nested label sets, so
# oedema comes first: whole tumour (1, 2, 3) = ED + NCR + ET, tumour core (2, 3) = NCR + ET, enhancing (3) = ET
INTERNAL_TO_NNUNET: dict[int, int] = {0: 0, 1: 2, 2: 1, 3: 3}
NNUNET_TO_INTERNAL: dict[int, int] = {v: k for k, v in INTERNAL_TO_NNUNET.items()}
NNUNET_LABELS: dict[str, int | list[int]] = {
    "background": 0,
    "whole tumor": [1, 2, 3],
    "tumor core": [2, 3],
    "enhancing tumor": [3],
}
REGIONS_CLASS_ORDER: list[int] = [1, 2, 3]
_IDENTIFIER = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")


def _lut(table: dict[int, int]) -> np.ndarray:
    lut = np.zeros(max(table) + 1, dtype=np.uint8)
    for src, dst in table.items():
        lut[src] = dst
    return lut


def internal_to_nnunet(label: np.ndarray) -> np.ndarray:
    """Map an internal label volume (0 bg, 1 NCR, 2 ED, 3 ET) to the nnU-Net export's values (uint8).

    Args:
        label: integer label volume in the internal convention.

    Raises:
        ValueError: for values outside 0-3.
    """
    return _apply(label, INTERNAL_TO_NNUNET, "internal")


def nnunet_to_internal(label: np.ndarray) -> np.ndarray:
    """Map a label volume of the nnU-Net export (or an nnU-Net prediction for it: 1 ED, 2 NCR, 3 ET) to the internal
    convention (uint8).

    Args:
        label: integer label volume with values 0-3.

    Raises:
        ValueError: for values outside 0-3.
    """
    return _apply(label, NNUNET_TO_INTERNAL, "nnU-Net export")


def _apply(label: np.ndarray, table: dict[int, int], what: str) -> np.ndarray:
    label = np.asarray(label)
    values = np.unique(label).tolist()
    unknown = [v for v in values if v not in table]
    if unknown:
        raise ValueError(f"label values {unknown} are not {what} labels (allowed: {sorted(table)})")
    return _lut(table)[label.astype(np.int64)]


def dataset_folder_name(dataset_id: int, name: str) -> str:
    """nnU-Net's folder name ``Dataset{dataset_id:03d}_{name}``, after checking both parts.

    Args:
        dataset_id: nnU-Net dataset id, 1-999.
        name: dataset name (letters, digits, ``_`` and ``-``).

    Raises:
        ValueError: for an id outside 1-999 or a name nnU-Net cannot use in a folder name.
    """
    if isinstance(dataset_id, bool) or not isinstance(dataset_id, int | np.integer) or not 1 <= int(dataset_id) <= 999:
        raise ValueError(f"dataset_id must be an integer from 1 to 999, got {dataset_id!r}")
    if not isinstance(name, str) or not _NAME.match(name):
        raise ValueError(f"name must be letters, digits, '_' or '-' (starting with a letter or digit), got {name!r}")
    return f"Dataset{int(dataset_id):03d}_{name}"


def make_splits(
    real: Sequence[str],
    synthetic: Sequence[str] = (),
    seed: int = SPLIT_SEED,
    derived_from: Mapping[str, Iterable[str]] | None = None,
) -> list[dict[str, list]]:
    """Cross-validation folds in nnU-Net's ``splits_final.json`` form whose validation lists hold real cases only
    and whose training lists hold no synthetic case derived from the fold's validation cases.

    ``min(5, len(real))`` folds; the real cases, shuffled with ``seed``, are dealt round-robin to the folds'
    ``val`` lists; each ``train`` list is every other real case plus every synthetic case none of whose sources
    (``derived_from``) is in the fold's ``val`` list. Lists are sorted.

    Args:
        real: identifiers of the real cases.
        synthetic: identifiers of the synthetic cases (never validated on).
        seed: seed of the shuffle.
        derived_from: synthetic identifier -> identifiers of the real cases it was derived from; a synthetic
            case not in it is derived from none (it trains every fold).

    Returns:
        ``[{"train": [...], "val": [...]}, ...]``; empty when there is no real case, or when a fold would have no
        training case (e.g. one real case and no synthetic case that is not derived from it).
    """
    real = sorted(str(r) for r in real)
    sources = {str(s): {str(c) for c in (derived_from or {}).get(s, ())} for s in synthetic}
    n_folds = min(MAX_FOLDS, len(real))
    order = [real[i] for i in np.random.default_rng(seed).permutation(len(real))]
    splits = []
    for k in range(n_folds):
        val = sorted(order[k::n_folds])
        train = sorted([r for r in real if r not in val] + [s for s, src in sources.items() if not src & set(val)])
        if not train:
            return []
        splits.append({"train": train, "val": val})
    return splits


def removed_per_fold(splits: Sequence[Mapping[str, Sequence[str]]], synthetic: Sequence[str]) -> list[int]:
    """How many of the synthetic cases each fold's ``train`` list leaves out (those derived from its ``val`` cases).

    Args:
        splits: folds of :func:`make_splits`.
        synthetic: identifiers of every synthetic case.
    """
    synthetic = set(synthetic)
    return [len(synthetic - set(fold["train"])) for fold in splits]


def _read(
    datalist: str | os.PathLike, section: str, modalities: Sequence[str] | None, role: str
) -> tuple[list[dict[str, Any]], list[str], str, bool]:
    """Items (files not yet checked), channel names, label convention of one datalist and whether the names are its
    modalities; the cheap checks of ids and markers are done here, the files' by :func:`export_nnunet` after them."""
    data = read_datalist(datalist)
    available = data.get("modalities")
    convention = label_convention_of(data, None, str(datalist))
    items = load_datalist(
        datalist,
        section=section,
        modalities=modalities,
        require=("image", "label"),
        check="none",
    )
    n = len(items[0]["image"])
    if any(len(it["image"]) != n for it in items):
        raise ValueError(f"{datalist}: items of section {section!r} have different numbers of image files")
    names = list(modalities) if modalities is not None else (list(available) if available else [])
    named = bool(names)
    if not named:
        names = [f"channel{i}" for i in range(n)]
    for it in items:
        if not _IDENTIFIER.match(it["case_id"]):
            raise ValueError(
                f"{datalist}: case id {it['case_id']!r} cannot name nnU-Net files (letters, digits, '.', '_', '-')"
            )
        if role == "real" and it.get("synthetic"):
            raise ValueError(
                f"{datalist}: case {it['case_id']!r} is marked synthetic; pass this datalist as synthetic, not real"
            )
        if role == "real" and it["case_id"].startswith(SYNTHETIC_PREFIX):
            raise ValueError(
                f"{datalist}: real case id {it['case_id']!r} starts with {SYNTHETIC_PREFIX!r}, the prefix that marks "
                "synthetic cases in the export"
            )
    return items, names, convention, named


def _write_channel(src: str, dst: Path) -> str:
    """Write one channel as a 3D ``.nii.gz``; returns how (``copied``, ``gzipped`` or ``rewritten``)."""
    img = nib.load(src)
    if len(img.shape) == 3 and src.endswith(".nii.gz"):
        shutil.copyfile(src, dst)
        return "copied"
    if len(img.shape) == 3 and src.endswith(".nii"):
        with open(src, "rb") as f, gzip.open(dst, "wb") as g:
            shutil.copyfileobj(f, g)
        return "gzipped"
    data = np.asanyarray(img.dataobj)[..., 0]  # validation admits 4D only with one volume
    out = nib.Nifti1Image(data, None, header=img.header.copy())
    out.set_data_dtype(data.dtype)
    nib.save(out, str(dst))
    return "rewritten"


def _write_label(src: str, reference: str, convention: str, dst: Path) -> None:
    """Convert a label file to the export's values and save it on the reference image's header grid."""
    data = np.asanyarray(nib.load(src).dataobj)
    if data.ndim == 4:
        data = data[..., 0]
    try:
        values = internal_to_nnunet(to_internal(data, convention))
    except ValueError as e:
        raise ValueError(f"{src}: {e}") from e
    header = nib.load(reference).header.copy()
    out = nib.Nifti1Image(values, None, header=header)
    out.set_data_dtype(np.uint8)
    out.header.set_slope_inter(1.0, 0.0)
    out.header["cal_min"], out.header["cal_max"] = 0, 3
    nib.save(out, str(dst))


def _dataset_json(
    real: str | os.PathLike | None,
    synthetic: Sequence[str | os.PathLike],
    sources: Sequence[tuple[str, str, list[dict[str, Any]], str]],
    channels: Sequence[str],
    name: str,
    section: str,
    real_ids: Sequence[str],
    syn_ids: Sequence[str],
    splits: Sequence[Any],
    how: dict[str, int],
    underived_ok: bool,
) -> dict[str, Any]:
    """nnU-Net's dataset.json of an export, with the description and provenance of its sources."""
    conventions = {d: conv for d, _, _, conv in sources}
    description = (
        f"nnU-Net v2 raw dataset written by custom_components.export.nnunet: {len(real_ids)} real case(s)"
        + (f" from {sources[0][0]}" if real is not None else "")
        + f", {len(syn_ids)} synthetic case(s) (named '{SYNTHETIC_PREFIX}<case_id>')"
        + (f" from {', '.join(str(s) for s in synthetic)}" if synthetic else "")
        + f" (section {section!r}). Labels: 1 oedema, 2 necrosis / non-enhancing core, 3 enhancing tumour "
        "(nnU-Net's BraTS regions); splits_final.json validates on real cases only and trains no fold on a "
        "synthetic case derived from its validation cases."
    )
    return {
        "channel_names": {str(i): m for i, m in enumerate(channels)},
        "labels": NNUNET_LABELS,
        "regions_class_order": REGIONS_CLASS_ORDER,
        "numTraining": len(real_ids) + len(syn_ids),
        "file_ending": FILE_ENDING,
        "name": name,
        "description": description,
        "licence": "that of the source data (see provenance)",
        "converted_by": "custom_components.export.nnunet.export_nnunet",
        "provenance": {
            "real": None if real is None else str(Path(real).resolve()),
            "synthetic": [str(Path(s).resolve()) for s in synthetic],
            "section": section,
            "label_conventions": {str(Path(d).resolve()): conv for d, conv in conventions.items()},
            "label_mapping": {INTERNAL_CLASSES[k]: v for k, v in INTERNAL_TO_NNUNET.items()},
            "synthetic_prefix": SYNTHETIC_PREFIX,
            "num_real": len(real_ids),
            "num_synthetic": len(syn_ids),
            "num_folds": len(splits),
            "synthetic_removed_per_fold": removed_per_fold(splits, syn_ids),
            "underived_ok": bool(underived_ok),
            "images": how,
        },
    }


def _derived_from(item: Mapping[str, Any], datalist: str, required: bool) -> list[str]:
    """The real case ids a synthetic item names in ``provenance[SOURCE_KEY]``, or, for a case made from another
    synthetic case (TF-GAN's refinement, Pix2Pix: the input's provenance kept as ``parent``), that its input names;
    empty when none is named and they are not ``required``.

    Raises:
        ValueError naming the datalist and the case when ``required`` and the item names no source case, or when
        the key holds something other than a list of case ids.
    """
    provenance = item.get("provenance")
    while isinstance(provenance, Mapping) and SOURCE_KEY not in provenance:
        provenance = provenance.get("parent")
    found = provenance.get(SOURCE_KEY) if isinstance(provenance, Mapping) else None
    if found is None and not required:
        return []
    if not isinstance(found, list) or not found or not all(isinstance(c, str) and c for c in found):
        raise ValueError(
            f"{datalist}: synthetic case {item['case_id']!r} does not name the real cases it was derived from "
            f"(provenance {SOURCE_KEY!r}: a list of case ids, got {found!r}); without them it could train the folds "
            "that validate on its sources"
            + (
                "; pass underived_ok (--underived_ok) if the synthetic cases are not derived from the real cases of "
                "this export"
                if required
                else ""
            )
        )
    return found


def _collect_cases(
    sources: Sequence[tuple[str, str, list[dict[str, Any]], str]], require_sources: bool
) -> list[dict[str, Any]]:
    """One record per case of every datalist: nnU-Net identifier, role, label convention, files and (synthetic
    cases) the real case ids it was derived from.

    Args:
        sources: ``(datalist, role, items, convention)`` of every datalist.
        require_sources: refuse a synthetic case that does not name its source cases.

    Raises:
        ValueError naming the datalist for two cases with one identifier or a synthetic case without its sources.
    """
    seen: dict[str, str] = {}
    cases: list[dict[str, Any]] = []
    for datalist, role, items, convention in sources:
        for it in items:
            ident = it["case_id"] if role == "real" else SYNTHETIC_PREFIX + it["case_id"]
            if ident in seen:
                raise ValueError(
                    f"{datalist}: case {it['case_id']!r} gives the identifier {ident!r}, already given by a case of "
                    f"{seen[ident]}; identifiers must be unique"
                )
            seen[ident] = datalist
            cases.append(
                {
                    "identifier": ident,
                    "role": role,
                    "convention": convention,
                    "image": it["image"],
                    "label": it["label"],
                    "derived_from": [] if role == "real" else _derived_from(it, datalist, require_sources),
                }
            )
    return cases


def _fold_report(splits: Sequence[Mapping[str, Sequence[str]]], cases: Sequence[Mapping[str, Any]]) -> str:
    """The line on the synthetic cases each fold leaves out of training, and on those whose sources are none of the
    real cases (they train every fold: an id mismatch between the datalists would show here)."""
    real = {c["identifier"] for c in cases if c["role"] == "real"}
    synthetic = [c for c in cases if c["role"] == "synthetic"]
    foreign = sum(1 for c in synthetic if not set(c["derived_from"]) & real)
    return (
        f"nnU-Net folds: synthetic cases derived from a fold's validation cases left out of its training list: "
        f"{removed_per_fold(splits, [c['identifier'] for c in synthetic])} of {len(synthetic)} per fold; "
        f"{foreign} synthetic case(s) derived from none of the {len(real)} real cases train every fold"
    )


def _check_destination(out: Path, folder: str, dataset_id: int, overwrite: bool) -> Path:
    """``<out>/<folder>``, refused when it exists without ``overwrite`` or ``out`` holds another dataset of the id."""
    dest = out / folder
    if dest.exists() and not overwrite:
        raise FileExistsError(f"{dest}: exists; remove it or pass overwrite")
    if out.is_dir():
        prefix = f"Dataset{int(dataset_id):03d}_"
        clash = sorted(p.name for p in out.iterdir() if p.name.startswith(prefix) and p.name != folder)
        if clash:
            raise FileExistsError(
                f"{out}: already holds {', '.join(clash)} with dataset id {int(dataset_id)}; nnU-Net needs ids to be "
                "unique, choose another dataset_id"
            )
    return dest


def export_nnunet(
    real: str | os.PathLike | None,
    out: str | os.PathLike,
    synthetic: Sequence[str | os.PathLike] = (),
    dataset_id: int = 500,
    name: str = "TumourSynthesis",
    section: str = "training",
    overwrite: bool = False,
    *,
    modalities: Sequence[str] | None = None,
    underived_ok: bool = False,
    log: Callable[[str], None] = logger.info,
) -> Path:
    """Write real and synthetic datalists as one nnU-Net v2 raw dataset (see the module docstring for the layout).

    Args:
        real: datalist of real cases (their ids name the files as they are), or None for synthetic cases only.
        out: nnU-Net raw folder (``nnUNet_raw``) to write the dataset into.
        synthetic: datalists of synthetic cases (named ``syn_<case_id>``; kept out of every validation fold, and
            out of the training folds that validate on a real case named in their provenance's ``source_cases``).
        dataset_id: nnU-Net dataset id, 1-999.
        name: dataset name.
        section: datalist section to export from every datalist.
        overwrite: replace an existing dataset folder of this id and name.
        modalities: channels to export, chosen by name from every datalist's top-level ``modalities`` (e.g.
            ``["t1n"]`` when the synthetic cases have T1 only); None: all of the first datalist's modalities.
        underived_ok: accept synthetic cases whose provenance does not name ``source_cases``: the caller states
            that they are not derived from the real cases (they train every fold). Without it such a case is refused
            when there is a real datalist.
        log: where the line with the synthetic cases left out of each fold goes.

    Returns:
        the dataset folder ``<out>/Dataset{dataset_id:03d}_{name}``.

    Raises:
        FileExistsError: when the folder exists without ``overwrite``, or ``out`` holds another dataset with this id.
        FileNotFoundError / KeyError / ValueError: naming the datalist (and file) for bad input: a missing file, a
            label off its image's grid, label values outside the declared convention, datalists with different
            channels, two cases with one identifier, a synthetic case without ``source_cases`` (unless
            ``underived_ok``). Nothing is written then.
    """
    folder = dataset_folder_name(dataset_id, name)
    out = Path(out)
    dest = _check_destination(out, folder, dataset_id, overwrite)
    synthetic = [synthetic] if isinstance(synthetic, str | os.PathLike) else list(synthetic)
    if real is None and not synthetic:
        raise ValueError("nothing to export: give a real datalist, synthetic datalists, or both")

    # read and check everything before writing
    sources: list[tuple[str, str, list[dict[str, Any]], str]] = []  # (datalist, role, items, convention)
    channels: list[str] = [str(m) for m in modalities] if modalities is not None else []
    if modalities is not None and (not channels or len(set(channels)) != len(channels)):
        raise ValueError(f"modalities must be distinct names, got {list(modalities)}")
    named = bool(channels)  # whether the channels are modality names (selected by name in every datalist)
    first = ""
    for datalist, role in [*([(real, "real")] if real is not None else []), *((s, "synthetic") for s in synthetic)]:
        items, names, convention, has_names = _read(datalist, section, channels if named else None, role)
        if not first:
            channels, first, named = names, str(datalist), named or has_names
        elif len(items[0]["image"]) != len(channels):
            raise ValueError(
                f"{datalist}: {len(items[0]['image'])} image file(s) per case but {first} has {len(channels)} "
                f"({', '.join(channels)})"
            )
        sources.append((str(datalist), role, items, convention))
    cases = _collect_cases(sources, require_sources=real is not None and not underived_ok)
    # then every file: 3D, one grid per case, label values of the declared convention (healthy cases allowed)
    for datalist, _, items, convention in sources:
        check_items(
            items,
            labels=convention,
            require_tumour=False,
            source=datalist,
            section=section,
            modalities=channels if named else None,
        )
    real_ids = [c["identifier"] for c in cases if c["role"] == "real"]
    syn_ids = [c["identifier"] for c in cases if c["role"] == "synthetic"]
    splits = make_splits(real_ids, syn_ids, derived_from={c["identifier"]: c["derived_from"] for c in cases})
    if splits and syn_ids:
        log(_fold_report(splits, cases))

    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{folder}.", dir=out) as tmp:
        build = Path(tmp) / folder
        (build / "imagesTr").mkdir(parents=True)
        (build / "labelsTr").mkdir()
        how: dict[str, int] = {"copied": 0, "gzipped": 0, "rewritten": 0}
        for case in cases:
            for c, src in enumerate(case["image"]):
                how[_write_channel(src, build / "imagesTr" / f"{case['identifier']}_{c:04d}{FILE_ENDING}")] += 1
            _write_label(
                case["label"], case["image"][0], case["convention"], build / "labelsTr" / f"{case['identifier']}.nii.gz"
            )
        dataset_json = _dataset_json(
            real, synthetic, sources, channels, name, section, real_ids, syn_ids, splits, how, underived_ok
        )
        (build / "dataset.json").write_text(json.dumps(dataset_json, indent=2) + "\n")
        if splits:
            (build / "splits_final.json").write_text(json.dumps(splits, indent=2) + "\n")
        if dest.exists():
            old = Path(tmp) / "replaced"
            os.replace(dest, old)
            try:
                os.replace(build, dest)
            except BaseException:
                os.replace(old, dest)
                raise
        else:
            os.replace(build, dest)
    return dest


def _regions(label: np.ndarray) -> np.ndarray:
    """Internal label volume -> binary region channels ET, TC, WT."""
    return np.stack([np.isin(label, REGIONS[r]) for r in REGION_NAMES]).astype(np.uint8)


def evaluate_label_files(
    pred: str | os.PathLike,
    datalist: str | os.PathLike,
    section: str = "validation",
    out: str | os.PathLike | None = None,
    pred_labels: str = "nnunet",
    hd95_mode: str = "brats",
) -> dict[str, Any]:
    """BraTS region metrics (Dice, HD95 of ET, TC, WT) of label files in a folder against a datalist's labels.

    Every case of ``section`` needs ``<pred>/<case_id>.nii.gz`` (or ``.nii``) on its label's grid; all are checked
    before anything is computed or written.

    Args:
        pred: folder of predicted label files named by case id (e.g. ``nnUNetv2_predict``'s output).
        datalist: datalist whose ``label`` files are the reference (read with its declared convention).
        section: datalist section to score.
        out: JSON file to write atomically (None: write nothing).
        pred_labels: convention of the predictions: ``nnunet`` (this export's values: 1 ED, 2 NCR, 3 ET) or a
            project convention (``internal``, ``brats2023``, ``brats2021``, ``brats2015``).
        hd95_mode: ``brats`` or ``monai`` (see :func:`custom_components.quality.evaluation.hd95`).

    Returns:
        ``{"cases": {case_id: {"dice_ET", "hd95_ET", ...}}, "mean": {...}, "datalist", "section", "pred",
        "pred_labels"}``.

    Raises:
        FileNotFoundError / ValueError naming the datalist or the offending prediction file.
    """
    from custom_components.quality.evaluation import region_metrics

    if pred_labels != "nnunet":
        check_convention(pred_labels)
    pred = Path(pred)
    if not pred.is_dir():
        raise FileNotFoundError(f"{pred}: prediction folder not found")
    convention = label_convention_of(read_datalist(datalist), None, str(datalist))
    items = load_datalist(datalist, section=section, require=("label",), check="none")
    files: dict[str, Path] = {}
    for it in items:
        found = [
            pred / f"{it['case_id']}{ext}" for ext in (".nii.gz", ".nii") if (pred / f"{it['case_id']}{ext}").is_file()
        ]
        if not found:
            raise FileNotFoundError(f"{pred / (it['case_id'] + FILE_ENDING)}: no prediction for case {it['case_id']}")
        files[it["case_id"]] = found[0]
    cases: dict[str, dict[str, float]] = {}
    for it in items:
        cid, f = it["case_id"], files[it["case_id"]]
        ref_img, pred_img = nib.load(it["label"]), nib.load(str(f))
        ref, prd = np.asanyarray(ref_img.dataobj), np.asanyarray(pred_img.dataobj)
        ref, prd = (ref[..., 0] if ref.ndim == 4 else ref), (prd[..., 0] if prd.ndim == 4 else prd)
        if prd.shape != ref.shape or not np.allclose(pred_img.affine, ref_img.affine, atol=1e-3):
            raise ValueError(
                f"{f}: prediction grid {prd.shape} differs from label {it['label']} {ref.shape} (shape or affine)"
            )
        try:
            prd = nnunet_to_internal(prd) if pred_labels == "nnunet" else to_internal(prd, pred_labels)
        except ValueError as e:
            raise ValueError(f"{f}: {e}") from e
        try:
            ref = to_internal(ref, convention)
        except ValueError as e:
            raise ValueError(f"{it['label']}: {e}") from e
        spacing = [float(z) for z in ref_img.header.get_zooms()[:3]]
        cases[cid] = region_metrics(_regions(prd), _regions(ref), spacing=spacing, hd95_mode=hd95_mode)
    keys = list(next(iter(cases.values())))
    result: dict[str, Any] = {
        "datalist": str(Path(datalist).resolve()),
        "section": section,
        "pred": str(pred.resolve()),
        "pred_labels": pred_labels,
        "hd95_mode": hd95_mode,
        "mean": {k: float(np.mean([c[k] for c in cases.values()])) for k in keys},
        "cases": cases,
    }
    if out is not None:
        atomic_write_text(out, json.dumps(result, indent=2) + "\n")
    return result
