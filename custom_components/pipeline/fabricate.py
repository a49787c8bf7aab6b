"""``python -m custom_components fabricate``: a synthetic dataset of N cases by one method, ready to train on.

Methods:

* ``dtss`` / ``carvemix``: offline draws from the real training cases (:mod:`custom_components.synthesis.offline`:
  dtss_mas_seg's own loading and DTSS / CarveMix transforms, case ``i`` seeded by ``(seed, i)`` and independent
  of the others). Each case is written atomically with its provenance record last; the datalist is rewritten
  after every case. A rerun with the same settings skips complete cases, so a larger N adds only the missing
  cases and an interrupted run finishes where it stopped.
* ``tf_aug`` / ``tf``: the pipeline's stages (:class:`custom_components.pipeline.experiment.Experiment`, the
  resumable runner, the bundles' own configs) in ``<out>/work``: prepare_healthy -> dtss_mas_seg phase 1 (the
  encoder F, one seed) -> tf_aug train + synthesise N cases (-> tf_gan train + refine for ``tf``); budgets from a
  pipeline YAML (``config``, default the demo pipeline's). The cases are then linked (hard links, else copies)
  into ``<out>``. A rerun with the same settings skips finished stages.

Every method writes ``<out>/<case_id>/`` per case, ``<out>/datalist.json`` (``training``, ``labels: internal``,
items with ``synthetic: true`` and ``provenance``: method, ``source_cases`` (the real cases it was derived from:
DTSS's target, CarveMix's target and lesion source, TF-Aug's / TF's mask cases; TF's healthy scan is
``healthy_case_id``), seed, parameters),
``<out>/gallery/index.html`` (every case's montage, relative links) and ``<out>/realism.json`` (realism against
the real datalist's ``validation`` section, when it has one; no encoder, FRD on) and ``<out>/fabricate.json``
(the manifest: method, seed, real datalist path and hash, settings). ``fmt="nnunet"`` also exports
``<out>/nnunet`` (:func:`custom_components.export.nnunet.export_nnunet`; no fold trains on a case derived from
its validation cases).

Refusals, before anything is written: an unknown method or format; N above what the method can make
(:func:`custom_components.synthesis.offline.max_cases`); a real training case without tumour (its label file is
named); an output folder holding another dataset (a non-empty folder without a manifest, or a manifest of another
method / real datalist / seed / settings) unless ``overwrite``. A healthy scan that fails the registration gate
stops the TF methods with :class:`~custom_components.synthesis.healthy_prep.RegistrationQualityError`, leaving only
the work folder (with the QC PNGs) in ``<out>``.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import importlib.util
import json
import os
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO

from custom_components.data.atomic import atomic_path, atomic_write_text
from custom_components.data.datalist import read_datalist, write_datalist
from custom_components.data.loader import load_datalist
from custom_components.pipeline.arms import BASELINE, method_arm
from custom_components.quality.gallery import synthetic_case_montage
from custom_components.synthesis.methods import METHODS as REGISTRY
from custom_components.synthesis.methods import SynthesisMethod, get_method
from custom_components.synthesis.offline import METHODS as OFFLINE_METHODS
from custom_components.synthesis.offline import OfflineCaseWriter, TrainingTransforms, plan_offline
from custom_components.synthesis.tf_aug import mask_source_cases

# every registered synthesis method (custom_components.synthesis.methods)
METHODS: tuple[str, ...] = tuple(REGISTRY)
FORMATS: tuple[str, ...] = ("monai", "nnunet")
MANIFEST = "fabricate.json"
WORK = "work"
DATALIST = "datalist.json"
REALISM = "realism.json"
GALLERY = "gallery"
NNUNET = "nnunet"
MANIFEST_VERSION = 1
# what the manifest's identity holds: a folder is reused only when all of these agree
IDENTITY_KEYS: tuple[str, ...] = ("method", "seed", "real", "settings")
# folders of cases this command writes (offline ids, TF-Aug's ids)
CASE_FOLDER = re.compile(rf"^({'|'.join([*OFFLINE_METHODS, 'tfaug'])})-\d{{5,}}$")
BRATS_MODALITIES: tuple[str, ...] = ("t1n", "t1c", "t2w", "t2f")
DEMO_PIPELINE = Path(__file__).resolve().parents[1] / "pipeline" / "demo.yaml"


class FabricateError(ValueError):
    """Bad arguments or inputs, or an output folder that holds another dataset (the message names the file)."""


# ---- progress --------------------------------------------------------------------------------------------
def _eta(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


class Progress:
    """Progress of a loop: a tqdm bar with an ETA on a terminal, else one line per step with an ETA.

    Args:
        total: number of steps.
        what: name of a step (``case``).
        log: where the plain lines go.
        stream: the stream whose terminal decides (default ``sys.stderr``; the bar is drawn there).
    """

    def __init__(
        self, total: int, what: str = "case", log: Callable[[str], None] = print, stream: TextIO | None = None
    ):
        self.total, self.what, self.log = int(total), what, log
        self.stream = stream if stream is not None else sys.stderr
        self.done = 0
        self.start = time.perf_counter()
        tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.bar = None
        if tty and self.total > 0:
            from tqdm import tqdm

            self.bar = tqdm(total=self.total, desc=f"{what}s", unit=what, file=self.stream, dynamic_ncols=True)

    def step(self, label: str = "") -> None:
        """One step finished (``label`` names it)."""
        self.done += 1
        if self.bar is not None:
            self.bar.set_postfix_str(label, refresh=False)
            self.bar.update(1)
            return
        elapsed = time.perf_counter() - self.start
        eta = elapsed / self.done * (self.total - self.done)
        self.log(f"{self.what} {self.done}/{self.total} {label} ... {elapsed:.0f} s elapsed, ETA {_eta(eta)}")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class EpochWatcher:
    """Progress of the training stages the pipeline runs in subprocesses, read from their epoch-metrics files.

    Every bundle training attaches :class:`~custom_components.handlers.EpochMetricsWriter`, which rewrites
    ``<models_dir>/epoch_metrics.csv`` (one row per epoch, atomically) after every epoch; no log format is read.
    While active, a thread polls every stage with ``max_epochs`` in ``<work>/overrides/<stage>.json``: the newest
    ``epoch_metrics.csv`` below the stage's output folder ``<work>/<stage>`` written since the watcher started
    gives the epochs done (its largest ``epoch``), reported as ``<stage>: epoch k/max ... ETA``: a tqdm bar per
    stage on a terminal, else a line at most every ``every_s`` seconds (and at the last epoch). A file that
    cannot be read counts as no progress until a later poll.

    Args:
        work: the pipeline's work folder.
        log: where the plain lines go.
        stream: the stream whose terminal decides (default ``sys.stderr``).
        interval: seconds between polls.
        every_s: least seconds between two plain lines of one stage.
    """

    def __init__(
        self,
        work: Path,
        log: Callable[[str], None] = print,
        stream: TextIO | None = None,
        interval: float = 2.0,
        every_s: float = 30.0,
    ) -> None:
        import threading

        self.work, self.log, self.interval, self.every_s = Path(work), log, float(interval), float(every_s)
        self.stream = stream if stream is not None else sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.started = time.time()
        self.state: dict[str, dict[str, Any]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fabricate-epochs", daemon=True)

    def _epochs(self, stage: str) -> tuple[int, int] | None:
        """(epochs done, max_epochs) of a training stage whose epoch-metrics file was written since the start,
        else None."""
        from custom_components.handlers.epoch_log import EPOCH_METRICS_FILE, read_epoch_metrics

        try:
            total = int(json.loads((self.work / "overrides" / f"{stage}.json").read_text()).get("max_epochs") or 0)
            if total <= 0:
                return None
            fresh = [(f.stat().st_mtime, f) for f in (self.work / stage).rglob(EPOCH_METRICS_FILE)]
            fresh = [(mtime, f) for mtime, f in fresh if mtime >= self.started]
            if not fresh:
                return None
            rows = read_epoch_metrics(max(fresh)[1])
            return max((int(r["epoch"]) for r in rows if "epoch" in r), default=0), total
        except (OSError, ValueError, TypeError, KeyError, csv.Error):  # being replaced, partial or foreign: not now
            return None

    def poll(self) -> None:
        """Report the epochs of every training stage that progressed since the last poll."""
        for overrides in sorted((self.work / "overrides").glob("*.json")):
            stage = overrides.stem
            found = self._epochs(stage)
            if found is None:
                continue
            done, total = found
            st = self.state.setdefault(stage, {"done": 0, "t0": time.perf_counter(), "printed": 0.0, "bar": None})
            if done <= st["done"]:
                continue
            now = time.perf_counter()
            eta = (now - st["t0"]) / done * (total - done)
            if self.tty:
                if st["bar"] is None:
                    from tqdm import tqdm

                    st["bar"] = tqdm(total=total, desc=stage, unit="epoch", file=self.stream, dynamic_ncols=True)
                st["bar"].update(done - st["done"])
            elif now - st["printed"] >= self.every_s or done == total:
                self.log(f"{stage}: epoch {done}/{total} ... {now - st['t0']:.0f} s elapsed, ETA {_eta(eta)}")
                st["printed"] = now
            st["done"] = done

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            with contextlib.suppress(Exception):  # progress must never stop the run
                self.poll()

    def __enter__(self) -> EpochWatcher:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        for st in self.state.values():
            if st["bar"] is not None:
                st["bar"].close()


# ---- inputs ------------------------------------------------------------------------------------------------
def _sha256_file(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _sha256_json(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()


def _folder_identity(folder: Path) -> str:
    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    return _sha256_json([[p.name, p.stat().st_size] for p in files])


@contextlib.contextmanager
def _real_datalist(real: str | os.PathLike, modalities: Sequence[str] | None) -> Iterator[tuple[Path, dict[str, Any]]]:
    """The real datalist file (a BraTS folder's datalist in a temporary folder) and its identity."""
    real = Path(real)
    if real.is_dir():
        from custom_components.data.discovery import make_brats_datalist

        data = make_brats_datalist(real, modalities=tuple(modalities or BRATS_MODALITIES))
        with tempfile.TemporaryDirectory(prefix="fabricate_real_") as tmp:
            path = write_datalist(Path(tmp) / "real_datalist.json", data)
            yield path, {"path": str(real.resolve()), "kind": "brats_folder", "sha256": _sha256_json(data)}
        return
    if not real.is_file():
        raise FileNotFoundError(f"{real}: real datalist (or BraTS folder) not found")
    yield real, {"path": str(real.resolve()), "kind": "datalist", "sha256": _sha256_file(real)}


def _healthy_identity(healthy: Path) -> tuple[int, dict[str, Any]]:
    """Number of healthy scans and the identity of the healthy input (folder or datalist)."""
    if healthy.is_dir():
        from custom_components.data.discovery import make_healthy_datalist

        n = len(make_healthy_datalist(healthy)["training"])
        return n, {"path": str(healthy.resolve()), "kind": "folder", "files": _folder_identity(healthy)}
    if not healthy.is_file():
        raise FileNotFoundError(f"{healthy}: healthy scans (folder or datalist) not found")
    n = len(load_datalist(healthy, check="exists", require_tumour=False))
    return n, {"path": str(healthy.resolve()), "kind": "datalist", "sha256": _sha256_file(healthy)}


def _has_section(datalist: Path, section: str) -> bool:
    data = read_datalist(datalist)
    return isinstance(data.get(section), list) and len(data[section]) > 0


# ---- the output folder -----------------------------------------------------------------------------------
def _read_manifest(path: Path, overwrite: bool) -> dict[str, Any] | None:
    try:
        value = json.loads(path.read_text())
        if not isinstance(value, dict):
            raise ValueError("not a JSON object")
        return value
    except (OSError, ValueError) as e:
        if overwrite:
            return None
        raise FabricateError(
            f"{path}: unreadable fabricate manifest ({e}); use another --out, or --overwrite to replace the dataset"
        ) from e


def check_output(out: Path, identity: Mapping[str, Any], overwrite: bool = False) -> bool:
    """Refuse an output folder that holds another dataset, before anything is written.

    Args:
        out: the output folder.
        identity: this run's ``method``, ``seed``, ``real``, ``settings``.
        overwrite: replace another dataset instead of refusing (only this command's outputs are removed).

    Returns:
        True when the folder's earlier outputs are to be removed (``overwrite`` of another dataset).

    Raises:
        FabricateError naming the file: a non-empty folder without a manifest, or a manifest of other settings.
    """
    if not out.exists():
        return False
    if not out.is_dir():
        raise FabricateError(f"{out}: exists and is not a folder")
    manifest = next((p for p in (out / MANIFEST, out / WORK / MANIFEST) if p.is_file()), None)
    if manifest is None:
        entries = sorted(out.iterdir())
        if entries and not overwrite:
            raise FabricateError(
                f"{entries[0]}: the output folder {out} is not empty and has no {MANIFEST}, so it holds another "
                "dataset; use another --out, or --overwrite to write into it"
            )
        return bool(entries)
    old = _read_manifest(manifest, overwrite)
    if old is None:
        return True
    differs = [k for k in IDENTITY_KEYS if old.get(k) != identity.get(k)]
    if differs and not overwrite:
        raise FabricateError(
            f"{manifest}: {out} holds a {old.get('method')!r} dataset made with other settings "
            f"(differs in: {', '.join(differs)}); use another --out, or --overwrite to replace it"
        )
    return bool(differs)


def _remove_previous(out: Path, log: Callable[[str], None]) -> None:
    """Remove what this command writes (manifest, datalist, realism, gallery, nnunet, case folders); the work
    folder stays (its stages rerun when their settings changed) and so does anything else."""
    removed = []
    for entry in sorted(out.iterdir()):
        ours = entry.name in (MANIFEST, DATALIST, REALISM, GALLERY, NNUNET) or (
            entry.is_dir() and CASE_FOLDER.match(entry.name)
        )
        if not ours:
            continue
        if entry.is_dir():
            shutil.rmtree(entry)
        else:
            entry.unlink()
        removed.append(entry.name)
    (out / WORK / MANIFEST).unlink(missing_ok=True)
    if removed:
        log(f"--overwrite: removed the earlier dataset's {', '.join(removed)} from {out}")


def _write_manifest(path: Path, identity: Mapping[str, Any], n: int, fmt: str) -> None:
    manifest = {"version": MANIFEST_VERSION, **identity, "n": int(n), "format": fmt}
    atomic_write_text(path, json.dumps(manifest, indent=2) + "\n")


# ---- writing ---------------------------------------------------------------------------------------------------
def _write_dataset_datalist(
    out: Path, items: Sequence[Mapping[str, Any]], method: str, modalities: Sequence[str], real: Mapping[str, Any]
) -> Path:
    return write_datalist(
        out / DATALIST,
        {
            "description": f"{len(items)} synthetic cases by {method} (python -m custom_components fabricate) from "
            f"the real datalist {real['path']}",
            "method": method,
            "labels": "internal",
            "modalities": list(modalities),
            "training": [dict(i) for i in items],
        },
    )


def _offline_cases(
    method: str,
    n: int,
    real_path: Path,
    real_items: list[dict[str, Any]],
    modalities: Sequence[str],
    transforms: TrainingTransforms,
    out: Path,
    seed: int,
    real_identity: Mapping[str, Any],
    log: Callable[[str], None],
    stream: TextIO | None,
) -> list[dict[str, Any]]:
    writer = OfflineCaseWriter(out, method, transforms, modalities, gallery_dir=out / GALLERY)
    cases = plan_offline(method, real_items, n, seed)
    done: dict[str, dict[str, Any]] = {}
    pending = []
    for case in cases:
        record = writer.complete_record(case)
        if record is None:
            pending.append(case)
        else:
            done[case["case_id"]] = writer.item(case, record["provenance"])
    log(f"{method}: {len(done)} of {n} case(s) complete from an earlier run, {len(pending)} to make in {out}")

    def listed() -> list[dict[str, Any]]:
        return [done[c["case_id"]] for c in cases if c["case_id"] in done]

    with Progress(len(pending), "case", log, stream) as progress:
        for case in pending:
            done[case["case_id"]] = writer.make(case)
            # the datalist always lists the complete cases, so an interrupted run leaves a usable dataset
            _write_dataset_datalist(out, listed(), method, modalities, real_identity)
            progress.step(case["case_id"])
    return listed()


def _link(src: Path, dst: Path) -> Path:
    """``dst`` becomes a hard link to ``src`` (a copy across file systems), atomically."""
    with atomic_path(dst) as tmp:
        tmp.unlink()
        try:
            os.link(src, tmp)
        except OSError:
            shutil.copy2(src, tmp)
    return dst


def _tf_config(
    method: str,
    n: int,
    real_path: Path,
    healthy: Path,
    out: Path,
    seed: int,
    config: str | os.PathLike | None,
    n_real: int,
) -> dict[str, Any]:
    """The pipeline config of the TF stages: the budgets of ``config`` (default: the demo pipeline), this run's
    data, one seed, and TF-Aug's ``synthetic_per_real`` set so that ``Experiment.num_synthetic()`` is ``n``."""
    from custom_components.pipeline.config import load_config

    source = Path(config) if config is not None else DEMO_PIPELINE
    cfg = load_config(
        source,
        workdir=str((out / WORK).resolve()),
        demo=None,
        real_datalist=str(real_path.resolve()),
        healthy=str(healthy.resolve()),
        n_real=None,
        seeds=[int(seed)],
        arms=[BASELINE, method_arm(method).name],
        synthetic_per_real=[],
    )
    cfg["tf_aug"] = {**cfg["tf_aug"], "synthetic_per_real": n / n_real}
    if not _has_section(real_path, str(cfg["eval_section"])):
        # phase 1 validates (and keeps its best model) on the training cases when there is no held-out section
        cfg["eval_section"] = "training"
    return cfg


def _tf_cases(
    spec: SynthesisMethod,
    n: int,
    cfg: dict[str, Any],
    out: Path,
    log: Callable[[str], None],
    stream: TextIO | None = None,
) -> list[dict[str, Any]]:
    from custom_components.pipeline.experiment import Experiment
    from custom_components.pipeline.runner import run_stages

    exp = Experiment(cfg)
    if exp.num_synthetic() != n:
        raise RuntimeError(f"the TF-Aug plan would make {exp.num_synthetic()} cases, not {n}")
    seed = exp.encoder_seed
    stages = [*exp.data_stages(), exp.phase1_stage(seed), *exp.tf_aug_stages()]
    if exp.needs("tf_gan"):
        stages += exp.tf_gan_stages()
    if exp.needs("pix2pix"):
        stages += exp.pix2pix_stages()
    method = spec.name
    log(f"{method}: {len(stages)} pipeline stages in {exp.work} (finished ones are skipped)")
    with EpochWatcher(exp.work, log, stream):
        run_stages(stages, exp.work, log=log)
    produced = exp.method_cases(spec, seed)
    items = read_datalist(produced)["training"][:n]
    if len(items) != n:
        raise RuntimeError(f"{produced}: {len(items)} cases, expected {n}")
    parameters = {
        "pipeline_config": cfg["source"],
        "modalities": list(cfg["modalities"]),
        "seg": cfg["seg"],
        "tf_aug": cfg["tf_aug"],
        # TF-GAN's budgets train TF-GAN and Pix2Pix
        **({"tf_gan": cfg["tf_gan"]} if {"tf_gan", "pix2pix"} & set(spec.parts) else {}),
    }
    # the real cases whose masks TF-Aug drew from (its mask pool: the training labels of the stages' real datalist)
    real_items = load_datalist(exp.real_datalist, "training", require=["label"], check="none")
    result = []
    with Progress(len(items), "case", log, stream) as progress:
        for item in items:
            cid = item["case_id"]
            folder = out / cid
            new: dict[str, Any] = {"case_id": cid}
            for key in ("image", "label", "roi", "brain_mask"):
                if key not in item:
                    continue
                files = item[key] if isinstance(item[key], list) else [item[key]]
                linked = [str(_link(Path(f), folder / Path(f).name)) for f in files]
                new[key] = linked if isinstance(item[key], list) else linked[0]
            stage_prov = item.get("provenance", {})
            tf_aug_prov = stage_prov.get("parent", stage_prov)
            healthy_image = tf_aug_prov.get("healthy")
            healthy_image = healthy_image[0] if isinstance(healthy_image, list) else healthy_image
            new["synthetic"] = True
            source_masks = tf_aug_prov.get("source_masks", [])
            new["provenance"] = {
                "stage": "fabricate",
                "method": method,
                "source_cases": mask_source_cases(source_masks, real_items),
                "source_masks": source_masks,
                "healthy_case_id": tf_aug_prov.get("healthy_case_id"),
                "healthy_image": healthy_image,
                "seed": tf_aug_prov.get("seed"),
                "global_seed": tf_aug_prov.get("global_seed"),
                "case_index": tf_aug_prov.get("case_index"),
                "parameters": parameters,
                "pipeline": stage_prov,
            }
            # drawn from the stage's item, as the pipeline report draws it
            synthetic_case_montage(out / GALLERY / f"{cid}.png", item, method)
            result.append(new)
            progress.step(cid)
    return result


def _realism(
    out: Path,
    datalist: Path,
    real_path: Path,
    modalities: Sequence[str],
    frd: bool,
    log: Callable[[str], None],
) -> dict[str, Any]:
    """Realism of the dataset against the real datalist's ``validation`` section; reused while its inputs are the
    same (``inputs`` in realism.json)."""
    from custom_components.quality.realism import format_table, load_cases, realism_scores

    path = out / REALISM
    key = {"synthetic": _sha256_file(datalist), "real": _sha256_file(real_path), "frd": bool(frd)}
    if path.is_file():
        with contextlib.suppress(OSError, ValueError):
            old = json.loads(path.read_text())
            if old.get("inputs") == key:
                log(f"realism: unchanged inputs, kept {path}")
                return old
    if not _has_section(real_path, "validation"):
        result: dict[str, Any] = {
            "skipped": f"{real_path} has no 'validation' section of held-out real cases",
            "inputs": key,
        }
    else:
        start = time.perf_counter()
        syn, names = load_cases(datalist, list(modalities), "training")
        real, _ = load_cases(real_path, names, "validation")
        log(f"realism: {len(syn)} synthetic vs {len(real)} held-out real cases ({', '.join(names)}; FRD {frd}) ...")
        result = realism_scores(syn, real, names, None, frd=frd)
        result.update(
            synthetic=str(datalist.resolve()), real=str(real_path.resolve()), real_section="validation", encoder=None
        )
        result["inputs"] = key
        log(format_table(result))
        log(f"realism: {time.perf_counter() - start:.0f} s")
    atomic_write_text(path, json.dumps(result, indent=2) + "\n")
    return result


def _gallery(
    out: Path,
    items: Sequence[Mapping[str, Any]],
    method: str,
    seed: int,
    real: Mapping[str, Any],
    realism: Mapping[str, Any],
) -> Path:
    from custom_components.quality.gallery import write_gallery

    cases = []
    for item in items:
        p = item["provenance"]
        sources = " + ".join(str(s) for s in p.get("source_cases", []))
        cases.append(
            {
                "case_id": item["case_id"],
                "montage": out / GALLERY / f"{item['case_id']}.png",
                "caption": f"{method} from {sources} (case seed {p.get('seed')})",
            }
        )
    return write_gallery(
        out / GALLERY,
        cases,
        title=f"{len(items)} synthetic cases: {method}",
        realism=realism,
        notes=[f"method {method}, seed {seed}", f"real data: {real['path']}", f"datalist: ../{DATALIST}"],
    )


def _check_arguments(method: str, n: int, fmt: str, healthy: str | os.PathLike | None) -> SynthesisMethod:
    """The registered method of ``--method``, after checking the arguments (FabricateError otherwise)."""
    if method not in METHODS:
        raise FabricateError(f"--method must be one of {', '.join(METHODS)}, got {method!r}")
    if fmt not in FORMATS:
        raise FabricateError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise FabricateError(f"--n must be a whole number >= 1, got {n!r}")
    if fmt == "nnunet" and importlib.util.find_spec("custom_components.export.nnunet") is None:
        raise FabricateError("--format nnunet needs custom_components.export.nnunet, which this installation lacks")
    spec = get_method(method)
    if not spec.derived and healthy is None:
        raise FabricateError(f"--method {method} needs --healthy (a folder of healthy scans or a healthy datalist)")
    return spec


# ---- the command -------------------------------------------------------------------------------------------
def fabricate(
    method: str,
    n: int,
    real: str | os.PathLike,
    out: str | os.PathLike,
    healthy: str | os.PathLike | None = None,
    fmt: str = "monai",
    seed: int = 0,
    overwrite: bool = False,
    config: str | os.PathLike | None = None,
    modalities: Sequence[str] | None = None,
    frd: bool = True,
    log: Callable[[str], None] = print,
    stream: TextIO | None = None,
) -> Path:
    """Write ``n`` synthetic cases by ``method`` into ``out`` (see the module docstring); returns the datalist.

    Args:
        method: ``tf``, ``tf_aug``, ``dtss`` or ``carvemix``.
        n: number of cases.
        real: real datalist (``training`` cases with tumours; ``validation`` held out for realism) or a BraTS folder.
        out: output folder.
        healthy: healthy scans (folder or datalist; raw, prepare_healthy registers them) for ``tf`` / ``tf_aug``.
        fmt: ``monai`` (the datalist) or ``nnunet`` (also an nnU-Net raw dataset in ``<out>/nnunet``).
        seed: global seed (case ``i``: seed ``(seed, i)``; the TF methods' training seed too).
        overwrite: replace another dataset in ``out`` instead of refusing.
        config: pipeline YAML whose budgets the TF methods use (default: the demo pipeline's).
        modalities: image channels by name (default: the real datalist's; TF methods: the config's).
        frd: compute the Frechet Radiomics Distance in the realism scores.
        log: where progress lines go.
        stream: the stream of the progress bar (default stderr; a bar only on a terminal).

    Raises:
        FabricateError / FileNotFoundError / ValueError naming the file, before anything is written.
    """
    spec = _check_arguments(method, n, fmt, healthy)
    out = Path(out)
    tf = not spec.derived  # a method on healthy scans: the pipeline's stages
    start = time.perf_counter()
    with _real_datalist(real, modalities) as (real_path, real_identity):
        if tf:
            n_healthy, healthy_identity = _healthy_identity(Path(healthy))
            cfg_source = Path(config) if config is not None else DEMO_PIPELINE
            if not cfg_source.is_file():
                raise FileNotFoundError(f"{cfg_source}: pipeline config not found")
            from custom_components.pipeline.config import load_config

            probe = load_config(cfg_source, demo=None, real_datalist=str(real_path), healthy=str(healthy))
            mods = list(modalities or probe["modalities"])
        else:
            n_healthy, healthy_identity = 0, None
            mods = list(modalities or read_datalist(real_path).get("modalities") or [])
            if not mods:
                raise FabricateError(f"{real_path}: no top-level 'modalities'; give --modalities")
        # every real training case read and checked; a case without tumour names its label file
        real_items = load_datalist(
            real_path, "training", mods, require=["label"], keys=["label", "brain_mask"], require_tumour=True
        )
        if _has_section(real_path, "validation"):
            load_datalist(real_path, "validation", mods, require=["label"], keys=["label", "brain_mask"])
        limit = spec.max_cases(len(real_items), n_healthy)
        if n > limit:
            raise FabricateError(
                f"{real_identity['path']}: --n {n} is more than {method} can make: at most {limit} "
                f"({spec.limit_reason(len(real_items), n_healthy)})"
            )
        if tf:
            cfg = _tf_config(method, n, real_path, Path(healthy), out, seed, config, len(real_items))
            cfg["modalities"] = mods  # --modalities, else the config's
            settings: dict[str, Any] = {
                "healthy": healthy_identity,
                "config": {"path": str(cfg_source.resolve()), "sha256": _sha256_file(cfg_source)},
                "modalities": mods,
            }
        else:
            transforms = TrainingTransforms(method, real_path, mods)
            settings = {**transforms.settings(), "modalities": mods}
        identity = {"method": method, "seed": int(seed), "real": real_identity, "settings": settings}
        replace = check_output(out, identity, overwrite)
        # ---- from here on, outputs are written ----
        out.mkdir(parents=True, exist_ok=True)
        if replace:
            _remove_previous(out, log)
        if real_identity["kind"] == "brats_folder":
            # the discovered datalist, kept beside the work (paths re-relativised to its new folder)
            kept = write_datalist(out / WORK / "real_datalist.json", read_datalist(real_path))
            real_path = kept
            if tf:
                cfg["real_datalist"] = str(kept.resolve())
        if tf:
            _write_manifest(out / WORK / MANIFEST, identity, n, fmt)
            items = _tf_cases(spec, n, cfg, out, log, stream)
            _write_manifest(out / MANIFEST, identity, n, fmt)
            datalist = _write_dataset_datalist(out, items, method, mods, real_identity)
        else:
            _write_manifest(out / MANIFEST, identity, n, fmt)
            items = _offline_cases(
                method, n, real_path, real_items, mods, transforms, out, seed, real_identity, log, stream
            )
            datalist = _write_dataset_datalist(out, items, method, mods, real_identity)
        realism = _realism(out, datalist, real_path, mods, frd, log)
        page = _gallery(out, items, method, seed, real_identity, realism)
        log(f"gallery: {page}")
        if fmt == "nnunet":
            from custom_components.export.nnunet import export_nnunet

            # every case names its source cases: each fold trains on none derived from its validation cases
            nn = export_nnunet(real_path, out / NNUNET, synthetic=[datalist], overwrite=True, log=log)
            log(f"nnU-Net dataset: {nn}")
    log(f"fabricate {method}: {len(items)} cases in {out} ({time.perf_counter() - start:.0f} s); datalist {datalist}")
    return datalist


__all__ = ["FORMATS", "METHODS", "EpochWatcher", "FabricateError", "Progress", "check_output", "fabricate"]
