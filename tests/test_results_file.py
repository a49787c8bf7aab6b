"""The results file (docs/RESULTS.md): figures, commits and commands from hand-made report JSON."""

from __future__ import annotations

import json
from pathlib import Path

import fire
import pytest

from custom_components import cli
from custom_components.pipeline.results_file import read_measurements, report_header, write_results_file

REPO = Path(__file__).resolve().parents[1]
COMMIT = "abc1234def5678abc1234def5678abc1234def56"


def _comparison(reference: str, diff: float, low: float, high: float, p: float, mde: float) -> dict:
    return {
        "reference": reference,
        "n": 3,
        "diff": diff,
        "sd_diff": 0.01,
        "ci_low": low,
        "ci_high": high,
        "p_value": p,
        "mde": mde,
    }


def _report(folder: Path, *, realism: bool = True) -> Path:
    """A report folder with a results.json (two arms, three seeds), a realism.json and a report.md."""
    report = folder / "report"
    report.mkdir(parents=True)
    arms = [
        {
            "arm": "baseline",
            "seeds": [0, 1, 2],
            "mean": {"ET": 0.5, "TC": 0.6, "WT": 0.7, "Mean": 0.6},
            "std": {"ET": 0.01, "TC": 0.02, "WT": 0.03, "Mean": 0.02},
            "comparisons": {},
            "n_seeds": 3,
        },
        {
            "arm": "dtss",
            "seeds": [0, 1, 2],
            "mean": {"ET": 0.55, "TC": 0.625, "WT": 0.75, "Mean": 0.6417},
            "std": {"ET": 0.04, "TC": 0.05, "WT": 0.06, "Mean": 0.05},
            "comparisons": {"baseline": _comparison("baseline", 0.0417, 0.0123, 0.0711, 0.0312, 0.0456)},
            "n_seeds": 3,
        },
    ]
    provenance = [{"commit": COMMIT, "code_hash": "f" * 64, "threads": 1, "stages": ["data", "seg_baseline_s0"]}]
    results = {"units": "fractions", "mde": "80 %", "protocol": "dsma", "runs": [], "arms": arms}
    (report / "results.json").write_text(json.dumps({**results, "provenance": provenance}))
    (report / "report.md").write_text(
        "# Tiny experiment\n\nMade with commit abc1234 and pipeline config tiny.yaml (sha256 0123456789abcdef...).\n\n"
        "Data: 2 real training cases.\n\nArms: baseline: real data only; dtss: + DTSS\n\nMAS: not a set-up note\n"
    )
    if realism:
        entry = {
            "n_synthetic": 4,
            "n_real": 6,
            "c2st": {
                "auc": 0.875,
                "ci_low": 0.75,
                "ci_high": 0.95,
                "p_value": 0.0099,
                "n_cases_per_side": 4,
                "null": {"auc": 0.52, "ci_low": 0.31, "ci_high": 0.74, "n_cases_per_side": 4},
            },
            "summary": {
                "frechet": 7.5,
                "frechet_floor": 7.1,
                "wasserstein": 0.0696,
                "wasserstein_floor": 0.0938,
                "sharpness_ratio": 1.21,
                "frd": 12.4,
                "frd_floor": 9.17,
            },
        }
        (report / "realism.json").write_text(json.dumps({"TF-Aug": entry}))
    return report


def test_dice_table_commit_and_command(tmp_path: Path) -> None:
    report = _report(tmp_path / "exp")
    out = write_results_file([report], tmp_path / "RESULTS.md", commands=["make demo"], regenerate="python -m x")
    text = out.read_text()
    assert text.startswith("# Results\n")
    assert "```bash\npython -m x\n```" in text
    assert "## Tiny experiment" in text
    assert "- command: `make demo`" in text
    assert "- pipeline config: `tiny.yaml` (sha256 0123456789abcdef...)" in text
    assert "- Data: 2 real training cases.\n- Arms: baseline: real data only; dtss: + DTSS\n- commit:" in text
    assert "MAS: not" not in text
    assert f"- commit: {COMMIT}" in text
    assert f"| {COMMIT} | {'f' * 16} | 1 | 2 |" in text
    # Dice in points, mean ± std over seeds; the paired difference with its interval, p and MDE
    assert "| baseline | 50.00 ± 1.00 | 60.00 ± 2.00 | 70.00 ± 3.00 | 60.00 ± 2.00 | - | - | - | 3 |" in text
    assert (
        "| dtss | 55.00 ± 4.00 | 62.50 ± 5.00 | 75.00 ± 6.00 | 64.17 ± 5.00 | +4.17 [+1.23, +7.11] | 0.0312 | 4.56 | 3 |"
        in (text)
    )


def test_union_sampling_note(tmp_path: Path) -> None:
    """A results.json whose control is the baseline's model (union sampling) gives RESULTS.md that Dice note."""
    report = _report(tmp_path / "exp")
    results = json.loads((report / "results.json").read_text())
    matched = {
        **results["arms"][0],
        "arm": "real_matched",
        "comparisons": {"baseline": _comparison("baseline", 0, 0, 0, 1, 0)},
    }
    dtss = results["arms"][1]
    dtss["comparisons"]["real_matched"] = _comparison("real_matched", 0.0417, 0.0123, 0.0711, 0.0312, 0.0456)
    arms = [results["arms"][0], matched, dtss]
    for union in (False, True):
        (report / "results.json").write_text(json.dumps({**results, "arms": arms, "control_is_baseline": union}))
        text = write_results_file([report], tmp_path / f"R{union}.md").read_text()
        assert ("real_matched is the baseline's model here" in text) is union
        assert ("while diff vs baseline also counts the synthetic arms' extra samples per step" in text) is not union


def test_realism_table(tmp_path: Path) -> None:
    text = write_results_file([_report(tmp_path / "exp")], tmp_path / "R.md").read_text()
    row = "| TF-Aug | 0.88 [0.75, 0.95] | 0.0099 | 0.52 [0.31, 0.74] | 4 (4) | 7.5 | 7.1 | 0.0696 | 0.0938 | 12.4 | 9.17 |"
    assert row + " 1.21 | 4 | 6 |" in text


def test_default_command_from_report_md(tmp_path: Path) -> None:
    report = _report(tmp_path / "exp", realism=False)
    text = write_results_file([report], tmp_path / "R.md").read_text()
    assert "- command: `python -m custom_components pipeline --config tiny.yaml`" in text
    assert "### Realism" not in text
    assert report_header(tmp_path / "missing.md") == {"title": None, "config": None, "config_sha256": None}


def test_measurements_table(tmp_path: Path) -> None:
    entries = [
        {
            "what": "make unit",
            "value": "543 passed in 108 s",
            "commit": "47282cd",
            "command": "make unit",
            "machine": "2 cores",
        },
        {"what": "a | b", "value": "1 s", "commit": "x", "command": "run --n 0|2", "machine": "cpu"},
    ]
    path = tmp_path / "m.json"
    path.write_text(json.dumps(entries))
    text = write_results_file([], tmp_path / "R.md", measurements=path).read_text()
    assert "| what | value | commit | command | machine |" in text
    assert "| make unit | 543 passed in 108 s | 47282cd | `make unit` | 2 cores |" in text
    assert "| a \\| b | 1 s | x | `run --n 0\\|2` | cpu |" in text


def test_bad_inputs_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "m.json"
    path.write_text(json.dumps([{"what": "w", "value": 1}]))
    with pytest.raises(ValueError, match="entry 0 \\(w\\) lacks commit, command, machine"):
        read_measurements(path)
    with pytest.raises(ValueError, match="1 command\\(s\\) for 0 report\\(s\\)"):
        write_results_file([], tmp_path / "R.md", commands=["make demo"])


def test_cli_writes_the_file_with_its_regenerate_command(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    a, b = _report(tmp_path / "a"), _report(tmp_path / "b", realism=False)
    out = tmp_path / "RESULTS.md"
    fire.Fire(
        cli.COMMANDS, command=["results", "--report", f"{a},{b}", "--command", '["make demo", ""]', "--out", str(out)]
    )
    text = out.read_text()
    assert capsys.readouterr().out.strip() == str(out)
    assert f'--report {a},{b} --command \'["make demo", ""]\' --out {out}' in text
    assert text.count("## Tiny experiment") == 2
    assert "- command: `make demo`" in text
    assert "- command: `python -m custom_components pipeline --config tiny.yaml`" in text


def test_project_measurements_file_is_valid() -> None:
    entries = read_measurements(REPO / "docs" / "measurements.json")
    assert entries and all(e["command"] and e["commit"] for e in entries)
