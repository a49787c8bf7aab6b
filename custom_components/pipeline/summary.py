"""Collect the evaluations of an experiment into the report, with QC montages and MLflow runs."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from custom_components.data.atomic import atomic_write_text
from custom_components.data.datalist import read_datalist
from custom_components.data.labels import REGION_NAMES
from custom_components.data.loader import load_datalist
from custom_components.handlers.epoch_log import EPOCH_METRICS_FILE, read_epoch_metrics
from custom_components.pipeline.arms import get_arm
from custom_components.pipeline.config import SYNTHESIS_PER_SEED
from custom_components.pipeline.report import ALPHA, POWER, ArmResult, summarise, write_report
from custom_components.pipeline.runner import code_commit, code_record, stage_provenance
from custom_components.synthesis.methods import METHODS, SynthesisMethod
from custom_components.synthesis.tf_gan import summarise_change

if TYPE_CHECKING:
    from custom_components.quality.realism import RealismCase


class Experiment(Protocol):
    """What the report needs of :class:`custom_components.pipeline.experiment.Experiment` (a protocol, so this
    module does not import the experiment module, which imports it: no import cycle)."""

    cfg: dict[str, Any]
    work: Path

    @property
    def arms(self) -> list[str]: ...

    @property
    def real_datalist(self) -> Path: ...

    @property
    def encoder_seed(self) -> int: ...

    def phase1_model(self, seed: int) -> Path: ...

    def coarse_datalist(self, seed: int) -> Path: ...

    def mass_coarse_datalist(self, seed: int) -> Path: ...

    def method_cases(self, method: SynthesisMethod, seed: int, mass_effect: bool = False) -> Path: ...

    def refined_datalist(self, seed: int) -> Path: ...

    def tf_gan_generator(self, model_seed: int) -> Path: ...

    def pix2pix_datalist(self, seed: int) -> Path: ...

    def metrics(self, arm: str, seed: int) -> Path: ...

    def stage_dir(self, name: str) -> Path: ...

    def needs(self, part: str) -> bool: ...

    def n_real(self) -> int: ...

    def stage_names(self) -> list[str]: ...


def read_results(exp: Experiment) -> list[ArmResult]:
    """Mean Dice per arm and seed from each evaluation's metrics.json."""
    results = []
    for arm in exp.arms:
        for seed in exp.cfg["seeds"]:
            path = exp.metrics(arm, int(seed))
            mean = json.loads(path.read_text())["mean"]
            results.append(ArmResult(arm, int(seed), {r: float(mean[f"dice_{r}"]) for r in REGION_NAMES}))
    return results


def mean_dice_by_arm(results_json: Path) -> dict[str, float]:
    """Mean Dice (average of ET, TC, WT) of every arm over its seeds, from a report's ``results.json``."""
    arms = json.loads(Path(results_json).read_text())["arms"]
    return {str(a["arm"]): float(a["mean"]["Mean"]) for a in arms}


def mas_summaries(exp: Experiment) -> dict[tuple[str, int], dict[str, Any]]:
    """MAS's ``summary.json`` of every arm and seed whose training stage wrote one (arms that use MAS)."""
    found = {}
    for arm in exp.arms:
        for seed in exp.cfg["seeds"]:
            path = exp.stage_dir(f"seg_{arm}_s{int(seed)}") / "mas" / "summary.json"
            if exp.arm_epochs(arm) > 0 and path.is_file():
                summary = json.loads(path.read_text())
                if summary.get("enabled"):
                    found[(arm, int(seed))] = summary
    return found


def mas_lines(summaries: dict[tuple[str, int], dict[str, Any]]) -> tuple[list[str], list[str]]:
    """Report notes (eta, theta, real cases, weight fractions per MAS run) and warnings (eq. 8 degenerate)."""
    notes, warnings = [], []
    for (arm, seed), summary in summaries.items():
        stats = [h for h in summary.get("history", []) if "after_epoch" in h]
        epochs = [h for h in summary.get("history", []) if "epoch" in h and "synthetic_samples" in h]
        if stats:
            n_real = sorted({int(h["real_cases"]) for h in stats})
            first, last = stats[0], stats[-1]
            line = (
                f"MAS ({arm}, seed {seed}): eta {first['eta']:.3f} -> {last['eta']:.3f}, theta {first['theta']:.3g} "
                f"-> {last['theta']:.3g} over {len(stats)} evaluations of {'/'.join(map(str, n_real))} real case(s)"
            )
            if epochs:
                total = sum(h["synthetic_samples"] for h in epochs)
                frac = {
                    k: sum(h[f"{k}_fraction"] * h["synthetic_samples"] for h in epochs) / total
                    for k in ("discarded", "full", "partial")
                }
                line += (
                    f"; synthetic samples weighted 0 / 1 / in between: {100 * frac['discarded']:.0f} % / "
                    f"{100 * frac['full']:.0f} % / {100 * frac['partial']:.0f} % of {int(total)}"
                )
            seconds = [h["eval_seconds"] for h in epochs if "eval_seconds" in h]
            if seconds:
                line += f"; evaluation of the real cases {sum(seconds) / len(seconds):.2f} s per epoch"
            notes.append(line + ".")
        if summary.get("degenerate"):
            warnings.append(
                f"MAS ({arm}, seed {seed}): fewer than two real training cases with tumour, so eq. 8 degenerated to "
                f"theta = c = {summary.get('c')}: the weight-1 plateau is {2 * float(summary.get('c', 0)):.1g} wide "
                "and synthetic samples are weighted almost only by the quadratic flanks (the paper assumes many real "
                "cases)."
            )
    return notes, warnings


def method_variants(exp: Experiment) -> list[tuple[SynthesisMethod, bool]]:
    """The synthesis methods of the experiment's arms, each with or without its mass effect, and every method on
    healthy scans whose model stages the experiment runs (TF's coarse TF-Aug input beside TF), in the order of the
    methods' registry (the report's montages and realism rows)."""
    used = {(get_arm(a).method, get_arm(a).mass_effect) for a in exp.arms if get_arm(a).method is not None}
    used |= {(m.name, False) for m in METHODS.values() if m.parts and all(exp.needs(p) for p in m.parts)}
    return [(spec, mass) for spec in METHODS.values() for mass in (False, True) if (spec.name, mass) in used]


def variant_name(spec: SynthesisMethod, mass_effect: bool) -> str:
    """A method's name in the realism table (``DTSS``, ``DTSS+mass``)."""
    return f"{spec.title}{'+mass' if mass_effect else ''}"


def derived_cases(
    exp: Experiment, spec: SynthesisMethod, n: int | None, mass_effect: bool = False, seed: int | None = None
) -> Iterator[tuple[dict[str, Any], dict[str, Any], dict[str, Any]]]:
    """A method that derives from real cases (DTSS, CarveMix) applied as ``fabricate --seed <seed>`` applies it
    (default: the first seed): the case plan of :func:`~custom_components.synthesis.offline.plan_offline` over the
    real training cases (one case per real case, at most ``n``) and dtss_mas_seg's transforms with the pipeline's
    ``seg.overrides`` (and the method's mass effect where ``mass_effect``); yields ``(case, real, derived)``."""
    from custom_components.synthesis.offline import TrainingTransforms, plan_offline

    mods = list(exp.cfg["modalities"])
    items = load_datalist(exp.real_datalist, "training", mods, require=["label"], check="none")
    overrides = dict(exp.cfg["seg"]["overrides"])
    if spec.mass_effect_key is not None:
        overrides[spec.mass_effect_key] = mass_effect
    transforms = TrainingTransforms(spec.name, exp.real_datalist, mods, overrides=overrides)
    count = min(len(items), n or len(items), spec.max_cases(len(items)))
    for case in plan_offline(spec.name, items, count, exp.encoder_seed if seed is None else seed):
        yield (case, *transforms.derive(case))


def _montages(exp: Experiment, out_dir: Path, spec: SynthesisMethod, n: int, mass_effect: bool) -> list[Path]:
    """QC montages of the first seed's cases of a method, drawn as ``fabricate`` draws them."""
    from custom_components.quality.gallery import synthetic_case_montage
    from custom_components.synthesis.offline import draw_derived

    stem = f"{spec.name}{'+mass' if mass_effect else ''}"
    if spec.derived:
        mod = str(exp.cfg["modalities"][0])
        return [
            draw_derived(spec, case, real, derived, out_dir / f"{stem}_{case['case_id']}.png", mod)
            for case, real, derived in derived_cases(exp, spec, n, mass_effect)
        ]
    items = load_datalist(
        exp.method_cases(spec, exp.encoder_seed, mass_effect), require=["label"], check="none", max_items=n
    )
    return [synthetic_case_montage(out_dir / f"{stem}_{i['case_id']}.png", i, stem) for i in items]


REALISM_MAX_CASES = 50  # synthetic cases per method scored (seed by seed; loading is the cost)


def realism_cases(exp: Experiment, spec: SynthesisMethod, mass_effect: bool, max_cases: int) -> list[RealismCase]:
    """Every seed's cases of a method as the realism test reads them (brain-normalised, internal labels), pooled in
    the order of the seeds, at most ``max_cases``: the method's case files, or for a method derived online (DTSS,
    CarveMix) its cases derived as ``fabricate --seed <seed>`` derives them. Each seed draws its own cases
    (:func:`synthesis_note`), so with few real cases (2 real cases: 2 TF-Aug cases a seed) the seeds together give
    the test its cases per side; the C2ST groups its folds by these entries, so two seeds' cases never share one."""
    cases: list[RealismCase] = []
    for seed in exp.cfg["seeds"]:
        if len(cases) < max_cases:
            cases += _seed_realism_cases(exp, spec, mass_effect, int(seed), max_cases - len(cases))
    return cases


def _seed_realism_cases(
    exp: Experiment, spec: SynthesisMethod, mass_effect: bool, seed: int, max_cases: int
) -> list[RealismCase]:
    """One seed's cases of :func:`realism_cases`."""
    from custom_components.quality.realism import RealismCase, load_cases

    if not spec.derived:
        return load_cases(exp.method_cases(spec, seed, mass_effect), exp.cfg["modalities"], max_cases=max_cases)[0]
    from custom_components.synthesis.offline import derived_arrays

    cases = []
    for case, _, derived in derived_cases(exp, spec, max_cases, mass_effect, seed):
        image, label, affine = derived_arrays(derived)
        cases.append(RealismCase(case["case_id"], image, label, _zooms(affine)))
    return cases


def realism_inputs(exp: Experiment) -> tuple[list[RealismCase], dict[str, list[RealismCase]]] | None:
    """The cases the realism table and the texture panel compare, loaded once: the held-out real cases (the
    evaluation section, which no synthesis stage reads) and, per synthetic method (TF-Aug, TF, Pix2Pix, and the online
    DTSS and CarveMix applied to the real training cases, where the experiment has them), every seed's cases pooled
    (:func:`realism_cases`, at most ``REALISM_MAX_CASES``). None when the evaluation section has no cases."""
    from custom_components.quality.realism import load_cases

    try:
        held_out, _ = load_cases(exp.real_datalist, exp.cfg["modalities"], exp.cfg["eval_section"])
    except ValueError:
        return None
    sets = {
        variant_name(spec, mass): realism_cases(exp, spec, mass, REALISM_MAX_CASES)
        for spec, mass in method_variants(exp)
    }
    return held_out, sets


def texture_panel(held_out: list[RealismCase], sets: dict[str, list[RealismCase]], out_png: Path, n: int) -> Path:
    """The report's texture panel (:func:`~custom_components.quality.texture_panel.save_texture_panel`): the first
    ``n`` held-out real tumours beside the first ``n`` cases of every synthesis method (:func:`realism_inputs`), the
    first modality."""
    from custom_components.quality.texture_panel import save_texture_panel

    return save_texture_panel({"real (held-out)": held_out[:n]} | {k: v[:n] for k, v in sets.items()}, out_png)


def compute_realism(
    exp: Experiment, held_out: list[RealismCase], sets: dict[str, list[RealismCase]]
) -> dict[str, dict[str, Any]]:
    """Realism of every synthetic method's cases against the held-out real cases (:func:`realism_inputs`), with
    F = the phase-1 encoder of the first seed. The C2ST's real-vs-real null is drawn from the real training cases
    (the first ``REALISM_MAX_CASES``) and the held-out ones together, so it can match the comparison's set size
    (n held-out cases per side needs 2 n real cases); every method shares it (computed once).
    """
    from custom_components.networks import FrozenEncoder
    from custom_components.quality.realism import load_cases, realism_scores

    seg = exp.cfg["seg"]
    mods = list(exp.cfg["modalities"])
    # the null's pool: every real case (training and held out), so that it reaches the comparison's set size
    null_real = load_cases(exp.real_datalist, mods, "training", max_cases=REALISM_MAX_CASES)[0] + held_out
    encoder = FrozenEncoder.from_checkpoint(
        exp.phase1_model(exp.encoder_seed), 3, seg["network_name"], len(mods), 4, tuple(seg["filters"])
    )
    return {
        name: realism_scores(cases, held_out, mods, encoder, levels=3, null_real=null_real)
        for name, cases in sets.items()
        if cases
    }


def synthesis_note(exp: Experiment) -> str | None:
    """The report's line on how the synthesis follows the seeds (``synthesis_per_seed``), and whose synthetic
    cases the realism table (every seed's), the QC montages and the refinement table (the first seed's) show; None
    without synthesis."""
    parts = []
    if exp.needs("tf_aug"):
        first = exp.encoder_seed
        how = SYNTHESIS_PER_SEED[exp.cfg["synthesis_per_seed"]].format(seed=first)
        parts.append(
            f"{how}: each seed's arms train with that seed's cases; the realism table pools every seed's cases "
            f"(at most {REALISM_MAX_CASES} a method, seed by seed), the QC montages and refinement table show seed "
            f"{first}'s"
        )
    if any(get_arm(a).online for a in exp.arms):
        parts.append("DTSS / CarveMix draw online from each segmentation run's seed")
    return f"Synthesis: {'; '.join(parts)}." if parts else None


def _shared_images(exp: Experiment) -> bool:
    """Whether the evaluation section uses an image file of the training section (e.g. a single real case)."""
    data = read_datalist(exp.real_datalist)

    def files(section: str) -> set[str]:
        out = set()
        for item in data.get(section, []):
            out |= set(item["image"] if isinstance(item["image"], list) else [item["image"]])
        return out

    return bool(files("training") & files(exp.cfg["eval_section"]))


def _zooms(affine: np.ndarray) -> tuple[float, float, float]:
    return tuple(float(z) for z in np.sqrt((np.asarray(affine)[:3, :3] ** 2).sum(0)))


def provenance_note(cfg: dict[str, Any]) -> str:
    """The report's first note: the commit it was made with and the SHA-256 of the pipeline config file
    (``sha256sum FILE`` reproduces it), so a reader can tell a stale number from a current one."""
    source = Path(cfg["source"])
    digest = hashlib.sha256(source.read_bytes()).hexdigest()[:16]
    return f"Made with commit {code_commit()} and pipeline config {source.name} (sha256 {digest}...)."


def write_results(
    path: Path,
    results: list[ArmResult],
    protocol: str,
    mas: dict[tuple[str, int], dict[str, Any]],
    provenance: list[dict[str, Any]],
    control_is_baseline: bool = False,
) -> Path:
    """Write ``results.json``: the Dice of every run, every arm's summary over seeds with its comparisons
    against each reference arm (:func:`~custom_components.pipeline.report.summarise`: diff, ci_low, ci_high,
    p_value, mde, sd_diff, n), whether the compute-matched control is the baseline's model
    (``control_is_baseline``), and the provenance of the stages (Dice as fractions throughout)."""
    runs = [
        {
            "arm": r.arm,
            "seed": r.seed,
            **r.dice,
            "mean": r.mean,
            "protocol": protocol,
            **(
                {"mas_theta_degenerate": bool(mas[(r.arm, r.seed)].get("degenerate"))} if (r.arm, r.seed) in mas else {}
            ),
        }
        for r in results
    ]
    payload = {
        "units": "Dice as fractions (0-1; the report shows points, %)",
        "mde": f"minimum detectable effect: {100 * POWER:.0f} % power, two-sided alpha {ALPHA}, paired t-test, exact "
        "noncentral t; null with one seed",
        "protocol": protocol,
        "control_is_baseline": control_is_baseline,
        "runs": runs,
        "arms": [s.as_json() for s in summarise(results)],
        "provenance": provenance,
    }
    atomic_write_text(path, json.dumps(payload, indent=2) + "\n")
    return path


def gan_curves(exp: Experiment) -> list[dict[str, float]]:
    """TF-GAN's per-epoch metrics of the first model seed's training (none without TF-GAN or the file)."""
    if not exp.needs("tf_gan"):
        return []
    path = exp.tf_gan_generator(exp.encoder_seed).parent / EPOCH_METRICS_FILE
    return read_epoch_metrics(path) if path.is_file() else []


# a TF-GAN whose discriminator ends below this accuracy has not started the adversarial game (chance: 0.5)
GAN_STARTED_ACCURACY = 0.6


def gan_budget_note(curves: list[dict[str, float]]) -> str | None:
    """A note when TF-GAN's discriminator ended near chance (its last epoch's ``epoch_d_acc`` below
    :data:`GAN_STARTED_ACCURACY`): the refinement is then still near the identity, and the note names the longer
    configuration. None when D got past it or there are no curves."""
    if not curves or curves[-1].get("epoch_d_acc", 1.0) >= GAN_STARTED_ACCURACY:
        return None
    last = curves[-1]
    return (
        f"TF-GAN at this budget ({int(last['epoch'])} epochs): its discriminator ended at accuracy "
        f"{last['epoch_d_acc']:.2f} (0.5 = chance), so the adversarial game has not started and the refinement is "
        f"still near the identity (mean change inside m_roi {last.get('epoch_change_roi', float('nan')):.4f}); "
        "pipelines/tf_phantom.yaml trains it for 2400 steps (tf_gan docs/README.md, 'When does the adversarial "
        "game start?')."
    )


def batch_note(exp: Experiment) -> str:
    """What one batch of the segmentation trainings holds, for the report's segmentation line: ``batch_size`` real
    samples plus the synthetic arms' companions (companion sampling), or ``batch_size`` samples drawn from the real
    and synthetic cases together (union sampling; online arms still add companions)."""
    n = int(exp.cfg["seg"]["batch_size"])
    if exp.cfg["synthetic_sampling"] != "union":
        return f"batch {n} real samples (+ their synthetic companions)"
    online = [a for a in exp.arms if get_arm(a).online]
    return f"batch {n} samples drawn from the real and synthetic cases together (union sampling)" + (
        f"; {', '.join(online)}: {n} real samples + their online companions" if online else ""
    )


def evaluation_note(exp: Experiment) -> str:
    """The report's line on what the arms are evaluated on: the section, and the postprocessing of each prediction
    when the segmentation overrides set ``keep_largest_component`` (dtss_mas_seg's common.yaml)."""
    note = f"evaluation on section '{exp.cfg['eval_section']}'"
    if exp.cfg["seg"]["overrides"].get("keep_largest_component"):
        note += (
            ", every prediction cut to its largest connected tumour component (keep_largest_component, nnU-Net's "
            "postprocessing)"
        )
    return note


def write_experiment_report(exp: Experiment) -> dict[str, Path]:
    """Write the report of an experiment (and its MLflow runs when enabled)."""
    cfg = exp.cfg
    out = exp.stage_dir("report")
    qc = out / "qc"
    n = int(cfg["qc_cases"])
    # the montages and the refinement table: the first seed's cases
    montages = {
        f"{spec.title}{' with mass effect' if mass else ''}{' (online)' if spec.derived else ''}": _montages(
            exp, qc, spec, n, mass
        )
        for spec, mass in method_variants(exp)
    }
    results = read_results(exp)
    data = "demo data (PHANTOM tumours, deformed MNI152 healthy scans)" if cfg["demo"] else str(exp.real_datalist)
    seg = cfg["seg"]
    protocol = cfg["protocol"]
    if protocol == "tf":
        schedule = (
            f"protocol tf (TF paper): the baseline is the phase-1 model ({seg['phase1_epochs']} epochs, real only); "
            f"every other arm trains from scratch on real + synthetic data for the same {seg['phase1_epochs']} epochs "
            f"= {exp.arm_iterations('baseline')} iterations."
        )
    else:
        schedule = (
            f"protocol dsma (DSMA paper): phase 1 {seg['phase1_epochs']} epochs (real only), then every arm "
            f"(the baseline on real data only) continues the same phase-1 model for {seg['phase2_epochs']} epochs: "
            f"{exp.arm_iterations('baseline')} iterations in all."
        )
    notes = [
        provenance_note(cfg),
        f"Data: {data}; {exp.n_real()} real training cases; {evaluation_note(exp)}.",
        f"Segmentation: {seg['network_name']} filters {seg['filters']}, crops {seg['crop_size']}, "
        f"{batch_note(exp)}; {schedule}",
        "Arms: " + "; ".join(f"{a}: {get_arm(a).description}" for a in exp.arms),
        *filter(None, [synthesis_note(exp)]),
    ]
    curves = gan_curves(exp)
    notes += list(filter(None, [gan_budget_note(curves)]))
    inputs = realism_inputs(exp)
    realism = compute_realism(exp, *inputs) if inputs else {}
    realism_json = out / "realism.json"
    atomic_write_text(realism_json, json.dumps(realism, indent=2) + "\n")
    if not realism:
        notes.append(f"Realism: not computed (no held-out real cases in section '{cfg['eval_section']}').")
    elif _shared_images(exp):
        notes.append(
            f"Realism caveat: section '{cfg['eval_section']}' shares image files with the training cases the "
            "synthesis stages used, so the real side of the realism table is not held out."
        )
    mas = mas_summaries(exp)
    mas_notes, warnings = mas_lines(mas)
    # the report stage's own state file is written after it: its record is this process's
    provenance = stage_provenance(exp.work, {"report": code_record()}, exp.stage_names())
    paths = write_report(
        results,
        out,
        title=cfg["title"],
        notes=notes + mas_notes,
        montages=montages,
        realism=realism,
        warnings=warnings,
        refinement=summarise_change(read_datalist(exp.refined_datalist(exp.encoder_seed))["training"])
        if exp.needs("tf_gan")
        else None,
        provenance=provenance,
        gan_curves=curves,
        texture_panel=texture_panel(*inputs, qc / "texture.png", n) if inputs else None,
        control_is_baseline=exp.control_is_baseline,
    )
    results_json = write_results(
        out / "results.json", results, protocol, mas, provenance, control_is_baseline=exp.control_is_baseline
    )
    if cfg["mlflow"]["enabled"]:
        log_to_mlflow(
            results,
            {(r.arm, r.seed): exp.metrics(r.arm, r.seed) for r in results},
            [*paths.values(), results_json, realism_json, Path(cfg["source"])],
            exp.work / "mlflow",
            tracking_uri=cfg["mlflow"]["tracking_uri"],
            experiment=cfg["mlflow"]["experiment"] or cfg["title"],
            params={"pipeline_config": cfg["source"], "arms": ",".join(exp.arms)},
        )
    return {**paths, "results": results_json, "realism": realism_json}


def log_to_mlflow(
    results: list[ArmResult],
    metrics: dict[tuple[str, int], Path],
    artifacts: list[Path],
    store: Path,
    tracking_uri: str | None = None,
    experiment: str = "tumour-synthesis",
    params: dict[str, str] | None = None,
) -> str:
    """One MLflow experiment: a run per arm and seed with its Dice, and a ``report`` run with the report.

    Args:
        results: Dice per arm and seed.
        metrics: the metrics.json of each (arm, seed), attached to its run.
        artifacts: report files attached to the ``report`` run.
        store: folder of the default local store (``sqlite:///<store>/mlflow.db``, artifacts beside it).
        tracking_uri: a tracking server or store to use instead (e.g. ``http://127.0.0.1:5000``).
        experiment: experiment name.
        params: parameters recorded on every run.
    """
    import mlflow

    store.mkdir(parents=True, exist_ok=True)
    uri = tracking_uri or f"sqlite:///{(store / 'mlflow.db').resolve()}"
    client = mlflow.MlflowClient(uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        exp_id = client.create_experiment(experiment, artifact_location=(store / "artifacts").resolve().as_uri())
    else:
        exp_id = found.experiment_id
    mlflow.set_tracking_uri(uri)
    for r in results:
        with mlflow.start_run(experiment_id=exp_id, run_name=f"{r.arm}_s{r.seed}"):
            mlflow.log_params({"arm": r.arm, "seed": r.seed, **(params or {})})
            mlflow.log_metrics({f"dice_{k}": v for k, v in r.dice.items()} | {"dice_mean": r.mean})
            mlflow.log_artifact(str(metrics[(r.arm, r.seed)]))
    with mlflow.start_run(experiment_id=exp_id, run_name="report"):
        mlflow.log_params(params or {})
        for p in artifacts:
            mlflow.log_artifact(str(p))
    return uri
