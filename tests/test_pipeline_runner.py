"""Pipeline runner: runs in order, skips up-to-date stages, reruns on change and with --from."""

from __future__ import annotations

import json
import os
import shutil
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


def _one_stage(tmp: Path, calls: list[str]) -> list[Stage]:
    out = tmp / "out.txt"

    def make() -> None:
        calls.append("made")
        out.write_text("x")

    return [Stage("make", function=make, outputs=[out])]


def test_a_stage_made_with_other_code_or_threads_is_redone(tmp_path, monkeypatch):
    from custom_components.pipeline import runner

    monkeypatch.setattr(runner, "code_hash", lambda: "a" * 64)
    monkeypatch.setattr(runner, "code_commit", lambda: "commit-a")
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    calls: list[str] = []
    lines: list[str] = []
    work = tmp_path / "work"
    assert run_stages(_one_stage(tmp_path, calls), work, log=lines.append) == {"make": "ran"}
    state = json.loads((work / "make" / "stage.json").read_text())
    assert (state["code_hash"], state["commit"], state["threads"]) == ("a" * 64, "commit-a", 2)
    # same code, same threads: skipped
    assert run_stages(_one_stage(tmp_path, calls), work, log=lines.append) == {"make": "skipped"}
    # other code: redone, and the log says why
    monkeypatch.setattr(runner, "code_hash", lambda: "b" * 64)
    lines.clear()
    assert run_stages(_one_stage(tmp_path, calls), work, log=lines.append) == {"make": "ran"}
    assert any("made with other code (commit commit-a); redoing it" in line for line in lines)
    assert run_stages(_one_stage(tmp_path, calls), work, log=lines.append) == {"make": "skipped"}
    # another thread count, from the stages' extra environment: redone
    lines.clear()
    assert run_stages(_one_stage(tmp_path, calls), work, log=lines.append, env={"OMP_NUM_THREADS": "1"}) == {
        "make": "ran"
    }
    assert any("made with 2 threads, now 1" in line for line in lines)
    assert json.loads((work / "make" / "stage.json").read_text())["threads"] == 1
    # a state file of an older version (no code version recorded) is out of date
    state = json.loads((work / "make" / "stage.json").read_text())
    old = {k: v for k, v in state.items() if k not in ("code_hash", "commit", "threads")}
    (work / "make" / "stage.json").write_text(json.dumps(old))
    lines.clear()
    assert run_stages(_one_stage(tmp_path, calls), work, log=lines.append, env={"OMP_NUM_THREADS": "1"}) == {
        "make": "ran"
    }
    assert any("made with other code (commit not recorded)" in line for line in lines)
    assert calls == ["made"] * 4


def test_code_hash_follows_file_contents_and_is_cached(tmp_path, monkeypatch):
    from custom_components.pipeline import runner

    pkg, bundles = tmp_path / "custom_components", tmp_path / "bundles"
    (pkg / "sub").mkdir(parents=True)
    (bundles / "b" / "configs").mkdir(parents=True)
    (pkg / "sub" / "m.py").write_text("x = 1\n")
    (pkg / "notes.txt").write_text("not code")
    (bundles / "b" / "configs" / "train.yaml").write_text("lr: 1\n")
    monkeypatch.setattr(runner, "CODE_FILES", ((pkg, "**/*.py"),))
    monkeypatch.setenv("TUMORFAB_BUNDLES_DIR", str(bundles))  # the bundles folder in use: its configs are hashed
    runner._hash_files.cache_clear()
    try:
        first = runner.code_hash()
        (pkg / "sub" / "m.py").write_text("x = 2\n")
        assert runner.code_hash() == first  # cached per process
        runner._hash_files.cache_clear()
        second = runner.code_hash()
        assert second != first and len(second) == 64
        (pkg / "notes.txt").write_text("changed, not hashed")
        runner._hash_files.cache_clear()
        assert runner.code_hash() == second
        (bundles / "b" / "configs" / "train.yaml").write_text("lr: 2\n")
        runner._hash_files.cache_clear()
        third = runner.code_hash()
        assert third != second
        other = tmp_path / "other" / "bundles"
        shutil.copytree(bundles, other)
        (other / "b" / "configs" / "train.yaml").write_text("lr: 3\n")
        monkeypatch.setenv("TUMORFAB_BUNDLES_DIR", str(other))
        assert runner.code_hash() != third  # another bundles folder: its own configs, not the cached hash
    finally:
        runner._hash_files.cache_clear()


def test_stage_threads(monkeypatch):
    import torch

    from custom_components.pipeline.runner import stage_threads

    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert stage_threads() == 3 and stage_threads({"OMP_NUM_THREADS": "4,2"}) == 4
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert stage_threads() == torch.get_num_threads()


def test_stage_provenance_groups_stages_and_reads_old_state_files(tmp_path):
    from custom_components.pipeline.runner import stage_provenance

    made = {"code_hash": "h1", "commit": "c1", "threads": 2}
    for i, name in enumerate(["data", "seg_s0", "old"]):
        (tmp_path / name).mkdir()
        record = {"stage": name, "fingerprint": "f"} | (made if name != "old" else {})
        (tmp_path / name / "stage.json").write_text(json.dumps(record))
        os.utime(tmp_path / name / "stage.json", ns=(i * 10**9, i * 10**9))  # finished in this order
    (tmp_path / "logs").mkdir()  # not a stage
    got = stage_provenance(tmp_path, {"report": made})
    assert got == [
        {"commit": "c1", "code_hash": "h1", "threads": 2, "stages": ["data", "seg_s0", "report"]},
        {"commit": "not recorded", "code_hash": "not recorded", "threads": "not recorded", "stages": ["old"]},
    ]
    # a folder of a stage the experiment no longer has (a removed arm) is not part of its provenance: no mix
    assert stage_provenance(tmp_path, {"report": made}, names=["data", "seg_s0", "report"]) == [got[0]]
