"""Pipeline runner: runs in order, skips up-to-date stages, reruns on change and with --from."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from custom_components.pipeline.runner import Stage, StageError, run_stages


def _chain(tmp: Path, calls: list[str]) -> list[Stage]:
    src, mid, out = tmp / "src.txt", tmp / "mid.txt", tmp / "out.txt"

    def first() -> None:
        calls.append("first")
        mid.write_text(src.read_text().upper())

    copy = f"import shutil; shutil.copy({str(mid)!r}, {str(out)!r})"
    return [
        Stage("first", function=first, inputs=[src], outputs=[mid]),
        Stage("second", command=[sys.executable, "-c", copy], inputs=[mid], outputs=[out]),
    ]


def test_runs_then_skips_then_reruns_on_change(tmp_path):
    (tmp_path / "src.txt").write_text("a")
    calls: list[str] = []
    lines: list[str] = []
    work = tmp_path / "work"
    assert run_stages(_chain(tmp_path, calls), work, log=lines.append) == {"first": "ran", "second": "ran"}
    assert (tmp_path / "out.txt").read_text() == "A"
    assert any("done in" in line for line in lines)
    assert run_stages(_chain(tmp_path, calls), work, log=lines.append) == {"first": "skipped", "second": "skipped"}
    assert calls == ["first"]
    # changing the first stage's input reruns it and, through its output, the second
    (tmp_path / "src.txt").write_text("b")
    assert run_stages(_chain(tmp_path, calls), work, log=lines.append) == {"first": "ran", "second": "ran"}
    assert (tmp_path / "out.txt").read_text() == "B"
    # a missing output forces a rerun of that stage only
    (tmp_path / "out.txt").unlink()
    assert run_stages(_chain(tmp_path, calls), work, log=lines.append) == {"first": "skipped", "second": "ran"}


def test_from_stage_forces_rerun(tmp_path):
    (tmp_path / "src.txt").write_text("a")
    calls: list[str] = []
    run_stages(_chain(tmp_path, calls), tmp_path / "w", log=lambda _: None)
    status = run_stages(_chain(tmp_path, calls), tmp_path / "w", from_stage="first", log=lambda _: None)
    assert status == {"first": "ran", "second": "ran"} and calls == ["first", "first"]
    with pytest.raises(ValueError, match="not a stage"):
        run_stages(_chain(tmp_path, calls), tmp_path / "w", from_stage="nope", log=lambda _: None)


def test_failing_command_names_stage_and_log(tmp_path):
    stage = Stage("broken", command=[sys.executable, "-c", "raise SystemExit('boom')"])
    with pytest.raises(StageError, match="broken failed") as err:
        run_stages([stage], tmp_path, log=lambda _: None)
    assert "boom" in str(err.value)
    assert not (tmp_path / "broken" / "stage.json").exists()
