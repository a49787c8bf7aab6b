"""Benchmark phase-2 training throughput of dtss_mas_seg per arm: iteration time, loader stall, synthesis, MAS, memory.

Runs the bundle's own training config (``configs/common.yaml`` + ``configs/train.yaml`` through MONAI's
``ConfigWorkflow``, public config keys only) for a few phase-2 iterations per arm and number of DataLoader
workers, each (arm, num_workers) in its own process (so that its peak memory is its own):

* ``baseline``: real cases only (``use_dtss``, ``use_mas``, ``use_carvemix`` false, no synthetic datalists);
* ``dtss``: + DTSS online synthesis in the data loader (``use_dtss``);
* ``dtss_mas``: + DTSS and MAS loss weighting (``use_dtss``, ``use_mas``; MAS evaluates the real cases at the
  start of phase 2 and after every epoch, ``mas_real_eval`` as configured, default ``tumour_crop``);
* ``carvemix``: + CarveMix online synthesis (``use_carvemix``);
* ``tf``: + offline synthetic cases (``synthetic_datalists``: a datalist of the same volumes marked synthetic,
  in the internal label convention, standing in for TF's refined datalist; one per real case and epoch).

Every run starts phase 2 at once (``phase2_start_epoch: 0``, fresh initialisation), never validates
(``val_interval`` beyond ``max_epochs``), fills its caches with one thread (MONAI 1.6.1's image reader is not
thread-safe: see ``arm_overrides``) and writes into its own folder. Data: BraTS-size volumes (default
240 x 240 x 155). With ``--data auto`` the real case in ``../shared/data`` is used (``--cases`` items listing its
files) when the size is BraTS's and the case is present, else full-size PHANTOMS are generated: a brain-shaped
ellipsoid with smooth tissue texture and one glioma-like lesion (necrotic core, enhancing rim, oedema), four
raw-intensity int16 modalities, one phantom per case (deterministic from ``--seed``).

Per run it measures, by Ignite events on the workflow's trainer:

* step time: ``ITERATION_STARTED`` -> ``ITERATION_COMPLETED`` (forward, backward, optimiser, MAS weights and the
  per-iteration handlers attached with the trainer);
* loader wait: ``GET_BATCH_STARTED`` -> ``GET_BATCH_COMPLETED`` (the time the trainer waited for its batch);
* iteration time = wait + step, stall fraction = wait / (wait + step). The table's figures are over the
  steady-state iterations: the first iteration of every epoch is left out (its wait includes starting the
  workers and filling the pipeline, reported as ``epoch_start_wait_s``; ``stall_fraction_all`` includes it);
* MAS seconds per epoch: the time spent in the trainer's event handlers that belong to the configured MAS
  handler (``train#mas``: the handler itself, its bound methods or wrappers of them), on ``EPOCH_COMPLETED``
  per epoch (its evaluation of the real cases); the evaluation at the start of phase 2 is ``mas_start_s``;
* synthesis seconds per sample: each online synthesis transform of the config (``train#online_synthesis``:
  DTSS, CarveMix) applied in the main process, after training, to ``--synthesis-samples`` preprocessed cases
  (copying the case excluded); ``tf`` reads its synthetic cases from the cache (0 s of synthesis);
* peak memory: ``ru_maxrss`` of the run's process (setup and cache included); of its DataLoader workers the
  peak of their summed PSS (shared pages, e.g. the inherited cache, divided among the processes sharing them)
  and the peak RSS of any one worker, sampled from ``/proc`` every 0.1 s; on CUDA ``torch.cuda.max_memory_allocated``.

Timestamps synchronise CUDA first on a CUDA device. Iterations: ``--iterations`` is rounded up to whole epochs of
``ceil(cases / batch_size)`` iterations (the bundle's epoch: one pass over the real cases).

Usage: ``python benchmarks/bench_train_throughput.py [--arms baseline dtss dtss_mas carvemix tf]
[--num-workers 0 2] [--device cpu] [--iterations 4] [--size 240 240 155] [--crop 128]
[--filters 16 32 64 128 256] [--cases 4] [--json out.json] [--dry-run]``
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before numpy / torch start their thread pools

import argparse
import copy
import functools
import json
import math
import resource
import shlex
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
BUNDLE = REPO / "bundles" / "dtss_mas_seg"
SHARED_CASE = REPO.parent / "shared" / "data" / "tumor" / "TCGA-FG-6692"
MODALITIES = ("t1n", "t1c", "t2w", "t2f")
BRATS_SIZE = (240, 240, 155)
ARMS: dict[str, dict[str, Any]] = {
    "baseline": {},
    "dtss": {"use_dtss": True},
    "dtss_mas": {"use_dtss": True, "use_mas": True},
    "carvemix": {"use_carvemix": True},
    "tf": {"synthetic": True},
}
# what every arm switches off unless it turns it on (as the pipeline's arms do)
_OFF: dict[str, Any] = {"use_dtss": False, "use_mas": False, "use_carvemix": False, "synthetic_datalists": []}
# phantom contrast: (white matter gain, tissue contrast, NCR, ED, ET) per modality, relative to white matter
_PHANTOM: dict[str, tuple[float, float, float, float, float]] = {
    "t1n": (330.0, 0.25, 0.45, 0.70, 0.85),
    "t1c": (360.0, 0.25, 0.55, 0.85, 1.40),
    "t2w": (260.0, -0.35, 1.65, 1.38, 1.62),
    "t2f": (180.0, 0.20, 1.55, 1.38, 1.54),
}


# ---- data ------------------------------------------------------------------------------------------


def phantom_case(shape: Sequence[int], seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A full-size phantom case: (4, *shape) int16 raw-like modalities and a (*shape) internal-convention label.

    The brain is an ellipsoid (semi-axes 0.42 of the volume, about 31 % of it) with smooth tissue texture and
    noise; one lesion (ellipsoid oedema of radius ~0.12 of the smallest side, enhancing rim and necrotic core
    inside it, randomly stretched) lies off-centre inside the brain. Background is 0, as in skull-stripped scans.

    Args:
        shape: volume size (voxels per axis, 3 values).
        seed: seed of ``numpy.random.default_rng``; a seed gives identical arrays.
    """
    from scipy import ndimage

    shape = tuple(int(s) for s in shape)
    rng = np.random.default_rng(seed)
    axes = [np.linspace(-1.0, 1.0, s, dtype=np.float32) for s in shape]
    x, y, z = np.meshgrid(*axes, indexing="ij", sparse=True)
    brain = (x / 0.84) ** 2 + (y / 0.84) ** 2 + (z / 0.84) ** 2 <= 1.0
    coarse = rng.standard_normal((6, 6, 5)).astype(np.float32)
    tissue = ndimage.zoom(coarse, [s / c for s, c in zip(shape, coarse.shape, strict=True)], order=1)
    tissue = np.tanh(tissue[tuple(slice(0, s) for s in shape)])
    # lesion centre within the inner half of the brain, radii in voxels
    centre = np.asarray(shape, dtype=np.float32) / 2 * (1.0 + rng.uniform(-0.35, 0.35, 3).astype(np.float32))
    r_ed = 0.12 * min(shape) * rng.uniform(0.85, 1.15)
    stretch = rng.uniform(0.8, 1.25, 3)
    grid = np.ogrid[tuple(slice(0, s) for s in shape)]
    rho = np.sqrt(sum(((g - c) / (r_ed * k)) ** 2 for g, c, k in zip(grid, centre, stretch, strict=True)))
    bumps = ndimage.zoom(rng.standard_normal((8, 8, 8)).astype(np.float32), [s / 8 for s in shape], order=1)
    rho = rho + 0.08 * bumps[tuple(slice(0, s) for s in shape)]
    label = np.zeros(shape, np.uint8)
    label[rho <= 1.0] = 2
    label[rho <= 0.6] = 3
    label[rho <= 0.35] = 1
    label[~brain] = 0
    image = np.zeros((len(MODALITIES), *shape), np.int16)
    for m, name in enumerate(MODALITIES):
        gain, contrast, ncr, ed, et = _PHANTOM[name]
        rel = 1.0 + contrast * tissue
        for value, cls in ((ncr, 1), (ed, 2), (et, 3)):
            rel = np.where(label == cls, value, rel)
        noisy = gain * rel * (1.0 + 0.03 * rng.standard_normal(shape, dtype=np.float32))
        image[m] = np.where(brain, np.clip(noisy, 1, 32000), 0).astype(np.int16)
    return image, label


def make_dataset(
    out: Path, size: Sequence[int], cases: int, data: str, seed: int = 0, log: Callable[..., None] = print
) -> dict[str, Any]:
    """Write the benchmark's datalists into ``out``: ``datalist.json`` (``cases`` training cases, 1 validation
    case) and ``synthetic_datalist.json`` (the training volumes marked synthetic, internal labels).

    Args:
        out: folder (created).
        size: volume size of phantoms.
        cases: training cases.
        data: ``auto`` (the real case when ``size`` is BraTS's and it is present, else phantoms), ``real``
            or ``phantom``.
        seed: phantom seed (case ``i`` uses ``seed + i``).
        log: progress messages.

    Returns:
        ``{"datalist", "synthetic_datalist", "source", "shape"}``.
    """
    import nibabel as nib

    from custom_components.data.atomic import save_nifti
    from custom_components.data.datalist import write_datalist
    from custom_components.data.labels import to_internal

    out.mkdir(parents=True, exist_ok=True)
    use_real = data == "real" or (data == "auto" and tuple(size) == BRATS_SIZE and SHARED_CASE.is_dir())
    if data == "real" and not SHARED_CASE.is_dir():
        raise FileNotFoundError(f"--data real: the real case is not at {SHARED_CASE}")
    real: list[dict[str, Any]] = []
    synthetic: list[dict[str, Any]] = []
    if use_real:
        name = SHARED_CASE.name
        images = [str(SHARED_CASE / f"{name}-{m}.nii.gz") for m in MODALITIES]
        seg = nib.load(str(SHARED_CASE / f"{name}-seg.nii.gz"))
        internal = save_nifti(
            to_internal(np.asarray(seg.dataobj), "brats2021").astype(np.uint8), seg.affine, out / "seg_internal.nii.gz"
        )
        shape = tuple(int(s) for s in seg.shape)
        for i in range(cases + 1):
            real.append({"case_id": f"real{i:02d}", "image": images, "label": str(SHARED_CASE / f"{name}-seg.nii.gz")})
        for i in range(cases):
            synthetic.append(
                {"case_id": f"syn{i:02d}", "image": images, "label": str(internal), "synthetic": True,
                 "provenance": {"stage": "bench_train_throughput", "source": f"real{i:02d}"}}
            )  # fmt: skip
        labels, source = "brats2021", f"real case {name} x {cases + 1}"
    else:
        shape = tuple(int(s) for s in size)
        affine = np.diag([1.0, 1.0, 1.0, 1.0])
        for i in range(cases + 1):
            start = time.perf_counter()
            image, label = phantom_case(shape, seed + i)
            case = out / f"phantom{i:02d}"
            # uncompressed: quicker to write and to cache (loading is setup, outside the measured iterations)
            files = [str(save_nifti(image[m], affine, case / f"phantom{i:02d}-{mod}.nii"))
                     for m, mod in enumerate(MODALITIES)]  # fmt: skip
            seg = str(save_nifti(label, affine, case / f"phantom{i:02d}-seg.nii"))
            real.append({"case_id": f"phantom{i:02d}", "image": files, "label": seg})
            if i < cases:
                synthetic.append(
                    {"case_id": f"syn{i:02d}", "image": files, "label": seg, "synthetic": True,
                     "provenance": {"stage": "bench_train_throughput", "source": f"phantom{i:02d}"}}
                )  # fmt: skip
            log(
                f"phantom {i + 1}/{cases + 1}: {'x'.join(map(str, shape))}, {time.perf_counter() - start:.1f} s",
                flush=True,
            )
        labels, source = "internal", f"{cases + 1} phantoms"
    datalist = write_datalist(
        out / "datalist.json",
        {"modalities": list(MODALITIES), "labels": labels, "training": real[:cases], "validation": real[cases:]},
    )
    syn = write_datalist(
        out / "synthetic_datalist.json", {"modalities": list(MODALITIES), "labels": "internal", "training": synthetic}
    )
    return {"datalist": str(datalist), "synthetic_datalist": str(syn), "source": source, "shape": list(shape)}


# ---- one run (child process) ----------------------------------------------------------------------


def epochs_for(iterations: int, cases: int, batch_size: int) -> int:
    """Whole epochs covering ``iterations`` (an epoch: ``ceil(cases / batch_size)`` iterations)."""
    return max(1, math.ceil(iterations / math.ceil(cases / batch_size)))


def arm_overrides(arm: str, args: argparse.Namespace, data: dict[str, Any], out: Path) -> dict[str, Any]:
    """dtss_mas_seg config overrides of one run (public config keys of common.yaml / train.yaml)."""
    if arm not in ARMS:
        raise ValueError(f"unknown arm {arm!r}; known: {list(ARMS)}")
    epochs = epochs_for(args.iterations, args.cases, args.batch_size)
    switches = {k: v for k, v in ARMS[arm].items() if k != "synthetic"}
    synthetic = [data["synthetic_datalist"]] if ARMS[arm].get("synthetic") else []
    return {
        **_OFF,
        **switches,
        "synthetic_datalists": synthetic,
        "datalist": data["datalist"],
        "output_dir": str(out),
        "modalities": list(MODALITIES),
        "crop_size": [args.crop] * 3,
        "filters": list(args.filters),
        "batch_size": args.batch_size,
        "num_workers": args.num_workers[0],
        "device": args.device,
        "amp": args.device.startswith("cuda"),
        "seed": args.seed,
        "max_epochs": epochs,
        "phase2_start_epoch": 0,
        "init_checkpoint": None,
        "resume_checkpoint": None,
        "overwrite": True,
        # the benchmark's own, freshly written data: the input check would only add setup time
        "skip_checks": True,
        "val_interval": epochs + 1,
        "checkpoint_interval": epochs + 1,
        # the caches are filled by one thread (setup only; the DataLoader workers are processes and read the cache):
        # MONAI 1.6.1's NibabelReader keeps the file names of its last read() on the shared instance, so two
        # threads loading at once can give a 4-file image only its first file (a 1-channel case, a failed run)
        "train#real_dataset#num_workers": 0,
        "train#synthetic_dataset#num_workers": 0,
        "validate#dataset#num_workers": 0,
    }


def _sync(device: str) -> Callable[[], None]:
    """A function that waits for the device's queued work (CUDA), else does nothing."""
    if device.startswith("cuda"):
        import torch

        return torch.cuda.synchronize
    return lambda: None


def _owners(func: Any, depth: int = 0) -> Iterator[Any]:
    """The objects a handler function belongs to: itself, its ``__self__``, what it wraps (``__wrapped__``,
    ``functools.partial``, closure cells of Ignite's event-filter wrappers), recursively."""
    if func is None or depth > 4:
        return
    yield func
    owner = getattr(func, "__self__", None)
    if owner is not None:
        yield owner
    for inner in (getattr(func, "__wrapped__", None), getattr(func, "func", None)):
        if inner is not None and inner is not func:
            yield from _owners(inner, depth + 1)
    for cell in getattr(func, "__closure__", None) or ():
        try:
            content = cell.cell_contents
        except ValueError:  # an empty cell
            continue
        if callable(content):
            yield from _owners(content, depth + 1)


def time_handlers_of(engine: Any, owner: Any, sync: Callable[[], None]) -> dict[str, list[float]]:
    """Wrap every event handler of ``engine`` that belongs to ``owner`` so that its run time is recorded.

    Reads Ignite's handler table (``Engine._event_handlers``: event -> [(handler, args, kwargs)]), the one place
    Ignite keeps them. Returns ``{event name: [seconds per call]}``, filled while the engine runs.
    """
    times: dict[str, list[float]] = {}
    table = getattr(engine, "_event_handlers", None)
    if owner is None or not isinstance(table, dict):
        return times
    for event, entries in table.items():
        name = str(getattr(event, "name", event))
        for i, (func, args, kwargs) in enumerate(list(entries)):
            if not any(o is owner for o in _owners(func)):
                continue
            record = times.setdefault(name, [])

            @functools.wraps(func)
            def timed(*a: Any, _func: Any = func, _record: list[float] = record, **k: Any) -> Any:
                sync()
                start = time.perf_counter()
                try:
                    return _func(*a, **k)
                finally:
                    sync()
                    _record.append(time.perf_counter() - start)

            entries[i] = (timed, args, kwargs)
    return times


class IterationTimer:
    """Per-iteration loader wait and step time of an Ignite engine, from its events."""

    def __init__(self, sync: Callable[[], None]) -> None:
        self.sync = sync
        self.wait: list[float] = []
        self.step: list[float] = []
        self.first_of_epoch: list[bool] = []
        self.samples: list[int] = []
        self._t = 0.0
        self._new_epoch = True

    def attach(self, engine: Any) -> None:
        """Register the timing handlers on ``engine``."""
        from ignite.engine import Events

        engine.add_event_handler(Events.EPOCH_STARTED, self._epoch_started)
        engine.add_event_handler(Events.GET_BATCH_STARTED, self._mark)
        engine.add_event_handler(Events.GET_BATCH_COMPLETED, self._got_batch)
        engine.add_event_handler(Events.ITERATION_STARTED, self._step_started)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._step_completed)

    def _epoch_started(self, engine: Any) -> None:
        self._new_epoch = True

    def _mark(self, engine: Any) -> None:
        self.sync()
        self._t = time.perf_counter()

    def _got_batch(self, engine: Any) -> None:
        self.wait.append(time.perf_counter() - self._t)
        self.first_of_epoch.append(self._new_epoch)
        self._new_epoch = False
        batch = engine.state.batch
        image = batch.get("image") if isinstance(batch, dict) else None
        self.samples.append(int(image.shape[0]) if hasattr(image, "shape") else 0)

    def _step_started(self, engine: Any) -> None:
        self.sync()
        self._t = time.perf_counter()

    def _step_completed(self, engine: Any) -> None:
        self.sync()
        self.step.append(time.perf_counter() - self._t)

    def summary(self) -> dict[str, Any]:
        """Means over the steady-state iterations (first of each epoch left out, unless that leaves none)."""
        n = min(len(self.wait), len(self.step))
        steady = [i for i in range(n) if not self.first_of_epoch[i]] or list(range(n))
        wait = [self.wait[i] for i in steady]
        step = [self.step[i] for i in steady]
        total_wait, total_step = sum(self.wait[:n]), sum(self.step[:n])
        iteration = statistics.fmean(w + s for w, s in zip(wait, step, strict=True))
        firsts = [self.wait[i] for i in range(n) if self.first_of_epoch[i]]
        return {
            "iterations": n,
            "steady_iterations": len(steady),
            "samples_per_iteration": statistics.median(self.samples[:n]) if n else 0,
            "iteration_s": iteration,
            "step_s": statistics.fmean(step),
            "loader_wait_s": statistics.fmean(wait),
            "stall_fraction": sum(wait) / max(sum(wait) + sum(step), 1e-12),
            "stall_fraction_all": total_wait / max(total_wait + total_step, 1e-12),
            "epoch_start_wait_s": statistics.fmean(firsts) if firsts else 0.0,
            "iterations_per_s": 1.0 / iteration if iteration > 0 else 0.0,
            "samples_per_s": statistics.median(self.samples[:n]) / iteration if iteration > 0 and n else 0.0,
        }


class ChildMemorySampler:
    """Peak memory of this process's child processes (DataLoader workers), sampled from ``/proc`` in a thread.

    Records the peak over samples of the summed proportional set size (PSS: pages shared with the parent, such
    as the cached dataset the workers inherit by fork, divided among their users) and the peak resident set
    (RSS) of any one child. Both stay ``None`` where ``/proc`` has no ``children`` / ``smaps_rollup`` files.
    """

    def __init__(self, interval: float = 0.1) -> None:
        self.interval = interval
        self.peak_pss_mb: float | None = None
        self.peak_rss_mb: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    @staticmethod
    def _children() -> list[int]:
        pids: list[int] = []
        for task in Path("/proc/self/task").glob("*/children"):
            try:
                pids += [int(p) for p in task.read_text().split()]
            except OSError:
                continue
        return pids

    @staticmethod
    def _memory_kb(pid: int) -> tuple[float, float] | None:
        """(PSS, RSS) of ``pid`` in kB, or ``None`` when it is gone or unreadable."""
        try:
            text = Path(f"/proc/{pid}/smaps_rollup").read_text()
        except OSError:
            return None
        values = {}
        for line in text.splitlines():
            parts = line.split()
            if len(parts) >= 2 and parts[0] in ("Pss:", "Rss:"):
                values[parts[0]] = float(parts[1])
        return (values["Pss:"], values["Rss:"]) if len(values) == 2 else None

    def sample(self) -> None:
        """Record the children's memory now."""
        found = [m for m in (self._memory_kb(p) for p in self._children()) if m is not None]
        if not found:
            return
        pss, rss = sum(m[0] for m in found) / 1024, max(m[1] for m in found) / 1024
        self.peak_pss_mb = max(self.peak_pss_mb or 0.0, pss)
        self.peak_rss_mb = max(self.peak_rss_mb or 0.0, rss)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def __enter__(self) -> ChildMemorySampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def synthesis_times(parser: Any, samples: int, seed: int) -> dict[str, float]:
    """Median seconds per sample of every online synthesis transform of the config, on preprocessed real cases."""
    transforms = parser.get_parsed_content("train#online_synthesis") if "train#online_synthesis" in parser else []
    if not transforms:
        return {}
    dataset = parser.get_parsed_content("train#real_dataset")
    out: dict[str, float] = {}
    for transform in transforms:
        if hasattr(transform, "set_random_state"):
            transform.set_random_state(seed)
        times = []
        for i in range(samples):
            case = copy.deepcopy(dataset[i % len(dataset)])
            start = time.perf_counter()
            transform(case)
            times.append(time.perf_counter() - start)
        name = type(transform).__name__
        if hasattr(transform, "transforms"):  # a Compose (DTSS + mass effect)
            name = "+".join(type(t).__name__ for t in transform.transforms)
        out[name] = statistics.median(times)
    return out


def training_workflow(bundle_root: Path, overrides: dict[str, Any]) -> Any:
    """MONAI's ``ConfigWorkflow`` of a bundle's training (``common.yaml`` + ``train.yaml``) with ``overrides``."""
    from monai.bundle import ConfigWorkflow

    configs = bundle_root / "configs"
    return ConfigWorkflow(
        config_file=[str(configs / "common.yaml"), str(configs / "train.yaml")],
        meta_file=str(configs / "metadata.json"),
        logging_file=str(configs / "logging.conf"),
        workflow_type="train",
        run_id="training",
        bundle_root=str(bundle_root),
        **overrides,
    )


def run_one(arm: str, args: argparse.Namespace, data: dict[str, Any], out: Path) -> dict[str, Any]:
    """Train one arm for the planned iterations through the bundle's config; returns its figures."""
    import torch

    sync = _sync(args.device)
    overrides = arm_overrides(arm, args, data, out)
    start = time.perf_counter()
    wf = training_workflow(BUNDLE, overrides)
    wf.initialize()
    parser = wf.parser
    trainer = parser.get_parsed_content("train#trainer")  # builds (and caches) the datasets before the timing
    mas = parser.get_parsed_content("train#mas") if overrides["use_mas"] and "train#mas" in parser else None
    mas_times = time_handlers_of(trainer, mas, sync)
    timer = IterationTimer(sync)
    timer.attach(trainer)
    if args.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    setup = time.perf_counter() - start
    sync()
    start = time.perf_counter()
    with ChildMemorySampler() as workers:
        wf.run()
    sync()
    run_s = time.perf_counter() - start
    epochs = int(trainer.state.epoch)
    figures = timer.summary()
    cuda_peak = torch.cuda.max_memory_allocated() / 2**20 if args.device.startswith("cuda") else None
    synthesis = synthesis_times(parser, args.synthesis_samples, args.seed)
    wf.finalize()
    iteration_total = sum(timer.wait) + sum(timer.step)
    epoch_end = mas_times.get("EPOCH_COMPLETED", [])
    start_evals = sum(sum(v) for k, v in mas_times.items() if k in ("STARTED", "EPOCH_STARTED"))
    mas_found = mas is not None and bool(mas_times)
    return {
        "arm": arm,
        "num_workers": args.num_workers[0],
        "device": args.device,
        "torch_threads": torch.get_num_threads(),
        "data": data["source"],
        "shape": data["shape"],
        "crop": args.crop,
        "filters": list(args.filters),
        "batch_size": args.batch_size,
        "cases": args.cases,
        "epochs": epochs,
        **figures,
        "synthesis_s_per_sample": synthesis,
        "synthesis_s_per_sample_total": sum(synthesis.values())
        if synthesis
        else (0.0 if ARMS[arm].get("synthetic") else None),
        "mas_s_per_epoch": sum(epoch_end) / max(epochs, 1) if mas_found else None,
        "mas_start_s": start_evals if mas_found else None,
        "mas_handler_s": {k: sum(v) for k, v in mas_times.items()} if mas_found else None,
        "mas_timed": mas_found if mas is not None else None,
        "epoch_overhead_s": max(run_s - iteration_total, 0.0) / max(epochs, 1),
        "setup_s": setup,
        "run_s": run_s,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "peak_workers_pss_mb": workers.peak_pss_mb,
        "peak_worker_rss_mb": workers.peak_rss_mb,
        "cuda_peak_allocated_mb": cuda_peak,
    }


# ---- orchestration ----------------------------------------------------------------------------------


def child_command(arm: str, num_workers: int, args: argparse.Namespace, data_json: Path, out: Path) -> list[str]:
    """argv of the process that runs one (arm, num_workers)."""
    return [
        sys.executable, str(Path(__file__).resolve()), "--child", "--arms", arm, "--num-workers", str(num_workers),
        "--device", args.device, "--iterations", str(args.iterations), "--crop", str(args.crop),
        "--filters", *map(str, args.filters), "--batch-size", str(args.batch_size), "--cases", str(args.cases),
        "--synthesis-samples", str(args.synthesis_samples), "--seed", str(args.seed),
        "--data-json", str(data_json), "--json", str(out),
    ]  # fmt: skip


def _fmt(value: Any, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def print_table(rows: list[dict[str, Any]]) -> None:
    """One line per (arm, num_workers)."""
    head = (
        f"{'arm':<9} {'nw':>2} {'it/s':>6} {'iter s':>7} {'step s':>7} {'wait s':>7} {'stall':>6} "
        f"{'ep.start s':>10} {'smp/it':>6} {'synth s/smp':>11} {'MAS s/ep':>8} {'RSS MB':>7} {'wrk PSS':>7} {'CUDA MB':>8}"
    )
    print(head)
    for r in rows:
        if "error" in r:
            print(f"{r['arm']:<9} {r['num_workers']:>2} FAILED: {r['error']}")
            continue
        print(
            f"{r['arm']:<9} {r['num_workers']:>2} {r['iterations_per_s']:>6.3f} {r['iteration_s']:>7.2f} "
            f"{r['step_s']:>7.2f} {r['loader_wait_s']:>7.2f} {r['stall_fraction']:>6.1%} "
            f"{r['epoch_start_wait_s']:>10.2f} {r['samples_per_iteration']:>6.0f} "
            f"{_fmt(r['synthesis_s_per_sample_total'], '.2f'):>11} {_fmt(r['mas_s_per_epoch'], '.2f'):>8} "
            f"{r['peak_rss_mb']:>7.0f} {_fmt(r['peak_workers_pss_mb'], '.0f'):>7} {_fmt(r['cuda_peak_allocated_mb'], '.0f'):>8}"
        )


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line arguments (see the module docstring)."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS), help="arms to run")
    parser.add_argument("--num-workers", nargs="+", type=int, default=[0, 2], help="DataLoader workers to compare")
    parser.add_argument("--device", default="cpu", help="torch device (cpu, cuda, cuda:1)")
    parser.add_argument("--iterations", type=int, default=4, help="phase-2 iterations per run (whole epochs)")
    parser.add_argument("--size", nargs=3, type=int, default=list(BRATS_SIZE), help="phantom volume size")
    parser.add_argument("--crop", type=int, default=128, help="training crop side (the bundle's crop_size)")
    parser.add_argument("--filters", nargs="+", type=int, default=[16, 32, 64, 128, 256], help="DynUNet widths")
    parser.add_argument("--batch-size", type=int, default=2, help="real cases per batch")
    parser.add_argument("--cases", type=int, default=4, help="real training cases (an epoch is one pass over them)")
    parser.add_argument("--data", choices=["auto", "real", "phantom"], default="auto", help="volumes to train on")
    parser.add_argument("--synthesis-samples", type=int, default=3, help="cases timed per synthesis transform")
    parser.add_argument("--seed", type=int, default=0, help="bundle seed and phantom seed")
    parser.add_argument("--workdir", help="folder for data and runs (default: a temporary folder, removed)")
    parser.add_argument("--timeout", type=float, default=None, help="seconds allowed per run (default: none)")
    parser.add_argument("--json", help="write the rows (and the settings) to this JSON file")
    parser.add_argument("--dry-run", action="store_true", help="print the plan and the commands, run nothing")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--data-json", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.iterations < 1 or args.cases < 1 or args.batch_size < 1 or args.synthesis_samples < 1:
        parser.error("--iterations, --cases, --batch-size and --synthesis-samples must be >= 1")
    if any(n < 0 for n in args.num_workers):
        parser.error("--num-workers must be >= 0")
    return args


def child_main(args: argparse.Namespace) -> int:
    """Run one (arm, num_workers) and write its row to ``--json``."""
    data = json.loads(Path(args.data_json).read_text())
    out = Path(args.json).with_suffix("")
    row = run_one(args.arms[0], args, data, out)
    Path(args.json).write_text(json.dumps(row, indent=2) + "\n")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        return child_main(args)
    if args.device.startswith("cuda") and not args.dry_run:
        import torch

        if not torch.cuda.is_available():
            print(f"--device {args.device}: CUDA is not available on this machine", file=sys.stderr)
            return 2
    runs = [(arm, nw) for arm in args.arms for nw in args.num_workers]
    epochs = epochs_for(args.iterations, args.cases, args.batch_size)
    per_epoch = math.ceil(args.cases / args.batch_size)
    print(
        f"dtss_mas_seg phase 2 throughput: arms {' '.join(args.arms)}, num_workers {args.num_workers}, "
        f"device {args.device}, {epochs} epoch(s) x {per_epoch} iterations of batch {args.batch_size} real cases, "
        f"crop {args.crop}^3, DynUNet {args.filters}, {args.cases} training cases, "
        f"volumes {'x'.join(map(str, args.size))} ({args.data}), OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}"
    )
    tmp = None if args.workdir else tempfile.TemporaryDirectory(prefix="bench_throughput_")
    work = Path(args.workdir or tmp.name)  # type: ignore[union-attr]
    try:
        data_json = work / "data.json"
        if args.dry_run:
            print(f"data: {args.cases} training + 1 validation case(s) into {work / 'data'}, described in {data_json}")
            for arm, nw in runs:
                cmd = child_command(arm, nw, args, data_json, work / "runs" / f"{arm}_nw{nw}.json")
                print(shlex.join(cmd))
            return 0
        start = time.perf_counter()
        data = make_dataset(work / "data", args.size, args.cases, args.data, args.seed)
        data_json.write_text(json.dumps(data))
        print(
            f"data: {data['source']}, {'x'.join(map(str, data['shape']))} ({time.perf_counter() - start:.1f} s)",
            flush=True,
        )
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
        rows: list[dict[str, Any]] = []
        for arm, nw in runs:
            out = work / "runs" / f"{arm}_nw{nw}.json"
            out.parent.mkdir(parents=True, exist_ok=True)
            log = out.with_suffix(".log")
            start = time.perf_counter()
            with log.open("w") as f:
                try:
                    proc = subprocess.run(
                        child_command(arm, nw, args, data_json, out), stdout=f, stderr=subprocess.STDOUT,
                        env=env, cwd=str(REPO), timeout=args.timeout, check=False,
                    )  # fmt: skip
                    code: int | str = proc.returncode
                except subprocess.TimeoutExpired:
                    code = f"timed out after {args.timeout} s"
            if code == 0 and out.is_file():
                row = json.loads(out.read_text())
            else:
                tail = log.read_text()[-2000:]
                print(f"{arm} num_workers {nw}: exit {code}; end of {log}:\n{tail}", file=sys.stderr)
                row = {"arm": arm, "num_workers": nw, "error": f"exit {code}"}
            row["process_s"] = time.perf_counter() - start
            rows.append(row)
            print(f"  {arm} num_workers {nw}: {row['process_s']:.0f} s", flush=True)
            if args.json:  # after every run: an interrupted benchmark keeps the rows it has
                settings = {k: v for k, v in vars(args).items() if k not in ("child", "data_json", "dry_run")}
                result = {"settings": settings, "data": data, "rows": rows}
                Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
        print_table(rows)
        return 0 if all("error" not in r for r in rows) else 1
    finally:
        if tmp is not None:
            tmp.cleanup()


if __name__ == "__main__":
    sys.exit(main())
