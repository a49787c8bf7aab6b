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


def test_uncommitted_changes_are_those_of_the_code_hash_files(tmp_path, monkeypatch):
    """A report's commit reads "+ uncommitted changes" for an edited module or bundle config, not for edited docs."""
    import subprocess

    from custom_components.pipeline import runner

    repo = tmp_path / "repo"
    files = {"custom_components/pipeline/x.py": "a = 1\n", "bundles/b/configs/c.yaml": "k: 1\n"}
    files |= {"bundles/b/docs/README.md": "docs\n", "custom_components/notes.md": "notes\n"}
    for name, text in files.items():
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        (repo / name).write_text(text)
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-qm", "c"], check=True)
    sha = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    monkeypatch.setattr(runner, "REPO", repo)
    commit = runner.code_commit.__wrapped__
    for name in ("bundles/b/docs/README.md", "custom_components/notes.md"):
        (repo / name).write_text("edited\n")
    assert commit() == sha
    for name in ("custom_components/pipeline/x.py", "bundles/b/configs/c.yaml"):
        subprocess.run([*git, "checkout", "-q", "--", "."], check=True)
        (repo / name).write_text("edited\n")
        assert commit() == f"{sha} + uncommitted changes"


STAGE_SCRIPT = """
import json, os, sys
out = sys.argv[1]
if out == "fail":
    raise SystemExit("boom: " + os.environ["STAGE_NOTE"])
print("to the log")
with open(out, "w") as fh:
    json.dump({"argv": sys.argv, "path0": sys.path[0], "cwd": os.getcwd(), "name": __name__, "ppid": os.getppid(),
               "leader": os.getpgid(0) == os.getpid(), "note": os.environ["STAGE_NOTE"],
               "unbuffered": os.environ.get("PYTHONUNBUFFERED")}, fh)
"""


@pytest.mark.parametrize("how", ["fork", "exec"])
def test_a_python_stage_runs_as_the_interpreter_would_run_it(tmp_path, monkeypatch, how):
    """Forked by the stage server or exec'd (an environment other than the server's), a stage sees the same
    argv, sys.path[0], working directory, __name__, environment and its own session, and fails the same way."""
    from custom_components.pipeline import runner, stage_server

    monkeypatch.setenv("STAGE_NOTE", "from the runner")
    monkeypatch.setattr(stage_server, "_SERVER", None)  # a server with this environment
    script, out = tmp_path / "stage.py", tmp_path / "out.json"
    script.write_text(STAGE_SCRIPT)
    env = {"STAGE_BY_EXEC": "1"} if how == "exec" else None
    stage = Stage("py", command=[sys.executable, str(script), str(out)], outputs=[out])
    assert run_stages([stage], tmp_path / "w", log=lambda _: None, env=env) == {"py": "ran"}
    seen = json.loads(out.read_text())
    assert seen["argv"] == [str(script), str(out)] and seen["path0"] == str(tmp_path) and seen["name"] == "__main__"
    assert seen["cwd"] == str(runner.REPO) and seen["leader"] and seen["note"] == "from the runner"
    assert seen["unbuffered"] == "1" and (seen["ppid"] == os.getpid()) == (how == "exec")
    assert "to the log" in (tmp_path / "w" / "logs" / "py.log").read_text()
    failing = Stage("bad", command=[sys.executable, str(script), "fail"])
    with pytest.raises(StageError, match=r"bad failed \(exit 1\)") as err:
        run_stages([failing], tmp_path / "w", log=lambda _: None, env=env)
    assert "boom: from the runner" in str(err.value)
    assert (stage_server._SERVER is None) == (how == "exec")  # no server started for stages it cannot fork
    if how == "fork":  # python -m, forked too: the module runs as __main__
        module = Stage("m", command=[sys.executable, "-m", "json.tool", str(out), str(tmp_path / "copy.json")])
        run_stages([module], tmp_path / "w", log=lambda _: None)
        assert json.loads((tmp_path / "copy.json").read_text()) == seen
        assert stage_server._SERVER is not None and stage_server._SERVER.proc.poll() is None
        stage_server._SERVER.close()


def test_a_forked_bundle_stage_logs_what_an_execd_one_logs(tmp_path, monkeypatch):
    """``python -m monai.bundle`` (every bundle stage's command; without arguments it prints its help and exits 0)
    writes the same log forked by the stage server as exec'd: no warning of the fork path (runpy warns when the
    module it runs was imported before, as a preloaded one would be)."""
    from custom_components.pipeline import stage_server

    monkeypatch.setattr(stage_server, "_SERVER", None)
    logs = {}
    for how, env in (("fork", None), ("exec", {"STAGE_BY_EXEC": "1"})):
        stage = Stage(f"help_{how}", command=[sys.executable, "-m", "monai.bundle"])
        assert run_stages([stage], tmp_path / "w", log=lambda _: None, env=env) == {stage.name: "ran"}
        logs[how] = (tmp_path / "w" / "logs" / f"{stage.name}.log").read_text()
        if how == "fork":
            assert stage_server._SERVER is not None
            stage_server._SERVER.close()
    assert "ckpt_export" in logs["exec"] and "Warning" not in logs["exec"]
    assert logs["fork"] == logs["exec"]
