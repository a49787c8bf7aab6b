"""Check a datalist and every file it names before a bundle reads it.

``validate_datalist`` / ``validate_items`` return a list of problems, one line each, every line
starting with the offending file (the datalist itself, or an image / label / mask file) and saying
what is wrong; an empty list means valid. ``check_datalist`` / ``check_items`` raise one
``ValueError`` listing all problems instead (for bundles, before they write any output).

What is checked, for every item of every list section (or of the requested ``sections``):

- the item is an object with an ``image`` key (one file or a list of files, one per modality) and,
  when the datalist declares ``modalities``, as many image files as modalities;
- every file named by ``image``, ``label``, ``brain_mask`` and ``roi`` exists and nibabel can read
  its header and its data;
- every volume is 3D. A 4D file whose last dimension is 1 is accepted as 3D (MONAI's ``LoadImage``
  with ``ensure_channel_first`` turns it into one channel), but all image files of one item must
  then have the same raw shape, because MONAI cannot stack a 3D file with a 4D one;
- the modalities of an item agree in shape and affine (tolerance ``AFFINE_ATOL`` mm);
  label, brain mask and ROI lie on the image grid;
- the data decompresses and holds no NaN / inf voxels;
- label values belong to the declared convention (the ``labels`` argument, else the datalist's
  top-level ``labels``, else ``brats2023``) and, with ``require_tumour``, the label has tumour voxels;
- a brain mask has brain voxels;
- case ids (``case_id``, else the first image's file name without extension) are unique across
  all checked sections.

Headers are checked first; the data of a file is read once (and only if its header is sound), so a
datalist of many cases costs one decompression per file. A problem of a file itself (missing,
unreadable, bad values) is reported once, with the first item that names it; a mismatch between
files is reported for every item where it occurs.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import nibabel as nib
import numpy as np

from custom_components.data.cache import DataCheckCache, default_cache
from custom_components.data.datalist import case_id_of, read_datalist, select_modalities
from custom_components.data.labels import CONVENTIONS, allowed_values, check_convention

AFFINE_ATOL: float = 1e-4
DEFAULT_LABELS: str = "brats2023"
MASK_KEYS: tuple[str, ...] = ("brain_mask", "roi")
# sections that are datalist sections even when they hold no objects (Decathlon names)
KNOWN_SECTIONS: tuple[str, ...] = ("training", "validation", "test")


def check_brain_mask_grid(
    image_shape: Sequence[int],
    image_affine: np.ndarray | None,
    mask_shape: Sequence[int],
    mask_affine: np.ndarray | None,
    image_name: str | None = None,
    mask_name: str | None = None,
    atol: float = AFFINE_ATOL,
) -> None:
    """Raise ValueError naming both files when a brain mask does not lie on its image's voxel grid.

    Used where a ``brain_mask`` is applied to loaded arrays (intensity rescaling, healthy-scan preparation);
    :func:`validate_datalist` reports the same mismatch from the file headers.

    Args:
        image_shape: spatial shape of the image.
        image_affine: its voxel-to-world matrix (None: not compared).
        mask_shape: spatial shape of the mask.
        mask_affine: its voxel-to-world matrix (None: not compared).
        image_name, mask_name: the files, for the message.
        atol: affine tolerance in mm.
    """
    mask_name, image_name = mask_name or "<brain mask>", image_name or "<image>"
    if tuple(int(s) for s in mask_shape) != tuple(int(s) for s in image_shape):
        raise ValueError(
            f"{mask_name}: brain mask shape {tuple(mask_shape)} differs from image {image_name} {tuple(image_shape)}; "
            "a brain_mask must lie on its image's voxel grid"
        )
    if image_affine is not None and mask_affine is not None:
        a, b = np.asarray(image_affine, dtype=float), np.asarray(mask_affine, dtype=float)
        if a.shape == b.shape and not np.allclose(a, b, atol=atol):
            raise ValueError(
                f"{mask_name}: brain mask affine differs from image {image_name} "
                f"(max difference {float(np.abs(a - b).max()):.3g} > {atol}); a brain_mask must lie on its image's "
                "voxel grid"
            )


@dataclass
class _Header:
    """What a file's header says, or why it could not be read."""

    shape: tuple[int, ...] = ()
    affine: np.ndarray | None = None
    error: str | None = None
    image: Any = None

    @property
    def spatial(self) -> tuple[int, ...]:
        return self.shape[:3]


@dataclass
class _Validator:
    """Collects problems; caches headers and data checks so each file is read at most once."""

    labels: str | None  # None: do not check label values
    require_tumour: bool
    modalities: Sequence[str] | None = None
    cache: DataCheckCache | None = None
    # modalities the run reads (chosen by name from ``modalities``): only their image files are checked
    select: Sequence[str] | None = None
    # keys every item must have besides ``image`` (e.g. ``label``, ``brain_mask``)
    require: Sequence[str] = ()
    # file keys whose files are checked (None: all); e.g. ("label",) when a run reads only the labels
    check_keys: Sequence[str] | None = None
    problems: list[str] = field(default_factory=list)
    _headers: dict[str, _Header] = field(default_factory=dict)
    _data: dict[tuple[str, str], list[str]] = field(default_factory=dict)
    _reported: set[tuple[str, str]] = field(default_factory=set)

    def report(self, path: str, problem: str, ctx: str) -> None:
        """Record a problem of the file itself, once, however many items name the file."""
        if (path, problem) not in self._reported:
            self._reported.add((path, problem))
            self.problems.append(f"{path}: {problem} {ctx}")

    # -- files -------------------------------------------------------------------------------
    def header(self, path: str) -> _Header:
        if path in self._headers:
            return self._headers[path]
        if not os.path.exists(path):
            h = _Header(error="file not found")
        elif not os.path.isfile(path):
            h = _Header(error="not a file")
        else:
            try:
                img = nib.load(path)
                h = _Header(shape=tuple(int(s) for s in img.shape), affine=np.asarray(img.affine), image=img)
            except Exception as e:  # nibabel raises many types for corrupt or foreign files
                h = _Header(error=f"unreadable image ({type(e).__name__}: {e})")
            else:
                if len(h.shape) == 3 or (len(h.shape) == 4 and h.shape[3] == 1):
                    pass
                elif len(h.shape) == 4:
                    h.error = f"4D volume of shape {h.shape}; each modality must be its own 3D file"
                else:
                    h.error = f"{len(h.shape)}D volume of shape {h.shape}; expected a 3D volume"
                if h.error is None and h.affine is not None and not np.isfinite(h.affine).all():
                    h.error = "affine contains NaN or inf"
        self._headers[path] = h
        return h

    def data_problems(self, path: str, role: str) -> list[str]:
        """Read the data of ``path`` once and check it for its ``role`` (image, label or mask)."""
        key = (path, role)
        if key in self._data:
            return self._data[key]
        cache_key = None
        if self.cache is not None:
            cache_key = self.cache.key(path, role, self.labels, self.require_tumour)
            cached = self.cache.get(cache_key)
            if cached is not None:
                self._data[key] = cached
                return cached
        out = self._read_and_check(path, role)
        self._data[key] = out
        if cache_key is not None:
            self.cache.put(cache_key, out)
        return out

    def _read_and_check(self, path: str, role: str) -> list[str]:
        out: list[str] = []
        img = self._headers[path].image
        try:
            data = np.asanyarray(img.dataobj)
        except Exception as e:
            out.append(f"unreadable data, file truncated or corrupt ({type(e).__name__}: {e})")
            return out
        if np.issubdtype(data.dtype, np.floating):
            bad = int(data.size - np.count_nonzero(np.isfinite(data)))
            if bad:
                out.append(f"{bad} NaN/inf voxel(s)")
                data = np.where(np.isfinite(data), data, 0)
        if role == "label":
            values = np.unique(data).tolist()
            allowed = allowed_values(self.labels) if self.labels is not None else None
            unknown = [v for v in values if v not in allowed] if allowed is not None else []
            if unknown:
                shown = [int(v) if float(v).is_integer() else v for v in unknown]
                out.append(
                    f"label values {shown} are not in the {self.labels} convention "
                    f"(allowed: {', '.join(map(str, allowed))}); declare the right convention with 'labels'"
                )
            if self.require_tumour and not any(v != 0 for v in values):
                out.append("label has no tumour voxels (all background); allow empty labels for healthy/control cases")
        elif role == "mask" and not np.any(data):
            out.append("mask is empty (no non-zero voxels)")
        return out

    # -- items -------------------------------------------------------------------------------
    def item(self, item: Any, where: str, source: str) -> None:
        """Check one item; ``where`` is e.g. ``training[3]``, ``source`` the datalist file."""
        if not isinstance(item, Mapping):
            self.problems.append(
                f"{source}: {where} is a {type(item).__name__}, expected an object with an 'image' key"
            )
            return
        cid = case_id_of(item)
        # name the datalist in every line about a file (items without a datalist file: "<items>")
        at = where if source == "<items>" else f"{source} {where}"
        ctx = f"({at}, case {cid})" if cid else f"({at})"
        loc = f"{where} (case {cid})" if cid else where
        if "image" not in item:
            self.problems.append(f"{source}: {loc} has no 'image' key")
            return
        absent = [k for k in self.require if not item.get(k)]
        if absent:
            self.problems.append(f"{source}: {loc} has no {', '.join(repr(k) for k in absent)}")
        images = item["image"]
        images = list(images) if isinstance(images, list | tuple) else [images]
        if not images or not all(isinstance(f, str | os.PathLike) and str(f) for f in images):
            self.problems.append(f"{source}: {loc} 'image' must be a file or a non-empty list of files")
            return
        images = [os.fspath(f) for f in images]
        if self.select is not None:
            try:
                images = select_modalities(images, self.modalities, self.select, f"{source}: {loc}")
            except ValueError as e:
                self.problems.append(str(e))
                return
        elif self.modalities is not None and len(images) != len(self.modalities):
            self.problems.append(
                f"{source}: {loc} has {len(images)} image file(s) but the datalist declares "
                f"{len(self.modalities)} modalities ({', '.join(self.modalities)})"
            )
        # headers: existence, dimensionality, grid agreement
        ref: tuple[str, _Header] | None = None
        sound: list[tuple[str, str]] = []
        checked = set(self.check_keys) if self.check_keys is not None else None
        for f in images if checked is None or "image" in checked else []:
            h = self.header(f)
            if h.error:
                self.report(f, h.error, ctx)
                continue
            if ref is None:
                ref = (f, h)
            elif h.shape != ref[1].shape:
                self.problems.append(f"{f}: image shape {h.shape} differs from {ref[0]} shape {ref[1].shape} {ctx}")
                continue
            elif not np.allclose(h.affine, ref[1].affine, atol=AFFINE_ATOL):
                self.problems.append(f"{f}: affine differs from that of {ref[0]} {_affine_diff(h, ref[1])} {ctx}")
                continue
            sound.append((f, "image"))
        others: list[tuple[str, str]] = []
        if "label" in item:
            others.append(("label", "label"))
        others += [(k, "mask") for k in MASK_KEYS if k in item]
        others = [(k, r) for k, r in others if checked is None or k in checked]
        for key, role in others:
            f = item[key]
            if not isinstance(f, str | os.PathLike) or not str(f):
                self.problems.append(f"{source}: {loc} '{key}' must be one file, got {f!r}")
                continue
            f = os.fspath(f)
            h = self.header(f)
            if h.error:
                self.report(f, h.error, ctx)
                continue
            if ref is not None:
                if h.spatial != ref[1].spatial:
                    self.problems.append(f"{f}: {key} shape {h.shape} differs from image {ref[0]} {ref[1].shape} {ctx}")
                    continue
                if not np.allclose(h.affine, ref[1].affine, atol=AFFINE_ATOL):
                    self.problems.append(
                        f"{f}: {key} affine differs from image {ref[0]} {_affine_diff(h, ref[1])} {ctx}"
                    )
                    continue
            sound.append((f, role))
        # data: read each sound file once
        for f, role in sound:
            for problem in self.data_problems(f, role):
                self.report(f, problem, ctx)


def _affine_diff(h: _Header, ref: _Header) -> str:
    return f"(max difference {float(np.abs(h.affine - ref.affine).max()):.3g} > {AFFINE_ATOL})"


def _duplicates(entries: Iterable[tuple[str, str]], source: str) -> list[str]:
    """Problems for case ids seen more than once; ``entries`` are ``(case_id, where)`` pairs."""
    seen: dict[str, list[str]] = {}
    for cid, where in entries:
        seen.setdefault(cid, []).append(where)
    return [f"{source}: duplicate case id {cid!r} in {', '.join(w)}" for cid, w in seen.items() if len(w) > 1]


def validate_items(
    items: Sequence[Mapping[str, Any]],
    labels: str = DEFAULT_LABELS,
    require_tumour: bool = True,
    source: str = "<items>",
    section: str = "items",
    modalities: Sequence[str] | None = None,
) -> list[str]:
    """Check a list of datalist items (absolute paths, or relative to the working directory).

    Args:
        items: datalist items such as ``{"image": [...], "label": ..., "case_id": ...}``.
        labels: label convention of the ``label`` files.
        require_tumour: report labels without tumour voxels.
        source: name used for problems that concern the list itself (e.g. the datalist file).
        section: name of the list, used to locate items in messages (``section[i]``).
        modalities: when given, every item must have this many image files.

    Returns:
        one line per problem, each starting with the offending file; empty when valid.

    Raises:
        ValueError: for an unknown label convention.
    """
    v = _Validator(
        labels=check_convention(labels), require_tumour=require_tumour, modalities=modalities, cache=default_cache()
    )
    for i, item in enumerate(items):
        v.item(item, f"{section}[{i}]", source)
    ids = [(case_id_of(it), f"{section}[{i}]") for i, it in enumerate(items) if isinstance(it, Mapping)]
    if v.cache is not None:
        v.cache.save()
    return v.problems + _duplicates(((c, w) for c, w in ids if c is not None), source)


def validate_datalist(
    path: str | os.PathLike,
    labels: str | None = None,
    require_tumour: bool = True,
    sections: Sequence[str] | None = None,
    select: Sequence[str] | None = None,
    require: Sequence[str] = (),
    cache: DataCheckCache | None | bool = True,
    check_keys: Sequence[str] | None = None,
) -> list[str]:
    """Check a datalist file and every file it names (see the module docstring for the checks).

    Args:
        path: datalist JSON file.
        labels: label convention of the ``label`` files; default: the datalist's top-level ``labels``,
            else ``brats2023``.
        require_tumour: report labels without tumour voxels (pass False for healthy/control cases).
        sections: list sections to check (default: every list section of the datalist).
        select: modalities a run reads, chosen by name from the datalist's top-level ``modalities``
            (without it every item must list exactly these many files); only their image files are
            checked. None: every image file.
        require: keys every item must have besides ``image`` (e.g. ``["label"]``).
        cache: data-check results keyed on (path, size, mtime) so a file is decompressed once across runs
            (:class:`~custom_components.data.cache.DataCheckCache`); True: the default cache, False/None: none.
        check_keys: file keys whose files are checked (e.g. ``["image"]`` for inference); None: every file key.

    Returns:
        one line per problem, each starting with the offending file; empty when valid.

    Raises:
        ValueError: when ``labels`` names an unknown convention.
    """
    path = str(path)
    if labels is not None:
        check_convention(labels)
    try:
        data = read_datalist(path)
    except (OSError, ValueError) as e:
        msg = str(e)
        return [msg if msg.startswith(path) else f"{path}: {msg}"]
    problems: list[str] = []

    convention = labels if labels is not None else data.get("labels", DEFAULT_LABELS)
    label_ok = convention in CONVENTIONS
    if not label_ok:
        problems.append(
            f"{path}: top-level 'labels' is {convention!r}, not a known convention ({', '.join(CONVENTIONS)})"
        )
    modalities = data.get("modalities")
    if modalities is not None and not (
        isinstance(modalities, list) and modalities and all(isinstance(m, str) for m in modalities)
    ):
        problems.append(f"{path}: top-level 'modalities' must be a non-empty list of names, got {modalities!r}")
        modalities = None

    found = [k for k, val in data.items() if isinstance(val, list) and (k in KNOWN_SECTIONS or _has_object(val))]
    if sections is None:
        names = found
        if not names:
            return problems + [f"{path}: no list sections (expected e.g. 'training': [{{'image': ...}}, ...])"]
    else:
        names = []
        for s in sections:
            if s in data and isinstance(data[s], list):
                names.append(s)
            else:
                problems.append(f"{path}: no list section {s!r} (has: {', '.join(found) or 'none'})")
    if names and not any(data[s] for s in names):
        problems.append(f"{path}: no items in {', '.join(names)}")

    # with an unknown convention the label values cannot be checked (reported once above)
    if cache is True:
        cache = default_cache()
    v = _Validator(
        labels=convention if label_ok else None,
        require_tumour=require_tumour,
        modalities=modalities,
        cache=cache or None,
        select=None if select is None else [str(m) for m in select],
        require=tuple(require),
        check_keys=None if check_keys is None else tuple(check_keys),
    )
    ids: list[tuple[str, str]] = []
    for s in names:
        for i, item in enumerate(data[s]):
            if not isinstance(item, Mapping):
                # read_datalist does not resolve entries of lists that are not all objects
                problems.append(f"{path}: {s}[{i}] is a {type(item).__name__}, expected an object with an 'image' key")
                continue
            v.item(item, f"{s}[{i}]", path)
            cid = case_id_of(item)
            if cid is not None:
                ids.append((cid, f"{s}[{i}]"))
    if v.cache is not None:
        v.cache.save()
    return problems + v.problems + _duplicates(ids, path)


def _has_object(value: list) -> bool:
    return any(isinstance(v, Mapping) for v in value)


def _raise(problems: list[str], what: str) -> None:
    if problems:
        raise ValueError(f"{what} is invalid ({len(problems)} problem(s)):\n" + "\n".join(problems))


def check_items(
    items: Sequence[Mapping[str, Any]],
    labels: str = DEFAULT_LABELS,
    require_tumour: bool = True,
    source: str = "<items>",
    section: str = "items",
    modalities: Sequence[str] | None = None,
) -> Sequence[Mapping[str, Any]]:
    """Like :func:`validate_items` but raise one ValueError listing every problem; returns ``items``.

    Args: see :func:`validate_items`.
    """
    _raise(validate_items(items, labels, require_tumour, source, section, modalities), source)
    return items


def check_datalist(
    path: str | os.PathLike,
    labels: str | None = None,
    require_tumour: bool = True,
    sections: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Like :func:`validate_datalist` but raise one ValueError listing every problem.

    Returns the datalist read with absolute paths, so a bundle config can validate and load in one
    expression: ``$custom_components.data.validation.check_datalist(@datalist)['training']``.

    Args: see :func:`validate_datalist`.
    """
    _raise(validate_datalist(path, labels, require_tumour, sections), str(path))
    return read_datalist(path)
