"""Offline DTSS and CarveMix: synthetic cases drawn from real training cases once, written to disk.

Training applies DTSS and CarveMix online (dtss_mas_seg ``configs/train.yaml``: ``train#dtss_online`` and
``train#carvemix`` on the cases loaded by ``load_transforms``). :func:`training_transforms` builds exactly those
transforms from the bundle's own configs, so an offline case is one draw of what phase 2 would have trained on:
the real case loaded (``LoadImaged``, channel first, RAS), its label mapped to the internal convention, its
intensities rescaled in the brain to [-1, 1], then the synthesis transform seeded for the case.

The case plan (:func:`plan_offline`) makes every case independent of the others and of the number requested:

* case ``i`` has the seed ``case_seed(seed, i)`` (:func:`custom_components.synthesis.tf_aug.case_seed`);
* a method without a second source (DTSS): case ``i`` derives from real training case ``i mod n`` (round robin,
  each case used equally often); at most :data:`~custom_components.synthesis.methods.MAX_PER_SOURCE` cases per
  real case;
* a method that carves from a second case (``needs_source``: CarveMix): case ``i`` carves the lesion of one real case into another by the ``i``-th ordered
  (target, source) pair of a permutation of all ``n (n - 1)`` pairs of distinct real training cases, drawn from
  the global seed alone; so no two cases share a pair and at most ``n (n - 1)`` cases exist.

:class:`OfflineCaseWriter` writes a case atomically (image channels one NIfTI per modality, the label in the
internal convention, the brain mask, the QC montage, and last the provenance record that marks the case complete,
as :class:`~custom_components.synthesis.tf_aug.TFAugCaseWriter` does), and knows which cases an earlier run
completed with the same settings.
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from monai.transforms import Compose
from monai.utils import convert_to_numpy

from custom_components.data.atomic import atomic_write_text, save_nifti
from custom_components.data.keys import SynthesisKeys
from custom_components.synthesis.methods import METHODS as REGISTRY
from custom_components.synthesis.methods import SynthesisMethod, get_method
from custom_components.synthesis.tf_aug import case_seed, synthetic_item

# the registered methods that derive cases from real ones with dtss_mas_seg's transforms
METHODS: tuple[str, ...] = tuple(name for name, m in REGISTRY.items() if m.derived)
RECORD_VERSION = 1
# dtss_mas_seg's configs: the loading and the online synthesis of its training
TRAIN_CONFIGS: tuple[str, ...] = ("common.yaml", "train.yaml")
# keys of a method's transform set by training code rather than settings
_NOT_SETTINGS = {"source", "loader"}
# the stream of the global seed that orders CarveMix's pairs (case seeds use (seed, i))
_PAIR_STREAM = 7919


def _json_ready(value: Any) -> Any:
    return json.loads(json.dumps(value, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o)))


def _derived_method(name: str) -> SynthesisMethod:
    spec = get_method(name)
    if not spec.derived:
        raise ValueError(f"offline method must be one of {METHODS}, got {name!r}")
    return spec


def plan_offline(method: str, real: Sequence[Mapping[str, Any]], num_cases: int, seed: int = 0) -> list[dict[str, Any]]:
    """The offline cases to make: id, index, seed and source case(s) of each (see the module docstring).

    Args:
        method: a registered method that derives from real cases (:data:`METHODS`).
        real: real training items (``case_id``, ``image``, ``label``), in datalist order.
        num_cases: number of cases (1 .. the method's ``max_cases``).
        seed: global seed.

    Returns:
        cases ``{"case_id": "<method>-<i:05d>", "case_index", "seed", "global_seed", "target", "source"}`` where
        ``target`` is the real item the case starts from and ``source`` the item carved from (CarveMix) or None.
    """
    spec = _derived_method(method)
    n = len(real)
    limit = spec.max_cases(n)
    if not 1 <= int(num_cases) <= limit:
        raise ValueError(f"{method}: {num_cases} cases requested; 1 .. {limit} possible ({spec.limit_reason(n)})")
    pairs: list[tuple[int, int]] = []
    if spec.needs_source:
        ordered = [(t, s) for t in range(n) for s in range(n) if s != t]
        order = np.random.default_rng(np.random.SeedSequence([int(seed), _PAIR_STREAM])).permutation(len(ordered))
        pairs = [ordered[k] for k in order]
    cases = []
    for i in range(int(num_cases)):
        target, source = pairs[i] if spec.needs_source else (i % n, None)
        cases.append(
            {
                "case_id": f"{method}-{i:05d}",
                "case_index": i,
                "seed": case_seed(seed, i),
                "global_seed": int(seed),
                "target": dict(real[target]),
                "source": None if source is None else dict(real[source]),
            }
        )
    return cases


class TrainingTransforms:
    """The loading and the synthesis transform of dtss_mas_seg's training, built from its own configs.

    Args:
        method: a registered method that derives from real cases (:data:`METHODS`).
        datalist: the real datalist (its ``labels`` picks the label mapping, as in training).
        modalities: image channels by name.
        bundle_root: the dtss_mas_seg bundle folder (default: the one in :func:`find_bundles_dir`).
        overrides: config values set over the bundle's (e.g. the pipeline's ``seg.overrides``, or the method's
            ``mass_effect_key: true``), as a training run with the same overrides would use them.
    """

    def __init__(
        self,
        method: str,
        datalist: str | os.PathLike,
        modalities: Sequence[str],
        bundle_root: str | os.PathLike | None = None,
        overrides: Mapping[str, Any] | None = None,
    ) -> None:
        from monai.bundle import ConfigParser

        from custom_components.export.zoo_bundle import find_bundles_dir

        self.spec = _derived_method(method)
        root = Path(bundle_root) if bundle_root is not None else find_bundles_dir() / "dtss_mas_seg"
        self.method = method
        self.configs = [root / "configs" / name for name in TRAIN_CONFIGS]
        parser = ConfigParser()
        parser.read_config([str(c) for c in self.configs])
        parser.update(
            {
                **dict(overrides or {}),
                "datalist": str(datalist),
                "modalities": list(modalities),
                "bundle_root": str(root),
            }
        )
        self.parser = parser
        self.load = Compose(parser.get_parsed_content("load_transforms"))
        self.load_names = [type(t).__name__ for t in self.load.transforms]
        config_id = str(self.spec.config_id)
        raw = parser.get(config_id)
        self.target = raw["_target_"]
        self.kwargs = {
            k: parser.get_parsed_content(f"{config_id}#{k}")
            for k in raw
            if not k.startswith("_") and k not in _NOT_SETTINGS
        }
        key = self.spec.mass_effect_key
        self.mass_effect = key is not None and bool(parser.get_parsed_content(key))

    def settings(self) -> dict[str, Any]:
        """JSON-ready settings of the loading and the synthesis (recorded, compared on a rerun)."""
        out = {
            "bundle": "dtss_mas_seg",
            "configs": [c.name for c in self.configs],
            "load": self.load_names,
            "transform": self.target.rsplit(".", 1)[-1],
            "parameters": _json_ready(self.kwargs),
        }
        if self.spec.mass_effect_key is not None:
            out["mass_effect"] = self.mass_effect
            if self.mass_effect:
                raw = self.parser.get("train#mass_effect")
                out["mass_effect_parameters"] = _json_ready(
                    {k: self.parser.get_parsed_content(f"train#mass_effect#{k}") for k in raw if not k.startswith("_")}
                )
        return out

    def synthesis(self, source: Mapping[str, Any] | None = None) -> Callable[[dict[str, Any]], dict[str, Any]]:
        """A fresh synthesis transform: the method's training transform with its options (DTSS: ``train#dtss_online``,
        with the mass effect when on), or for a method that carves from a second case (CarveMix) one built from its
        settings carving from ``source``."""
        if not self.spec.needs_source:
            return self.parser.get_parsed_content(self.spec.transform_id or str(self.spec.config_id), lazy=False)
        from pydoc import locate

        if source is None:
            raise ValueError(f"{self.spec.title} needs a source case")
        cls = locate(self.target)
        return cls(source=[dict(source)], loader=self.load, **copy.deepcopy(self.kwargs))

    def derive(self, case: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        """Apply the method to one planned case (:func:`plan_offline`): its real ``target`` loaded as training loads
        it, and the synthesis seeded by the case's seed. The one way a case is made: ``fabricate``, the offline
        writer and the pipeline report's montages and realism sets all call it.

        Returns:
            ``(target, derived)``: the loaded real case and the synthesised one (keys ``image``, ``label``).
        """
        from custom_components.transforms.seeded import ApplySeeded

        target = self.load_case(case["target"])
        derived = ApplySeeded(self.synthesis(case["source"]))(copy.deepcopy(target), int(case["seed"]))
        if not derived.get(SynthesisKeys.SYNTHETIC, False):
            raise RuntimeError(
                f"{self.configs[-1]}: {self.target} left case {case['case_id']} unchanged "
                f"(its prob is below 1?); offline synthesis needs prob 1"
            )
        return target, derived

    def load_case(self, item: Mapping[str, Any]) -> dict[str, Any]:
        """A real item loaded as training loads it (keys ``image``, ``label``, MetaTensors with the RAS affine)."""
        keys = ("image", "label", "brain_mask")
        return self.load({k: (list(v) if isinstance(v, list) else v) for k, v in item.items() if k in keys})


def _voxels(label: np.ndarray) -> dict[str, int]:
    return {name: int((label == v).sum()) for v, name in ((1, "NCR"), (2, "ED"), (3, "ET"))}


class OfflineCaseWriter:
    """Files, completion and provenance of offline cases in ``<output_dir>/<case_id>/``.

    A case is ``<case_id>_<modality>.nii.gz`` per channel, ``<case_id>_label.nii.gz`` (internal convention),
    ``<case_id>_brainmask.nii.gz`` (the brain: above -1 in some channel, or labelled), the montage
    ``<gallery_dir>/<case_id>.png`` and, written last, ``<case_id>_provenance.json`` holding the case's
    fingerprint (everything that determines its files), the files' sizes and the provenance. A case is complete
    when its record's fingerprint matches and every file has its recorded size.

    Args:
        output_dir: folder of the cases.
        method: ``dtss`` or ``carvemix``.
        transforms: the training transforms (:class:`TrainingTransforms`).
        modalities: the image channels' names.
        gallery_dir: folder of the montages (default ``<output_dir>/gallery``).
        output_ext: ``.nii.gz`` (default) or ``.nii``.
    """

    def __init__(
        self,
        output_dir: str | os.PathLike,
        method: str,
        transforms: TrainingTransforms,
        modalities: Sequence[str],
        gallery_dir: str | os.PathLike | None = None,
        output_ext: str = ".nii.gz",
    ) -> None:
        if output_ext not in (".nii", ".nii.gz"):
            raise ValueError(f"output_ext must be '.nii' or '.nii.gz', got {output_ext!r}")
        self.output_dir = Path(output_dir)
        self.method = method
        self.transforms = transforms
        self.modalities = tuple(modalities)
        self.gallery_dir = Path(gallery_dir) if gallery_dir is not None else self.output_dir / "gallery"
        self.output_ext = output_ext
        self.settings = transforms.settings()

    def case_paths(self, case: Mapping[str, Any]) -> dict[str, Any]:
        """Files of one case: ``image`` (one per modality), ``label``, ``brain_mask``, ``montage``, ``record``."""
        cid, ext = case["case_id"], self.output_ext
        d = self.output_dir / cid
        return {
            "image": [d / f"{cid}_{m}{ext}" for m in self.modalities],
            "label": d / f"{cid}_label{ext}",
            "brain_mask": d / f"{cid}_brainmask{ext}",
            "montage": self.gallery_dir / f"{cid}.png",
            "record": d / f"{cid}_provenance.json",
        }

    def _files(self, case: Mapping[str, Any]) -> list[Path]:
        p = self.case_paths(case)
        return [*p["image"], p["label"], p["brain_mask"], p["montage"]]

    def fingerprint(self, case: Mapping[str, Any]) -> dict[str, Any]:
        """Everything that determines a case's files."""
        return _json_ready(
            {
                "version": RECORD_VERSION,
                "method": self.method,
                "case_id": case["case_id"],
                "case_index": int(case["case_index"]),
                "seed": int(case["seed"]),
                "global_seed": int(case["global_seed"]),
                "target": [str(f) for f in case["target"]["image"]] + [str(case["target"]["label"])],
                "source": None
                if case["source"] is None
                else [str(f) for f in case["source"]["image"]] + [str(case["source"]["label"])],
                "settings": self.settings,
                "modalities": list(self.modalities),
                "output_ext": self.output_ext,
            }
        )

    def complete_record(self, case: Mapping[str, Any]) -> dict[str, Any] | None:
        """The record of ``case`` when an earlier run finished it with these settings and intact files, else None."""
        path = self.case_paths(case)["record"]
        if not path.is_file():
            return None
        try:
            record = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            return None
        if not isinstance(record, dict) or record.get("fingerprint") != self.fingerprint(case):
            return None
        sizes = record.get("files", {})
        for f in self._files(case):
            if not f.is_file() or sizes.get(f.name) != f.stat().st_size:
                return None
        return record

    def item(self, case: Mapping[str, Any], provenance: Mapping[str, Any]) -> dict[str, Any]:
        """The datalist item of a written case (absolute paths; ``write_datalist`` makes them relative)."""
        return synthetic_item(case["case_id"], self.case_paths(case), provenance, ("label", "brain_mask"))

    def make(self, case: Mapping[str, Any]) -> dict[str, Any]:
        """Synthesise one case with the training transforms, write it (atomically, record last), return its item."""
        target, out = self.transforms.derive(case)
        image, label, affine = derived_arrays(out)
        if not (label > 0).any():
            raise RuntimeError(f"case {case['case_id']}: the synthesised label has no tumour voxels")
        brain = ((image > -1.0).any(axis=0) | (label > 0)).astype(np.uint8)
        paths = self.case_paths(case)
        for c, path in enumerate(paths["image"]):
            save_nifti(image[c], affine, path, dtype=np.float32)
        save_nifti(label, affine, paths["label"], dtype=np.uint8)
        save_nifti(brain, affine, paths["brain_mask"], dtype=np.uint8)
        draw_derived(self.transforms.spec, case, target, out, paths["montage"], self.modalities[0])
        src_label = derived_arrays(target)[1]
        sources = [case["target"]] + ([case["source"]] if case["source"] is not None else [])
        provenance = {
            "stage": "fabricate",
            "method": self.method,
            "source_cases": [s["case_id"] for s in sources],
            "source_images": [list(s["image"]) for s in sources],
            "source_labels": [s["label"] for s in sources],
            "seed": int(case["seed"]),
            "global_seed": int(case["global_seed"]),
            "case_index": int(case["case_index"]),
            "parameters": self.settings,
            "voxels": _voxels(label),
            "source_voxels": _voxels(src_label),
        }
        record = {
            "fingerprint": self.fingerprint(case),
            "files": {f.name: f.stat().st_size for f in self._files(case)},
            "provenance": provenance,
        }
        atomic_write_text(paths["record"], json.dumps(record, indent=2) + "\n")
        return self.item(case, provenance)


def derived_arrays(case: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(image (C, X, Y, Z) float32, label (X, Y, Z) uint8, affine)`` of a loaded or derived case."""
    image = convert_to_numpy(case["image"]).astype(np.float32)
    label = convert_to_numpy(case["label"]).reshape(image.shape[1:]).astype(np.uint8)
    return image, label, np.asarray(convert_to_numpy(case["image"].affine), dtype=np.float64)


def draw_derived(
    spec: SynthesisMethod,
    case: Mapping[str, Any],
    target: Mapping[str, Any],
    derived: Mapping[str, Any],
    png: str | os.PathLike,
    modality: str,
) -> Path:
    """The QC montage of a derived case (:meth:`TrainingTransforms.derive`): the synthetic case, its real source and
    their difference, first channel. ``fabricate``'s gallery and the pipeline report draw with it.

    Returns:
        the montage's path.
    """
    from custom_components.quality.qc import save_montage

    image, label, affine = derived_arrays(derived)
    src_image, src_label, _ = derived_arrays(target)
    tgt_id = case["target"]["case_id"]
    what = (
        f"lesion of {case['source']['case_id']} carved into {tgt_id}" if spec.needs_source else f"derived from {tgt_id}"
    )
    return save_montage(
        image,
        label,
        png,
        title=f"{case['case_id']}: {spec.title}, {what} (seed {case['seed']})",
        source=src_image,
        source_label=src_label,
        affine=affine,
        row_titles=[f"synthetic ({modality})", f"source {tgt_id}", "|synthetic - source|"],
    )
