"""Report: aggregation over seeds, paired t-test against the baseline, written files."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from custom_components.pipeline.report import ArmResult, summarise, table_rows, write_report


def _results() -> list[ArmResult]:
    base = [(0.50, 0.60, 0.70), (0.52, 0.61, 0.72), (0.49, 0.58, 0.71)]
    tf = [(0.55, 0.62, 0.71), (0.56, 0.64, 0.73), (0.53, 0.61, 0.72)]
    out = []
    for arm, values in (("baseline", base), ("tf", tf)):
        for seed, (et, tc, wt) in enumerate(values):
            out.append(ArmResult(arm, seed, {"ET": et, "TC": tc, "WT": wt}))
    return out


def test_summary_matches_hand_computation():
    rows = {s.arm: s for s in summarise(_results())}
    base_means = np.array([0.6, (0.52 + 0.61 + 0.72) / 3, (0.49 + 0.58 + 0.71) / 3])
    tf_means = np.array([(0.55 + 0.62 + 0.71) / 3, (0.56 + 0.64 + 0.73) / 3, (0.53 + 0.61 + 0.72) / 3])
    assert rows["baseline"].mean["ET"] == pytest.approx((0.50 + 0.52 + 0.49) / 3)
    assert rows["baseline"].std["ET"] == pytest.approx(np.std([0.50, 0.52, 0.49], ddof=1))
    assert rows["tf"].mean["Mean"] == pytest.approx(tf_means.mean())
    assert rows["tf"].diff == pytest.approx((tf_means - base_means).mean())
    assert rows["tf"].p_value == pytest.approx(stats.ttest_rel(tf_means, base_means).pvalue)
    assert rows["tf"].diff_std == pytest.approx(np.std(tf_means - base_means, ddof=1))
    assert rows["baseline"].diff is None and rows["baseline"].p_value is None


def test_single_seed_has_no_p_value():
    one = [r for r in _results() if r.seed == 0]
    tf = {s.arm: s for s in summarise(one)}["tf"]
    assert tf.p_value is None and tf.diff == pytest.approx((0.55 + 0.62 + 0.71 - 0.5 - 0.6 - 0.7) / 3)
    assert tf.std["ET"] == 0.0


def test_write_report(tmp_path):
    paths = write_report(_results(), tmp_path / "report", notes=["tiny run"])
    md = paths["markdown"].read_text()
    header, sep, base_row, tf_row = [line for line in md.splitlines() if line.startswith("|")]
    assert "ET (%)" in header and "p-value" in header
    assert tf_row.startswith("| tf | 54.67 ± 1.53")
    assert table_rows(summarise(_results()))[2][0] == "tf"
    assert "<table>" in paths["html"].read_text()
    assert paths["plot"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the paired difference as mean ± std over seeds: ((0.6267-0.6) + (0.6433-0.6167) + (0.62-0.5933)) / 3
    assert tf_row.split(" | ")[5] == "+2.67 ± 0.00"
    assert "## Warnings" not in md


def test_report_shows_mas_warnings(tmp_path):
    from custom_components.pipeline.summary import mas_lines

    history = [
        {"after_epoch": 0, "when": "start", "used": True, "eta": 0.4, "theta": 2e-5, "real_cases": 1.0},
        {"epoch": 1, "synthetic_samples": 4.0, "discarded_fraction": 0.25, "full_fraction": 0.0,
         "partial_fraction": 0.75, "eval_seconds": 0.5},
        {"after_epoch": 1, "when": "end", "used": True, "eta": 0.5, "theta": 2e-5, "real_cases": 1.0},
        {"epoch": 2, "synthetic_samples": 4.0, "discarded_fraction": 0.75, "full_fraction": 0.0,
         "partial_fraction": 0.25, "eval_seconds": 0.3},
    ]  # fmt: skip
    notes, warnings = mas_lines({("dtss_mas", 0): {"c": 2e-5, "enabled": True, "degenerate": True, "history": history}})
    assert notes == [
        "MAS (dtss_mas, seed 0): eta 0.400 -> 0.500, theta 2e-05 -> 2e-05 over 2 evaluations of 1 real case(s); "
        "synthetic samples weighted 0 / 1 / in between: 50 % / 0 % / 50 % of 8; evaluation of the real cases "
        "0.40 s per epoch."
    ]
    assert len(warnings) == 1 and "theta = c = 2e-05" in warnings[0]
    paths = write_report(_results(), tmp_path / "r", notes=notes, warnings=warnings)
    md = paths["markdown"].read_text()
    assert "## Warnings" in md and "eq. 8 degenerated" in md
    assert "eq. 8 degenerated" in paths["html"].read_text()


@pytest.mark.slow
def test_mlflow_experiment_has_a_run_per_arm_and_seed(tmp_path):
    import json

    import mlflow

    from custom_components.pipeline.summary import log_to_mlflow

    results = _results()
    metrics = {}
    for r in results:
        path = tmp_path / f"{r.arm}_{r.seed}.json"
        path.write_text(json.dumps({"mean": {f"dice_{k}": v for k, v in r.dice.items()}}))
        metrics[(r.arm, r.seed)] = path
    paths = write_report(results, tmp_path / "report")
    uri = log_to_mlflow(results, metrics, list(paths.values()), tmp_path / "mlflow", experiment="exp")
    runs = mlflow.MlflowClient(uri).search_runs([mlflow.MlflowClient(uri).get_experiment_by_name("exp").experiment_id])
    by_name = {run.info.run_name: run for run in runs}
    assert set(by_name) == {"baseline_s0", "baseline_s1", "baseline_s2", "tf_s0", "tf_s1", "tf_s2", "report"}
    assert by_name["tf_s1"].data.metrics["dice_ET"] == pytest.approx(0.56)
    assert by_name["tf_s1"].data.metrics["dice_mean"] == pytest.approx((0.56 + 0.64 + 0.73) / 3)
    artifacts = {a.path for a in mlflow.MlflowClient(uri).list_artifacts(by_name["report"].info.run_id)}
    assert {"report.md", "report.html", "dice.png"} <= artifacts


def test_mean_dice_by_arm_averages_seeds_in_order(tmp_path) -> None:
    """The pipeline's last line: each arm's mean Dice over its seeds, arms in report order."""
    import json

    from custom_components.pipeline.summary import mean_dice_by_arm

    rows = [
        {"arm": "baseline", "seed": 0, "mean": 0.5},
        {"arm": "baseline", "seed": 1, "mean": 0.7},
        {"arm": "tf", "seed": 0, "mean": 0.4},
        {"arm": "tf", "seed": 1, "mean": 0.5},
    ]
    path = tmp_path / "results.json"
    path.write_text(json.dumps(rows))
    got = mean_dice_by_arm(path)
    assert list(got) == ["baseline", "tf"]
    assert got["baseline"] == pytest.approx(0.6) and got["tf"] == pytest.approx(0.45)


def test_write_report_with_realism_table(tmp_path):
    summary = {
        "frechet": 2.5,
        "frechet_floor": 1.0,
        "wasserstein": 0.12,
        "wasserstein_floor": None,
        "sharpness_ratio": 1.4,
        "frd": 9.5,
        "frd_floor": 8.25,
    }
    # a realism.json written before FRD existed has no frd keys: "-" in its row
    old = {k: v for k, v in summary.items() if not k.startswith("frd")}
    realism = {
        "TF-Aug": {"summary": summary, "n_synthetic": 4, "n_real": 2},
        "TF": {"summary": old, "n_synthetic": 3, "n_real": 2},
    }
    paths = write_report(_results(), tmp_path / "report", realism=realism)
    md = paths["markdown"].read_text()
    assert "## Realism" in md
    assert (
        "| Method | Frechet F-features | floor (real/real) | W1 intensity | floor (real/real) | FRD (radiomics) |" in md
    )
    assert "| TF-Aug | 2.5 | 1 | 0.12 | - | 9.5 | 8.25 | 1.4 | 4 | 2 |" in md
    assert "| TF | 2.5 | 1 | 0.12 | - | - | - | 1.4 | 3 | 2 |" in md
    assert "FRD: Frechet Radiomics Distance" in md and "frd-score 1.0.1" in md
    assert paths["realism_plot"].is_file() and "realism.png" in md
    assert "<td>TF-Aug</td><td>2.5</td>" in paths["html"].read_text()


def test_refinement_change_figures_hand_computed_and_in_the_report(tmp_path):
    from custom_components.synthesis.tf_gan import refinement_change, summarise_change

    # 4x1x1 brain, voxel 3 outside the brain; voxel 0 in m_roi. Outside m_roi: |diffs| 0.01 and 0.2 -> mean 0.105,
    # one of the two beyond the 0.05 margin; inside: |diff| 0.5
    coarse = np.zeros((1, 4, 1, 1))
    refined = np.array([0.5, 0.01, -0.2, 0.9]).reshape(1, 4, 1, 1)
    roi = np.array([True, False, False, False]).reshape(4, 1, 1)
    brain = np.array([True, True, True, False]).reshape(4, 1, 1)
    change = refinement_change(refined, coarse, roi, brain, margin=0.05)
    assert change == pytest.approx(
        {
            "outside_roi_mean_abs": 0.105,
            "outside_roi_beyond_margin": 0.5,
            "roi_mean_abs": 0.5,
            "outside_roi_voxels": 2,
            "roi_voxels": 1,
        }
    )
    items = [{"provenance": {"change": {**change, "outside_roi_mean_abs": v}}} for v in (0.1, 0.3, 0.2)]
    summary = summarise_change([*items, {"provenance": {}}])
    assert summary["cases"] == 3 and summary["outside_roi_mean_abs"] == pytest.approx(0.2)
    assert summarise_change([{"provenance": {}}]) is None
    paths = write_report(_results(), tmp_path / "report", refinement=summary)
    md = paths["markdown"].read_text()
    assert "## Refinement: what TF-GAN changed" in md
    assert "| 0.2 | 50.0 % | 0.5 | 3 |" in md
    assert "50.0 %" in paths["html"].read_text()


def test_report_provenance_names_the_commit_and_the_config_hash(tmp_path):
    import hashlib

    from custom_components.pipeline.summary import code_commit, provenance_note

    config = tmp_path / "p.yaml"
    config.write_text("seeds: [0]\n")
    note = provenance_note({"source": str(config)})
    assert hashlib.sha256(b"seeds: [0]\n").hexdigest()[:16] in note
    commit = code_commit()
    assert commit in note
    assert commit.startswith("unknown") or len(commit.split()[0]) == 40
