"""Start a stage's Python command in a process forked from a server that has already imported torch, MONAI and this
package, instead of in a fresh interpreter.

``import monai`` (with torch, Ignite, mlflow, SciPy) takes about 9 s on 2 cores, and every bundle stage paid it
(13 of them in the demo). The server (``python -m custom_components.pipeline.stage_server``, one per runner
process, started by :func:`start`) imports :data:`PRELOAD` once, then forks a process per request. The forked
process is what ``exec`` of the same command would give:

- ``python -m MODULE ARGS`` runs ``MODULE`` as ``__main__`` (:func:`runpy.run_module`), ``python SCRIPT ARGS``
  runs the script (:func:`runpy.run_path`), with ``sys.argv`` and ``sys.path[0]`` as the interpreter sets them,
  the request's working directory and environment, stdout and stderr into the stage's log (line-buffered, as
  with ``PYTHONUNBUFFERED``), and atexit handlers run at the end;
- its own session (so the runner signals its process group), SIGINT and SIGTERM handled as in a fresh interpreter
  even when the runner was started with them ignored (``nohup ... &``), and SIGTERM when the server dies; the
  server exits when the runner does (its requests pipe closes), so a stage never outlives its runner.

Not :mod:`multiprocessing`'s forkserver: each process it starts imports the parent's main module again (as
``__mp_main__``), so a script that calls the runner without an ``if __name__ == "__main__"`` guard would run its
pipeline again in every stage; and its processes run functions, not commands with their own ``sys.argv``.

Only what an import reads from the environment differs from a fresh interpreter: a library that reads a variable
when it loads (``OMP_NUM_THREADS`` for OpenMP, ``ONEDNN_MAX_CPU_ISA``) saw the server's. The runner therefore
forks only when the stage's environment is the server's (:meth:`StageServer.can_run`) and otherwise execs.

Protocol: one JSON object a line. Requests on the server's stdin: ``{"argv", "log", "cwd", "env"}``; answers on
its stdout: ``{"started": pid}`` (or ``{"error": message}``) per request, and ``{"exited": pid, "returncode":
code}`` (negative: killed by that signal, as :attr:`subprocess.Popen.returncode`) when a stage process ends.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib
import json
import os
import runpy
import select
import signal
import subprocess
import sys
import traceback
from collections.abc import Mapping, Sequence
from typing import IO, Any

# what the server imports before its first fork: what a bundle stage imports before its config is parsed
# (not ``monai.bundle.__main__``: runpy warns when the module that ``-m`` runs was imported before)
PRELOAD = (
    "monai.bundle",
    "fire",
    "custom_components.transforms",
    "custom_components.networks",
)
# how often the server looks for ended stage processes when no request comes
REAP_INTERVAL_S = 0.2


def forkable(command: Sequence[str]) -> bool:
    """Whether ``command`` is this interpreter running Python: ``python -m MODULE ...`` or ``python SCRIPT.py ...``."""
    return (
        len(command) >= 2
        and command[0] == sys.executable
        and ((command[1] == "-m" and len(command) >= 3) or command[1].endswith(".py"))
    )


def same_environment(a: Mapping[str, str], b: Mapping[str, str]) -> bool:
    """Whether two environments are equal but for ``PYTHONUNBUFFERED`` (which the stage process sets itself)."""
    return {k: v for k, v in a.items() if k != "PYTHONUNBUFFERED"} == {
        k: v for k, v in b.items() if k != "PYTHONUNBUFFERED"
    }


def set_parent_death_signal() -> None:
    """(Linux) Have the kernel send this process SIGTERM when its parent dies, even by SIGKILL; elsewhere nothing."""
    if sys.platform.startswith("linux"):
        import ctypes

        with contextlib.suppress(Exception):
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG


class StageServer:
    """The runner's side: start the server (in this process's environment: stages are forked only in that one),
    have it fork a stage process, wait for that process.

    Args:
        cwd: the server's working directory.
    """

    def __init__(self, cwd: str | os.PathLike | None = None) -> None:
        self.env = dict(os.environ)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", __name__],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=self.env,
            cwd=cwd,
            bufsize=0,  # unbuffered: select() on the pipe sees every answer not yet read
        )
        self._exited: dict[int, int] = {}

    def can_run(self, command: Sequence[str], env: Mapping[str, str]) -> bool:
        """Whether the server can fork ``command`` in environment ``env``: a Python command (:func:`forkable`), the
        server alive, and ``env`` the server's (:func:`same_environment`)."""
        return forkable(command) and same_environment(env, self.env) and self.proc.poll() is None

    def start(
        self, command: Sequence[str], log: str | os.PathLike, env: Mapping[str, str], cwd: str | os.PathLike
    ) -> int:
        """Fork ``command`` with stdout and stderr appended to ``log``; returns its pid.

        Raises:
            OSError: the server is gone or refused (the caller may exec instead).
        """
        request = {"argv": list(command), "log": str(log), "cwd": str(cwd), "env": dict(env)}
        answer = self._exchange(request)
        if "started" not in answer:
            raise OSError(f"the stage server did not start {command[:3]}: {answer.get('error', answer)}")
        return int(answer["started"])

    def wait(self, pid: int, timeout: float) -> int | None:
        """The exit status of stage process ``pid`` (negative: the signal that killed it), or None while it runs
        after ``timeout`` seconds.

        Raises:
            OSError: the server died before reporting it.
        """
        if pid in self._exited:
            return self._exited.pop(pid)
        stdout = self.proc.stdout
        assert stdout is not None
        while select.select([stdout], [], [], timeout)[0]:
            self._record(self._read())
            if pid in self._exited:
                return self._exited.pop(pid)
            timeout = 0
        return None

    def close(self) -> None:
        """End the server, also in the middle of its imports (stage processes it started get SIGTERM from the
        kernel as it dies)."""
        self.proc.kill()
        self.proc.wait()

    def _exchange(self, request: Mapping[str, Any]) -> dict[str, Any]:
        stdin = self.proc.stdin
        assert stdin is not None
        try:
            stdin.write(json.dumps(request).encode() + b"\n")
        except (BrokenPipeError, ValueError) as e:
            raise OSError(f"the stage server is gone: {e}") from e
        while True:
            answer = self._read()
            if "exited" not in answer:
                return answer
            self._record(answer)

    def _read(self) -> dict[str, Any]:
        stdout = self.proc.stdout
        assert stdout is not None
        line = stdout.readline()
        if not line:
            raise OSError(f"the stage server exited (status {self.proc.wait()})")
        return json.loads(line)

    def _record(self, answer: Mapping[str, Any]) -> None:
        if "exited" in answer:
            self._exited[int(answer["exited"])] = int(answer["returncode"])


_SERVER: StageServer | None = None


def start(cwd: str | os.PathLike | None = None) -> StageServer | None:
    """The runner process's server (working directory ``cwd``), started on first use (its imports run while the
    runner goes on) and ended at exit; None when it cannot start (the runner then execs every stage)."""
    global _SERVER
    if _SERVER is None or _SERVER.proc.poll() is not None:
        try:
            _SERVER = StageServer(cwd=cwd)
        except OSError:
            return None
        atexit.register(_SERVER.close)
    return _SERVER


# ---- the server's side ----------------------------------------------------------------------------------
def _run_stage(argv: Sequence[str], log: str, cwd: str, env: Mapping[str, str]) -> int:
    """In the forked process: become the stage (see the module docstring); returns its exit status (0-255)."""
    os.setsid()
    signal.signal(signal.SIGINT, signal.default_int_handler)  # a fresh interpreter's: KeyboardInterrupt
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    set_parent_death_signal()
    fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    os.close(null)
    sys.stdout = open(1, "w", buffering=1, closefd=False)  # noqa: SIM115 - fd 1 stays open for the process's life
    sys.stderr = open(2, "w", buffering=1, closefd=False, errors="backslashreplace")  # noqa: SIM115
    os.chdir(cwd)
    os.environ.clear()
    os.environ.update(env)
    try:
        if argv[1] == "-m":
            sys.argv = [argv[2], *argv[3:]]
            sys.path[0] = cwd
            runpy.run_module(argv[2], run_name="__main__", alter_sys=True)
        else:
            sys.argv = list(argv[1:])
            sys.path[0] = os.path.dirname(os.path.abspath(argv[1]))
            runpy.run_path(argv[1], run_name="__main__")
        code = 0
    except SystemExit as e:
        if e.code is None or isinstance(e.code, int):
            code = e.code or 0
        else:
            print(e.code, file=sys.stderr)
            code = 1
    except KeyboardInterrupt:
        traceback.print_exc()
        code = 128 + signal.SIGINT
    except BaseException:  # noqa: BLE001 - what the interpreter does with an uncaught exception
        traceback.print_exc()
        code = 1
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    return code & 0xFF


def _send(out: IO[bytes], message: Mapping[str, Any]) -> None:
    out.write(json.dumps(message).encode() + b"\n")


def _reap(out: IO[bytes]) -> None:
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        _send(out, {"exited": pid, "returncode": os.waitstatus_to_exitcode(status)})


def serve() -> None:
    """The server's loop: import :data:`PRELOAD`, then fork a stage process per request line on stdin, answer on
    stdout, report every ended stage process, and exit when stdin closes (the runner is gone)."""
    # unbuffered binary pipes both ways: a line read never leaves another behind in a buffer that select() misses
    out = os.fdopen(os.dup(1), "wb", buffering=0)  # the answers; fd 1 itself goes to stderr: no import's print mixes in
    os.dup2(2, 1)
    requests = os.fdopen(0, "rb", buffering=0)
    for name in PRELOAD:
        with contextlib.suppress(ImportError):
            importlib.import_module(name)
    while True:
        if select.select([requests], [], [], REAP_INTERVAL_S)[0]:
            line = requests.readline()
            if not line:
                return
            request = json.loads(line)
            try:
                pid = os.fork()
            except OSError as e:
                _send(out, {"error": str(e)})
                continue
            if pid == 0:
                out.close()  # a stage process must not hold the answers' pipe open past the server's end
                os._exit(_run_stage(request["argv"], request["log"], request["cwd"], request["env"]))
            _send(out, {"started": pid})
        _reap(out)


if __name__ == "__main__":
    serve()
