"""The comparison report: Dice table (mean +- std over seeds), difference to baseline, paired t-test,
a plot of Dice per arm, and QC montages of synthetic cases, as Markdown and HTML."""

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
    diff: float | None  # mean Dice minus the baseline's
    p_value: float | None  # paired two-tailed t-test of mean Dice against the baseline, by seed


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
        diff = p = None
        if arm != baseline and base:
            own = _by_seed(results, arm)
            shared = sorted(set(own) & set(base))
            if shared:
                a = np.array([own[s] for s in shared])
                b = np.array([base[s] for s in shared])
                diff = float(np.mean(a - b))
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
            )
        )
    return rows


def _cell(summary: ArmSummary, key: str) -> str:
    return f"{100 * summary.mean[key]:.2f} ± {100 * summary.std[key]:.2f}"


def table_rows(summaries: Sequence[ArmSummary]) -> list[list[str]]:
    """Rows of the report table (Dice in %), header first."""
    rows = [["Arm", "ET (%)", "TC (%)", "WT (%)", "Mean (%)", "Mean diff (%)", "p-value", "seeds"]]
    for s in summaries:
        diff = "-" if s.diff is None else f"{100 * s.diff:+.2f}"
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


def write_report(
    results: Sequence[ArmResult],
    out_dir: str | os.PathLike,
    title: str = "Tumour synthesis comparison",
    notes: Sequence[str] = (),
    montages: Mapping[str, Sequence[str | os.PathLike]] | None = None,
    baseline: str = "baseline",
) -> dict[str, Path]:
    """Write ``report.md``, ``report.html`` and ``dice.png`` into ``out_dir``; returns their paths.

    Args:
        results: one entry per arm and seed.
        out_dir: report folder.
        title: heading.
        notes: paragraphs printed under the heading (data, sizes, caveats).
        montages: QC PNGs per synthesis method, shown under the table.
        baseline: reference arm for the differences and t-tests.
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
    md += ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    md += ["| " + " | ".join(r) + " |" for r in rows[1:]]
    md += [
        "",
        f"Dice in % as mean ± std over seeds. Mean diff: mean Dice minus {baseline!r}'s, paired by seed; "
        "p-value: paired two-tailed t-test over seeds (scipy.stats.ttest_rel), '-' with fewer than two seeds.",
        "",
        f"![Dice per arm]({rel(plot)})",
        "",
    ]
    for method, pngs in montages.items():
        md += [f"## QC: {method}", ""] + [f"![{method}]({rel(p)})" for p in pngs] + [""]
    md_path = out / "report.md"
    atomic_write_text(md_path, "\n".join(md))

    cells = "".join("<th>" + html.escape(c) + "</th>" for c in rows[0])
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows[1:])
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
        "<style>body{font-family:sans-serif;max-width:1100px;margin:auto}table{border-collapse:collapse}"
        "td,th{border:1px solid #999;padding:4px 8px;text-align:right}img{max-width:100%}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        *(f"<p>{html.escape(n)}</p>" for n in notes),
        f"<table><tr>{cells}</tr>{body}</table>",
        f"<p>Dice in % as mean ± std over seeds; p-value: paired two-tailed t-test against {html.escape(baseline)}.</p>",
        f"<img src='{html.escape(rel(plot))}' alt='Dice per arm'>",
    ]
    for method, pngs in montages.items():
        parts.append(f"<h2>QC: {html.escape(method)}</h2>")
        parts += [f"<img src='{html.escape(rel(p))}' alt='{html.escape(method)}'>" for p in pngs]
    parts.append("</body></html>")
    html_path = out / "report.html"
    atomic_write_text(html_path, "\n".join(parts))
    return {"markdown": md_path, "html": html_path, "plot": plot}
