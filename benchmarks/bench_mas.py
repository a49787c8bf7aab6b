"""Benchmark the cost of MAS in a training epoch (one CPU thread by default).

Times phase-2 training epochs of the dtss_mas_seg trainer on in-memory crops (real + synthetic samples
in every batch, DynUNet, weighted Dice loss) in two settings:

* ``plain``: MONAI's ``SupervisedTrainer`` with the same loss and no sample weights (no per-sample Dice);
* ``mas``: ``SegmentationTrainer`` with a ``MASHandler`` (per-sample Dice of the detached prediction,
  MAS weights, per-epoch statistics, per-epoch CSV log).

It also times MAS's evaluation of the real training cases (``MASHandler.evaluate``: the
:func:`~custom_components.handlers.real_case_evaluator`, a MONAI ``SupervisedEvaluator``, eval mode, no gradients;
the bundle's default source of eta/theta, run at the start of phase 2 and after every phase-2 epoch) on
``--cases`` volumes of ``--volume`` voxels, as whole volumes (``SlidingWindowInferer``, the bundle's
settings: roi = crop, overlap 0.5, Gaussian blending) and as tumour-centred crops (one forward pass per
case), against the training epoch over the same cases (one iteration per ``--batch`` real cases).

The data loading is excluded (the batches are prepared tensors), so the overhead is relative to the
network's forward and backward passes only: an upper bound of MAS's share of a real epoch. Three figures:
the difference of the median epoch times (noisy on a shared machine), the time spent in MAS code during
the MAS epochs (timed in place, the reliable figure), and the MAS operations of one batch
(``hard_prediction`` + ``region_dice_per_sample`` + ``MASHandler.weights``) against its forward + backward pass.

Then the cost of MAS's statistics per phase-2 epoch in the paper-exact setting (``mas_eval_interval 1``, one crop
per forward pass) and in the cheap one (``--interval`` epochs between evaluations, ``--eval-batch`` crops per pass:
the evaluation's time divided by the interval), and what the cheap one changes: the eta/theta it uses against
those after every epoch, over a short training (``--stats-epochs`` at ``--stats-lr``) at the benchmark's size, or
(``--summary``) from the ``mas/summary.json`` of a run with ``mas_eval_interval 1``.

Usage: ``python benchmarks/bench_mas.py [--crop 64] [--filters 8,16,32,64,128] [--batch 2] [--iters 4] [--epochs 3]
[--volume 80,96,80] [--cases 4] [--interval 5] [--eval-batch 4] [--stats-epochs 6] [--stats-lr 1e-4]
[--summary RUN/mas/summary.json]``
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before torch starts its thread pool

import argparse
import csv
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from ignite.engine import Events
from monai.engines import SupervisedTrainer
from monai.inferers import SlidingWindowInferer

from custom_components.engines import seg_trainer
from custom_components.engines.seg_trainer import SegmentationTrainer
from custom_components.handlers.mas import (
    MASHandler,
    hard_prediction,
    mas_weight,
    real_case_evaluator,
    region_dice_per_sample,
)
from custom_components.losses.weighted_dice import SampleWeightedDiceLoss
from custom_components.networks import build_segmentation_network


def make_batches(n: int, real: int, synthetic: int, crop: int, channels: int) -> list[dict]:
    """``n`` batches of ``real`` + ``synthetic`` crops with a nested tumour (ED around ET around NCR)."""
    g = torch.Generator().manual_seed(0)
    batches = []
    size = real + synthetic
    for i in range(n):
        label = torch.zeros(size, 1, crop, crop, crop)
        for b in range(size):
            c = torch.randint(crop // 4, 3 * crop // 4, (3,), generator=g).tolist()
            r = crop // 6
            box = tuple(slice(max(x - r, 0), x + r) for x in c)
            label[(b, 0, *box)] = 2
            inner = tuple(slice(max(x - r // 2, 0), x + r // 2) for x in c)
            label[(b, 0, *inner)] = 3
            core = tuple(slice(max(x - r // 4, 0), x + r // 4) for x in c)
            label[(b, 0, *core)] = 1
        image = torch.randn(size, channels, crop, crop, crop, generator=g) * 0.3 + label / 3
        batches.append(
            {
                "image": image,
                "label": label,
                "is_synthetic": torch.tensor([False] * real + [True] * synthetic),
                "mas": torch.tensor([False] * real + [True] * synthetic),
                "weight": torch.ones(size),
                "case_id": [f"case{i}_{b}" for b in range(real)] + [f"case{i}_{b}#online0" for b in range(synthetic)],
            }
        )
    return batches


def _timed(fn: Callable, clock: Callable[[], float], acc: list[float]) -> Callable:
    """``fn`` with its run time added to ``acc[0]``."""

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        start = clock()
        try:
            return fn(*args, **kwargs)
        finally:
            acc[0] += clock() - start

    return wrapper


def epoch_times(
    kind: str, batches: list[dict], filters: list[int], channels: int, epochs: int, cpu: bool = True
) -> tuple[list[float], list[float]]:
    """Seconds per epoch, and seconds spent in MAS code per epoch, for ``kind`` in {plain, mas}.

    The first (warm-up) epoch is excluded. MAS code is timed in place: the per-sample Dice
    (``hard_prediction``, ``region_dice_per_sample``) and every ``MASHandler`` method the trainer and the
    engine call. ``cpu``: process CPU time (robust to other processes on a shared machine) instead of wall time.
    """
    torch.manual_seed(0)
    net = build_segmentation_network("dynunet", channels, 4, filters)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-5, weight_decay=1e-5)
    loss = SampleWeightedDiceLoss()
    common = {"device": "cpu", "max_epochs": epochs + 1, "train_data_loader": batches, "network": net, "optimizer": opt}
    clock = time.process_time if cpu else time.perf_counter
    acc = [0.0]
    originals = (seg_trainer.hard_prediction, seg_trainer.region_dice_per_sample)
    with tempfile.TemporaryDirectory() as tmp:
        if kind == "plain":
            trainer = SupervisedTrainer(loss_function=loss, **common)
        else:
            seg_trainer.hard_prediction = _timed(originals[0], clock, acc)
            seg_trainer.region_dice_per_sample = _timed(originals[1], clock, acc)
            mas = MASHandler(log_dir=tmp)
            for name in ("weights", "epoch_started", "iteration_completed", "epoch_completed"):
                setattr(mas, name, _timed(getattr(mas, name), clock, acc))
            trainer = SegmentationTrainer(loss_function=loss, mas=mas, **common)
        starts: list[float] = []
        times: list[float] = []
        mas_times: list[float] = []

        def started(engine: Any) -> None:
            acc[0] = 0.0
            starts.append(clock())

        def completed(engine: Any) -> None:
            times.append(clock() - starts[-1])
            mas_times.append(acc[0])

        trainer.add_event_handler(Events.EPOCH_STARTED, started)
        trainer.add_event_handler(Events.EPOCH_COMPLETED, completed)
        try:
            trainer.run()
        finally:
            seg_trainer.hard_prediction, seg_trainer.region_dice_per_sample = originals
    return times[1:], mas_times[1:]


def mas_op_time(batches: list[dict], filters: list[int], channels: int, repeats: int = 5) -> tuple[float, float]:
    """Median CPU seconds of (forward + backward of one batch, MAS-specific operations of that batch)."""
    torch.manual_seed(0)
    net = build_segmentation_network("dynunet", channels, 4, filters)
    loss = SampleWeightedDiceLoss()
    mas = MASHandler()
    mas.load_state_dict({"eta": 0.6, "theta": 0.2})
    batch = batches[0]
    step, ops = [], []
    for _ in range(repeats):
        t0 = time.process_time()
        logits = net(batch["image"])
        loss(logits, batch["label"]).backward()
        t1 = time.process_time()
        with torch.no_grad():
            dice = region_dice_per_sample(hard_prediction(logits.detach()), batch["label"][:, 0])
        mas.weights(dice, batch["weight"], batch["mas"])
        ops.append(time.process_time() - t1)
        step.append(t1 - t0)
    return statistics.median(step), statistics.median(ops)


def eval_time(
    filters: list[int],
    channels: int,
    crop: int,
    volume: list[int],
    cases: int,
    whole: bool,
    batch: int = 1,
    repeats: int = 2,
) -> float:
    """Median seconds of one ``MASHandler.evaluate`` over ``cases`` real cases (whole volumes or crops, ``batch`` per
    forward pass)."""
    torch.manual_seed(0)
    net = build_segmentation_network("dynunet", channels, 4, filters)
    shape = volume if whole else [crop] * 3
    items = []
    for i in range(cases):
        label = torch.zeros(1, 1, *shape)
        centre = [s // 2 for s in shape]
        label[(0, 0, *(slice(c - crop // 6, c + crop // 6) for c in centre))] = 2
        items.append({"image": torch.randn(1, channels, *shape), "label": label, "case_id": [f"case{i}"]})
    loader = [
        {
            "image": torch.cat([it["image"] for it in items[i : i + batch]]),
            "label": torch.cat([it["label"] for it in items[i : i + batch]]),
            "case_id": [c for it in items[i : i + batch] for c in it["case_id"]],
        }
        for i in range(0, cases, batch)
    ]
    inferer = SlidingWindowInferer(roi_size=[crop] * 3, sw_batch_size=2, overlap=0.5, mode="gaussian")
    mas = MASHandler(evaluator=real_case_evaluator(net, loader, inferer=inferer))
    times = []
    for _ in range(repeats):
        start = time.process_time()  # CPU time of this single-threaded process: robust to a shared machine
        mas.evaluate()
        times.append(time.process_time() - start)
    return statistics.median(times)


def exact_history(batches: list[dict], filters: list[int], channels: int, epochs: int, lr: float) -> list[dict]:
    """MAS statistics after every epoch (the paper's definition) of a short training on ``batches``.

    The real cases of the evaluation are the real crops of the batches (tumour-centred by construction); the
    statistics of epoch ``k`` are those after epoch ``k - 1``.
    """
    torch.manual_seed(0)
    net = build_segmentation_network("dynunet", channels, 4, filters)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-5)
    real = [
        {"image": b["image"][i : i + 1], "label": b["label"][i : i + 1], "case_id": [b["case_id"][i]]}
        for b in batches
        for i in range(len(b["case_id"]))
        if not bool(b["is_synthetic"][i])
    ]
    mas = MASHandler(evaluator=real_case_evaluator(net, real))
    trainer = SegmentationTrainer(
        device="cpu", max_epochs=epochs, train_data_loader=batches, network=net, optimizer=opt,
        loss_function=SampleWeightedDiceLoss(), mas=mas, decollate=False,
    )  # fmt: skip
    trainer.run()
    return [h for h in mas.history if "after_epoch" in h]


def interval_differences(history: list[dict], interval: int) -> tuple[float, float, float, float]:
    """(max, mean) of ``|eta_used - eta_exact|`` and ``|theta_used - theta_exact|`` over the epochs that use them,
    where ``_exact`` are the statistics after every epoch and ``_used`` those ``mas_eval_interval = interval`` reuses.

    Args:
        history: one entry per epoch end, ``after_epoch``, ``eta``, ``theta``, statistics after every epoch
            (the first ``after_epoch`` is where MAS starts, e.g. ``phase2_start_epoch``).
        interval: ``mas_eval_interval``.
    """
    exact = {int(h["after_epoch"]): (float(h["eta"]), float(h["theta"])) for h in history}
    start = min(exact)
    d_eta, d_theta = [], []
    for k in sorted(exact):
        used = exact[start + (k - start) // interval * interval]
        d_eta.append(abs(used[0] - exact[k][0]))
        d_theta.append(abs(used[1] - exact[k][1]))
    return max(d_eta), statistics.mean(d_eta), max(d_theta), statistics.mean(d_theta)


def weight_differences(log_dir: Path, history: list[dict], interval: int, beta: float) -> tuple[float, float, int]:
    """(max, mean) ``|w_interval - w_exact|`` over the MAS-weighted synthetic samples of a run's ``epoch_*.csv``,
    with the weights recomputed (eq. 6) from each sample's logged Dice, and the number of samples.

    Args:
        log_dir: the run's ``mas`` folder (``epoch_NNNN.csv`` beside ``summary.json``).
        history: its statistics after every epoch (``after_epoch``, ``eta``, ``theta``).
        interval: ``mas_eval_interval``.
        beta: the run's ``mas_beta``.
    """
    exact = {int(h["after_epoch"]): (float(h["eta"]), float(h["theta"])) for h in history}
    start = min(exact)
    diffs = []
    for path in sorted(log_dir.glob("epoch_*.csv")):
        k = int(path.stem.split("_")[1])
        if k - 1 not in exact:
            continue
        paper, reused = exact[k - 1], exact[start + (k - 1 - start) // interval * interval]
        with path.open() as f:
            for row in csv.DictReader(f):
                if row["source"] == "train" and row["mas"] == "1" and row["dice"] != "nan":
                    d = float(row["dice"])
                    diffs.append(abs(mas_weight(d, *reused, beta) - mas_weight(d, *paper, beta)))
    if not diffs:
        return 0.0, 0.0, 0
    return max(diffs), statistics.mean(diffs), len(diffs)


def print_differences(history: list[dict], intervals: list[int], where: str) -> None:
    """One line per interval: the eta/theta it uses against those of every epoch."""
    etas = [float(h["eta"]) for h in history]
    print(f"eta/theta of {where}: {len(history)} computations, eta {min(etas):.4f} .. {max(etas):.4f}")
    for n in intervals:
        e_max, e_mean, t_max, t_mean = interval_differences(history, n)
        print(
            f"  mas_eval_interval {n} vs every epoch: |d eta| max {e_max:.4f} mean {e_mean:.4f}, "
            f"|d theta| max {t_max:.4f} mean {t_mean:.4f}"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--crop", type=int, default=64, help="crop side (voxels)")
    parser.add_argument("--filters", default="8,16,32,64,128", help="DynUNet widths per level")
    parser.add_argument("--batch", type=int, default=2, help="real crops per batch (as many synthetic ones are added)")
    parser.add_argument("--channels", type=int, default=4, help="input modalities")
    parser.add_argument("--iters", type=int, default=3, help="iterations per epoch")
    parser.add_argument("--epochs", type=int, default=2, help="timed epochs per setting (after one warm-up epoch)")
    parser.add_argument("--wall", action="store_true", help="time epochs by wall clock instead of process CPU time")
    parser.add_argument("--volume", default="80,96,80", help="real-case volume for the evaluation pass (voxels)")
    parser.add_argument("--cases", type=int, default=4, help="real cases of the evaluation pass")
    parser.add_argument("--interval", type=int, default=5, help="mas_eval_interval of the cheap setting")
    parser.add_argument("--eval-batch", type=int, default=4, help="mas_eval_batch_size of the cheap setting")
    parser.add_argument("--stats-epochs", type=int, default=6, help="epochs of the eta/theta drift measurement")
    parser.add_argument("--stats-lr", type=float, default=1e-4, help="learning rate of the drift measurement")
    parser.add_argument("--summary", help="a run's mas/summary.json (mas_eval_interval 1): report its eta/theta only")
    args = parser.parse_args()
    intervals = sorted({2, args.interval, 2 * args.interval})
    if args.summary:
        summary = json.loads(Path(args.summary).read_text())
        history = [h for h in summary["history"] if "after_epoch" in h]
        print_differences(history, intervals, args.summary)
        for n in intervals:
            w_max, w_mean, count = weight_differences(Path(args.summary).parent, history, n, summary["beta"])
            print(
                f"  mas_eval_interval {n}: MAS weights of the run's {count} synthetic samples change by "
                f"max {w_max:.4f}, mean {w_mean:.4f}"
            )
        return 0
    filters = [int(f) for f in args.filters.split(",")]
    batches = make_batches(args.iters, args.batch, args.batch, args.crop, args.channels)
    print(
        f"crop {args.crop}^3, {args.channels} channels, batch {args.batch} real + {args.batch} synthetic, "
        f"DynUNet {filters}, {args.iters} iterations/epoch, {torch.get_num_threads()} thread(s)"
    )
    results: dict[str, list[float]] = {}
    in_place: list[float] = []
    for kind in ("plain", "mas", "plain", "mas"):  # interleaved against drift on a shared machine
        times, mas_times = epoch_times(kind, batches, filters, args.channels, args.epochs, cpu=not args.wall)
        results.setdefault(kind, []).extend(times)
        if kind == "mas":
            in_place += [m / t for m, t in zip(mas_times, times, strict=True)]
    plain, mas = statistics.median(results["plain"]), statistics.median(results["mas"])
    clock = "wall" if args.wall else "CPU"
    print(f"epoch {clock} time without MAS: {plain:.3f} s (median of {len(results['plain'])})")
    print(f"epoch {clock} time with MAS:    {mas:.3f} s (median of {len(results['mas'])})")
    print(f"difference of the medians: {100 * (mas - plain) / plain:+.2f} % (includes the machine's timing noise)")
    print(f"MAS code timed in place: {100 * statistics.median(in_place):.2f} % of the epoch (median over epochs)")
    step, ops = mas_op_time(batches, filters, args.channels)
    print(
        f"per iteration: forward+backward {step * 1000:.1f} ms, MAS operations {ops * 1000:.2f} ms "
        f"= {100 * ops / step:.2f} % of the iteration"
    )
    volume = [int(v) for v in args.volume.split(",")]
    # a phase-2 epoch over the cases: one iteration (batch real + as many synthetic crops) per `batch` cases
    epoch = step * -(-args.cases // args.batch)
    for whole in (True, False):
        t = eval_time(filters, args.channels, args.crop, volume, args.cases, whole)
        what = f"whole {'x'.join(map(str, volume))} volumes" if whole else f"tumour-centred {args.crop}^3 crops"
        print(
            f"MAS evaluation of {args.cases} real cases ({what}): {t:.3f} s CPU = {100 * t / epoch:.0f} % of the "
            f"phase-2 epoch's forward+backward passes over them ({epoch:.3f} s)"
        )
    # MAS statistics per phase-2 epoch (tumour-centred crops): paper-exact, and the cheap setting
    t1 = eval_time(filters, args.channels, args.crop, volume, args.cases, False)
    tb = eval_time(filters, args.channels, args.crop, volume, args.cases, False, batch=args.eval_batch)
    print(
        f"MAS statistics per phase-2 epoch (tumour-centred crops), as % of its forward+backward passes:\n"
        f"  mas_eval_interval 1, mas_eval_batch_size 1 (after every epoch, the paper's definition): "
        f"{t1:.3f} s = {100 * t1 / epoch:.1f} %\n"
        f"  mas_eval_interval {args.interval}, mas_eval_batch_size {args.eval_batch}: {tb:.3f} s every "
        f"{args.interval} epochs = {100 * tb / args.interval / epoch:.1f} %"
    )
    history = exact_history(batches, filters, args.channels, args.stats_epochs, args.stats_lr)
    print_differences(history, intervals, f"a {args.stats_epochs}-epoch training at lr {args.stats_lr:g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
