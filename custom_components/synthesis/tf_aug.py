"""TF-Aug stage 1 of Tumor Fabrication: inputs, training pairs, the case plan and the writer of the synthesis.

* inputs are read with :func:`custom_components.data.load_datalist` (the project's one loader; the
  bundle configs call it for the healthy and the real datalist).
* :func:`training_pairs` pairs healthy scans with real cases for the training of a, b.
* :func:`initial_intensities` is where a, b start: the identity (or given values), or the closed-form match of
  the class-wise intensity moments of the real cases to the blurred healthy tissue (``intensity_init: moments``).
* :func:`plan_cases` lists the synthetic cases to make: case ``i`` uses healthy scan ``i mod n``
  (``pairing="round_robin"``, the default: every healthy scan is used equally often) or a healthy scan
  drawn from its own seed (``pairing="random"``), and the per-case seed :func:`case_seed` derived from
  the global seed and ``i`` only, so case ``i`` does not depend on how many cases are requested.
* synthesis is a MONAI ``SupervisedEvaluator`` (configs/inference.yaml): a DataLoader over the pending planned
  cases whose transforms load the healthy scan and, seeded per case (``ApplySeededd``), draw m_s and blur the
  ROI; the network is the learned class-wise intensity ``network(image, label)``. :class:`TFAugCaseWriter` is
  its handler: it writes each case atomically with a provenance record, lists the cases complete from an
  earlier run with the same settings (resume) and writes the coarse datalist.
* :func:`mask_source_cases` names the real cases whose masks a case was built from: its provenance's
  ``source_cases`` (the writer's, given ``real_datalist``; ``fabricate``'s), what keeps it out of the nnU-Net folds
  that validate on them.
"""

from __future__ import annotations

import copy
import json
import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from ignite.engine import Engine, Events
from monai.transforms import Compose
from monai.utils import convert_to_numpy

from custom_components.data.atomic import atomic_write_text, save_nifti
from custom_components.data.datalist import write_datalist
from custom_components.data.labels import TUMOUR_CLASSES, check_convention, from_internal
from custom_components.data.loader import load_datalist
from custom_components.networks.classwise_intensity import CLASS_NAMES, ClasswiseIntensity
from custom_components.transforms.mask_augment import MaskPool, TumorMaskAugmentd
from custom_components.transforms.mass_effect import MassEffectd
from custom_components.transforms.roi_blur import RoiGaussianBlurd

logger = logging.getLogger(__name__)

PAIRINGS: tuple[str, ...] = ("round_robin", "random")
RECORD_VERSION = 1
INTENSITY_INITS: tuple[str, ...] = ("moments", "identity")


def training_pairs(
    healthy: Sequence[Mapping[str, Any]], real: Sequence[Mapping[str, Any]], length: int | None = None
) -> list[dict[str, Any]]:
    """Training items pairing healthy scans with (unrelated) real cases.

    Item ``k`` uses healthy scan ``k mod n_healthy`` and real case ``k mod n_real``; the data loader shuffles.

    Args:
        healthy: healthy items (``case_id``, ``image``, ``brain_mask``) from :func:`~custom_components.data.load_datalist`.
        real: real items (``case_id``, ``image``, ``label``) from :func:`~custom_components.data.load_datalist`.
        length: items per epoch (default ``max(n_healthy, n_real)``).

    Returns:
        items ``{"image", "brain_mask", "real_image", "real_label", "healthy_id", "real_id"}``, plus
        ``real_brain_mask`` when the real case has a ``brain_mask``.
    """
    if not healthy or not real:
        raise ValueError("training needs at least one healthy scan and one real tumour case")
    n = int(length) if length else max(len(healthy), len(real))
    return [
        {
            "image": list(healthy[k % len(healthy)]["image"]),
            "brain_mask": healthy[k % len(healthy)]["brain_mask"],
            "real_image": list(real[k % len(real)]["image"]),
            "real_label": real[k % len(real)]["label"],
            "healthy_id": healthy[k % len(healthy)]["case_id"],
            "real_id": real[k % len(real)]["case_id"],
            **({"real_brain_mask": real[k % len(real)]["brain_mask"]} if "brain_mask" in real[k % len(real)] else {}),
        }
        for k in range(n)
    ]


def _class_moments(
    image: Any, label: Any, classes: Sequence[int], sums: np.ndarray, squares: np.ndarray, counts: np.ndarray
) -> None:
    """Add the per-class, per-channel sums, sums of squares and voxel counts of ``image`` (C, *spatial) under
    ``label`` (1, *spatial) to the (classes, channels) accumulators."""
    img = convert_to_numpy(image, dtype=np.float64)
    lab = convert_to_numpy(label).reshape(img.shape[1:])
    for k, c in enumerate(classes):
        values = img[:, lab == c]
        sums[k] += values.sum(axis=1)
        squares[k] += (values**2).sum(axis=1)
        counts[k] += values.shape[1]


def moment_intensities(
    pairs: Sequence[Mapping[str, Any]],
    transform: Any,
    num_channels: int,
    classes: Sequence[int] = TUMOUR_CLASSES,
    draws: int = 1,
    seed: int = 0,
    min_std: float = 0.02,
    a_range: Sequence[float] = (0.1, 5.0),
) -> dict[str, Any]:
    """Closed-form start of TF-Aug's class-wise intensity map ``I(x) = a_c x + b_c``: match the mean and spread of
    each class's real intensities with those of the blurred healthy tissue under the synthetic masks.

    Eq. 1 applies ``I`` after the ROI blur ``B``, so ``x`` is blurred healthy tissue. With ``m_b, s_b`` the mean and
    standard deviation of ``x`` over the voxels of class c of the synthetic masks m_s, and ``m_r, s_r`` those of the
    real cases' class-c voxels (brain-normalised, as every model input), ``a_c = s_r / s_b`` and
    ``b_c = m_r - a_c m_b`` make the synthetic class have the real mean and spread. Guards: where ``s_b < min_std``
    (blurred tissue nearly constant, the ratio meaningless) only the means are matched (``a_c = 1``); otherwise
    ``a_c`` is clamped to ``a_range``, so one odd class cannot blow the contrast up or flatten it; a class absent on
    either side keeps the identity. Each channel is matched on its own.

    Args:
        pairs: training items (:func:`training_pairs`), each holding a healthy scan and a real case.
        transform: turns a pair into ``image`` (blurred healthy scan, ``(C, *spatial)``), ``label`` (the synthetic
            mask m_s, internal), ``real_image`` (brain-normalised) and ``real_label`` (internal): the tf_aug
            training's loading, label mapping, rescaling, mask augmentation and ROI blur, without its crops. It is
            deep-copied and seeded with ``seed``, so the training's own random draws are left as they are.
        num_channels: image channels.
        classes: internal tumour labels (NCR, ED, ET).
        draws: passes over ``pairs`` (each draws new synthetic masks); more draws, steadier blurred moments.
        seed: seed of the copied transform.
        min_std: blurred spread (image units, [-1, 1] range) below which only the means are matched.
        a_range: ``(min, max)`` of ``a_c``.

    Returns:
        ``{"a": (classes, channels) list, "b": ..., "real_mean", "real_std", "blurred_mean", "blurred_std",
        "voxels_real", "voxels_blurred", "matched": "spread" | "mean" | "none" per class and channel}``.
    """
    if not pairs:
        raise ValueError("moment_intensities needs at least one (healthy, real) pair")
    if int(draws) < 1:
        raise ValueError(f"draws must be >= 1, got {draws}")
    lo, hi = float(a_range[0]), float(a_range[1])
    if not 0 < lo <= hi:
        raise ValueError(f"a_range must be (min, max) with 0 < min <= max, got {a_range}")
    local = copy.deepcopy(transform)
    if hasattr(local, "set_random_state"):
        local.set_random_state(seed=int(seed))
    shape = (len(classes), int(num_channels))
    acc = {side: (np.zeros(shape), np.zeros(shape), np.zeros(shape)) for side in ("blurred", "real")}
    seen_real: set[str] = set()
    for _ in range(int(draws)):
        for pair in pairs:
            out = local(dict(pair))
            _class_moments(out["image"], out["label"], classes, *acc["blurred"])
            real_id = str(pair.get("real_id", len(seen_real)))
            if real_id not in seen_real:  # each real case counted once
                seen_real.add(real_id)
                _class_moments(out["real_image"], out["real_label"], classes, *acc["real"])
    moments = {}
    for side, (sums, squares, counts) in acc.items():
        n = np.maximum(counts, 1)
        mean = sums / n
        moments[side] = (mean, np.sqrt(np.maximum(squares / n - mean**2, 0.0)), counts)
    (m_b, s_b, n_b), (m_r, s_r, n_r) = moments["blurred"], moments["real"]
    a, b = np.ones(shape), np.zeros(shape)
    matched = np.full(shape, "none", dtype=object)
    present = (n_b > 0) & (n_r > 0)
    spread = present & (s_b >= min_std)
    a[spread] = np.clip(s_r[spread] / s_b[spread], lo, hi)
    b[present] = m_r[present] - a[present] * m_b[present]
    matched[present] = "mean"
    matched[spread] = "spread"
    return {
        "a": a.tolist(),
        "b": b.tolist(),
        "real_mean": m_r.tolist(),
        "real_std": s_r.tolist(),
        "blurred_mean": m_b.tolist(),
        "blurred_std": s_b.tolist(),
        "voxels_real": n_r.astype(int).tolist(),
        "voxels_blurred": n_b.astype(int).tolist(),
        "matched": matched.tolist(),
    }


def initial_intensities(
    method: str,
    pairs: Sequence[Mapping[str, Any]],
    transform: Any,
    num_channels: int,
    a_init: Any = 1.0,
    b_init: Any = 0.0,
    classes: Sequence[int] = TUMOUR_CLASSES,
    class_names: Sequence[str] = CLASS_NAMES,
    seed: int = 0,
    **moment_kwargs: Any,
) -> dict[str, Any]:
    """Initial ``a``, ``b`` of the tf_aug training (``intensity_init`` in configs/train.yaml), logged.

    Args:
        method: ``"moments"`` (:func:`moment_intensities`) or ``"identity"`` (``a_init``, ``b_init`` as given:
            1 and 0 by default, the paper's implicit start).
        pairs, transform, num_channels, classes, seed, moment_kwargs: see :func:`moment_intensities`.
        a_init, b_init: the start for ``"identity"`` (a number, one per class, or a table).
        class_names: names for the log.

    Returns:
        ``{"method", "a", "b"}`` (plus the moments for ``"moments"``), ready for ``ClasswiseIntensity``'s
        ``a_init`` / ``b_init`` / ``init_method``.
    """
    if method not in INTENSITY_INITS:
        raise ValueError(f"intensity_init must be one of {INTENSITY_INITS}, got {method!r}")
    if method == "identity":
        return {"method": method, "a": a_init, "b": b_init}
    result = {
        "method": method,
        **moment_intensities(pairs, transform, num_channels, classes, seed=seed, **moment_kwargs),
    }
    for k, name in enumerate(class_names):
        logger.info(
            f"TF-Aug intensity start (moments) {name}: a={np.round(result['a'][k], 4).tolist()} "
            f"b={np.round(result['b'][k], 4).tolist()} (real mean {np.round(result['real_mean'][k], 3).tolist()} "
            f"std {np.round(result['real_std'][k], 3).tolist()}; blurred healthy mean "
            f"{np.round(result['blurred_mean'][k], 3).tolist()} std {np.round(result['blurred_std'][k], 3).tolist()}; "
            f"matched {result['matched'][k]})"
        )
    return result


def synthetic_item(
    case_id: str, paths: Mapping[str, Any], provenance: Mapping[str, Any], keys: Sequence[str]
) -> dict[str, Any]:
    """The datalist item of a written synthetic case (absolute paths; ``write_datalist`` makes them relative).

    Args:
        case_id: the case's id.
        paths: the case's files: ``image`` (one file per modality) and one file per name in ``keys``.
        provenance: how the case was made (stage, sources, seed, parameters).
        keys: the single-file entries of the item, in order (e.g. label, roi, brain_mask).
    """
    item: dict[str, Any] = {"case_id": case_id, "image": [str(f) for f in paths["image"]]}
    item.update((key, str(paths[key])) for key in keys)
    return {**item, "synthetic": True, "provenance": dict(provenance)}


def mask_source_cases(source_masks: Sequence[str], real: Sequence[Mapping[str, Any]]) -> list[str]:
    """The ids of the real cases a TF-Aug case was derived from: those whose label files are its source masks
    (provenance ``source_masks``: the names of the mask pool's entries, the real datalist's label files), each once,
    in order of use; a combined mask names all of its cases. The healthy scan is not one of them.

    Args:
        source_masks: the label files the case's mask m_s was built from.
        real: the real items (``case_id``, ``label``) of the datalist the mask pool was read from, as
            :func:`~custom_components.data.load_datalist` returns them.

    Raises:
        ValueError naming the mask file when it is the label of none of the real cases.
    """
    by_label = {os.path.realpath(it["label"]): str(it["case_id"]) for it in real if it.get("label")}
    ids = []
    for mask in source_masks:
        case_id = by_label.get(os.path.realpath(mask))
        if case_id is None:
            raise ValueError(f"{mask}: TF-Aug source mask is the label of none of the {len(real)} real cases")
        ids.append(case_id)
    return list(dict.fromkeys(ids))


def case_seed(seed: int, index: int) -> int:
    """Seed of synthetic case ``index`` (uint32), derived from the global seed and the index only."""
    return int(np.random.SeedSequence([int(seed), int(index)]).generate_state(1)[0])


def plan_cases(
    healthy: Sequence[Mapping[str, Any]],
    num_cases: int,
    seed: int = 0,
    pairing: str = "round_robin",
    prefix: str = "tfaug",
) -> list[dict[str, Any]]:
    """The synthetic cases to make: id, index, seed and healthy scan of each.

    Args:
        healthy: healthy items (``case_id``, ``image``, ``brain_mask``) from :func:`~custom_components.data.load_datalist`.
        num_cases: number of cases (>= 1).
        seed: global seed.
        pairing: ``round_robin`` (case i uses healthy scan i mod n) or ``random`` (drawn from the case's seed).
        prefix: case id prefix (ids are ``<prefix>-<index:05d>``).
    """
    if int(num_cases) < 1:
        raise ValueError(f"num_cases must be >= 1, got {num_cases}")
    if pairing not in PAIRINGS:
        raise ValueError(f"pairing must be one of {PAIRINGS}, got {pairing!r}")
    if not healthy:
        raise ValueError("no healthy scans to pair synthetic tumours with")
    cases = []
    for i in range(int(num_cases)):
        s = case_seed(seed, i)
        if pairing == "round_robin":
            h = i % len(healthy)
        else:
            h = int(
                np.random.RandomState(np.random.SeedSequence([int(seed), i, 1]).generate_state(1)[0]).randint(
                    len(healthy)
                )
            )
        item = healthy[h]
        cases.append(
            {
                "case_id": f"{prefix}-{i:05d}",
                "case_index": i,
                "seed": s,
                "global_seed": int(seed),
                "healthy_id": item["case_id"],
                "image": list(item["image"]),
                "brain_mask": item["brain_mask"],
            }
        )
    return cases


def _walk(transform: Any) -> Iterable[Any]:
    if isinstance(transform, Compose):
        for t in transform.transforms:
            yield from _walk(t)
    else:
        yield transform


def find_transform(transform: Any, kind: type) -> Any | None:
    """The first transform of type ``kind`` inside a (nested) Compose, or None."""
    return next((t for t in _walk(transform) if isinstance(t, kind)), None)


def describe_synthesis(transform: Any) -> list[dict[str, Any]]:
    """JSON-ready settings of the synthesis transforms (recorded in provenance, compared on resume)."""
    out: list[dict[str, Any]] = []
    for t in _walk(transform):
        if isinstance(t, TumorMaskAugmentd):
            a = t.augment
            out.append(
                {
                    "transform": "TumorMaskAugmentd",
                    "mask_pool": [e.name for e in a.pool.entries],
                    "label_convention": a.pool.label_convention,
                    "num_masks": list(a.num_masks),
                    "scale_range": list(a.scale_range),
                    "isotropic": a.isotropic,
                    "rotate_range": list(a.rotate_range),
                    "flip_prob": a.flip_prob,
                    "max_shift": list(a.max_shift),
                    "precedence": list(a.precedence),
                    "min_voxels": a.min_voxels,
                    "min_fraction": a.min_fraction,
                    "max_retries": a.max_retries,
                    "interp_order": a.interp_order,
                }
            )
        elif isinstance(t, MassEffectd):
            m = t.mass
            out.append(
                {
                    "transform": "MassEffectd",
                    "keys": list(t.keys),
                    "max_displacement_mm": m.max_displacement_mm,
                    "min_displacement_mm": m.min_displacement_mm,
                    "falloff_mm": m.falloff_mm,
                    "boundary_mm": m.boundary_mm,
                    "grid_mm": m.grid_mm,
                    "prob": t.prob,
                }
            )
        elif isinstance(t, RoiGaussianBlurd):
            out.append(
                {
                    "transform": "RoiGaussianBlurd",
                    "sigma": t.blur.sigma,
                    "truncated": t.blur.truncated,
                    "normalize_in_mask": t.blur.normalize_in_mask if t.mask_key is not None else False,
                }
            )
        else:
            out.append({"transform": type(t).__name__})
    return out


def _json_ready(value: Any) -> Any:
    return json.loads(json.dumps(value))


class TFAugCaseWriter:
    """Ignite handler of the TF-Aug synthesis evaluator: writes each case, resumes, writes the datalist.

    The bundle's synthesis is a MONAI ``SupervisedEvaluator``: its DataLoader yields the planned cases (see
    :func:`plan_cases`) loaded and synthesised by the dataset transforms (``TumorMaskAugmentd``, optional
    ``MassEffectd``, ``RoiGaussianBlurd``, seeded per case by ``ApplySeededd``), and its network is the learned
    :class:`ClasswiseIntensity` called as ``network(image, label)``. This handler takes each decollated case at
    ``ITERATION_COMPLETED``, clips the tumour voxels (outside the tumour the image is the prepared healthy scan,
    copied bit for bit) and writes atomically into ``<output_dir>/<case_id>/``: one image file per modality, the
    label (``export_labels`` convention), the ROI (binary m_s), the brain mask, and last
    ``<case_id>_provenance.json``. The first ``qc_cases`` cases get a PNG montage in ``<output_dir>/qc``.

    Resume: :meth:`pending` lists only the cases not complete from an earlier run with identical settings
    (fingerprint) and intact files (recorded sizes), so the dataset skips the others; :meth:`check` refuses,
    before anything is written, a case made with other settings (unless ``overwrite``) and a healthy scan off the
    real masks' grid. :meth:`write_datalist` writes ``<output_dir>/<datalist_name>`` (``training`` section, every
    planned case in case order) once the evaluator has run.

    Args:
        cases: the planned cases (:func:`plan_cases`) this run is responsible for.
        output_dir: folder of the synthetic cases and the datalist.
        network: the learned intensity module (its parameters are recorded and fingerprinted).
        synthesis: the random synthesis transforms (their settings are recorded and fingerprinted).
        modalities: names of the image channels (file suffixes; datalist ``modalities``).
        export_labels: label convention of the written label files (and the datalist's ``labels``).
        output_ext: ``.nii`` (default: fastest, byte-reproducible) or ``.nii.gz`` (nibabel writes gzip
            without time stamp or file name, so it is reproducible too).
        clip: ``(min, max)`` the tumour voxels are clipped to; None does not clip.
        qc_cases: number of first cases with a QC PNG (0: none).
        overwrite: replace cases made with other settings instead of refusing.
        datalist_name: file name of the datalist in ``output_dir``.
        real_datalist: the datalist whose ``training`` labels are the mask pool (the bundle's ``real_datalist``):
            each case's provenance then names the real cases of its masks under ``source_cases``
            (:func:`mask_source_cases`), which keeps it out of the nnU-Net folds that validate on them. None: not named.
        description: datalist description.
        pred_key: output key of the synthesised image.
        image_key, label_key, brain_mask_key, params_key: batch keys of the (healthy) image, the synthetic
            label m_s, the brain mask and the drawn augmentation parameters.
    """

    def __init__(
        self,
        cases: Sequence[Mapping[str, Any]],
        output_dir: str | os.PathLike,
        network: ClasswiseIntensity,
        synthesis: Any,
        modalities: Sequence[str] = ("t1n",),
        export_labels: str = "internal",
        output_ext: str = ".nii",
        clip: Sequence[float] | None = (-1.0, 1.0),
        qc_cases: int = 3,
        overwrite: bool = False,
        datalist_name: str = "datalist.json",
        description: str = "TF-Aug coarse synthetic tumour cases (Tumor Fabrication stage 1)",
        pred_key: str = "pred",
        image_key: str = "image",
        label_key: str = "label",
        brain_mask_key: str = "brain_mask",
        params_key: str = "tf_aug_params",
        real_datalist: str | os.PathLike | None = None,
    ) -> None:
        if output_ext not in (".nii", ".nii.gz"):
            raise ValueError(f"output_ext must be '.nii' or '.nii.gz', got {output_ext!r}")
        if network.num_channels != len(modalities):
            raise ValueError(
                f"the intensity module has {network.num_channels} channels for modalities {list(modalities)}"
            )
        self.cases = [dict(c) for c in cases]
        self.by_id = {str(c["case_id"]): c for c in self.cases}
        self.output_dir = Path(output_dir)
        self.network = network
        self.synthesis = synthesis
        self.modalities = tuple(modalities)
        self.export_labels = check_convention(export_labels)
        self.output_ext = output_ext
        self.clip = None if clip is None else (float(clip[0]), float(clip[1]))
        self.qc_cases = int(qc_cases)
        self.overwrite = bool(overwrite)
        self.datalist_name = datalist_name
        self.description = description
        self.pred_key = pred_key
        self.keys = {"image": image_key, "label": label_key, "brain_mask": brain_mask_key, "params": params_key}
        self.written: dict[str, dict[str, Any]] = {}
        self.real_cases = (
            None if real_datalist is None else load_datalist(real_datalist, require=["label"], check="none")
        )

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.iteration_completed)

    # ----------------------------------------------------------------------------------------- paths
    @property
    def datalist_path(self) -> Path:
        """Where the coarse datalist is written."""
        return self.output_dir / self.datalist_name

    def case_paths(self, case: Mapping[str, Any]) -> dict[str, Any]:
        """Files of one case: ``image`` (list, one per modality), ``label``, ``roi``, ``brain_mask``, ``record``, ``qc``."""
        cid = case["case_id"]
        d = self.output_dir / cid
        ext = self.output_ext
        return {
            "image": [d / f"{cid}_{m}{ext}" for m in self.modalities],
            "label": d / f"{cid}_label{ext}",
            "roi": d / f"{cid}_roi{ext}",
            "brain_mask": d / f"{cid}_brainmask{ext}",
            "record": d / f"{cid}_provenance.json",
            "qc": self.output_dir / "qc" / f"{cid}.png",
        }

    def fingerprint(self, case: Mapping[str, Any]) -> dict[str, Any]:
        """Everything that determines a case's files; a rerun skips a case only when this is unchanged."""
        return _json_ready(
            {
                "version": RECORD_VERSION,
                "case_id": case["case_id"],
                "case_index": int(case["case_index"]),
                "seed": int(case["seed"]),
                "global_seed": int(case.get("global_seed", 0)),
                "healthy": [str(p) for p in case["image"]],
                "healthy_brain_mask": str(case["brain_mask"]),
                "synthesis": describe_synthesis(self.synthesis),
                "intensity": self.network.to_dict(),
                "clip": list(self.clip) if self.clip is not None else None,
                "modalities": list(self.modalities),
                "export_labels": self.export_labels,
                "output_ext": self.output_ext,
            }
        )

    def _read_record(self, path: Path) -> dict[str, Any] | None:
        if not path.is_file():
            return None
        try:
            record = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise ValueError(f"{path}: unreadable provenance record ({e}); delete the case folder to redo it") from e
        if not isinstance(record, dict) or "fingerprint" not in record or "provenance" not in record:
            raise ValueError(f"{path}: not a TF-Aug provenance record; delete the case folder to redo it")
        return record

    def _complete_record(self, case: Mapping[str, Any]) -> dict[str, Any] | None:
        """The record of ``case`` when an earlier run finished it with these settings and intact files, else None."""
        paths = self.case_paths(case)
        record = self._read_record(paths["record"])
        if record is None or record["fingerprint"] != self.fingerprint(case):
            return None
        sizes = record.get("files", {})
        for f in (Path(p) for p in [*paths["image"], paths["label"], paths["roi"], paths["brain_mask"]]):
            if not f.is_file() or sizes.get(f.name) != f.stat().st_size:
                return None
        return record

    # ------------------------------------------------------------------------------------ checking
    def check(self) -> None:
        """Check inputs and existing outputs before anything is written.

        Raises:
            ValueError naming the file when a healthy scan is not on the real masks' grid, or when an
            existing case was made with other settings (unless ``overwrite``).
        """
        augment = find_transform(self.synthesis, TumorMaskAugmentd)
        pool: MaskPool | None = augment.augment.pool if augment is not None else None
        seen: set[str] = set()
        for case in self.cases:
            mask = str(case["brain_mask"])
            if pool is not None and mask not in seen:
                seen.add(mask)
                header = nib.load(mask)
                pool.check_grid(header.shape[:3], np.asarray(header.affine), mask)
            if self.overwrite:
                continue
            record_path = self.case_paths(case)["record"]
            record = self._read_record(record_path)
            expected = self.fingerprint(case)
            if record is not None and record["fingerprint"] != expected:
                changed = sorted(
                    k
                    for k in set(record["fingerprint"]) | set(expected)
                    if record["fingerprint"].get(k) != expected.get(k)
                )
                raise ValueError(
                    f"{record_path}: this case was made with other settings (differs in: {', '.join(changed)}); "
                    f"use another output folder or set overwrite: true to replace the cases in {self.output_dir}"
                )

    def pending(self) -> list[dict[str, Any]]:
        """The cases still to make (all of them with ``overwrite``): the evaluator's dataset."""
        if self.overwrite:
            return [dict(c) for c in self.cases]
        return [dict(c) for c in self.cases if self._complete_record(c) is None]

    # ------------------------------------------------------------------------------------- writing
    def write_case(
        self,
        case: Mapping[str, Any],
        image: np.ndarray,
        label: np.ndarray,
        brain_mask: np.ndarray,
        affine: np.ndarray,
        params: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Write one synthesised case (atomically, provenance record last) and return its datalist item.

        Args:
            case: the planned case.
            image: the intensity module's output ``(C, *spatial)``; tumour voxels are clipped to ``clip`` here.
            label: the synthetic label m_s ``(*spatial)`` or ``(1, *spatial)``, internal convention.
            brain_mask: the brain mask (after mass effect, when used).
            affine: the grid's affine (that of the healthy scan).
            params: the drawn augmentation parameters (recorded).
        """
        paths = self.case_paths(case)
        params = _json_ready(dict(params or {}))
        source_masks = [c["source"] for c in params.get("components", [])]
        # the real cases of the masks (checked before any file is written)
        sources = {} if self.real_cases is None else {"source_cases": mask_source_cases(source_masks, self.real_cases)}
        label = np.asarray(label).reshape(np.asarray(image).shape[1:]).astype(np.uint8)
        brain = (np.asarray(brain_mask).reshape(label.shape) > 0).astype(np.uint8)
        image = np.asarray(image, dtype=np.float32)
        if self.clip is not None:
            image = np.where(label[None] > 0, np.clip(image, *self.clip), image).astype(np.float32)
        for c, path in enumerate(paths["image"]):
            save_nifti(image[c], affine, path, dtype=np.float32)
        exported = label if self.export_labels == "internal" else from_internal(label, self.export_labels)
        save_nifti(exported, affine, paths["label"], dtype=np.uint8)
        save_nifti((label > 0).astype(np.uint8), affine, paths["roi"], dtype=np.uint8)
        save_nifti(brain, affine, paths["brain_mask"], dtype=np.uint8)
        provenance = {
            "stage": "tf_aug",
            "healthy": case["image"][0] if len(case["image"]) == 1 else list(case["image"]),
            "healthy_brain_mask": str(case["brain_mask"]),
            "healthy_case_id": case.get("healthy_id"),
            "source_masks": source_masks,
            **sources,
            "seed": int(case["seed"]),
            "global_seed": int(case.get("global_seed", 0)),
            "case_index": int(case["case_index"]),
            "params": params,
            "blur": next((d for d in describe_synthesis(self.synthesis) if d["transform"] == "RoiGaussianBlurd"), None),
            "intensity": self.network.to_dict(),
            "voxels": {name: int((label == v).sum()) for v, name in ((1, "NCR"), (2, "ED"), (3, "ET"))},
        }
        files = [*paths["image"], paths["label"], paths["roi"], paths["brain_mask"]]
        record = {
            "fingerprint": self.fingerprint(case),
            "files": {Path(f).name: Path(f).stat().st_size for f in files},
            "provenance": provenance,
        }
        atomic_write_text(paths["record"], json.dumps(record, indent=2) + "\n")
        self._qc(case)
        item = self._item(case, provenance)
        self.written[str(case["case_id"])] = item
        return item

    def _item(self, case: Mapping[str, Any], provenance: Mapping[str, Any]) -> dict[str, Any]:
        return synthetic_item(case["case_id"], self.case_paths(case), provenance, ("label", "roi", "brain_mask"))

    def _qc(self, case: Mapping[str, Any]) -> None:
        """One PNG: the synthetic image as it is and with label contours, the healthy input it was painted
        on, and their absolute difference, with the ROI m_s outlined (to judge blur and intensities)."""
        paths = self.case_paths(case)
        if int(case["case_index"]) >= self.qc_cases:
            return
        from custom_components.quality.qc import save_montage

        save_montage(
            str(paths["image"][0]),
            str(paths["label"]),
            paths["qc"],
            title=f"{case['case_id']}: TF-Aug on {case.get('healthy_id', '')} (seed {case['seed']}), ROI outlined",
            source=str(case["image"][0]),
            row_titles=[f"synthetic ({self.modalities[0]})", "healthy input", "|synthetic - healthy|"],
            outline=str(paths["roi"]),
            outline_name="ROI m_s",
            labels=self.export_labels,
        )

    # --------------------------------------------------------------------------------------- events
    def iteration_completed(self, engine: Engine) -> None:
        """Write the cases of the evaluator's (decollated) batch."""
        batch, output = engine.state.batch, engine.state.output
        if isinstance(batch, Mapping) or isinstance(output, Mapping):
            raise TypeError("TFAugCaseWriter needs a decollating evaluator (decollate=True)")
        k = self.keys
        for b, o in zip(batch, output, strict=True):
            case = self.by_id[str(b["case_id"])]
            image = b[k["image"]]
            affine = np.asarray(
                convert_to_numpy(image.affine) if hasattr(image, "affine") else np.eye(4), dtype=np.float64
            )
            self.write_case(
                case,
                convert_to_numpy(o[self.pred_key]),
                convert_to_numpy(b[k["label"]]),
                convert_to_numpy(b[k["brain_mask"]]),
                affine,
                b.get(k["params"]),
            )
            logger.info(f"{case['case_id']}: written ({self.output_dir / case['case_id']})")

    def write_datalist(self) -> Path:
        """Write the datalist of every planned case (case order): those written now and those complete before.

        Raises:
            RuntimeError naming the case when a planned case was neither written nor complete before.
        """
        items, skipped = [], 0
        for case in self.cases:
            item = self.written.get(str(case["case_id"]))
            if item is None:
                record = self._complete_record(case)
                if record is None:
                    raise RuntimeError(f"{self.case_paths(case)['record']}: case {case['case_id']} was not made")
                item, skipped = self._item(case, record["provenance"]), skipped + 1
            items.append(item)
        path = write_datalist(
            self.datalist_path,
            {
                "description": self.description,
                "stage": "tf_aug",
                "labels": self.export_labels,
                "modalities": list(self.modalities),
                "training": items,
            },
        )
        logger.info(
            f"TF-Aug: {len(items) - skipped} case(s) written, {skipped} complete from an earlier run; datalist {path}"
        )
        return path
