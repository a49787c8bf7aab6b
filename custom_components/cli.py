"""Command line interface: ``python -m custom_components <command> --help``."""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import fire

# the demo pipeline ships with the package (package data), so an installed copy runs `demo` too
DEMO_PIPELINE = Path(__file__).resolve().parent / "pipeline" / "demo.yaml"


def validate_datalist(path: str, labels: str | None = None, allow_empty: bool = False) -> None:
    """Check a datalist and every file it names; exit 0 when valid, 1 with one line per problem.

    Args:
        path: datalist JSON file.
        labels: label convention of the label files (internal, brats2023, brats2021, brats2015);
            default: the datalist's own top-level "labels" entry, else brats2023.
        allow_empty: accept label volumes without tumour voxels (healthy or control cases).
    """
    from custom_components.data.validation import validate_datalist as _validate

    try:
        problems = _validate(path, labels=labels, require_tumour=not allow_empty)
    except (ValueError, FileNotFoundError) as e:
        print(e, file=sys.stderr)
        sys.exit(2)
    for p in problems:
        print(p)
    if problems:
        sys.exit(1)
    print(f"{path}: valid")


def make_datalist(
    root: str,
    out: str,
    kind: str = "brats",
    modalities: str | tuple[str, ...] = "t1n",
    val_fraction: float = 0.0,
    seed: int = 0,
    labels: str = "brats2023",
    masks: str | None = None,
    allow_unlabelled: bool = False,
) -> None:
    """Build a datalist from a BraTS folder or a folder of healthy scans.

    Brain masks are picked up as each item's brain_mask: in a BraTS case folder the one NIfTI whose name
    contains "brainmask" or "brain_mask" or ends with "_mask" / "-mask"; beside a healthy scan the file
    <scan>_brainmask, <scan>_brain_mask, <scan>_mask or <scan>-mask (.nii.gz / .nii).

    Args:
        root: BraTS folder (<case>/<case>-{t1n,t1c,t2w,t2f,seg}.nii.gz or 2021 naming
            <case>/<case>_{t1,t1ce,t2,flair,seg}.nii.gz) or a folder of healthy scans (one NIfTI each).
        out: datalist JSON to write.
        kind: "brats" or "healthy".
        modalities: comma-separated modalities in 2023 names (t1n, t1c, t2w, t2f), one channel each.
        val_fraction: fraction of cases moved to the "validation" section (seeded shuffle).
        seed: seed of the split.
        labels: label convention of the BraTS label files, recorded in the datalist.
        masks: for kind=healthy, optional folder of brain masks named like the scans (instead of the files
            beside the scans).
        allow_unlabelled: list BraTS cases without a seg file (challenge validation sets).
    """
    from custom_components.data.datalist import write_datalist
    from custom_components.data.discovery import make_brats_datalist, make_healthy_datalist

    if kind == "brats":
        mods = tuple(modalities.split(",")) if isinstance(modalities, str) else tuple(modalities)
        data = make_brats_datalist(
            root,
            modalities=mods,
            val_fraction=val_fraction,
            seed=seed,
            labels=labels,
            require_label=not allow_unlabelled,
        )
    elif kind == "healthy":
        data = make_healthy_datalist(root, mask_dir=masks)
    else:
        raise SystemExit(f"--kind must be 'brats' or 'healthy', got {kind!r}")
    print(write_datalist(out, data))


def prepare_healthy(
    healthy: str,
    reference: str,
    out: str,
    qc: bool = True,
    min_brain_dice: float = 0.80,
    reference_mask: str | None = None,
    overwrite: bool = False,
) -> None:
    """Register healthy scans to the tumour data's space, brain-mask them, rescale to [-1, 1].

    Exits 1 (writing no prepared case) when a scan registers with a brain Dice below min_brain_dice, or on
    bad input; the message names the scan, the reference and the QC PNG to look at.

    Args:
        healthy: folder of skull-stripped healthy scans (a <scan>_brainmask / _brain_mask / _mask / -mask
            file beside a scan is its brain mask) or a healthy datalist (optional brain_mask per item).
        reference: one image of the real tumour data (its grid and affine are the target space), or the real
            datalist (.json): its first training case's t1n, else t1c, else first modality is used.
        out: output folder (prepared volumes, brain masks, QC PNGs and healthy datalist.json).
        qc: write a QC overlay PNG per scan (a failed scan always gets one).
        min_brain_dice: smallest accepted brain Dice between a registered scan and the reference brain.
        reference_mask: brain mask of the reference image (default: the reference item's brain_mask, else
            inferred).
        overwrite: replace an existing <out>/datalist.json.
    """
    from custom_components.synthesis.healthy_prep import prepare_healthy as _prepare

    try:
        path = _prepare(
            healthy,
            reference,
            out,
            qc=qc,
            min_brain_dice=min_brain_dice,
            reference_mask=reference_mask,
            overwrite=overwrite,
        )
    except (FileNotFoundError, FileExistsError, ValueError) as e:
        print(e, file=sys.stderr)
        sys.exit(1)
    print(path)


def demo_data(
    out: str,
    n_healthy: int = 4,
    n_tumour: int = 6,
    spacing: float = 2.0,
    seed: int = 0,
    n_held_out: int | None = None,
) -> None:
    """Make demo data (no downloads): deformed MNI152 healthy scans and PHANTOM glioma cases.

    Args:
        out: output folder; writes healthy/ and tumour/ with a datalist.json each.
        n_healthy: number of healthy subjects.
        n_tumour: number of annotated phantom tumour cases.
        spacing: voxel size in mm of the demo grid.
        seed: random seed.
        n_held_out: phantoms held out as the "validation" section (default: n_tumour // 3, at least 1).
    """
    from custom_components.data.demo import make_demo_data

    paths = make_demo_data(
        out, n_healthy=n_healthy, n_tumour=n_tumour, spacing=spacing, seed=seed, n_held_out=n_held_out
    )
    for kind, path in paths.items():
        print(f"{kind}: {path}")


def qc(
    image: str,
    label: str | None,
    out: str,
    title: str = "",
    source: str | None = None,
    source_label: str | None = None,
    channel: int = 0,
    labels: str = "internal",
) -> None:
    """Write a PNG montage: axial, coronal, sagittal slices through the tumour, each as it is and with
    the label contours; with --source also the source case and |image - source|.

    Args:
        image: NIfTI image (3D, or 4D with one channel per modality).
        label: NIfTI label (None: no contours; slices through the volume centre).
        out: PNG file to write.
        title: optional title.
        source: NIfTI image the case was derived from (TF-GAN's coarse input, the healthy scan,
            the real case DTSS or CarveMix started from), same grid.
        source_label: label of the source (default: the label).
        channel: channel shown from 4D images.
        labels: label convention of the label files (internal, brats2023, brats2021, brats2015).
    """
    from custom_components.quality.qc import save_montage

    try:
        png = save_montage(
            image, label, out, title=title, source=source, source_label=source_label, channel=channel, labels=labels
        )
    except (FileNotFoundError, ValueError) as e:
        print(e, file=sys.stderr)
        sys.exit(2)
    print(png)


def realism(
    synthetic: str,
    real: str,
    encoder: str | None = None,
    out: str | None = None,
    modalities: str | tuple[str, ...] | None = None,
    section: str = "training",
    real_section: str | None = None,
    network: str = "dynunet",
    filters: str | tuple[int, ...] = (16, 32, 64, 128, 256),
    levels: int = 3,
    n_splits: int = 10,
    seed: int = 0,
    max_cases: int | None = None,
    frd: bool = True,
    c2st: bool = True,
    null_real: str | None = None,
    null_section: str = "training",
    patch: int = 8,
    n_patches: int = 32,
    n_perm: int = 100,
) -> None:
    """How real do synthetic tumours look? Print the classifier two-sample test and a table of class-wise distances
    to real tumours (each with its real-vs-real null or floor) and write them as JSON.

    Measures: the C2ST first (custom_components.quality.c2st: cross-validated AUC of a logistic regression telling
    synthetic from real tumour patches by local texture statistics, grouped by case, equal set sizes, 95 % interval
    from resampling cases, permutation p-value, beside the same test between two halves of real cases); then
    (custom_components.quality.realism, at equal set sizes) Frechet distance of the frozen encoder's masked-GAP
    class features (TF's perceptual-loss features), 1-D Wasserstein distance of brain-normalised class intensities
    per modality, boundary sharpness against real, Frechet Radiomics Distance (frd-score, whole tumour) per
    modality, and a line for each distance below its floor.

    Args:
        synthetic: datalist of synthetic cases.
        real: datalist of real cases (held out from every synthesis stage).
        encoder: segmentation checkpoint whose encoder is F (dtss_mas_seg models/model.pt); without it
            the Frechet distance is skipped.
        out: JSON file to write (atomic).
        modalities: comma-separated modalities (default: the synthetic datalist's).
        section: section of the synthetic datalist.
        real_section: section of the real datalist (default: ``section``).
        network, filters, levels: the segmentation network's settings (filters comma-separated).
        n_splits: random real-vs-real splits for the floors.
        seed: seed of the splits.
        max_cases: use at most this many cases per datalist.
        frd: compute the Frechet Radiomics Distance (``--nofrd`` skips it; about a second per case and modality).
        c2st: run the classifier two-sample test (``--noc2st`` skips it; seconds).
        null_real: datalist of other real cases for the C2ST's real-vs-real null (e.g. the real training cases:
            a comparison at n cases per side needs 2 n for a null at the same size; default: the ``real`` cases).
        null_section: section of ``null_real``.
        patch, n_patches, n_perm: C2ST patch side (voxels), patches per case, label permutations.
    """
    import json

    from custom_components.data.atomic import atomic_write_text
    from custom_components.data.datalist import read_datalist
    from custom_components.quality.c2st import C2STSettings
    from custom_components.quality.realism import format_table, load_cases, realism_scores

    try:
        mods = modalities.split(",") if isinstance(modalities, str) else modalities
        mods = mods or read_datalist(synthetic).get("modalities")
        syn_cases, names = load_cases(synthetic, mods, section, max_cases)
        real_cases, _ = load_cases(real, names, real_section or section, max_cases)
        null_cases = None if null_real is None else load_cases(null_real, names, null_section, max_cases)[0]
        frozen = None
        if encoder is not None:
            from custom_components.networks import FrozenEncoder

            filt = tuple(int(f) for f in filters.split(",")) if isinstance(filters, str) else tuple(filters)
            frozen = FrozenEncoder.from_checkpoint(encoder, levels, network, len(names), 4, filt)
    except (FileNotFoundError, ValueError, KeyError) as e:
        print(e, file=sys.stderr)
        sys.exit(2)
    settings = C2STSettings(patch=patch, n_patches=n_patches, n_perm=n_perm, seed=seed) if c2st else None
    kwargs = {"n_splits": n_splits, "seed": seed, "frd": frd, "c2st": settings, "null_real": null_cases}
    result = realism_scores(syn_cases, real_cases, names, frozen, levels, **kwargs)
    result["synthetic"] = str(Path(synthetic).resolve())
    result["real"] = str(Path(real).resolve())
    result["null_real"] = None if null_real is None else str(Path(null_real).resolve())
    result["encoder"] = None if encoder is None else str(Path(encoder).resolve())
    print(format_table(result))
    if out:
        atomic_write_text(out, json.dumps(result, indent=2) + "\n")
        print(out)


@contextlib.contextmanager
def _bundles_dir(bundles_dir: str | None) -> Iterator[None]:
    """A command's --bundles-dir: checked (exit 2 naming it when it is no folder), then $TUMORFAB_BUNDLES_DIR while
    the command runs, so every bundle lookup of this process (``find_bundles_dir``) and of the stages it starts
    uses it. Without it nothing changes."""
    if not bundles_dir:
        yield
        return
    from custom_components.export.zoo_bundle import BUNDLES_ENV, find_bundles_dir

    try:
        folder = find_bundles_dir(bundles_dir)
    except FileNotFoundError as e:
        print(e, file=sys.stderr)
        sys.exit(2)
    previous = os.environ.get(BUNDLES_ENV)
    os.environ[BUNDLES_ENV] = str(folder)
    try:
        yield
    finally:
        if previous is None:
            del os.environ[BUNDLES_ENV]
        else:
            os.environ[BUNDLES_ENV] = previous


def pipeline(config: str, workdir: str | None = None, bundles_dir: str | None = None, **kwargs: str) -> None:
    """Run the chained pipeline (and its comparison arms) described by a pipeline YAML.

    Stages whose outputs are complete and whose inputs and settings are unchanged are skipped.

    Args:
        config: pipeline YAML (see custom_components/pipeline/demo.yaml and pipelines/ for examples).
        workdir: where everything is written (default: the config's "workdir").
        bundles_dir: the folder of the bundles the stages run (default: $TUMORFAB_BUNDLES_DIR, else the installed
            copy, else the checkout's bundles/).
        kwargs: ``--from STAGE`` reruns that stage and every stage after it.
    """
    from custom_components.pipeline.config import load_config
    from custom_components.pipeline.experiment import run_experiment
    from custom_components.pipeline.runner import StageInterrupted, WorkdirLocked

    from_stage = kwargs.pop("from", None)
    if kwargs:
        raise SystemExit(f"unknown options: {', '.join('--' + k for k in kwargs)}")
    cfg = load_config(config, **({"workdir": str(Path(workdir).resolve())} if workdir else {}))
    start = time.perf_counter()
    try:
        with _bundles_dir(bundles_dir):
            report = run_experiment(cfg, from_stage=from_stage)
    except StageInterrupted as e:
        print(e, file=sys.stderr)
        sys.exit(128 + e.signum)
    except WorkdirLocked as e:
        print(e, file=sys.stderr)
        sys.exit(75)  # EX_TEMPFAIL
    from custom_components.pipeline.summary import mean_dice_by_arm

    dice = ", ".join(f"{arm} {d:.3f}" for arm, d in mean_dice_by_arm(report.parent / "results.json").items())
    # the last line: what each arm reached, next to where the report is
    print(
        f"pipeline finished in {time.perf_counter() - start:.0f} s; held-out mean Dice (ET, TC, WT averaged): {dice}; "
        f"report: {report} (and {report.with_suffix('.html')})"
    )


def demo(out: str = "demo_output", bundles_dir: str | None = None) -> None:
    """The main job on built-in demo data: demo data -> prepare-healthy -> dtss_mas_seg phase 1 ->
    tf_aug -> tf_gan -> dtss_mas_seg phase 2 (baseline, TF, DTSS + MAS) -> evaluation -> report.

    Args:
        out: output folder (rerunning skips completed stages).
        bundles_dir: the folder of the bundles (as for pipeline).
    """
    pipeline(str(DEMO_PIPELINE), workdir=out, bundles_dir=bundles_dir)


def export_bundle(
    name: str,
    out: str,
    weights: str | tuple[str, ...] | None = None,
    zip: bool = True,
    overwrite: bool = False,
    bundles_dir: str | None = None,
) -> None:
    """Export a bundle as a self-contained Model Zoo style folder (and zip) that runs with MONAI only.

    Writes <out>/<name>/ (configs, docs, LICENSE, scripts/custom_components: the vendored code, models/,
    large_files.yml) and <out>/<name>.zip.

    Args:
        name: bundle name (dtss_mas_seg, tf_aug, tf_gan).
        out: output folder.
        weights: weight file(s) copied into models/ and listed with their md5 in large_files.yml
            (several: --weights "['model.pt','other.pt']").
        zip: also write <out>/<name>.zip.
        overwrite: replace an existing export.
        bundles_dir: the folder of the bundles (default: $TUMORFAB_BUNDLES_DIR, else the installed copy, else the
            checkout's bundles/).
    """
    from custom_components.export.zoo_bundle import export_bundle as _export

    try:
        print(_export(name, out, weights=weights, zip=zip, overwrite=overwrite, bundles_dir=bundles_dir))
    except (FileNotFoundError, FileExistsError, ValueError) as e:
        print(e, file=sys.stderr)
        sys.exit(2)


def fabricate(
    method: str,
    n: int,
    real: str,
    out: str,
    healthy: str | None = None,
    format: str = "monai",  # noqa: A002 - the option is --format
    seed: int = 0,
    overwrite: bool = False,
    config: str | None = None,
    modalities: str | tuple[str, ...] | None = None,
    frd: bool = True,
    bundles_dir: str | None = None,
) -> None:
    """Fabricate a synthetic dataset of N cases: <out>/datalist.json, <out>/<case>/, the QC gallery
    <out>/gallery/index.html, the realism scores <out>/realism.json and the manifest <out>/fabricate.json.

    Methods that derive from real cases (DERIVED_METHODS) draw offline from the real training cases with
    dtss_mas_seg's own training transforms; case i is seeded by (seed, i), so a rerun with a larger --n adds only
    the missing cases and an interrupted run finishes on rerun. Methods on healthy scans (HEALTHY_METHODS) train
    their stages first in <out>/work (the pipeline's resumable stages; budgets from --config, default the demo
    pipeline's) and link their cases into <out>.
    Exits 1 naming the file on bad input or an output folder holding another dataset (--overwrite replaces it),
    130 when interrupted (rerun the same command to finish).

    Args:
        method: the synthesis method, one of METHOD_LINES.
        n: number of synthetic cases (at most: carvemix n_real (n_real - 1); dtss 50 per real training case;
            the methods on healthy scans 50 per healthy scan).
        real: real datalist (training cases with tumours; its validation section is held out for the realism
            scores) or a BraTS folder.
        out: output folder.
        healthy: healthy scans for the methods on healthy scans (folder or datalist; registered by
            prepare_healthy).
        format: monai (the datalist) or nnunet (also an nnU-Net raw dataset in <out>/nnunet).
        seed: global seed.
        overwrite: replace another dataset in <out> (only this command's outputs are removed).
        config: pipeline YAML with the budgets of the methods on healthy scans (default:
            custom_components/pipeline/demo.yaml).
        modalities: comma-separated image channels (default: the real datalist's; methods on healthy scans: the
            config's).
        frd: compute the Frechet Radiomics Distance in the realism scores (--nofrd skips it).
        bundles_dir: the folder of the bundles (dtss_mas_seg's transforms, the TF stages; default:
            $TUMORFAB_BUNDLES_DIR, else the installed copy, else the checkout's bundles/).
    """
    from custom_components.pipeline.fabricate import fabricate as _fabricate
    from custom_components.pipeline.runner import StageError, StageInterrupted, WorkdirLocked

    mods = modalities.split(",") if isinstance(modalities, str) else modalities
    try:
        with _bundles_dir(bundles_dir):
            _fabricate(
                method,
                n,
                real,
                out,
                healthy=healthy,
                fmt=format,
                seed=seed,
                overwrite=overwrite,
                config=config,
                modalities=mods,
                frd=frd,
            )
    except KeyboardInterrupt:
        print(f"interrupted; the complete cases are kept in {out}: rerun the same command to finish", file=sys.stderr)
        sys.exit(130)
    except StageInterrupted as e:
        print(e, file=sys.stderr)
        sys.exit(128 + e.signum)
    except WorkdirLocked as e:
        print(e, file=sys.stderr)
        sys.exit(75)
    except (FileNotFoundError, FileExistsError, ValueError, KeyError, StageError) as e:
        print(str(e).strip("'\""), file=sys.stderr)
        sys.exit(1)


def _method_help(doc: str) -> str:
    """``fabricate``'s help with the registered synthesis methods (custom_components.synthesis.methods)."""
    from custom_components.synthesis.methods import METHODS

    lines = "; ".join(f"{m.name} ({m.description})" for m in METHODS.values())
    derived = ", ".join(m.name for m in METHODS.values() if m.derived)
    healthy = ", ".join(m.name for m in METHODS.values() if not m.derived)
    return doc.replace("METHOD_LINES", lines).replace("DERIVED_METHODS", derived).replace("HEALTHY_METHODS", healthy)


fabricate.__doc__ = _method_help(fabricate.__doc__ or "")


def export_nnunet(
    out: str,
    real: str | None = None,
    synthetic: str | tuple[str, ...] | None = None,
    dataset_id: int = 500,
    name: str = "TumourSynthesis",
    section: str = "training",
    overwrite: bool = False,
    modalities: str | tuple[str, ...] | None = None,
    underived_ok: bool = False,
) -> None:
    """Write real and synthetic datalists as an nnU-Net v2 raw dataset <out>/Dataset{ID}_{NAME}.

    imagesTr/<case>_0000.nii.gz (one file per modality), labelsTr/<case>.nii.gz (nnU-Net's BraTS regions:
    1 oedema, 2 necrosis, 3 enhancing), dataset.json, and splits_final.json whose validation folds hold real cases
    only; synthetic cases (named syn_<case_id>) train every fold except those that validate on a real case named in
    their provenance's source_cases (how many each fold leaves out is printed on stderr). A synthetic case without
    source_cases is refused unless --underived_ok.

    Args:
        out: nnU-Net raw folder (nnUNet_raw) to write the dataset into.
        real: datalist of real cases.
        synthetic: datalist(s) of synthetic cases (several: --synthetic "['a.json','b.json']").
        dataset_id: nnU-Net dataset id (1-999).
        name: dataset name.
        section: datalist section to export.
        overwrite: replace an existing dataset folder.
        modalities: comma-separated channels to export, chosen by name in every datalist (e.g. t1n when the synthetic
            cases have T1 only; default: all of the first datalist's modalities).
        underived_ok: the synthetic cases are not derived from the real ones: accept those without source_cases
            (they train every fold).
    """
    from custom_components.export.nnunet import export_nnunet as _export

    syn = [synthetic] if isinstance(synthetic, str) else list(synthetic or [])
    mods = modalities.split(",") if isinstance(modalities, str) else modalities
    try:
        folder = _export(
            real,
            out,
            syn,
            dataset_id,
            str(name),
            section,
            overwrite,
            modalities=None if mods is None else list(mods),
            underived_ok=bool(underived_ok),
            log=lambda line: print(line, file=sys.stderr),
        )
        print(folder)
    except (FileNotFoundError, FileExistsError, KeyError, ValueError) as e:
        print(e.args[0] if isinstance(e, KeyError) and e.args else e, file=sys.stderr)
        sys.exit(2)


def evaluate_labels(
    pred: str,
    datalist: str,
    section: str = "validation",
    out: str | None = None,
    pred_labels: str = "nnunet",
    hd95_mode: str = "brats",
) -> None:
    """BraTS Dice / HD95 (ET, TC, WT) of a folder of predicted label files (e.g. nnUNetv2_predict's output, one
    <case_id>.nii.gz per case) against a datalist section's labels; prints the means, writes per-case JSON.

    Args:
        pred: folder of predicted label files named by case id.
        datalist: datalist with the reference labels.
        section: datalist section to score.
        out: JSON file to write (atomic).
        pred_labels: convention of the predictions: nnunet (export-nnunet's values, the default), internal,
            brats2023, brats2021 or brats2015.
        hd95_mode: brats (pooled surface distances) or monai.
    """
    from custom_components.data.labels import REGION_NAMES
    from custom_components.export.nnunet import evaluate_label_files

    try:
        result = evaluate_label_files(pred, datalist, section, out, pred_labels=pred_labels, hd95_mode=hd95_mode)
    except (FileNotFoundError, KeyError, ValueError) as e:
        print(e.args[0] if isinstance(e, KeyError) and e.args else e, file=sys.stderr)
        sys.exit(2)
    mean = result["mean"]
    print(f"{len(result['cases'])} case(s) of {datalist} [{section}]")
    for region in REGION_NAMES:
        print(f"{region}: Dice {mean['dice_' + region]:.3f}  HD95 {mean['hd95_' + region]:.2f} mm")
    if out:
        print(out)


def results(
    report: str | tuple[str, ...],
    out: str = "docs/RESULTS.md",
    command: str | tuple[str, ...] | None = None,
    measurements: str | None = None,
) -> None:
    """Write the results file (docs/RESULTS.md): each report's Dice and realism tables with the commit(s) and command
    that made it, then the measurements file's figures as a table, under the command that regenerates it.

    Args:
        report: report folder(s) (<workdir>/report); several comma-separated or as a list: --report "['a','b']".
        out: Markdown file to write (atomic).
        command: the command that made each report, a list in the order of --report ('' for the default
            python -m custom_components pipeline --config <the config report.md names>).
        measurements: JSON list of other measured figures, each {what, value, commit, command, machine}.
    """
    import json
    import shlex

    from custom_components.pipeline.results_file import write_results_file

    reports = report.split(",") if isinstance(report, str) else [str(r) for r in report]
    commands = None if command is None else [command] if isinstance(command, str) else [str(c) for c in command]
    argv = ["python", "-m", "custom_components", "results", "--report", ",".join(reports)]
    argv += [] if commands is None else ["--command", json.dumps(commands)]
    argv += ([] if measurements is None else ["--measurements", measurements]) + ["--out", out]
    try:
        path = write_results_file(
            [Path(r) for r in reports],
            Path(out),
            measurements=None if measurements is None else Path(measurements),
            commands=commands,
            regenerate=shlex.join(argv),
        )
    except (FileNotFoundError, KeyError, ValueError) as e:
        print(e, file=sys.stderr)
        sys.exit(2)
    print(path)


COMMANDS = {
    "validate-datalist": validate_datalist,
    "make-datalist": make_datalist,
    "prepare-healthy": prepare_healthy,
    "demo-data": demo_data,
    "qc": qc,
    "realism": realism,
    "pipeline": pipeline,
    "demo": demo,
    "export-bundle": export_bundle,
    "fabricate": fabricate,
    "export-nnunet": export_nnunet,
    "evaluate-labels": evaluate_labels,
    "results": results,
}


# nnU-Net v2's own commands with this project's trainers (custom_components.nnunet.launcher; extra [nnunet]): their
# arguments are nnUNetv2_train's / nnUNetv2_predict's, passed on as given, e.g.
# `python -m custom_components nnunet-train 500 3d_fullres 0 -tr nnUNetTrainerDTSSMAS -device cpu`
NNUNET_COMMANDS = ("nnunet-train", "nnunet-predict")


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] in NNUNET_COMMANDS:
        from custom_components.nnunet.launcher import run

        run(sys.argv[1], sys.argv[2:])
        return
    fire.Fire(COMMANDS, name="python -m custom_components")
