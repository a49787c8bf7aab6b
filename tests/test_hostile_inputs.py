"""Hostile inputs and interruptions, as a user meets them: bundles run as ``python -m monai.bundle run``.

Every bundle refuses every bad input in ``initialize`` (exit 1, one line per problem naming the file, the
datalist, the section and the case, printed last), writes nothing and modifies no input. A killed training
run resumes without losing its best model; an evaluation or inference run into an earlier run's outputs is
refused (naming a file, leaving them byte-identical) unless ``overwrite``; a SIGTERM / SIGINT to the pipeline
runner (even one started with SIGINT ignored) leaves no bundle process behind and the stage is redone on the
next run.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from custom_components.data import validation
from custom_components.data.cache import DataCheckCache
from custom_components.data.demo import make_demo_data
from custom_components.data.input_check import InputCheckError, check_inputs, input_problems
from custom_components.pipeline.runner import (
    KILL_AFTER_S,
    LOCK_OWNER_FILE,
    Stage,
    WorkdirLocked,
    run_stages,
    workdir_lock,
)
from tests import hostile
from tests.hostile import REPO, files_under, problem_block, run_bundle, tree_hash

DEFECTS = list(hostile.FILE_DEFECTS)
SEG_TINY: dict[str, Any] = {
    "crop_size": [32, 32, 32],
    "filters": [4, 8, 16, 32],
    "batch_size": 2,
    "num_workers": 0,
    "device": "cpu",
    "amp": False,
    "sw_batch_size": 1,
    "cache_rate": 0.0,
}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Demo data (8 training cases) and hostile copies: one defect per training case, a non-JSON datalist, a
    datalist with an empty section and a pickle checkpoint."""
    root = tmp_path_factory.mktemp("hostile")
    demo = make_demo_data(root / "demo", n_healthy=1, n_tumour=12, spacing=4.0, seed=0, verbose=False)
    bad = root / "bad"
    defects = hostile.hostile_copy(demo["tumour"], bad, DEFECTS)
    return {
        "root": root,
        "demo": demo,
        "bad": bad / demo["tumour"].name,
        "defects": defects,
        "non_json": hostile.non_json(root / "not_json.json"),
        "empty": hostile.empty_section(demo["tumour"], root / "empty.json"),
        "pickle": hostile.pickle_checkpoint(root / "pickled.pt"),
    }


def _bundle_case(bundle: str, inp: dict[str, Any], out: Path) -> tuple[list[str], str, dict[str, Any], list[str]]:
    """configs, run id, overrides and the extra lines expected, for a run of ``bundle`` on every hostile input."""
    if bundle == "dtss_mas_seg":
        overrides = {
            **SEG_TINY, "datalist": str(inp["bad"]), "output_dir": str(out), "max_epochs": 2, "phase2_start_epoch": 1,
            "synthetic_datalists": [str(inp["non_json"]), str(inp["empty"])], "init_checkpoint": str(inp["pickle"]),
        }  # fmt: skip
        expected = [f"{inp['non_json']}: not valid JSON", f"{inp['empty']}: no items in training"]
        return ["common.yaml", "train.yaml"], "training", overrides, expected + [f"{inp['pickle']}: init_checkpoint"]
    if bundle == "tf_aug":
        overrides = {
            "real_datalist": str(inp["bad"]), "healthy_datalist": str(inp["non_json"]), "output_dir": str(out),
            "encoder_checkpoint": str(inp["pickle"]), "device": "cpu", "max_epochs": 1,
        }  # fmt: skip
        return ["common.yaml", "train.yaml"], "training", overrides, [
            f"{inp['non_json']}: not valid JSON", f"{inp['pickle']}: encoder_checkpoint refused"
        ]  # fmt: skip
    overrides = {
        "coarse_datalist": str(inp["bad"]), "real_datalist": str(inp["empty"]), "output_dir": str(out / "outputs"),
        "models_dir": str(out / "models"), "encoder_checkpoint": str(inp["pickle"]), "device": "cpu", "max_epochs": 1,
    }  # fmt: skip
    return ["common.yaml", "train.yaml"], "training", overrides, [
        f"{inp['empty']}: no items in training", f"{inp['pickle']}: encoder_checkpoint refused"
    ]  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("bundle", ["dtss_mas_seg", "tf_aug", "tf_gan"])
def test_bundle_refuses_every_hostile_input_before_writing(inputs: dict[str, Any], tmp_path: Path, bundle: str) -> None:
    out = tmp_path / "out"
    configs, run_id, overrides, expected = _bundle_case(bundle, inputs, out)
    before = tree_hash(inputs["root"])
    proc = run_bundle(bundle, configs, overrides, tmp_path / "work", run_id)
    assert proc.returncode == 1, proc.stderr[-3000:]
    block = problem_block(proc.stderr)
    # the problem list is the last thing printed, one line per problem (no traceback after it)
    assert block and proc.stderr.rstrip().splitlines()[-1] == block[-1], proc.stderr[-3000:]
    assert "Traceback" not in "\n".join(block)
    for defect, (case, path) in inputs["defects"].items():
        hits = [line for line in block if line.startswith(f"{path}: ")]
        assert hits, f"{defect}: {path} not named in\n" + "\n".join(block)
        # each line names the file, the datalist, the section and the case
        assert any(f"({inputs['bad']} training[" in h and f"case {case})" in h for h in hits), hits
    for start in expected:
        assert any(line.startswith(start) for line in block), f"{start!r} not in\n" + "\n".join(block)
    assert files_under(out) == []  # nothing written
    assert tree_hash(inputs["root"]) == before  # inputs untouched


def test_check_inputs_names_each_defect_and_reads_each_file_once(
    inputs: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reads: list[str] = []
    original = validation._Validator._read_and_check

    def counting(self: Any, path: str, role: str) -> list[str]:
        reads.append(path)
        return original(self, path, role)

    monkeypatch.setattr(validation._Validator, "_read_and_check", counting)
    cache = tmp_path / "cache.json"
    monkeypatch.setenv("CUSTOM_COMPONENTS_CHECK_CACHE", str(cache))
    spec = {"datalist": str(inputs["bad"]), "section": "training", "modalities": ["t1n", "t1c", "t2w", "t2f"]}
    spec.update(require=["label"], require_tumour=True)
    problems = input_problems([spec])
    reasons = {
        "truncated": "unreadable data, file truncated or corrupt",
        "2-D": "2D volume of shape",
        "shape mismatch": "label shape",
        "affine mismatch": "label affine differs",
        "NaN": "1 NaN/inf voxel(s)",
        "bad label value": "label values [7]",
        "no tumour": "label has no tumour voxels",
        "missing file": "file not found",
    }
    for defect, (case, path) in inputs["defects"].items():
        line = next(p for p in problems if p.startswith(f"{path}: "))
        assert reasons[defect] in line and line.endswith(f"case {case})"), line
    assert len(problems) == len(DEFECTS)
    # a second check in a new process (fresh in-memory cache, same cache file) decompresses nothing
    first = len(reads)
    assert first > 0 and json.loads(cache.read_text())["entries"]
    monkeypatch.setattr("custom_components.data.cache._DEFAULT", {})
    assert input_problems([spec]) == problems
    assert len(reads) == first
    # a changed file (new size / mtime) is read again
    val = json.loads(inputs["demo"]["tumour"].read_text())["validation"][0]
    good = inputs["demo"]["tumour"].parent / val["label"]
    os.utime(good, ns=(good.stat().st_atime_ns, good.stat().st_mtime_ns + 1000))
    monkeypatch.setattr("custom_components.data.cache._DEFAULT", {})
    check_inputs({"datalist": str(inputs["demo"]["tumour"]), "section": "validation", "require_tumour": True})
    assert str(good) in reads[first:]
    with pytest.raises(InputCheckError) as err:
        check_inputs([spec], what="test run")
    assert err.value.code.splitlines()[0].startswith("test run: 8 problem(s) in the inputs; nothing was written")
    assert check_inputs([spec], skip=True) == 0  # the unsafe escape hatch


def test_cache_ignores_unreadable_cache_file(tmp_path: Path) -> None:
    path = tmp_path / "cache.json"
    path.write_text("not json")
    cache = DataCheckCache(path)
    f = tmp_path / "x.nii.gz"
    f.write_bytes(b"x")
    key = cache.key(str(f), "label", "internal", True)
    assert cache.get(key) is None
    cache.put(key, ["p"])
    cache.save()
    assert DataCheckCache(path).get(key) == ["p"]


def test_checkpoint_pickle_refused_naming_file(inputs: dict[str, Any], tmp_path: Path) -> None:
    good = tmp_path / "good.pt"
    torch.save({"w": torch.zeros(2)}, good)
    truncated = tmp_path / "trunc.pt"
    truncated.write_bytes(good.read_bytes()[:50])
    problems = input_problems([], {"model_path": str(inputs["pickle"]), "init": str(good), "resume": str(truncated)})
    assert problems[0].startswith(f"{inputs['pickle']}: model_path refused: it is not a weights-only checkpoint")
    assert problems[1].startswith(f"{truncated}: resume unreadable, truncated or corrupt")
    assert len(problems) == 2


def _seg_overrides(inp: dict[str, Any], out: Path, **extra: Any) -> dict[str, Any]:
    return {
        **SEG_TINY, "datalist": str(inp["demo"]["tumour"]), "output_dir": str(out), "phase2_start_epoch": 100,
        "use_dtss": False, "use_mas": False, **extra,
    }  # fmt: skip


@pytest.mark.slow
def test_killed_training_resumes_and_keeps_the_best_model(inputs: dict[str, Any], tmp_path: Path) -> None:
    out, models = tmp_path / "run", tmp_path / "run" / "models"
    cmd = hostile.bundle_command(
        "dtss_mas_seg", ["common.yaml", "train.yaml"], _seg_overrides(inputs, out, max_epochs=50), tmp_path, "training"
    )
    proc = subprocess.Popen(
        cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=hostile.bundle_env(), cwd=REPO
    )
    deadline = time.monotonic() + 240
    while not list(models.glob("checkpoint_epoch=*.pt")) or not (models / "model.pt").is_file():
        assert proc.poll() is None and time.monotonic() < deadline, "training ended before its first checkpoint"
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)  # killed after a good epoch, without a chance to clean up
    proc.wait()
    # the newest complete checkpoint (a kill during a save may leave a partial newer one, and its predecessor)
    for ckpt in sorted(models.glob("checkpoint_epoch=*.pt"), key=lambda p: -int(p.stem.split("=")[1])):
        try:
            state = torch.load(ckpt, map_location="cpu", weights_only=True)
            break
        except Exception:
            continue
    epoch = int(ckpt.stem.split("=")[1])
    best = state["best_model"]  # the best-model saver's state: [(best validation Dice, file)]
    assert len(best["_saved"]) == 1 and best["_saved"][0][0] > 0
    best_bytes = (models / "model.pt").read_bytes()
    # resume with the weights zeroed and the learning rate 0 after loading: every later validation is worse
    # (Dice 0) than the best before the kill; a resumed run that forgot the best would call it a new best
    sabotage = (
        "$@train#trainer.add_event_handler(monai.engines.workflow.Events.STARTED, lambda e: ("
        "[p.data.zero_() for p in @network.parameters()], [g.update(lr=0.0) for g in @train#optimizer.param_groups]))"
    )
    overrides = _seg_overrides(inputs, out, max_epochs=epoch + 1, resume_checkpoint=str(ckpt))
    overrides["run"] = [
        "$custom_components.engines.seg_trainer.attach_handlers(@train#trainer, @train#checkpoint_handlers)",
        sabotage,
        "$@train#trainer.run()",
    ]
    done = run_bundle("dtss_mas_seg", ["common.yaml", "train.yaml"], overrides, tmp_path / "w2", "training")
    assert done.returncode == 0, done.stderr[-3000:]
    assert (models / "model.pt").read_bytes() == best_bytes  # still the best model
    final = torch.load(models / "checkpoint_final.pt", map_location="cpu", weights_only=True)
    trainer = final["trainer"]
    assert final["best_model"] == best and trainer["iteration"] == (epoch + 1) * trainer["epoch_length"]
    # exactly the newest interval checkpoint is kept
    assert [p.name for p in models.glob("checkpoint_epoch=*.pt")] == [f"checkpoint_epoch={epoch + 1}.pt"]
    # a plain rerun into the same folder is refused before anything is written
    again = run_bundle("dtss_mas_seg", ["common.yaml", "train.yaml"], _seg_overrides(inputs, out), tmp_path / "w3")
    assert again.returncode != 0 and "an earlier run's models are there" in again.stderr
    assert (models / "model.pt").read_bytes() == best_bytes


@pytest.mark.slow
def test_nan_voxel_with_skipped_checks_stops_training_without_a_model(inputs: dict[str, Any], tmp_path: Path) -> None:
    nan = tmp_path / "nan"
    hostile.hostile_copy(inputs["demo"]["tumour"], nan, ["NaN"] * 8)
    out = tmp_path / "out"
    overrides = _seg_overrides(inputs, out, max_epochs=1, skip_checks=True, datalist=str(nan / "datalist.json"))
    proc = run_bundle("dtss_mas_seg", ["common.yaml", "train.yaml"], overrides, tmp_path / "w", "training")
    assert proc.returncode == 1
    last = proc.stderr.rstrip().splitlines()[-1]
    assert last.startswith("training stopped: non-finite loss (nan) at epoch 1, iteration 1; batch cases: demo-tumour-")
    assert "Last good checkpoint: none" in last
    assert files_under(out) == []  # no NaN model, no checkpoint


# ---- reruns of evaluation and inference into an earlier run's outputs ------------------------------------------
# workflow -> configs (inference: its self-contained config alone, as the Model Zoo and the README run it), run id,
# output sub-folder of output_dir, what the refusal calls its files
SEG_RERUNS = {
    "evaluate": (["common.yaml", "evaluate.yaml"], "evaluating", "eval", "evaluation metrics"),
    "inference": (["inference.yaml"], "inference", "predictions", "label maps"),
}


def _tiny_seg_model(path: Path, in_channels: int = 4) -> Path:
    """Weights of SEG_TINY's network (untrained: the tests are about files, not Dice)."""
    from custom_components.networks import build_segmentation_network

    torch.manual_seed(0)
    net = build_segmentation_network("dynunet", in_channels, 4, SEG_TINY["filters"], patch_size=SEG_TINY["crop_size"])
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(net.state_dict(), path)
    return path


def test_output_check_names_the_first_file_and_offers_overwrite(tmp_path: Path) -> None:
    from custom_components.handlers import OutputExistsError, check_output_dir

    folder = tmp_path / "eval"
    assert check_output_dir(folder, None, False, models=None, what="evaluation metrics") == folder  # no folder yet
    (folder / "sub").mkdir(parents=True)  # sub-folders are not outputs of the run
    assert check_output_dir(folder, None, False, models=None, what="evaluation metrics") == folder
    for name in ("metrics_summary.csv", "metrics.json", "metrics_per_case.csv"):
        (folder / name).write_text(name)
    with pytest.raises(OutputExistsError) as err:  # a SystemExit: the process ends with the message, status 1
        check_output_dir(folder, None, False, models=None, what="evaluation metrics")
    assert isinstance(err.value, SystemExit) and err.value.first == folder / "metrics.json"
    assert str(err.value) == (
        f"{folder}: an earlier run's evaluation metrics are there ({folder / 'metrics.json'} and 2 more); "
        "set overwrite=true to replace it, or choose another output folder"
    )
    assert check_output_dir(folder, None, True, models=None, what="evaluation metrics") == folder
    # training keeps its advice to resume
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "model.pt").write_bytes(b"x")
    with pytest.raises(OutputExistsError, match=r"models are there \(.*model\.pt\); set resume_checkpoint"):
        check_output_dir(tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("workflow", list(SEG_RERUNS))
def test_seg_rerun_into_an_earlier_runs_outputs_is_refused_unless_overwrite(
    inputs: dict[str, Any], tmp_path: Path, workflow: str
) -> None:
    configs, run_id, sub, what = SEG_RERUNS[workflow]
    out = tmp_path / "run"
    overrides = {
        **SEG_TINY, "datalist": str(inputs["demo"]["tumour"]), "output_dir": str(out), "infer_section": "validation",
        "model_path": str(_tiny_seg_model(tmp_path / "model.pt")),
    }  # fmt: skip
    first = run_bundle("dtss_mas_seg", configs, overrides, tmp_path / "w1", run_id)
    assert first.returncode == 0, first.stderr[-3000:]
    folder = out / sub
    before = tree_hash(folder)
    assert before and files_under(out) == sorted(before)  # the workflow writes its folder only
    # the same run again: refused before anything is written, naming a file of the earlier run
    again = run_bundle("dtss_mas_seg", configs, overrides, tmp_path / "w2", run_id)
    assert again.returncode == 1
    # the refusal is the process's last line (no "Failed to evaluate" traceback after it)
    last = again.stderr.rstrip().splitlines()[-1]
    assert last.startswith(f"{folder}: an earlier run's {what} are there ({min(before)}"), again.stderr[-3000:]
    assert last.endswith("set overwrite=true to replace it, or choose another output folder")
    assert "Traceback" not in again.stderr
    assert tree_hash(folder) == before  # the earlier outputs byte-identical, nothing added
    # overwrite: true replaces them
    forced = run_bundle("dtss_mas_seg", configs, {**overrides, "overwrite": True}, tmp_path / "w3", run_id)
    assert forced.returncode == 0, forced.stderr[-3000:]
    assert sorted(tree_hash(folder)) == sorted(before)


@pytest.mark.slow
def test_forced_rerun_of_a_pipeline_evaluate_stage_replaces_its_metrics(inputs: dict[str, Any], tmp_path: Path) -> None:
    """``--from evaluate_*``: the runner clears the stage folder (its eval_dir) first, so the bundle's refusal to
    write over an earlier evaluation never stops a rerun of the pipeline."""
    from custom_components.pipeline.config import load_config
    from custom_components.pipeline.experiment import Experiment

    config = {
        "workdir": str(tmp_path / "work"), "real_datalist": str(inputs["demo"]["tumour"]), "healthy": "unused",
        "seeds": [0], "arms": ["baseline"], "modalities": ["t1n"],
        "seg": {"filters": SEG_TINY["filters"], "crop_size": SEG_TINY["crop_size"]},
    }  # fmt: skip
    (tmp_path / "pipeline.yaml").write_text(json.dumps(config))
    exp = Experiment(load_config(tmp_path / "pipeline.yaml"))
    [evaluate] = [s for s in exp.arm_stages("baseline", 0) if s.name.startswith("evaluate_")]
    _tiny_seg_model(exp.arm_model("baseline", 0), in_channels=1)
    metrics = exp.metrics("baseline", 0)
    lines: list[str] = []
    env = hostile.bundle_env()
    assert run_stages([evaluate], exp.work, log=lines.append, env=env) == {evaluate.name: "ran"}
    first = metrics.stat().st_mtime_ns
    assert run_stages([evaluate], exp.work, log=lines.append, env=env) == {evaluate.name: "skipped"}
    status = run_stages([evaluate], exp.work, from_stage=evaluate.name, log=lines.append, env=env)
    assert status == {evaluate.name: "ran"}, "\n".join(lines)
    assert metrics.stat().st_mtime_ns > first and json.loads(metrics.read_text())["n_cases"] >= 1
    assert (exp.work / evaluate.name / "stage.json").is_file()


# ---- the pipeline runner -------------------------------------------------------------------------------
FAKE_BUNDLE = textwrap.dedent(
    """
    import os, subprocess, sys, time
    from pathlib import Path
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    # a worker like a data-loader process, in the same process group
    worker = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    (out / "pids").write_text(f"{os.getpid()} {worker.pid} {os.getppid()}")
    if os.environ.get("FAKE_FAST") != "1":
        time.sleep(600)
    worker.kill()
    (out / "result.txt").write_text("done")
    """
)
RUNNER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from custom_components.pipeline.runner import Stage, StageInterrupted, run_stages
    work = Path(sys.argv[1])
    stage = Stage("bundle", command=[sys.executable, sys.argv[2], str(work / "bundle")],
                  outputs=[work / "bundle" / "result.txt"], clean=[work / "bundle"])
    # "exec": an environment other than the stage server's, so the runner execs the stage instead of forking it
    env = {"STAGE_BY_EXEC": "1"} if sys.argv[3] == "exec" else None
    try:
        print(run_stages([stage], work, log=lambda line: print(line, flush=True), env=env))
    except StageInterrupted as e:
        print(e, file=sys.stderr)
        sys.exit(128 + e.signum)
    """
)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie is dead too
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.is_file() and stat.read_text().split()[2] == "Z")


def _as_from_a_background_shell() -> None:  # runs in the child between fork and exec
    """SIGINT and SIGQUIT ignored, as a non-interactive shell starts a background job (``nohup ... &``); ignored
    signals stay ignored across exec, so the runner starts with them ignored whatever shell ran pytest."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGQUIT, signal.SIG_IGN)


def _start_runner(tmp_path: Path, work: Path, fast: bool = False, how: str = "fork") -> subprocess.Popen:
    """A runner of one fake bundle stage, started as from a background shell; ``how``: "fork" (the stage server
    forks the stage) or "exec"."""
    fake, runner = tmp_path / "fake_bundle.py", tmp_path / "runner.py"
    fake.write_text(FAKE_BUNDLE)
    runner.write_text(RUNNER)
    env = {**os.environ, "PYTHONPATH": str(REPO), "FAKE_FAST": "1" if fast else "0"}
    return subprocess.Popen(
        [sys.executable, str(runner), str(work), str(fake), how], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        env=env, text=True, preexec_fn=_as_from_a_background_shell,
    )  # fmt: skip


def _ignores(pid: int, sig: signal.Signals) -> bool:
    """Whether process ``pid`` ignores ``sig`` (its SigIgn mask in /proc)."""
    line = next(x for x in Path(f"/proc/{pid}/status").read_text().splitlines() if x.startswith("SigIgn:"))
    return bool(int(line.split()[1], 16) >> (sig - 1) & 1)


def _wait_for_pids(work: Path, proc: subprocess.Popen, how: str) -> list[int]:
    """The fake stage's pid and its worker's, once written; checks that the stage was forked by the stage server
    (its parent is not the runner) or exec'd by the runner itself, as ``how`` says."""
    pids_file = work / "bundle" / "pids"
    deadline = time.monotonic() + 60
    while not pids_file.is_file() or len(pids_file.read_text().split()) < 3:
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read() if proc.stderr else ""
        time.sleep(0.1)
    stage, worker, parent = (int(p) for p in pids_file.read_text().split())
    assert (parent == proc.pid) == (how == "exec")
    return [stage, worker]


@pytest.mark.slow
@pytest.mark.parametrize("how", ["fork", "exec"])
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_runner_forwards_signal_and_redoes_the_stage(tmp_path: Path, sig: signal.Signals, how: str) -> None:
    work = tmp_path / "work"
    proc = _start_runner(tmp_path, work, how=how)
    pids = _wait_for_pids(work, proc, how)
    # the runner started with SIGINT ignored (_start_runner); its stage must still stop at the forwarded signal,
    # not by the SIGKILL fallback after KILL_AFTER_S
    assert not any(_ignores(p, signal.SIGINT) for p in pids)  # the stage's processes: default handling
    start = time.monotonic()
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=KILL_AFTER_S + 30)
    stopped_in = time.monotonic() - start
    assert proc.returncode == 128 + sig, err
    assert stopped_in < KILL_AFTER_S / 3, f"the stage stopped after {stopped_in:.1f} s: by the SIGKILL fallback"
    assert f"interrupted by {sig.name}" in err and "left unmarked" in err
    deadline = time.monotonic() + 10
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(_alive(p) for p in pids)  # neither the bundle nor its worker is left
    assert not (work / "bundle" / "stage.json").exists()
    rerun = _start_runner(tmp_path, work, fast=True, how=how)
    out, err = rerun.communicate(timeout=60)
    assert rerun.returncode == 0, err
    assert "found an unfinished run (no finished marker); redoing it" in out and "{'bundle': 'ran'}" in out
    assert (work / "bundle" / "result.txt").read_text() == "done" and (work / "bundle" / "stage.json").is_file()


@pytest.mark.slow
@pytest.mark.parametrize("how", ["fork", "exec"])
def test_runner_killed_takes_its_stage_with_it(tmp_path: Path, how: str) -> None:
    work = tmp_path / "work"
    proc = _start_runner(tmp_path, work, how=how)
    child, _ = _wait_for_pids(work, proc, how)
    # SIGKILL: nothing to forward; the stage's process gets SIGTERM from the kernel, when its parent dies (exec) or
    # when the stage server, whose requests pipe closed with the runner, exits (fork)
    proc.kill()
    proc.communicate(timeout=30)
    deadline = time.monotonic() + 10
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(child)


@pytest.mark.slow
def test_two_runners_cannot_share_a_workdir(tmp_path: Path) -> None:
    work = tmp_path / "work"
    with workdir_lock(work):
        proc = _start_runner(tmp_path, work, fast=True)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode != 0 and "another pipeline runner" in err and str(os.getpid()) in err
        assert not (work / "bundle").exists()
        with workdir_lock(work):  # re-entrant in the process that holds it
            pass
    with workdir_lock(work):  # released: free again
        pass
    with pytest.raises(WorkdirLocked, match="another pipeline runner"):
        holder = subprocess.Popen(
            [sys.executable, "-c", f"from custom_components.pipeline.runner import workdir_lock\n"
             f"import time\nwith workdir_lock({str(work)!r}):\n    print('held', flush=True); time.sleep(60)"],
            stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(REPO)},
        )  # fmt: skip
        try:
            assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
            with workdir_lock(work):
                pass
        finally:
            holder.kill()
            holder.wait()
    with workdir_lock(work):  # a killed holder left it free: the kernel released its flock
        assert (work / LOCK_OWNER_FILE).read_text() == f"{os.getpid()}\n"
    assert not (work / LOCK_OWNER_FILE).exists()


def test_interrupted_forced_run_still_redoes_later_stages(tmp_path: Path) -> None:
    calls: list[str] = []
    outs = [tmp_path / f"{n}.txt" for n in ("a", "b", "c")]

    def make(name: str, out: Path, fail: list[bool]) -> Stage:
        def fn() -> None:
            if fail and fail[0]:
                raise KeyboardInterrupt
            calls.append(name)
            out.write_text(name)

        return Stage(name, function=fn, outputs=[out])

    fail = [False]
    stages = [make("a", outs[0], []), make("b", outs[1], fail), make("c", outs[2], [])]
    run_stages(stages, tmp_path / "w", log=lambda _: None)
    assert calls == ["a", "b", "c"]
    fail[0] = True  # the forced run from "a" is interrupted in "b"
    with pytest.raises(KeyboardInterrupt):
        run_stages(stages, tmp_path / "w", from_stage="a", log=lambda _: None)
    fail[0] = False
    calls.clear()
    # a plain rerun: "a" finished in the forced run; "b" and "c" were unmarked by it, so both are redone
    assert run_stages(stages, tmp_path / "w", log=lambda _: None) == {"a": "skipped", "b": "ran", "c": "ran"}
    assert calls == ["b", "c"]


# ---- checkpoint handlers (in-process, fast) -----------------------------------------------------------
def _engine(epoch: int, metric: float | None = None) -> Any:
    from ignite.engine import Engine

    engine = Engine(lambda e, b: None)
    engine.state.epoch, engine.state.iteration = epoch, epoch
    engine.state.metrics = {} if metric is None else {"val_mean_dice": metric}
    engine.state.key_metric_name = "val_mean_dice"
    return engine


def _best_saver(folder: Path, net: torch.nn.Module) -> Any:
    from custom_components.handlers.checkpoints import SafeCheckpointSaver

    return SafeCheckpointSaver(str(folder), {"model": net}, save_key_metric=True, key_metric_filename="model.pt")


def test_best_model_saver_keeps_the_best_across_a_resume(tmp_path: Path) -> None:
    from custom_components.handlers.checkpoints import TrainingGuardError

    net = torch.nn.Linear(2, 1)
    saver = _best_saver(tmp_path, net)
    saver.metrics_completed(_engine(1, 0.5))
    first = (tmp_path / "model.pt").read_bytes()
    assert set(torch.load(tmp_path / "model.pt", weights_only=True)) == {"weight", "bias"}  # a plain state_dict
    # a resumed run: a new saver restored from the checkpoint state (saved and loaded as the trainer does)
    torch.save({"best_model": saver.state_dict()}, tmp_path.parent / "ckpt.pt")
    resumed = _best_saver(tmp_path, net)
    resumed.load_state_dict(torch.load(tmp_path.parent / "ckpt.pt", weights_only=True)["best_model"])
    with torch.no_grad():
        net.weight.add_(1.0)
    resumed.metrics_completed(_engine(2, 0.4))  # worse: model.pt untouched
    resumed.metrics_completed(_engine(3, float("nan")))  # not a metric: never a best
    assert (tmp_path / "model.pt").read_bytes() == first
    resumed.metrics_completed(_engine(4, 0.6))  # better: replaced, with these weights
    assert torch.equal(torch.load(tmp_path / "model.pt", weights_only=True)["weight"], net.weight.detach())
    assert [score for score, _ in resumed.state_dict()["_saved"]] == [0.6]
    with torch.no_grad():
        net.weight.fill_(float("nan"))
    with pytest.raises(TrainingGuardError, match="model.pt: not written, non-finite weights in model.weight"):
        resumed.metrics_completed(_engine(5, 0.9))
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]
    # a checkpoint of the former BestModelSaver resumes too
    old = _best_saver(tmp_path, net)
    old.load_state_dict({"best_metric": 0.7, "best_epoch": 6})
    assert [score for score, _ in old.state_dict()["_saved"]] == [0.7]


def test_best_model_is_replaced_without_a_gap_and_written_by_rank0_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import ignite.distributed as idist

    net = torch.nn.Linear(2, 1)
    saver = _best_saver(tmp_path, net)
    saver.metrics_completed(_engine(1, 0.5))
    removed: list[str] = []
    monkeypatch.setattr("os.remove", lambda path: removed.append(str(path)))
    saver.metrics_completed(_engine(2, 0.6))  # replaced by the atomic rename, never deleted first
    assert removed == [] and [p.name for p in tmp_path.iterdir()] == ["model.pt"]
    monkeypatch.undo()
    # rank 1 of a multi-process run keeps the same best metric but writes nothing
    monkeypatch.setattr(idist, "get_rank", lambda: 1)
    other = tmp_path / "rank1"
    saver1 = _best_saver(other, net)
    saver1.metrics_completed(_engine(1, 0.5))
    assert not other.exists() or not list(other.iterdir())
    assert [score for score, _ in saver1.state_dict()["_saved"]] == [0.5]


def test_safe_checkpoint_saver_prunes_old_epochs_and_refuses_nan(tmp_path: Path) -> None:
    from custom_components.handlers.checkpoints import SafeCheckpointSaver, TrainingGuardError

    net = torch.nn.Linear(2, 1)
    (tmp_path / "checkpoint_epoch=3.pt").write_bytes(b"from the run before the resume")
    (tmp_path / "model.pt").write_bytes(b"other file")
    objects = {"model": net, "head": torch.nn.Linear(1, 1)}  # several objects: checkpoint_epoch=N.pt
    saver = SafeCheckpointSaver(str(tmp_path), objects, save_interval=1, n_saved=1)
    engine = _engine(4)
    saver.interval_completed(engine)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint_epoch=4.pt", "model.pt"]
    with torch.no_grad():
        net.weight.fill_(float("inf"))
    with pytest.raises(TrainingGuardError, match=r"epoch 5: non-finite weights in model.weight.*checkpoint_epoch=4"):
        saver.interval_completed(_engine(5))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint_epoch=4.pt", "model.pt"]


@pytest.mark.parametrize(("n_saved", "kept"), [(2, [5, 6]), (None, [3, 4, 5, 6])])
def test_safe_checkpoint_saver_keeps_the_newest_n_saved(tmp_path: Path, n_saved: int | None, kept: list[int]) -> None:
    """n_saved 2: the two newest epochs, one of them left by the run before a resume counted too; None: every one
    (tf_gan's keep_checkpoints: null, snapshots of a GAN's trajectory)."""
    from custom_components.handlers.checkpoints import SafeCheckpointSaver

    for epoch in (3, 4):
        (tmp_path / f"checkpoint_epoch={epoch}.pt").write_bytes(b"from the run before the resume")
    objects = {"model": torch.nn.Linear(2, 1), "head": torch.nn.Linear(1, 1)}
    saver = SafeCheckpointSaver(str(tmp_path), objects, save_interval=1, n_saved=n_saved)
    for epoch in (5, 6):
        saver.interval_completed(_engine(epoch))
    assert sorted(int(p.stem.split("=")[1]) for p in tmp_path.glob("checkpoint_epoch=*.pt")) == kept


REAL_RUNNER = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path
    from custom_components.pipeline.runner import Stage, StageInterrupted, bundle_command, run_stages
    work, overrides = Path(sys.argv[1]), json.loads(sys.argv[2])
    out = work / "seg"
    overrides["output_dir"] = str(out)
    command = bundle_command("dtss_mas_seg", ["common.yaml", "train.yaml"], overrides, work / "overrides" / "seg.json",
                             run_id="training")
    stage = Stage("seg", command=command, outputs=[out / "models" / "model.pt"], clean=[out])
    try:
        print(run_stages([stage], work, log=lambda line: print(line, flush=True)))
    except StageInterrupted as e:
        print(e, file=sys.stderr)
        sys.exit(128 + e.signum)
    """
)


def _group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes of process group ``pgid``."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            out.append(int(stat.parent.name))
    return out


def _stage_leaders(pid: int) -> list[int]:
    """Descendants of ``pid`` that lead their own process group: the stage processes a runner started."""
    children = [int(c) for t in Path(f"/proc/{pid}/task").iterdir() for c in (t / "children").read_text().split()]
    leaders = []
    for child in children:
        if os.getpgid(child) == child:
            leaders.append(child)
        leaders += _stage_leaders(child)
    return leaders


@pytest.mark.slow
def test_sigterm_to_runner_stops_a_real_bundle_stage_and_rerun_redoes_it(
    inputs: dict[str, Any], tmp_path: Path
) -> None:
    work = tmp_path / "work"
    script = tmp_path / "runner.py"
    script.write_text(REAL_RUNNER)
    # num_workers 1: the bundle has a data-loader worker process too
    overrides = _seg_overrides(inputs, tmp_path / "unused", max_epochs=1000, num_workers=1)
    env = hostile.bundle_env()
    runner = subprocess.Popen(
        [sys.executable, str(script), str(work), json.dumps(overrides)], stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, env=env, cwd=REPO,
    )  # fmt: skip
    log = work / "logs" / "seg.log"
    deadline = time.monotonic() + 240
    while not (log.is_file() and "Epoch[1]" in log.read_text()):
        assert runner.poll() is None and time.monotonic() < deadline, runner.communicate()
        time.sleep(0.2)
    [bundle] = _stage_leaders(runner.pid)  # forked by the runner's stage server, in its own session
    # signal while the bundle has a data-loader worker (workers live while an epoch iterates)
    while len(_group_members(bundle)) < 2:
        assert runner.poll() is None and time.monotonic() < deadline, "no data-loader worker seen"
        time.sleep(0.05)
    runner.send_signal(signal.SIGTERM)
    _, err = runner.communicate(timeout=120)
    assert runner.returncode == 128 + signal.SIGTERM, err
    assert "stage seg interrupted by SIGTERM" in err
    assert _group_members(bundle) == []  # no bundle process left alive
    assert not (work / "seg" / "stage.json").exists()
    # the rerun finds the unfinished stage and redoes it (a short run this time)
    overrides["max_epochs"] = 1
    rerun = subprocess.run(
        [sys.executable, str(script), str(work), json.dumps(overrides)], capture_output=True, text=True, env=env,
        cwd=REPO, timeout=300,
    )  # fmt: skip
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "found an unfinished run (no finished marker); redoing it" in rerun.stdout
    assert (work / "seg" / "stage.json").is_file() and (work / "seg" / "models" / "model.pt").is_file()
