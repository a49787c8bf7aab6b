"""The project's one results file (docs/RESULTS.md): every measured figure with the commit and command that made it.

Written from the pipeline reports' JSON (``results.json``, ``realism.json``; title and config from ``report.md``) and
an optional JSON list of other measurements (benchmarks, test-suite timings), so no figure is typed by hand:
``python -m custom_components results --report ... --out docs/RESULTS.md``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from custom_components.data.atomic import atomic_write_text
from custom_components.pipeline.report import (
    ArmSummary,
    PairedComparison,
    comparison_note,
    md_table,
    realism_notes,
    realism_rows,
    table_rows,
)

# the keys of one entry of the measurements file, in the order of the table's columns
MEASUREMENT_KEYS = ("what", "value", "commit", "command", "machine")
# report.md's first note (custom_components.pipeline.summary.provenance_note)
_MADE_WITH = re.compile(r"^Made with commit (?P<commit>.+?) and pipeline config (?P<config>\S+) \(sha256 (?P<sha>\w+)")


def arm_summaries(results: Mapping[str, Any]) -> list[ArmSummary]:
    """The arm summaries of a ``results.json`` (its ``arms`` entries, as
    :func:`custom_components.pipeline.report.summarise` made them)."""
    return [
        ArmSummary(
            arm=a["arm"],
            seeds=tuple(a["seeds"]),
            mean=a["mean"],
            std=a["std"],
            comparisons={ref: PairedComparison(**c) for ref, c in a.get("comparisons", {}).items()},
        )
        for a in results["arms"]
    ]


def report_header(report_md: Path) -> dict[str, str | None]:
    """Title, pipeline config file name and the start of its SHA-256 from a ``report.md`` (None where absent)."""
    lines = report_md.read_text().splitlines() if report_md.is_file() else []
    title = next((line[2:].strip() for line in lines if line.startswith("# ")), None)
    made = next((m for line in lines if (m := _MADE_WITH.match(line))), None)
    return {
        "title": title,
        "config": made["config"] if made else None,
        "config_sha256": made["sha"] if made else None,
    }


# report.md's notes on how the experiment was set up (custom_components.pipeline.summary.write_experiment_report)
SETUP_NOTES = ("Data:", "Segmentation:", "Arms:")


def report_setup(report_md: Path) -> list[str]:
    """The set-up notes of a ``report.md`` (data, segmentation, arms), as written; none when it is absent."""
    lines = report_md.read_text().splitlines() if report_md.is_file() else []
    return [line for line in lines if line.startswith(SETUP_NOTES)]


def _cell(text: Any) -> str:
    """A Markdown table cell: pipes escaped, newlines flattened."""
    return str(text).replace("|", "\\|").replace("\n", " ")


def _code(text: Any) -> str:
    """A table cell in code format ("-" when empty); GitHub renders the escaped pipes of code in tables as pipes."""
    return f"`{_cell(text)}`" if text else "-"


def provenance_summary_rows(provenance: Sequence[Mapping[str, Any]]) -> list[list[str]]:
    """One row per (commit, code hash, threads) of a report's stages, with how many stages it made."""
    rows = [["commit", "code hash", "threads", "stages"]]
    rows += [[str(p["commit"]), str(p["code_hash"])[:16], str(p["threads"]), str(len(p["stages"]))] for p in provenance]
    return rows


def report_section(report: Path, command: str | None = None) -> list[str]:
    """The Markdown lines of one pipeline report folder: title, command, provenance, Dice table, realism table.

    Args:
        report: the report folder (``<workdir>/report``) holding results.json (and realism.json, report.md).
        command: the command that made it (default: ``python -m custom_components pipeline --config <config>``
            with the config file name report.md names).
    """
    results = json.loads((report / "results.json").read_text())
    header = report_header(report / "report.md")
    if command is None:
        command = f"python -m custom_components pipeline --config {header['config'] or '<config>'}"
    lines = [f"## {header['title'] or report.parent.name}", ""]
    lines.append(f"- command: `{command}`")
    if header["config"]:
        lines.append(f"- pipeline config: `{header['config']}` (sha256 {header['config_sha256']}...)")
    lines.append(f"- report: `{report}`; protocol `{results['protocol']}`")
    lines += [f"- {note}" for note in report_setup(report / "report.md")]
    commits = sorted({str(p["commit"]) for p in results["provenance"]})
    lines += [f"- commit: {', '.join(commits)}", "", *md_table(provenance_summary_rows(results["provenance"])), ""]
    summaries = arm_summaries(results)
    note = comparison_note(summaries, bool(results.get("control_is_baseline")))
    lines += ["### Held-out Dice", "", *md_table(table_rows(summaries)), "", note, ""]
    realism_json = report / "realism.json"
    realism = json.loads(realism_json.read_text()) if realism_json.is_file() else {}
    if realism:
        lines += ["### Realism against the held-out real cases", "", *md_table(realism_rows(realism)), ""]
        lines += [f"- {note}" for note in realism_notes(realism)]
        lines.append("")
    return lines


def read_measurements(path: Path) -> list[dict[str, Any]]:
    """The entries of a measurements JSON file (a list of objects with :data:`MEASUREMENT_KEYS`); raises
    ValueError naming the file and entry when one lacks a key."""
    entries = json.loads(path.read_text())
    if not isinstance(entries, list):
        raise ValueError(f"{path}: expected a JSON list of measurements")
    for i, entry in enumerate(entries):
        missing = [k for k in MEASUREMENT_KEYS if k not in entry]
        if missing:
            raise ValueError(f"{path}: entry {i} ({entry.get('what', '?')}) lacks {', '.join(missing)}")
    return entries


def measurement_lines(entries: Sequence[Mapping[str, Any]]) -> list[str]:
    """The measurements as one Markdown table (value and what as given, command and commit as code)."""
    rows = [list(MEASUREMENT_KEYS)]
    for e in entries:
        rows.append([_cell(e["what"]), _cell(e["value"]), _cell(e["commit"]), _code(e["command"]), _cell(e["machine"])])
    return ["## Other measurements", "", *md_table(rows), ""]


def write_results_file(
    reports: Sequence[Path],
    out: Path,
    measurements: Path | None = None,
    commands: Sequence[str | None] | None = None,
    regenerate: str | None = None,
) -> Path:
    """Write the results file: a section per report (:func:`report_section`), then the measurements table.

    Args:
        reports: report folders (``<workdir>/report``).
        out: Markdown file to write (atomic).
        measurements: JSON list of other measured figures ({what, value, commit, command, machine} each).
        commands: the command that made each report, in the order of ``reports`` (None: the default of
            :func:`report_section`).
        regenerate: the command that rewrites this file, printed at its top.
    """
    commands = list(commands) if commands is not None else [None] * len(reports)
    if len(commands) != len(reports):
        raise ValueError(f"{len(commands)} command(s) for {len(reports)} report(s)")
    lines = [
        "# Results",
        "",
        "<!-- generated by custom_components.pipeline.results_file: do not edit; regenerate instead -->",
        "Every measured figure of the project, each with the commit and command that made it. Generated from the "
        "reports' results.json / realism.json" + (" and the measurements file" if measurements else "") + ":",
        "",
    ]
    if regenerate:
        lines += ["```bash", regenerate, "```", ""]
    for report, command in zip(reports, commands, strict=True):
        lines += report_section(Path(report), command or None)
    if measurements is not None:
        lines += measurement_lines(read_measurements(Path(measurements)))
    atomic_write_text(out, "\n".join(lines).rstrip("\n") + "\n")
    return Path(out)
