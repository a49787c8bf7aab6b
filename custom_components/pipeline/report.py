"""The comparison report: Dice table (mean +- std over seeds), difference to baseline, paired t-test,
a plot of Dice per arm, the realism table and plot per synthetic method, and QC montages of synthetic
cases, as Markdown and HTML."""

from __future__ import annotations

import html
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from scipy import optimize, stats  # noqa: E402

from custom_components.data.atomic import atomic_path, atomic_write_text  # noqa: E402
from custom_components.data.labels import REGION_NAMES  # noqa: E402
from custom_components.pipeline.arms import BASELINE, CONTROL, input_arm  # noqa: E402


@dataclass(frozen=True)
class ArmResult:
    """Mean Dice of one arm and seed over the held-out cases."""

    arm: str
    seed: int
    dice: Mapping[str, float]  # ET, TC, WT

    @property
    def mean(self) -> float:
        return float(np.mean([self.dice[r] for r in REGION_NAMES]))


# every arm is compared with the baseline and the compute-matched control (real data only, as many samples per step
# as the synthetic arms), both from the arms' registry
REFERENCE_ARMS: tuple[str, ...] = (BASELINE, CONTROL)
CONTROL_ARM = CONTROL
ALPHA = 0.05  # two-sided significance level of the intervals, tests and minimum detectable effects
POWER = 0.8  # power at which the minimum detectable effect is detected
ONE_SEED = "one seed: no interval"


@dataclass(frozen=True)
class PairedComparison:
    """An arm against a reference arm, paired by seed, on mean Dice (fractions, as :class:`ArmResult`).

    ``sd_diff``, ``ci_low`` / ``ci_high``, ``p_value`` and ``mde`` are None with one shared seed; ``p_value`` is
    also None when the paired differences are all equal (no spread to test against).
    """

    reference: str
    n: int  # seeds both arms ran
    diff: float  # mean over those seeds of (the arm's mean Dice minus the reference's)
    sd_diff: float | None  # standard deviation of the paired differences (ddof 1)
    ci_low: float | None  # 95 % confidence interval of diff: diff -+ t(0.975, n-1) sd_diff / sqrt(n)
    ci_high: float | None
    p_value: float | None  # paired two-tailed t-test (scipy.stats.ttest_rel)
    mde: float | None  # minimum detectable effect, :func:`minimum_detectable_effect`


@dataclass(frozen=True)
class ArmSummary:
    arm: str
    seeds: tuple[int, ...]
    mean: Mapping[str, float]  # ET, TC, WT, Mean
    std: Mapping[str, float]
    comparisons: Mapping[str, PairedComparison] = field(default_factory=dict)  # by reference arm

    def as_json(self) -> dict[str, Any]:
        """The arm's entry of ``results.json``: mean, std, n_seeds and one comparison per reference."""
        return {**asdict(self), "seeds": list(self.seeds), "n_seeds": len(self.seeds)}


def _save_figure(fig: Any, out_png: str | os.PathLike) -> Path:
    """Lay out a Matplotlib figure, write it as a PNG atomically and close it."""
    fig.tight_layout()
    with atomic_path(out_png, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)
    return Path(out_png)


def minimum_detectable_effect(sd_diff: float, n: int, alpha: float = ALPHA, power: float = POWER) -> float | None:
    """The smallest true mean paired difference a two-sided paired t-test at ``alpha`` detects with ``power``,
    given the standard deviation of the paired differences and their number (None below two).

    Exact: the power of the test at noncentrality ``nc = effect sqrt(n) / sd`` is
    ``P(T' > t) + P(T' < -t)`` with ``T'`` noncentral t (``scipy.stats.nct``, n - 1 degrees of freedom) and
    ``t = t(1 - alpha/2, n - 1)``; ``scipy.optimize.brentq`` solves it for ``nc``. (The common approximation
    ``(t(1 - alpha/2) + t(power)) sd / sqrt(n)`` is 1 % lower at n = 5, 14 % at n = 2.)
    """
    if n < 2:
        return None
    df = n - 1
    crit = stats.t.ppf(1 - alpha / 2, df)

    def shortfall(nc: float) -> float:  # the lower tail as the upper one of -nc: nct.cdf gives NaN far out
        return float(stats.nct.sf(crit, df, nc) + stats.nct.sf(crit, df, -nc)) - power

    upper = 3 * (crit + stats.t.ppf(power, df))  # 3x the approximation's noncentrality: power above ``power``
    return float(optimize.brentq(shortfall, 0.0, upper) * sd_diff / math.sqrt(n))


def paired_comparison(arm: Mapping[int, float], reference: Mapping[int, float], name: str) -> PairedComparison | None:
    """``arm`` minus ``reference`` over the seeds both have (mean Dice by seed); None when they share none.

    Args:
        arm: mean Dice by seed of the compared arm.
        reference: mean Dice by seed of the reference arm.
        name: the reference arm's name.
    """
    shared = sorted(set(arm) & set(reference))
    if not shared:
        return None
    d = np.array([arm[s] - reference[s] for s in shared])
    n, diff = len(d), float(np.mean(d))
    if n < 2:
        return PairedComparison(name, n, diff, None, None, None, None, None)
    sd = float(np.std(d, ddof=1))
    half = float(stats.t.ppf(1 - ALPHA / 2, n - 1)) * sd / math.sqrt(n)
    p = float(stats.ttest_rel([arm[s] for s in shared], [reference[s] for s in shared]).pvalue)
    mde = minimum_detectable_effect(sd, n)
    return PairedComparison(name, n, diff, sd, diff - half, diff + half, None if math.isnan(p) else p, mde)


def _by_seed(results: Sequence[ArmResult], arm: str) -> dict[int, float]:
    return {r.seed: r.mean for r in results if r.arm == arm}


def summarise(results: Sequence[ArmResult], references: str | Sequence[str] = REFERENCE_ARMS) -> list[ArmSummary]:
    """Aggregate per-seed results into one row per arm (in first-seen order).

    Every arm is compared (:func:`paired_comparison`) with each reference arm present in ``results``; a reference
    arm itself only with the references listed before it (``real_matched`` against ``baseline``), so no pair
    appears twice. An arm whose method refines another arm's cases is also compared with that arm
    (:func:`~custom_components.pipeline.arms.input_arm`: ``tf`` with ``tf_aug``, what TF-GAN adds).

    Args:
        results: one entry per arm and seed.
        references: name(s) of the reference arm(s), in order; absent ones are skipped.
    """
    arms = list(dict.fromkeys(r.arm for r in results))
    refs = [r for r in ([references] if isinstance(references, str) else references) if r in arms]
    rows = []
    for arm in arms:
        mine = [r for r in results if r.arm == arm]
        table = {k: [r.dice[k] for r in mine] for k in REGION_NAMES}
        table["Mean"] = [r.mean for r in mine]
        ddof = 1 if len(mine) > 1 else 0
        own = _by_seed(results, arm)
        against = refs[: refs.index(arm)] if arm in refs else refs
        source = input_arm(arm, arms)
        against = [*against, source] if source is not None and source not in against else against
        found = {ref: paired_comparison(own, _by_seed(results, ref), ref) for ref in against}
        rows.append(
            ArmSummary(
                arm=arm,
                seeds=tuple(sorted(r.seed for r in mine)),
                mean={k: float(np.mean(v)) for k, v in table.items()},
                std={k: float(np.std(v, ddof=ddof)) for k, v in table.items()},
                comparisons={ref: c for ref, c in found.items() if c is not None},
            )
        )
    return rows


def _cell(summary: ArmSummary, key: str) -> str:
    return f"{100 * summary.mean[key]:.2f} ± {100 * summary.std[key]:.2f}"


def _comparison_cells(c: PairedComparison | None) -> list[str]:
    """Difference [95 % CI], p-value and MDE of one comparison, in Dice points (%)."""
    if c is None:
        return ["-", "-", "-"]
    if c.ci_low is None or c.ci_high is None:
        return [f"{100 * c.diff:+.2f} ({ONE_SEED})", "-", "-"]
    p = "-" if c.p_value is None else f"{c.p_value:.3g}"
    mde = "-" if c.mde is None else f"{100 * c.mde:.2f}"
    return [f"{100 * c.diff:+.2f} [{100 * c.ci_low:+.2f}, {100 * c.ci_high:+.2f}]", p, mde]


def table_rows(summaries: Sequence[ArmSummary]) -> list[list[str]]:
    """Rows of the report table (Dice in %), header first: per reference arm the paired difference with its
    95 % CI, the p-value and the minimum detectable effect."""
    refs = list(dict.fromkeys(ref for s in summaries for ref in s.comparisons))
    header = ["Arm", "ET (%)", "TC (%)", "WT (%)", "Mean (%)"]
    for ref in refs:
        header += [f"diff vs {ref} (%) [95 % CI]", f"p vs {ref}", f"MDE vs {ref} (%)"]
    rows = [[*header, "seeds"]]
    for s in summaries:
        cells = [c for ref in refs for c in _comparison_cells(s.comparisons.get(ref))]
        rows.append([s.arm, *(_cell(s, k) for k in (*REGION_NAMES, "Mean")), *cells, str(len(s.seeds))])
    return rows


def comparison_note(summaries: Sequence[ArmSummary], control_is_baseline: bool = False) -> str:
    """What the Dice table's columns mean (printed under it).

    Args:
        summaries: the table's rows (:func:`summarise`).
        control_is_baseline: whether the compute-matched control is the baseline's model (union sampling without
            online arms: :attr:`custom_components.pipeline.experiment.Experiment.control_is_baseline`).
    """
    refs = list(dict.fromkeys(ref for s in summaries for ref in s.comparisons))
    note = (
        "Dice in % as mean ± std over seeds. diff vs REF: the arm's mean Dice minus REF's, paired by seed, mean over "
        "the seeds both ran, with its 95 % confidence interval (mean ± t(0.975, n-1) sd/sqrt(n) of the paired "
        "differences); p: paired two-tailed t-test (scipy.stats.ttest_rel); MDE: minimum detectable effect, the "
        f"smallest true difference these seeds detect with {100 * POWER:.0f} % power in that test at two-sided alpha "
        f"{ALPHA}, given the observed sd of the paired differences (exact noncentral-t power, scipy.stats.nct, "
        "solved for the effect). A |diff| below the MDE with p above 0.05 means the experiment could not tell the "
        f"arms apart, not that they are equal. With one seed there is no interval, p-value or MDE ('{ONE_SEED}')."
    )
    inputs = sorted({ref for s in summaries for ref in s.comparisons if input_arm(s.arm, [ref]) == ref})
    if inputs:
        note += (
            f" diff vs {', '.join(inputs)} (filled for the arms that train with its cases refined, TF's rows for "
            "TF-Aug): what the refinement adds, with the same real cases and seeds."
        )
    if CONTROL_ARM not in refs:
        return note
    if control_is_baseline:
        return note + (
            f" {CONTROL_ARM} is the baseline's model here: every batch holds the same number of samples drawn from "
            "the real and synthetic cases together (union sampling), so the baseline is already matched in steps "
            f'and samples per step, and diff vs {CONTROL_ARM} (= diff vs the baseline) answers "does the synthesis '
            'help?".'
        )
    others = ", ".join(r for r in refs if r != CONTROL_ARM and r not in inputs)
    return note + (
        f" {CONTROL_ARM} is the compute-matched control (real data only, as many samples per step as the "
        f'synthetic arms): diff vs {CONTROL_ARM} answers "does the synthesis help?"'
        + (f", while diff vs {others} also counts the synthetic arms' extra samples per step." if others else ".")
    )


def plot_dice(results: Sequence[ArmResult], out_png: str | os.PathLike) -> Path:
    """Bar plot of mean Dice per arm and region with the per-seed values as dots."""
    arms = list(dict.fromkeys(r.arm for r in results))
    keys = (*REGION_NAMES, "Mean")
    width = 0.8 / len(keys)
    fig, ax = plt.subplots(figsize=(max(6, 1.3 * len(arms)), 4))
    for j, key in enumerate(keys):
        for i, arm in enumerate(arms):
            vals = [r.mean if key == "Mean" else r.dice[key] for r in results if r.arm == arm]
            x = i + (j - (len(keys) - 1) / 2) * width
            ax.bar(x, np.mean(vals), width, color=f"C{j}", label=key if i == 0 else None)
            ax.plot([x] * len(vals), vals, "k.", markersize=3)
    ax.set_xticks(range(len(arms)), arms, rotation=30, ha="right")
    ax.set_ylabel("Dice")
    ax.set_ylim(0, 1)
    ax.legend(ncol=4, fontsize=8)
    return _save_figure(fig, out_png)


def _num(x: float | None, digits: int = 3) -> str:
    return "-" if x is None else f"{x:.{digits}g}"


def _auc_cell(entry: Mapping | None) -> str:
    if not entry or entry.get("auc") is None:
        return "-"
    return f"{entry['auc']:.2f} [{entry['ci_low']:.2f}, {entry['ci_high']:.2f}]"


def realism_rows(realism: Mapping[str, Mapping]) -> list[list[str]]:
    """Rows of the realism table (header first): one per synthetic method, from
    :func:`custom_components.quality.realism.realism_scores` results: the C2ST (whole tumour) and its real-vs-real
    null first, then the distances of their ``summary``; "-" where a result has no C2ST."""
    rows = [
        [
            "Method",
            "C2ST AUC [95 % CI]",
            "p",
            "null AUC (real/real)",
            "cases/side (null)",
            "Frechet F-features",
            "floor (real/real)",
            "W1 intensity",
            "floor (real/real)",
            "FRD (radiomics)",
            "floor (real/real)",
            "sharpness ratio",
            "synthetic cases",
            "real cases",
        ]
    ]
    for method, res in realism.items():
        s, c2st = res["summary"], res.get("c2st") or {}
        null = c2st.get("null") or {}
        rows.append(
            [
                method,
                _auc_cell(c2st),
                _num(c2st.get("p_value"), 2),
                _auc_cell(null),
                f"{c2st['n_cases_per_side']} ({null['n_cases_per_side']})" if c2st else "-",
                _num(s["frechet"]),
                _num(s["frechet_floor"]),
                _num(s["wasserstein"]),
                _num(s["wasserstein_floor"]),
                _num(s.get("frd")),
                _num(s.get("frd_floor")),
                _num(s["sharpness_ratio"]),
                str(res["n_synthetic"]),
                str(res["n_real"]),
            ]
        )
    return rows


def realism_floor_notes(realism: Mapping[str, Mapping]) -> list[str]:
    """One line per method and distance below its real-vs-real floor
    (:func:`custom_components.quality.realism.below_floor`)."""
    from custom_components.quality.realism import below_floor

    return [f"{method}: {line}" for method, res in realism.items() for line in below_floor(dict(res))]


def _difference(drop: float) -> str:
    if round(abs(drop), 2) == 0:
        return "the same to two digits"
    return f"{abs(drop):.2f} {'lower' if drop > 0 else 'higher'}"


def refinement_c2st_notes(realism: Mapping[str, Mapping]) -> list[str]:
    """One line per method in ``realism`` that refines another one there (:attr:`SynthesisMethod.refines`, TF of
    TF-Aug) and has both C2ST AUCs: whether its AUC is below its input's by more than the two 95 % intervals'
    half-widths (half of each interval's width), i.e. whether the refinement made the tumours measurably more
    real. ``realism`` is keyed by the methods' report titles."""
    from custom_components.synthesis.methods import METHODS

    lines = []
    for method in METHODS.values():
        source = METHODS[method.refines].title if method.refines else None
        if method.title not in realism or source not in realism:
            continue
        out, src = (realism[t].get("c2st") or {} for t in (method.title, source))
        if out.get("auc") is None or src.get("auc") is None:
            continue
        drop = src["auc"] - out["auc"]
        margin = (out["ci_high"] - out["ci_low"]) / 2 + (src["ci_high"] - src["ci_low"]) / 2
        verdict = "measurably more real" if drop > margin else "not measurably more real"
        lines.append(
            f"{method.title} against its input {source}: C2ST AUC {_auc_cell(out)} against {_auc_cell(src)}, "
            f"{_difference(drop)}; the intervals' half-widths add up to "
            f"{margin:.2f}: the refinement is {verdict}"
        )
    return lines


C2ST_FEATURES_NOTE = (
    "What the C2ST's classifier sees: each texture statistic of the 8^3-voxel tumour patches (whole tumour, "
    "brain-normalised image), averaged over a case's patches and then over the cases; the held-out real tumours "
    "first. A method far from the real row in a column is told apart by it: a high-pass spread below the real one "
    "is a tumour too flat, above it one that overshoots."
)


def c2st_feature_rows(realism: Mapping[str, Mapping]) -> list[list[str]]:
    """Rows (header first) of the C2ST's feature means (``c2st.feature_means``, whole tumour): the held-out real
    tumours (the same patches for every method; the first method's copy) then one row per method; no rows (``[]``)
    when no result has them (results from before the field)."""
    entries = {m: (r.get("c2st") or {}) for m, r in realism.items()}
    entries = {m: c for m, c in entries.items() if (c.get("feature_means") or {}).get("real")}
    if not entries:
        return []
    first = next(iter(entries.values()))
    rows = [["tumours", *first["features"]], ["real (held-out)", *(f"{v:.3f}" for v in first["feature_means"]["real"])]]
    for method, c2st in entries.items():
        synthetic = c2st["feature_means"]["synthetic"]
        rows.append(
            [method, *(["-"] * len(first["features"]) if synthetic is None else [f"{v:.3f}" for v in synthetic])]
        )
    return rows


def realism_notes(realism: Mapping[str, Mapping]) -> list[str]:
    """The lines under the realism table: each refinement's C2ST verdict, then each distance below its floor."""
    return [*refinement_c2st_notes(realism), *realism_floor_notes(realism)]


REALISM_NOTE = (
    "Realism against held-out real cases that no synthesis stage used. C2ST (first): cross-validated AUC of a "
    "logistic regression telling the method's tumour patches (8^3 voxels, local texture statistics) from real ones, "
    "folds grouped by case, equal numbers of cases per side, 95 % interval from resampling cases, permutation p; "
    "0.5 = indistinguishable, 1 = always told apart; null: the same test between two halves of real cases at the "
    "same number of cases per side where there are enough (in brackets). Distances (lower is more real) compare "
    "sets of equal size: the floor is the same distance between two halves of the real cases, i.e. what real "
    "tumours differ by, and the synthetic set is subsampled to the size of a half. Frechet: class-wise "
    "Frechet distance of the frozen encoder F's masked-GAP features (TF's perceptual-loss features), mean over "
    "NCR/ED/ET and the first levels; W1: 1-D Wasserstein distance of brain-normalised class intensities, mean "
    "over classes and modalities; sharpness ratio: mean gradient magnitude across the tumour border, synthetic / "
    "real (1 = as sharp as real). FRD: Frechet Radiomics Distance (FRD v1 of frd-score 1.0.1, the log of the "
    "Frechet distance of radiomic features of the brain-normalised image inside the whole-tumour mask, z-scored "
    "on the real cases), mean over modalities; it does not depend on this project's models."
)


def plot_realism(realism: Mapping[str, Mapping], out_png: str | os.PathLike) -> Path:
    """Bars per method: C2ST AUC (its real-vs-real null as a dashed line), Frechet distance, W1 distance and FRD
    (each with the real-vs-real floor as a dashed line), and the sharpness ratio (1 = real)."""
    methods = list(realism)
    fig, axes = plt.subplots(1, 5, figsize=(max(15, 1.6 * len(methods) * 5 / 2), 3.6))
    panels = (
        ("c2st_auc", "c2st_null_auc", "C2ST AUC (0.5 = real)"),
        ("frechet", "frechet_floor", "Frechet (F features)"),
        ("wasserstein", "wasserstein_floor", "W1 intensity"),
        ("frd", "frd_floor", "FRD (radiomics)"),
        ("sharpness_ratio", None, "sharpness ratio"),
    )
    for ax, (key, floor_key, name) in zip(axes, panels, strict=True):
        vals = [realism[m]["summary"].get(key) for m in methods]
        ax.bar(range(len(methods)), [np.nan if v is None or not np.isfinite(v) else v for v in vals], color="C0")
        floors = [realism[m]["summary"].get(floor_key) for m in methods] if floor_key else []
        floors = [f for f in floors if f is not None and np.isfinite(f)]
        if floors:
            ax.axhline(float(np.mean(floors)), color="k", ls="--", lw=1, label="real vs real")
            ax.legend(fontsize=7)
        if key == "sharpness_ratio":
            ax.axhline(1.0, color="k", ls="--", lw=1)
        ax.set_xticks(range(len(methods)), methods, rotation=30, ha="right", fontsize=8)
        ax.set_title(name, fontsize=9)
    return _save_figure(fig, out_png)


REFINEMENT_NOTE = (
    "What TF-GAN's refinement changed, |refined - coarse| per case, median over the refined cases: on brain voxels "
    "outside m_roi (the anatomy eq. 2 asks it to keep; changes up to the hinge margin cost nothing) and inside m_roi "
    "(the tumour it refines). A refinement that rewrites the brain moves most voxels outside m_roi beyond the margin."
)


def refinement_rows(change: Mapping[str, float]) -> list[list[str]]:
    """Rows of the refinement table (header first) from
    :func:`custom_components.synthesis.tf_gan.summarise_change`."""
    return [
        [
            "outside m_roi: mean abs change",
            "outside m_roi: beyond the margin",
            "inside m_roi: mean abs change",
            "cases",
        ],
        [
            _num(change["outside_roi_mean_abs"]),
            f"{100 * change['outside_roi_beyond_margin']:.1f} %",
            _num(change["roi_mean_abs"]),
            str(int(change["cases"])),
        ],
    ]


GAN_CURVES_NOTE = (
    "TF-GAN's training, per epoch (epoch means, from the training's epoch_metrics.csv): the discriminator's accuracy "
    "on real patches (d_acc_real) and on refined ones (d_acc_fake), 0.5 on average being chance; the generator's "
    "adversarial (patch head), hinge and perceptual terms; and the mean |refined - coarse| of the training patches "
    "inside m_roi and on brain voxels outside it (hinge margin 0.05); and the texture of the tumours of the refined "
    "and of the real training patches (spread of the high-pass image inside each tumour class, 2 voxels in from its "
    "border; the C2ST's highpass_std): "
    "refined below real is a blob still too flat, above it a generator that overshoots."
)
GAN_CURVE_KEYS: tuple[str, ...] = (
    "epoch_d_acc",
    "epoch_d_acc_real",
    "epoch_d_acc_fake",
    "epoch_g_adv_patch",
    "epoch_g_hinge",
    "epoch_g_perceptual",
    "epoch_change_roi",
    "epoch_change_outside",
    "epoch_texture_refined",
    "epoch_texture_real",
)


def gan_curve_rows(curves: Sequence[Mapping[str, float]], n: int = 6) -> list[list[str]]:
    """Rows (header first) of the GAN-curve table: ``n`` epochs spread over the training, the last included."""
    keys = [k for k in GAN_CURVE_KEYS if any(k in r for r in curves)]
    picks = sorted({round(i * (len(curves) - 1) / max(n - 1, 1)) for i in range(n)})
    rows = [["epoch", *(k.removeprefix("epoch_") for k in keys)]]
    for i in picks:
        rows.append([str(int(curves[i]["epoch"])), *(_num(curves[i].get(k)) for k in keys)])
    return rows


def plot_gan_curves(curves: Sequence[Mapping[str, float]], out_png: str | os.PathLike) -> Path:
    """Four panels over the epochs: D's accuracy (real, refined, mean; chance dashed), G's loss terms, the mean
    change inside / outside m_roi (hinge margin dashed) and the texture of the refined and the real tumours (empty for
    a training from before the texture terms)."""
    epochs = [r["epoch"] for r in curves]
    fig, axes = plt.subplots(1, 4, figsize=(20, 3.6))
    panels = (
        (("epoch_d_acc", "epoch_d_acc_real", "epoch_d_acc_fake"), "discriminator accuracy", 0.5),
        (("epoch_g_adv_patch", "epoch_g_hinge", "epoch_g_perceptual"), "generator terms", None),
        (("epoch_change_roi", "epoch_change_outside"), "mean |refined - coarse|", 0.05),
        (("epoch_texture_refined", "epoch_texture_real"), "tumour texture (high-pass spread)", None),
    )
    for ax, (keys, title, line) in zip(axes, panels, strict=True):
        for key in keys:
            if any(key in r for r in curves):
                ax.plot(epochs, [r.get(key, np.nan) for r in curves], label=key.removeprefix("epoch_"))
        if line is not None:
            ax.axhline(line, color="k", ls="--", lw=1)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("epoch", fontsize=8)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    return _save_figure(fig, out_png)


PROVENANCE_NOTE = (
    "How the stages behind this report were made, from each stage's stage.json (the report: this process): the git "
    "commit, the code hash (SHA-256 of custom_components/**/*.py and bundles/**/configs/*; part of every stage's "
    "fingerprint, so changed code redoes a stage) and the thread count (OMP_NUM_THREADS of the stage, else torch's "
    "default). More than one row: the numbers may come from different code or thread counts (the heading and the "
    "warnings say so)."
)


def provenance_heading(provenance: Sequence[Mapping[str, Any]]) -> str:
    """The Provenance section's heading, marked MIXED when the stages were made in more than one way."""
    return "Provenance" + (f" (MIXED: {len(provenance)} combinations)" if len(provenance) > 1 else "")


def mixed_warning(provenance: Sequence[Mapping[str, Any]]) -> list[str]:
    """The warning of a mixed provenance (none when the stages were all made one way)."""
    if len(provenance) <= 1:
        return []
    return [
        f"MIXED provenance: the stages were made with {len(provenance)} combinations of code version and thread "
        "count (see Provenance); numbers from different ones may not be comparable."
    ]


def provenance_rows(provenance: Sequence[Mapping[str, Any]]) -> list[list[str]]:
    """Rows of the provenance table (header first) from
    :func:`custom_components.pipeline.runner.stage_provenance`: one per (commit, code hash, threads)."""
    rows = [["commit", "code hash", "threads", "stages"]]
    for p in provenance:
        rows.append([str(p["commit"]), str(p["code_hash"])[:16], str(p["threads"]), ", ".join(p["stages"])])
    return rows


def md_table(rows: Sequence[Sequence[str]]) -> list[str]:
    """A Markdown table's lines: the first row is the header."""
    return [
        "| " + " | ".join(rows[0]) + " |",
        "|" + "---|" * len(rows[0]),
        *("| " + " | ".join(r) + " |" for r in rows[1:]),
    ]


def _html_table(rows: Sequence[Sequence[str]]) -> str:
    head = "".join("<th>" + html.escape(c) + "</th>" for c in rows[0])
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows[1:])
    return f"<table><tr>{head}</tr>{body}</table>"


def _refinement_section(
    refinement: Mapping[str, float] | None, gan_curves: Sequence[Mapping[str, float]], curves_png: str | None
) -> tuple[list[str], list[str]]:
    """The Markdown lines and HTML parts of the refinement section: what refinement changed and TF-GAN's curves
    (``curves_png``: the plot's path relative to the report)."""
    md: list[str] = []
    parts: list[str] = []
    if refinement or gan_curves:
        md += ["## Refinement: what TF-GAN changed", ""]
        parts += ["<h2>Refinement: what TF-GAN changed</h2>"]
    if refinement:
        md += [REFINEMENT_NOTE, "", *md_table(refinement_rows(refinement)), ""]
        parts += [f"<p>{html.escape(REFINEMENT_NOTE)}</p>", _html_table(refinement_rows(refinement))]
    if gan_curves:
        md += [GAN_CURVES_NOTE, "", *md_table(gan_curve_rows(gan_curves)), ""]
        parts += [f"<p>{html.escape(GAN_CURVES_NOTE)}</p>", _html_table(gan_curve_rows(gan_curves))]
        if curves_png:
            md += [f"![TF-GAN training]({curves_png})", ""]
            parts += [f"<img src='{html.escape(curves_png)}' alt='TF-GAN training'>"]
    return md, parts


TEXTURE_HEADING = "Texture: real tumours beside the synthetic ones"
TEXTURE_NOTE = (
    "The axial slice through each tumour's centre, zoomed, as it is and with the class contours: the held-out real "
    "tumours (left) beside the first cases of each method, all on one intensity scale (the brain-normalised image of "
    "the realism test, window [-1, 1]), so that a tumour flatter, darker or brighter than the real ones looks it."
)


def _realism_section(
    realism: Mapping[str, Mapping] | None, realism_png: str | None, texture_png: str | None
) -> tuple[list[str], list[str]]:
    """The Markdown lines and HTML parts of the realism section (table, notes, what the C2ST sees, the plot
    ``realism_png``) and of the texture section (``texture_png``); paths relative to the report."""
    md: list[str] = []
    parts: list[str] = []
    if realism:
        heading = "Realism: which method's tumours look most like real ones"
        rows, notes, frows = realism_rows(realism), realism_notes(realism), c2st_feature_rows(realism)
        md += [f"## {heading}", "", REALISM_NOTE, "", *md_table(rows), "", *(f"- {line}" for line in notes)]
        parts += [f"<h2>{heading}</h2>", f"<p>{html.escape(REALISM_NOTE)}</p>", _html_table(rows)]
        parts += [f"<p>{html.escape(line)}</p>" for line in notes]
        if frows:
            md += ["", C2ST_FEATURES_NOTE, "", *md_table(frows)]
            parts += [f"<p>{html.escape(C2ST_FEATURES_NOTE)}</p>", _html_table(frows)]
        if realism_png:
            md += ["", f"![Realism per method]({realism_png})", ""]
            parts += [f"<img src='{html.escape(realism_png)}' alt='Realism per method'>"]
    if texture_png:
        md += [f"## {TEXTURE_HEADING}", "", TEXTURE_NOTE, "", f"![{TEXTURE_HEADING}]({texture_png})", ""]
        parts += [
            f"<h2>{html.escape(TEXTURE_HEADING)}</h2>",
            f"<p>{html.escape(TEXTURE_NOTE)}</p>",
            f"<img src='{html.escape(texture_png)}' alt='{html.escape(TEXTURE_HEADING)}'>",
        ]
    return md, parts


def write_report(
    results: Sequence[ArmResult],
    out_dir: str | os.PathLike,
    title: str = "Tumour synthesis comparison",
    notes: Sequence[str] = (),
    montages: Mapping[str, Sequence[str | os.PathLike]] | None = None,
    references: str | Sequence[str] = REFERENCE_ARMS,
    realism: Mapping[str, Mapping] | None = None,
    warnings: Sequence[str] = (),
    refinement: Mapping[str, float] | None = None,
    provenance: Sequence[Mapping[str, Any]] = (),
    gan_curves: Sequence[Mapping[str, float]] = (),
    texture_panel: str | os.PathLike | None = None,
    control_is_baseline: bool = False,
) -> dict[str, Path]:
    """Write ``report.md``, ``report.html`` and ``dice.png`` into ``out_dir``; returns their paths.

    Args:
        results: one entry per arm and seed.
        out_dir: report folder.
        title: heading.
        notes: paragraphs printed under the heading (data, sizes, caveats).
        montages: QC PNGs per synthesis method, shown under the table.
        references: reference arm(s) for the paired differences, intervals, t-tests and MDEs (:func:`summarise`).
        realism: realism results per synthetic method (:func:`custom_components.quality.realism.realism_scores`);
            a table and ``realism.png`` next to the Dice table.
        warnings: caveats shown in a "Warnings" section above the table (e.g. MAS with one real case).
        refinement: what TF-GAN's refinement changed (:func:`custom_components.synthesis.tf_gan.summarise_change`),
            a table beside the realism table.
        provenance: how the stages behind the report were made
            (:func:`custom_components.pipeline.runner.stage_provenance`), a "Provenance" section at the end; more
            than one combination adds a "MIXED" warning.
        gan_curves: TF-GAN's per-epoch metrics (:func:`custom_components.handlers.read_epoch_metrics`), a table and
            ``tf_gan_curves.png`` in the refinement section.
        texture_panel: PNG of real tumours beside each method's
            (:func:`custom_components.quality.texture_panel.save_texture_panel`), a "Texture" section after the
            realism table.
        control_is_baseline: whether the compute-matched control is the baseline's model (the Dice note says so;
            :func:`comparison_note`).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    summaries = summarise(results, references)
    warnings = [*warnings, *mixed_warning(provenance)]
    rows = table_rows(summaries)
    plot = plot_dice(results, out / "dice.png")
    montages = montages or {}

    def rel(p: str | os.PathLike) -> str:
        return os.path.relpath(Path(p).resolve(), out.resolve())

    md = [f"# {title}", "", *(f"{n}\n" for n in notes)]
    if warnings:
        md += ["## Warnings", "", *(f"- {w}" for w in warnings), ""]
    md += md_table(rows)
    md += [
        "",
        comparison_note(summaries, control_is_baseline),
        "",
        f"![Dice per arm]({rel(plot)})",
        "",
    ]
    paths_extra: dict[str, Path] = {}
    realism_png = None
    if realism:
        paths_extra["realism_plot"] = plot_realism(realism, out / "realism.png")
        realism_png = rel(paths_extra["realism_plot"])
    texture_png = None if texture_panel is None else rel(texture_panel)
    realism_md, realism_html = _realism_section(realism, realism_png, texture_png)
    md += realism_md
    curves_png = plot_gan_curves(gan_curves, out / "tf_gan_curves.png") if gan_curves else None
    if curves_png is not None:
        paths_extra["gan_curves"] = curves_png
    refinement_md, refinement_html = _refinement_section(refinement, gan_curves, curves_png and rel(curves_png))
    md += refinement_md
    for method, pngs in montages.items():
        md += [f"## QC: {method}", ""] + [f"![{method}]({rel(p)})" for p in pngs] + [""]
    if provenance:
        md += [f"## {provenance_heading(provenance)}", "", PROVENANCE_NOTE, "", *md_table(provenance_rows(provenance))]
    md_path = out / "report.md"
    atomic_write_text(md_path, "\n".join(md))

    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
        "<style>body{font-family:sans-serif;max-width:1100px;margin:auto}table{border-collapse:collapse}"
        "td,th{border:1px solid #999;padding:4px 8px;text-align:right}img{max-width:100%}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        *(f"<p>{html.escape(n)}</p>" for n in notes),
        *(
            ["<h2>Warnings</h2><ul>" + "".join(f"<li>{html.escape(w)}</li>" for w in warnings) + "</ul>"]
            if warnings
            else []
        ),
        _html_table(rows),
        f"<p>{html.escape(comparison_note(summaries, control_is_baseline))}</p>",
        f"<img src='{html.escape(rel(plot))}' alt='Dice per arm'>",
    ]
    parts += realism_html
    parts += refinement_html
    for method, pngs in montages.items():
        parts.append(f"<h2>QC: {html.escape(method)}</h2>")
        parts += [f"<img src='{html.escape(rel(p))}' alt='{html.escape(method)}'>" for p in pngs]
    if provenance:
        parts += [
            f"<h2>{html.escape(provenance_heading(provenance))}</h2>",
            f"<p>{html.escape(PROVENANCE_NOTE)}</p>",
            _html_table(provenance_rows(provenance)),
        ]
    parts.append("</body></html>")
    html_path = out / "report.html"
    atomic_write_text(html_path, "\n".join(parts))
    return {"markdown": md_path, "html": html_path, "plot": plot, **paths_extra}
