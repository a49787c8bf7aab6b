"""The comparison report: Dice table (mean +- std over seeds), difference to baseline, paired t-test,
a plot of Dice per arm, the realism table and plot per synthetic method, and QC montages of synthetic
cases, as Markdown and HTML."""

from __future__ import annotations

import html
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from scipy import stats  # noqa: E402

from custom_components.data.atomic import atomic_path, atomic_write_text  # noqa: E402

REGIONS: tuple[str, ...] = ("ET", "TC", "WT")


@dataclass(frozen=True)
class ArmResult:
    """Mean Dice of one arm and seed over the held-out cases."""

    arm: str
    seed: int
    dice: Mapping[str, float]  # ET, TC, WT

    @property
    def mean(self) -> float:
        return float(np.mean([self.dice[r] for r in REGIONS]))


@dataclass(frozen=True)
class ArmSummary:
    arm: str
    seeds: tuple[int, ...]
    mean: Mapping[str, float]  # ET, TC, WT, Mean
    std: Mapping[str, float]
    diff: float | None  # mean over seeds of (mean Dice minus the baseline's, same seed)
    p_value: float | None  # paired two-tailed t-test of mean Dice against the baseline, by seed
    diff_std: float | None = None  # standard deviation of the paired differences (ddof 1; 0 with one seed)


def _by_seed(results: Sequence[ArmResult], arm: str) -> dict[int, float]:
    return {r.seed: r.mean for r in results if r.arm == arm}


def summarise(results: Sequence[ArmResult], baseline: str = "baseline") -> list[ArmSummary]:
    """Aggregate per-seed results into one row per arm (in first-seen order).

    The t-test pairs an arm's seeds with the baseline's same seeds (``scipy.stats.ttest_rel``,
    two-tailed); it needs at least two shared seeds, otherwise ``p_value`` is None.

    Args:
        results: one entry per arm and seed.
        baseline: name of the reference arm.
    """
    arms = list(dict.fromkeys(r.arm for r in results))
    base = _by_seed(results, baseline)
    rows = []
    for arm in arms:
        mine = [r for r in results if r.arm == arm]
        table = {k: [r.dice[k] for r in mine] for k in REGIONS}
        table["Mean"] = [r.mean for r in mine]
        ddof = 1 if len(mine) > 1 else 0
        diff = p = diff_std = None
        if arm != baseline and base:
            own = _by_seed(results, arm)
            shared = sorted(set(own) & set(base))
            if shared:
                a = np.array([own[s] for s in shared])
                b = np.array([base[s] for s in shared])
                diff = float(np.mean(a - b))
                diff_std = float(np.std(a - b, ddof=1 if len(shared) > 1 else 0))
                if len(shared) >= 2:
                    p = float(stats.ttest_rel(a, b).pvalue)
                    p = None if math.isnan(p) else p
        rows.append(
            ArmSummary(
                arm=arm,
                seeds=tuple(sorted(r.seed for r in mine)),
                mean={k: float(np.mean(v)) for k, v in table.items()},
                std={k: float(np.std(v, ddof=ddof)) for k, v in table.items()},
                diff=diff,
                p_value=p,
                diff_std=diff_std,
            )
        )
    return rows


def _cell(summary: ArmSummary, key: str) -> str:
    return f"{100 * summary.mean[key]:.2f} ± {100 * summary.std[key]:.2f}"


def table_rows(summaries: Sequence[ArmSummary]) -> list[list[str]]:
    """Rows of the report table (Dice in %), header first."""
    rows = [["Arm", "ET (%)", "TC (%)", "WT (%)", "Mean (%)", "Mean diff (%)", "p-value", "seeds"]]
    for s in summaries:
        diff = "-" if s.diff is None else f"{100 * s.diff:+.2f} ± {100 * (s.diff_std or 0.0):.2f}"
        p = "-" if s.p_value is None else f"{s.p_value:.3g}"
        rows.append([s.arm, *(_cell(s, k) for k in (*REGIONS, "Mean")), diff, p, str(len(s.seeds))])
    return rows


def plot_dice(results: Sequence[ArmResult], out_png: str | os.PathLike) -> Path:
    """Bar plot of mean Dice per arm and region with the per-seed values as dots."""
    arms = list(dict.fromkeys(r.arm for r in results))
    keys = (*REGIONS, "Mean")
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
    fig.tight_layout()
    with atomic_path(out_png, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)
    return Path(out_png)


def _num(x: float | None, digits: int = 3) -> str:
    return "-" if x is None else f"{x:.{digits}g}"


def realism_rows(realism: Mapping[str, Mapping]) -> list[list[str]]:
    """Rows of the realism table (header first): one per synthetic method, from
    :func:`custom_components.quality.realism.realism_scores` results (their ``summary``)."""
    rows = [
        [
            "Method",
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
        s = res["summary"]
        rows.append(
            [
                method,
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


REALISM_NOTE = (
    "Realism against held-out real cases that no synthesis stage used (lower is more real; the floor is the "
    "same distance between two halves of the real cases, i.e. what real tumours differ by). Frechet: class-wise "
    "Frechet distance of the frozen encoder F's masked-GAP features (TF's perceptual-loss features), mean over "
    "NCR/ED/ET and the first levels; W1: 1-D Wasserstein distance of brain-normalised class intensities, mean "
    "over classes and modalities; sharpness ratio: mean gradient magnitude across the tumour border, synthetic / "
    "real (1 = as sharp as real). FRD: Frechet Radiomics Distance (FRD v1 of frd-score 1.0.1, the log of the "
    "Frechet distance of radiomic features of the brain-normalised image inside the whole-tumour mask, z-scored "
    "on the real cases), mean over modalities; it does not depend on this project's models."
)


def plot_realism(realism: Mapping[str, Mapping], out_png: str | os.PathLike) -> Path:
    """Bars per method: Frechet distance, W1 distance and FRD (each with the real-vs-real floor as a dashed
    line), and the sharpness ratio (1 = real)."""
    methods = list(realism)
    fig, axes = plt.subplots(1, 4, figsize=(max(12, 1.6 * len(methods) * 4 / 2), 3.6))
    panels = (
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
    fig.tight_layout()
    with atomic_path(out_png, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)
    return Path(out_png)


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


def _md_table(rows: Sequence[Sequence[str]]) -> list[str]:
    return [
        "| " + " | ".join(rows[0]) + " |",
        "|" + "---|" * len(rows[0]),
        *("| " + " | ".join(r) + " |" for r in rows[1:]),
    ]


def _html_table(rows: Sequence[Sequence[str]]) -> str:
    head = "".join("<th>" + html.escape(c) + "</th>" for c in rows[0])
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows[1:])
    return f"<table><tr>{head}</tr>{body}</table>"


def write_report(
    results: Sequence[ArmResult],
    out_dir: str | os.PathLike,
    title: str = "Tumour synthesis comparison",
    notes: Sequence[str] = (),
    montages: Mapping[str, Sequence[str | os.PathLike]] | None = None,
    baseline: str = "baseline",
    realism: Mapping[str, Mapping] | None = None,
    warnings: Sequence[str] = (),
    refinement: Mapping[str, float] | None = None,
) -> dict[str, Path]:
    """Write ``report.md``, ``report.html`` and ``dice.png`` into ``out_dir``; returns their paths.

    Args:
        results: one entry per arm and seed.
        out_dir: report folder.
        title: heading.
        notes: paragraphs printed under the heading (data, sizes, caveats).
        montages: QC PNGs per synthesis method, shown under the table.
        baseline: reference arm for the differences and t-tests.
        realism: realism results per synthetic method (:func:`custom_components.quality.realism.realism_scores`);
            a table and ``realism.png`` next to the Dice table.
        warnings: caveats shown in a "Warnings" section above the table (e.g. MAS with one real case).
        refinement: what TF-GAN's refinement changed (:func:`custom_components.synthesis.tf_gan.summarise_change`),
            a table beside the realism table.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    summaries = summarise(results, baseline)
    rows = table_rows(summaries)
    plot = plot_dice(results, out / "dice.png")
    montages = montages or {}

    def rel(p: str | os.PathLike) -> str:
        return os.path.relpath(Path(p).resolve(), out.resolve())

    md = [f"# {title}", "", *(f"{n}\n" for n in notes)]
    if warnings:
        md += ["## Warnings", "", *(f"- {w}" for w in warnings), ""]
    md += _md_table(rows)
    md += [
        "",
        f"Dice in % as mean ± std over seeds. Mean diff: mean Dice minus {baseline!r}'s, paired by seed "
        "(mean ± std of the paired differences); "
        "p-value: paired two-tailed t-test over seeds (scipy.stats.ttest_rel), '-' with fewer than two seeds.",
        "",
        f"![Dice per arm]({rel(plot)})",
        "",
    ]
    paths_extra: dict[str, Path] = {}
    if realism:
        rplot = plot_realism(realism, out / "realism.png")
        paths_extra["realism_plot"] = rplot
        rrows = realism_rows(realism)
        md += ["## Realism: which method's tumours look most like real ones", "", REALISM_NOTE, ""]
        md += _md_table(rrows)
        md += ["", f"![Realism per method]({rel(rplot)})", ""]
    if refinement:
        md += [
            "## Refinement: what TF-GAN changed",
            "",
            REFINEMENT_NOTE,
            "",
            *_md_table(refinement_rows(refinement)),
            "",
        ]
    for method, pngs in montages.items():
        md += [f"## QC: {method}", ""] + [f"![{method}]({rel(p)})" for p in pngs] + [""]
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
        f"<p>Dice in % as mean ± std over seeds; p-value: paired two-tailed t-test against {html.escape(baseline)}.</p>",
        f"<img src='{html.escape(rel(plot))}' alt='Dice per arm'>",
    ]
    if realism:
        parts += [
            "<h2>Realism: which method's tumours look most like real ones</h2>",
            f"<p>{html.escape(REALISM_NOTE)}</p>",
            _html_table(realism_rows(realism)),
            f"<img src='{html.escape(rel(paths_extra['realism_plot']))}' alt='Realism per method'>",
        ]
    if refinement:
        parts += [
            "<h2>Refinement: what TF-GAN changed</h2>",
            f"<p>{html.escape(REFINEMENT_NOTE)}</p>",
            _html_table(refinement_rows(refinement)),
        ]
    for method, pngs in montages.items():
        parts.append(f"<h2>QC: {html.escape(method)}</h2>")
        parts += [f"<img src='{html.escape(rel(p))}' alt='{html.escape(method)}'>" for p in pngs]
    parts.append("</body></html>")
    html_path = out / "report.html"
    atomic_write_text(html_path, "\n".join(parts))
    return {"markdown": md_path, "html": html_path, "plot": plot, **paths_extra}
