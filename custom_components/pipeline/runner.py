"""Run a chain of stages with skip-if-up-to-date, ``--from`` reruns and a progress line per stage.

A stage is a command (usually ``python -m monai.bundle run ...`` on one bundle's own configs plus an
overrides file) with declared inputs and outputs. After a stage succeeds, ``<workdir>/<stage>/stage.json``
records a fingerprint of its command, its config files, its overrides and its inputs. On a rerun the
stage is skipped when the fingerprint is unchanged and every output exists; otherwise it runs again,
and so (through their inputs) does every stage that consumes its outputs.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from custom_components.data.atomic import atomic_write_text

REPO = Path(__file__).resolve().parents[2]
BUNDLES = REPO / "bundles"


@dataclass
class Stage:
    """One step of the pipeline.

    Args:
        name: unique stage name (also its folder under the work dir).
        command: argv to run, or None when ``function`` does the work in-process.
        outputs: files that must exist after success.
        inputs: files whose identity (size, mtime, and content for small files) is part of the fingerprint.
        function: in-process alternative to ``command`` (called with no arguments).
        description: one line shown in the progress output.
        key: settings of an in-process stage that are part of its fingerprint.
        clean: folders removed before the stage runs, so a rerun never mixes with an older run.
    """

    name: str
    command: list[str] | None = None
    outputs: list[Path] = field(default_factory=list)
    inputs: list[Path] = field(default_factory=list)
    function: Callable[[], Any] | None = None
    description: str = ""
    key: str = ""
    clean: list[Path] = field(default_factory=list)


def bundle_command(
    bundle: str,
    configs: Sequence[str],
    overrides: Mapping[str, Any],
    overrides_file: Path,
    run_id: str = "run",
) -> list[str]:
    """argv for ``python -m monai.bundle run`` on ``bundles/<bundle>`` with an overrides JSON file.

    The overrides are written to ``overrides_file`` (kept as provenance) and merged after the
    bundle's own configs; keys may be nested ids such as ``train#trainer#max_epochs``.
    """
    root = BUNDLES / bundle
    files = [str(root / "configs" / c) for c in configs] + [str(overrides_file)]
    overrides_file.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(overrides_file, json.dumps(dict(overrides), indent=2, sort_keys=True) + "\n")
    return [
        sys.executable,
        "-m",
        "monai.bundle",
        "run",
        run_id,
        "--config_file",
        repr(files),
        "--meta_file",
        str(root / "configs" / "metadata.json"),
        "--logging_file",
        str(root / "configs" / "logging.conf"),
        "--bundle_root",
        str(root),
    ]


def _file_identity(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {"path": str(path), "missing": True}
    if path.is_dir():
        return {"path": str(path), "dir": True}
    st = path.stat()
    ident: dict[str, Any] = {"path": str(path), "size": st.st_size}
    if st.st_size <= 1 << 20:  # small files (datalists, configs, JSON parameters): hash the content
        ident["sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
    else:
        ident["mtime_ns"] = st.st_mtime_ns
    return ident


def fingerprint(stage: Stage) -> str:
    """Hash of what determines a stage's result: its command, the files it names, its inputs."""
    named = [Path(a) for a in (stage.command or []) if a.endswith((".yaml", ".json", ".conf")) and Path(a).is_file()]
    if stage.command and "--config_file" in stage.command:
        configs = eval_list(stage.command[stage.command.index("--config_file") + 1])
        named += [Path(c) for c in configs]
    payload = {
        "command": stage.command[1:] if stage.command else stage.name,  # not the interpreter path
        "key": stage.key,
        "files": [_file_identity(p) for p in sorted(set(named))],
        "inputs": [_file_identity(Path(p)) for p in stage.inputs],
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def eval_list(text: str) -> list[str]:
    """Parse the ``repr`` of a list of strings written by :func:`bundle_command`."""
    value = ast.literal_eval(text)
    return [str(v) for v in value]


def _state_file(workdir: Path, stage: Stage) -> Path:
    return workdir / stage.name / "stage.json"


def is_up_to_date(workdir: Path, stage: Stage) -> bool:
    """True when the stage's recorded fingerprint matches and every output exists."""
    state = _state_file(workdir, stage)
    if not state.is_file():
        return False
    try:
        recorded = json.loads(state.read_text())
    except json.JSONDecodeError:
        return False
    return recorded.get("fingerprint") == fingerprint(stage) and all(Path(p).exists() for p in stage.outputs)


class StageError(RuntimeError):
    """A stage's command failed; the message names the stage and its log file."""


def run_stages(
    stages: Sequence[Stage],
    workdir: str | os.PathLike,
    from_stage: str | None = None,
    log: Callable[[str], None] = print,
    env: Mapping[str, str] | None = None,
    numbering: tuple[int, int] | None = None,
) -> dict[str, str]:
    """Run ``stages`` in order; returns {stage: "ran" | "skipped"}.

    Args:
        stages: the chain, in order.
        workdir: folder for stage state and logs.
        from_stage: rerun this stage and all after it even if up to date.
        log: where progress lines go.
        env: extra environment variables for the commands.
        numbering: (offset, total) for the progress lines when this is part of a longer chain.
    """
    workdir = Path(workdir)
    names = [s.name for s in stages]
    if len(set(names)) != len(names):
        raise ValueError(f"duplicate stage names in {names}")
    if from_stage is not None and from_stage not in names:
        raise ValueError(f"--from {from_stage!r} is not a stage; stages: {', '.join(names)}")
    force_from = names.index(from_stage) if from_stage is not None else len(names)
    status: dict[str, str] = {}
    total = time.perf_counter()
    for i, stage in enumerate(stages):
        offset, count = numbering or (0, len(stages))
        prefix = f"[{offset + i + 1}/{count}] {stage.name}"
        if i < force_from and is_up_to_date(workdir, stage):
            log(f"{prefix}: up to date, skipped")
            status[stage.name] = "skipped"
            continue
        log(f"{prefix}: running{' - ' + stage.description if stage.description else ''}")
        start = time.perf_counter()
        _state_file(workdir, stage).unlink(missing_ok=True)
        for folder in stage.clean:
            if Path(folder).is_dir():
                shutil.rmtree(folder)
        if stage.function is not None:
            stage.function()
        else:
            _run_command(workdir, stage, env)
        missing = [str(p) for p in stage.outputs if not Path(p).exists()]
        if missing:
            raise StageError(f"stage {stage.name} finished but did not write: {', '.join(missing)}")
        elapsed = time.perf_counter() - start
        state = {"stage": stage.name, "fingerprint": fingerprint(stage), "seconds": round(elapsed, 2)}
        state["outputs"] = [str(p) for p in stage.outputs]
        atomic_write_text(_state_file(workdir, stage), json.dumps(state, indent=2) + "\n")
        log(f"{prefix}: done in {elapsed:.1f} s (total {time.perf_counter() - total:.1f} s)")
        status[stage.name] = "ran"
    return status


def _run_command(workdir: Path, stage: Stage, env: Mapping[str, str] | None) -> None:
    log_file = workdir / "logs" / f"{stage.name}.log"
    log_file.parent.mkdir(parents=True, exist_ok=True)
    full_env = {**os.environ, **(env or {}), "PYTHONUNBUFFERED": "1"}
    with open(log_file, "w") as fh:
        fh.write(" ".join(stage.command or []) + "\n\n")
        fh.flush()
        proc = subprocess.run(stage.command or [], stdout=fh, stderr=subprocess.STDOUT, env=full_env, cwd=REPO)
    if proc.returncode != 0:
        tail = log_file.read_text().splitlines()[-25:]
        raise StageError(f"stage {stage.name} failed (exit {proc.returncode}); log: {log_file}\n" + "\n".join(tail))
