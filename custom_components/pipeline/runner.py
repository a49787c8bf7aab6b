"""Run a chain of stages with skip-if-up-to-date, ``--from`` reruns and a progress line per stage.

A stage is a command (usually ``python -m monai.bundle run ...`` on one bundle's own configs plus an
overrides file) with declared inputs and outputs. After a stage succeeds, ``<workdir>/<stage>/stage.json``
records a fingerprint of its command, its config files, its overrides, its inputs, the code version
(:func:`code_hash`) and the thread count (:func:`stage_threads`), and, for the report, the code version and
commit and thread count it was made with (:func:`code_record`, grouped by :func:`stage_provenance`). On a rerun
the stage is skipped when the fingerprint is unchanged and every output exists; otherwise it runs again (a
state file of an older version, without these fields, never matches), and so (through their inputs) does every
stage that consumes its outputs: a resumed run never mixes stages made with other code or thread counts.

Stage processes: a Python command (``python -m MODULE ...``, ``python SCRIPT.py ...``: every bundle stage) is forked
by the runner's stage server (:mod:`custom_components.pipeline.stage_server`), which has imported torch, MONAI and
this package once, so a stage no longer spends about 9 s importing them; any other command, or a stage whose
environment differs from the runner's, is exec'd. Either way the stage sees the same argv, working directory,
environment and signals.

Interruptions:

- a stage's command runs in its own process group (its own session; on Linux it also gets SIGTERM when the runner
  dies, even by SIGKILL) with default SIGINT / SIGTERM handling, even when the runner was
  started with them ignored (``nohup ... &``); SIGTERM / SIGINT sent to the runner are forwarded to that group,
  the runner waits for it (SIGKILL after ``KILL_AFTER_S``) and stops with :class:`StageInterrupted`, leaving
  the stage unmarked;
- ``stage.json`` is the finished marker: a stage folder without it is an unfinished run, redone (its folder
  cleared) on the next start;
- ``--from STAGE`` removes the finished markers of that stage and of every later one before anything runs, so
  an interrupted forced run still redoes all of them (:func:`run_stages`; the pipeline CLI also records the
  forced stage in ``<workdir>/forced_from.json`` until the run completes, for stages listed later);
- :func:`workdir_lock` (``filelock``'s ``FileLock`` on ``<workdir>/.pipeline.lock``: an exclusive ``flock``,
  released by the kernel when the process dies) stops two runners from sharing a work dir.
"""

from __future__ import annotations

import ast
import contextlib
import functools
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from custom_components.data.atomic import atomic_write_text
from custom_components.export.zoo_bundle import PACKAGE_DIR, find_bundles_dir
from custom_components.pipeline import stage_server

# the checkout's root (site-packages for an installed wheel): the stages' working directory and git's folder
REPO = PACKAGE_DIR.parent
LOCK_FILE = ".pipeline.lock"
# the pid of the runner holding the lock, for the refusal's message (beside the lock file: a waiting FileLock may
# truncate the lock file itself)
LOCK_OWNER_FILE = ".pipeline.lock.owner"
# after forwarding SIGTERM/SIGINT, wait this long for the stage's processes before SIGKILL
KILL_AFTER_S = 60.0


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
    """argv for ``python -m monai.bundle run`` on ``<bundles>/<bundle>`` (:func:`find_bundles_dir`) with an overrides
    JSON file.

    The overrides are written to ``overrides_file`` (kept as provenance) and merged after the
    bundle's own configs; keys may be nested ids such as ``train#trainer#max_epochs``.
    """
    root = find_bundles_dir() / bundle
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


# what the code version hashes: (folder, glob) pairs, paths taken relative to the folder's parent; with them the
# configs of the bundles folder in use, BUNDLE_CONFIGS under find_bundles_dir()
CODE_FILES: tuple[tuple[Path, str], ...] = ((PACKAGE_DIR, "**/*.py"),)
BUNDLE_CONFIGS = "**/configs/*"
# the same files in a checkout, as git pathspecs (:func:`code_commit`)
CODE_PATHSPECS = (":(glob)custom_components/**/*.py", ":(glob)bundles/**/configs/*")


def code_hash() -> str:
    """The code version: SHA-256 over the path and content of every ``custom_components/**/*.py`` file and every
    ``bundles/**/configs/*`` file of the bundles folder the stages run (:func:`find_bundles_dir`: a checkout's or
    an installed copy's, same paths), in sorted path order (independent of git, so it also tells uncommitted changes
    apart). Cached per process and bundles folder: code edited while a pipeline runs counts from its next start."""
    return _hash_files((*CODE_FILES, (find_bundles_dir(), BUNDLE_CONFIGS)))


@functools.cache
def _hash_files(files: tuple[tuple[Path, str], ...]) -> str:
    digest = hashlib.sha256()
    for folder, pattern in files:
        for path in sorted(p for p in folder.glob(pattern) if p.is_file() and "__pycache__" not in p.parts):
            digest.update(str(path.relative_to(folder.parent)).encode() + b"\0")
            digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


@functools.cache
def code_commit() -> str:
    """The git commit of the code that runs (``<sha>``, ``<sha> + uncommitted changes`` when a tracked file that
    :func:`code_hash` covers differs from it, or ``unknown`` outside a git checkout, e.g. an installed wheel); for
    display, :func:`code_hash` is what the fingerprint uses. Cached per process."""

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-C", str(REPO), *args], capture_output=True, text=True, check=True, timeout=30
        ).stdout.strip()

    try:
        sha = git("rev-parse", "HEAD")
        # the files code_hash covers, not the docs beside them: editing a README does not mark a run
        dirty = git("status", "--porcelain", "--untracked-files=no", "--", *CODE_PATHSPECS)
    except (OSError, subprocess.SubprocessError):
        return "unknown (not a git checkout)"
    return f"{sha} + uncommitted changes" if dirty else sha


def stage_threads(env: Mapping[str, str] | None = None) -> int:
    """The intra-op thread count of a stage: ``OMP_NUM_THREADS`` as the stage's process sees it (``env`` over
    ``os.environ``; the first level of a nested setting), else torch's default here (``torch.get_num_threads()``:
    stage processes inherit this process's environment and CPU affinity, so they get the same default)."""
    value = {**os.environ, **(env or {})}.get("OMP_NUM_THREADS", "").split(",")[0].strip()
    if value.isdigit() and int(value) > 0:
        return int(value)
    import torch

    return torch.get_num_threads()


def code_record(env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """What a stage's state file records of how it was made: ``code_hash``, ``commit`` and ``threads``."""
    return {"code_hash": code_hash(), "commit": code_commit(), "threads": stage_threads(env)}


def fingerprint(stage: Stage, env: Mapping[str, str] | None = None) -> str:
    """Hash of what determines a stage's result: its command, the files it names, its inputs, the code version
    (:func:`code_hash`) and the thread count (:func:`stage_threads` of ``env``, the stage's extra environment)."""
    named = [Path(a) for a in (stage.command or []) if a.endswith((".yaml", ".json", ".conf")) and Path(a).is_file()]
    if stage.command and "--config_file" in stage.command:
        configs = eval_list(stage.command[stage.command.index("--config_file") + 1])
        named += [Path(c) for c in configs]
    payload = {
        "command": stage.command[1:] if stage.command else stage.name,  # not the interpreter path
        "key": stage.key,
        "files": [_file_identity(p) for p in sorted(set(named))],
        "inputs": [_file_identity(Path(p)) for p in stage.inputs],
        "code": code_hash(),
        "threads": stage_threads(env),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def eval_list(text: str) -> list[str]:
    """Parse the ``repr`` of a list of strings written by :func:`bundle_command`."""
    value = ast.literal_eval(text)
    return [str(v) for v in value]


def _state_file(workdir: Path, stage: Stage) -> Path:
    return workdir / stage.name / "stage.json"


def _read_state(path: Path) -> dict[str, Any] | None:
    try:
        recorded = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return recorded if isinstance(recorded, dict) else None


def is_up_to_date(workdir: Path, stage: Stage, env: Mapping[str, str] | None = None) -> bool:
    """True when the stage's recorded fingerprint matches (``env``: the stage's extra environment), it records
    this code version (a state file of an older version, without one, is out of date) and every output exists."""
    recorded = _read_state(_state_file(workdir, stage))
    return (
        recorded is not None
        and recorded.get("fingerprint") == fingerprint(stage, env)
        and recorded.get("code_hash") == code_hash()
        and all(Path(p).exists() for p in stage.outputs)
    )


def _made_otherwise(workdir: Path, stage: Stage, env: Mapping[str, str] | None) -> str | None:
    """Why a finished stage is redone when it was made with other code or another thread count, else None."""
    recorded = _read_state(_state_file(workdir, stage))
    if recorded is None:
        return None
    if recorded.get("code_hash") != code_hash():
        return f"made with other code (commit {recorded.get('commit', 'not recorded')})"
    if recorded.get("threads") != stage_threads(env):
        return f"made with {recorded.get('threads')} threads, now {stage_threads(env)}"
    return None


def stage_provenance(
    workdir: str | os.PathLike,
    current: Mapping[str, Mapping[str, Any]] | None = None,
    names: Sequence[str] | None = None,
) -> list[dict[str, Any]]:
    """How the stages of a work dir were made: one entry per (commit, code hash, threads) combination with
    its stages (in the order they finished), from every ``<workdir>/<stage>/stage.json``; more than one entry
    is a mix. Fields a state file of an older version lacks read "not recorded".

    Args:
        workdir: the pipeline's work dir.
        current: records (:func:`code_record`) of stages still running, whose state files are not written yet
            (the report), by stage name.
        names: the stages to list (the experiment's); None: every stage folder of the work dir. Folders left by
            stages the config no longer has (a removed arm or seed) are not part of the result and are left out.
    """
    states = sorted(Path(workdir).glob("*/stage.json"), key=lambda p: (p.stat().st_mtime_ns, str(p)))
    wanted = None if names is None else set(names)
    records = {
        path.parent.name: _read_state(path) or {} for path in states if wanted is None or path.parent.name in wanted
    }
    records.update(current or {})
    groups: dict[tuple[Any, ...], list[str]] = {}
    for name, record in records.items():
        key = tuple(record.get(k, "not recorded") for k in ("commit", "code_hash", "threads"))
        groups.setdefault(key, []).append(name)
    return [
        {"commit": commit, "code_hash": code, "threads": threads, "stages": names}
        for (commit, code, threads), names in groups.items()
    ]


class StageError(RuntimeError):
    """A stage's command failed; the message names the stage and its log file."""


class StageInterrupted(StageError):
    """The runner got SIGTERM / SIGINT while a stage ran; the stage's processes are gone, the stage unmarked."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.signum = signum


class WorkdirLocked(RuntimeError):
    """Another runner holds the work dir."""


@contextlib.contextmanager
def workdir_lock(workdir: str | os.PathLike) -> Iterator[Path]:
    """Hold an exclusive lock on ``<workdir>/.pipeline.lock`` (``filelock.FileLock``, one instance per path in the
    process, so re-entrant within the process), without waiting.

    Args:
        workdir: the pipeline's work dir (created if absent).

    Raises:
        WorkdirLocked: naming the work dir and the other runner's pid when it is held.
    """
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    lock = FileLock(workdir / LOCK_FILE, timeout=0, thread_local=False, is_singleton=True)
    owner = workdir / LOCK_OWNER_FILE
    outermost = not lock.is_locked
    try:
        lock.acquire()
    except Timeout:
        other = owner.read_text().strip() if owner.is_file() else ""
        raise WorkdirLocked(
            f"{workdir}: another pipeline runner (pid {other or '?'}) is using this work dir; wait for it or stop it"
        ) from None
    try:
        if outermost:
            owner.write_text(f"{os.getpid()}\n")
        yield workdir
    finally:
        if outermost:
            owner.unlink(missing_ok=True)
        lock.release()


def invalidate(workdir: str | os.PathLike, stages: Sequence[Stage]) -> list[str]:
    """Remove the finished markers of ``stages`` (they rerun even if up to date); returns their names."""
    removed = []
    for stage in stages:
        state = _state_file(Path(workdir), stage)
        if state.is_file():
            state.unlink()
            removed.append(stage.name)
    return removed


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
    with workdir_lock(workdir):
        # a forced rerun unmarks its stages first: interrupted, it still redoes every one of them
        invalidate(workdir, stages[force_from:])
        return _run_stages(stages, workdir, log, env, numbering)


def _run_stages(
    stages: Sequence[Stage],
    workdir: Path,
    log: Callable[[str], None],
    env: Mapping[str, str] | None,
    numbering: tuple[int, int] | None,
) -> dict[str, str]:
    status: dict[str, str] = {}
    total = time.perf_counter()
    forks = stage_server.same_environment(_stage_env(env), os.environ)
    if forks and any(
        s.command and stage_server.forkable(s.command) and not is_up_to_date(workdir, s, env) for s in stages
    ):
        stage_server.start(cwd=REPO)  # its imports overlap the stages before the first one it forks
    for i, stage in enumerate(stages):
        offset, count = numbering or (0, len(stages))
        prefix = f"[{offset + i + 1}/{count}] {stage.name}"
        if is_up_to_date(workdir, stage, env):
            log(f"{prefix}: up to date, skipped")
            status[stage.name] = "skipped"
            continue
        reason = _made_otherwise(workdir, stage, env)
        if reason:
            log(f"{prefix}: {reason}; redoing it")
        if (workdir / stage.name).is_dir() and not _state_file(workdir, stage).is_file():
            log(f"{prefix}: found an unfinished run (no finished marker); redoing it")
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
        state = {"stage": stage.name, "fingerprint": fingerprint(stage, env), "seconds": round(elapsed, 2)}
        state |= {"outputs": [str(p) for p in stage.outputs], **code_record(env)}
        atomic_write_text(_state_file(workdir, stage), json.dumps(state, indent=2) + "\n")
        log(f"{prefix}: done in {elapsed:.1f} s (total {time.perf_counter() - total:.1f} s)")
        status[stage.name] = "ran"
    return status


def _stage_env(env: Mapping[str, str] | None) -> dict[str, str]:
    """A stage process's environment: this process's, with the stages' extra variables, unbuffered output."""
    return {**os.environ, **(env or {}), "PYTHONUNBUFFERED": "1"}


def _run_command(workdir: Path, stage: Stage, env: Mapping[str, str] | None) -> None:
    log_file = workdir / "logs" / f"{stage.name}.log"
    log_file.parent.mkdir(parents=True, exist_ok=True)
    full_env = _stage_env(env)
    with open(log_file, "w") as fh:
        fh.write(" ".join(stage.command or []) + "\n\n")
        fh.flush()
        try:
            returncode, signum = _run_in_own_group(stage.command or [], fh, log_file, full_env)
        except OSError as e:  # the stage server died while the stage ran (its process got SIGTERM with it)
            raise StageError(f"stage {stage.name} lost: {e}; log: {log_file}") from e
    if signum is not None:
        raise StageInterrupted(
            f"stage {stage.name} interrupted by {signal.Signals(signum).name}: its processes were stopped and it is "
            f"left unmarked, so the next run redoes it; log: {log_file}",
            signum,
        )
    if returncode != 0:
        tail = log_file.read_text().splitlines()[-25:]
        raise StageError(f"stage {stage.name} failed (exit {returncode}); log: {log_file}\n" + "\n".join(tail))


def _prepare_stage_process() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Default SIGINT / SIGTERM handling, and (Linux) SIGTERM when the runner dies, even by SIGKILL.

    A runner started in the background (``nohup ... &``) inherits SIGINT ignored, and an ignored signal stays
    ignored across exec (``restore_signals`` only restores SIGPIPE, SIGXFZ, SIGXFSZ): the stage would ignore a
    forwarded SIGINT and end only by the SIGKILL after ``KILL_AFTER_S``. libc's ``signal`` rather than Python's,
    which only works in the main thread.
    """
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(Exception):
            libc.signal(int(signum), 0)  # 0 = SIG_DFL
    stage_server.set_parent_death_signal()


def _start_stage_process(
    command: Sequence[str], log: Any, log_file: Path, env: Mapping[str, str]
) -> tuple[int, Callable[[float], int | None]]:
    """Start ``command`` in its own session: forked by the stage server when it can (:mod:`stage_server`: the
    imports are done), else exec'd. Returns its pid and ``wait(timeout)``: the exit status (negative: the signal
    that ended it), or None while it still runs after ``timeout`` seconds."""
    forks = stage_server.forkable(command) and stage_server.same_environment(env, os.environ)
    server = stage_server.start(cwd=REPO) if forks else None  # no server for a stage it could not fork
    if server is not None and server.can_run(command, env):
        with contextlib.suppress(OSError):  # the server is gone: exec instead
            pid = server.start(command, log_file, env, REPO)
            return pid, functools.partial(server.wait, pid)
    proc = subprocess.Popen(
        list(command),
        stdout=log,
        stderr=subprocess.STDOUT,
        env=dict(env),
        cwd=REPO,
        start_new_session=True,
        preexec_fn=_prepare_stage_process,  # noqa: PLW1509 - only signal and prctl, no locks
    )

    def wait(timeout: float) -> int | None:
        try:
            return proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    return proc.pid, wait


def _signal_group(pid: int, signum: int) -> None:
    """``signum`` to the process group of stage process ``pid`` (to ``pid`` alone before it leads one)."""
    try:
        os.killpg(pid, signum)
    except ProcessLookupError:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signum)
    except PermissionError:
        pass


def _run_in_own_group(
    command: Sequence[str], log: Any, log_file: Path, env: Mapping[str, str]
) -> tuple[int, int | None]:
    """Run ``command`` in a new session (:func:`_start_stage_process`); forward SIGTERM/SIGINT to its process group
    and wait for it.

    Returns:
        (exit status, the first signal forwarded or None).
    """
    got: dict[str, Any] = {"signum": None, "at": 0.0}
    pid, wait = _start_stage_process(command, log, log_file, env)

    def forward(signum: int, frame: Any) -> None:
        if got["signum"] is None:
            got.update(signum=signum, at=time.monotonic())
        _signal_group(pid, signum)

    main = threading.current_thread() is threading.main_thread()
    previous = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)} if main else {}
    try:
        while (returncode := wait(0.5)) is None:
            if got["signum"] is not None and time.monotonic() - got["at"] > KILL_AFTER_S:
                _signal_group(pid, signal.SIGKILL)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        if got["signum"] is not None:  # stragglers of the group (data-loader workers, torchrun children)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
    return returncode, got["signum"]
