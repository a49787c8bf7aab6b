"""The chained pipeline and its comparison experiment, as stages for :mod:`runner`.

Order: data (demo data or the user's datalists) -> real_subset (the first ``n_real`` training cases, when
set) -> prepare-healthy -> dtss_mas_seg phase 1 per seed (the baseline; its encoder is TF's frozen F) ->
tf_aug train + synthesise -> tf_gan train + refine (-> Pix2Pix train + synthesise) -> dtss_mas_seg per arm
and seed -> evaluation per arm and seed -> report. Every bundle stage runs the bundle's own configs through
``python -m monai.bundle run`` with an overrides file; each stage's output datalist is the next one's input.

The arms train by the experiment's ``protocol``: ``dsma`` (DSMA paper) continues each seed's phase-1 model
for ``phase2_epochs`` with the arm's data (the baseline arm continues on real data only, so every arm trains
as long); ``tf`` (TF paper) trains every synthetic arm from a fresh initialisation for the phase-1 model's
number of epochs, i.e. the same number of iterations (an epoch is one pass over the real cases, synthetic
samples join the real ones' batches), and the baseline arm is the phase-1 model itself.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from custom_components.data.atomic import atomic_write_text
from custom_components.data.datalist import read_datalist, write_datalist
from custom_components.data.loader import load_datalist
from custom_components.pipeline.config import ARMS, MASS_TF_AUG_ARMS, PROTOCOLS
from custom_components.pipeline.runner import Stage, bundle_command, run_stages, workdir_lock
from custom_components.pipeline.summary import write_experiment_report

# the stage of a forced run (--from), kept until the run completes
FORCED_RECORD = "forced_from.json"

TF_ARMS = ("tf", "tf_mas")


def _device(cfg: dict[str, Any]) -> str:
    return f"$torch.device({cfg['device']!r})"


class Experiment:
    """Stages of one pipeline config (see :func:`custom_components.pipeline.config.load_config`)."""

    def __init__(self, cfg: dict[str, Any]) -> None:
        self.cfg = cfg
        self.work = Path(cfg["workdir"])

    # ---- paths ---------------------------------------------------------------------------------
    def stage_dir(self, name: str) -> Path:
        return self.work / name

    @property
    def source_datalist(self) -> Path:
        """The real tumour data: the demo's datalist or the user's."""
        if self.cfg["demo"] is not None:
            return self.stage_dir("data") / "demo" / "tumour" / "datalist.json"
        return Path(self.cfg["real_datalist"])

    @property
    def real_datalist(self) -> Path:
        """The real data every stage uses: the source, or its first ``n_real`` training cases (all other sections)."""
        if self.cfg["n_real"] is None:
            return self.source_datalist
        return self.stage_dir("real_subset") / "datalist.json"

    @property
    def raw_healthy(self) -> Path:
        if self.cfg["demo"] is not None:
            return self.stage_dir("data") / "demo" / "healthy" / "datalist.json"
        return Path(self.cfg["healthy"])

    @property
    def prepared_healthy(self) -> Path:
        return self.stage_dir("prepare_healthy") / "datalist.json"

    def phase1_model(self, seed: int) -> Path:
        return self.stage_dir(f"seg_phase1_s{seed}") / "models" / "model.pt"

    @property
    def encoder_seed(self) -> int:
        return int(self.cfg["seeds"][0])

    @property
    def coarse_datalist(self) -> Path:
        return self.stage_dir("tf_aug_synthesise") / "coarse" / "datalist.json"

    @property
    def mass_coarse_datalist(self) -> Path:
        """TF-Aug cases synthesised with mass effect (arm ``tf_aug+mass``)."""
        return self.stage_dir("tf_aug_synthesise_mass") / "coarse" / "datalist.json"

    @property
    def refined_datalist(self) -> Path:
        return self.stage_dir("tf_gan_refine") / "refined" / "datalist.json"

    @property
    def pix2pix_datalist(self) -> Path:
        return self.stage_dir("pix2pix_synthesise") / "pix2pix" / "datalist.json"

    def subset_datalist(self, ratio: float, kind: str = "refined") -> Path:
        return self.stage_dir("synthetic_subsets") / f"{kind}_syn{ratio:g}.json"

    @property
    def base_ratio(self) -> float:
        """Synthetic cases per real case of the synthetic arms (tf_aug, pix2pix, tf, tf_mas)."""
        return float(self.cfg["tf_aug"]["synthetic_per_real"])

    def num_subset(self, ratio: float) -> int:
        """Synthetic cases of a ratio: ``round(ratio * n_real)``, at least one (Syn50 = 50 for 100 real cases)."""
        return max(1, round(ratio * self.n_real()))

    def synthetic_datalist(self, kind: str) -> Path:
        """The datalist a synthetic arm trains with: all cases, or with an ablation (which synthesises
        more) the first ``base_ratio`` per real case, so every synthetic arm gets the same amount."""
        full = {"coarse": self.coarse_datalist, "refined": self.refined_datalist, "pix2pix": self.pix2pix_datalist}
        return self.subset_datalist(self.base_ratio, kind) if self.cfg["synthetic_per_real"] else full[kind]

    def metrics(self, arm: str, seed: int) -> Path:
        return self.stage_dir(f"evaluate_{arm}_s{seed}") / "metrics.json"

    # ---- which parts are needed -----------------------------------------------------------------
    @property
    def arms(self) -> list[str]:
        return list(self.cfg["arms"]) + [f"tf_syn{float(r):g}" for r in self.cfg["synthetic_per_real"]]

    def needs(self, part: str) -> bool:
        arms = set(self.arms)
        if part == "tf_gan":
            return bool(arms & {*TF_ARMS}) or bool(self.cfg["synthetic_per_real"])
        if part == "pix2pix":
            return "pix2pix" in arms
        if part == "tf_aug_mass":
            return bool(arms & set(MASS_TF_AUG_ARMS))
        if part == "tf_aug":
            return self.needs("tf_gan") or self.needs("pix2pix") or "tf_aug" in arms or self.needs("tf_aug_mass")
        raise ValueError(part)

    def n_real(self) -> int:
        """Real training cases every arm sees (``n_real``, else the whole training section)."""
        if self.cfg["n_real"] is not None:
            return int(self.cfg["n_real"])
        return len(load_datalist(self.real_datalist, check="none"))

    def num_synthetic(self) -> int:
        ratios = [self.base_ratio, *map(float, self.cfg["synthetic_per_real"])]
        return max(self.num_subset(r) for r in ratios)

    def iterations_per_epoch(self) -> int:
        """Optimizer steps per epoch of dtss_mas_seg: one index per real case, ``batch_size`` indices per batch."""
        return math.ceil(self.n_real() / int(self.cfg["seg"]["batch_size"]))

    def arm_epochs(self, arm: str) -> int:
        """Epochs an arm's own training stage runs (0: its model is the phase-1 model, tf protocol's baseline)."""
        seg = self.cfg["seg"]
        if self.cfg["protocol"] == "tf":
            return 0 if arm == "baseline" else int(seg["phase1_epochs"])
        return int(seg["phase2_epochs"])

    def arm_iterations(self, arm: str) -> int:
        """Optimizer steps from a fresh initialisation to an arm's model (phase 1 included where continued)."""
        seg = self.cfg["seg"]
        if self.cfg["protocol"] == "tf":
            return int(seg["phase1_epochs"]) * self.iterations_per_epoch()
        return (int(seg["phase1_epochs"]) + int(seg["phase2_epochs"])) * self.iterations_per_epoch()

    def arm_model(self, arm: str, seed: int) -> Path:
        """The model an arm's evaluation reads."""
        if self.arm_epochs(arm) == 0:
            return self.phase1_model(seed)
        return self.stage_dir(f"seg_{arm}_s{seed}") / "models" / "model.pt"

    # ---- data stages ------------------------------------------------------------------------------
    def data_stages(self) -> list[Stage]:
        stages = []
        if self.cfg["demo"] is not None:
            demo = dict(self.cfg["demo"])

            def make_demo() -> None:
                from custom_components.data.demo import make_demo_data

                make_demo_data(self.stage_dir("data") / "demo", overwrite=True, **demo)

            stages.append(
                Stage(
                    "data",
                    function=make_demo,
                    outputs=[self.source_datalist, self.raw_healthy],
                    inputs=[],
                    description=f"demo data (PHANTOM tumours) {demo}",
                    key=json.dumps(demo, sort_keys=True),
                )
            )

        if self.cfg["n_real"] is not None:
            n = int(self.cfg["n_real"])

            def write_real_subset() -> None:
                data = read_datalist(self.source_datalist)
                training = data.get("training", [])
                if len(training) < n:
                    raise ValueError(
                        f"{self.source_datalist}: n_real {n} but the training section has {len(training)} cases"
                    )
                subset = {**data, "training": training[:n], "description": f"first {n} real training cases"}
                write_datalist(self.real_datalist, subset)

            stages.append(
                Stage(
                    "real_subset",
                    function=write_real_subset,
                    inputs=[self.source_datalist],
                    outputs=[self.real_datalist],
                    description=f"the first {n} real training cases (n_real): every arm and TF's synthesis use them",
                    key=str(n),
                )
            )

        def prepare() -> None:
            from custom_components.synthesis.healthy_prep import prepare_healthy

            prepare_healthy(
                self.raw_healthy,
                self.reference(),
                self.stage_dir("prepare_healthy"),
                overwrite=True,
                min_brain_dice=float(self.cfg["min_brain_dice"]),
            )

        stages.append(
            Stage(
                "prepare_healthy",
                function=prepare,
                inputs=[self.raw_healthy, self.real_datalist],
                outputs=[self.prepared_healthy],
                description="register healthy scans into the tumour data's space, brain mask, [-1, 1]",
                key=json.dumps([self.cfg["reference"], float(self.cfg["min_brain_dice"])]),
            )
        )
        return stages

    def reference(self) -> Path:
        """The ``reference`` override, else the real datalist (prepare-healthy then chooses its first training
        case's T1-weighted image and logs it; see :func:`~custom_components.synthesis.healthy_prep.choose_reference`)."""
        return Path(self.cfg["reference"]) if self.cfg["reference"] else self.real_datalist

    # ---- bundle stages ------------------------------------------------------------------------------
    def _bundle_stage(
        self,
        name: str,
        bundle: str,
        configs: list[str],
        overrides: dict[str, Any],
        inputs: list[Path],
        outputs: list[Path],
        description: str,
        run_id: str = "run",
    ) -> Stage:
        out = self.stage_dir(name)
        common = {"device": _device(self.cfg), "num_workers": int(self.cfg["num_workers"])}
        overrides_file = self.work / "overrides" / f"{name}.json"
        command = bundle_command(bundle, configs, {**common, **overrides}, overrides_file, run_id)
        return Stage(name, command=command, inputs=inputs, outputs=outputs, description=description, clean=[out])

    def _seg_common(self, seed: int) -> dict[str, Any]:
        seg = self.cfg["seg"]
        return {
            "datalist": str(self.real_datalist),
            "modalities": list(self.cfg["modalities"]),
            "network_name": seg["network_name"],
            "filters": list(seg["filters"]),
            "crop_size": list(seg["crop_size"]),
            "batch_size": int(seg["batch_size"]),
            "seed": int(seed),
            "val_section": self.cfg["eval_section"],
            **seg["overrides"],
        }

    def phase1_stage(self, seed: int) -> Stage:
        epochs = int(self.cfg["seg"]["phase1_epochs"])
        name = f"seg_phase1_s{seed}"
        overrides = {
            **self._seg_common(seed),
            "output_dir": str(self.stage_dir(name)),
            "max_epochs": epochs,
            "phase2_start_epoch": epochs,
            "val_interval": max(1, min(int(self.cfg["seg"]["val_interval"]), epochs)),
            "use_dtss": False,
            "use_mas": False,
        }
        return self._bundle_stage(
            name,
            "dtss_mas_seg",
            ["common.yaml", "train.yaml"],
            overrides,
            inputs=[self.real_datalist],
            outputs=[self.phase1_model(seed)],
            description=f"dtss_mas_seg phase 1 (real data only, {epochs} epochs): baseline model and encoder F",
            run_id="training",
        )

    def _encoder(self) -> dict[str, Any]:
        seg = self.cfg["seg"]
        return {
            "encoder_checkpoint": str(self.phase1_model(self.encoder_seed)),
            "encoder_network": seg["network_name"],
            "encoder_filters": list(seg["filters"]),
            "encoder_patch_size": list(seg["crop_size"]),
        }

    def tf_aug_stages(self) -> list[Stage]:
        tf = self.cfg["tf_aug"]
        train_dir = self.stage_dir("tf_aug_train")
        params = train_dir / "models" / "intensity.json"
        common = {
            "healthy_datalist": str(self.prepared_healthy),
            "real_datalist": str(self.real_datalist),
            "modalities": list(self.cfg["modalities"]),
            "seed": self.encoder_seed,
            **self._encoder(),
            **tf["overrides"],
        }
        train = self._bundle_stage(
            "tf_aug_train",
            "tf_aug",
            ["common.yaml", "train.yaml"],
            {
                **common,
                "output_dir": str(train_dir),
                "max_epochs": int(tf["epochs"]),
                "crop_size": list(tf["crop_size"]),
            },
            inputs=[self.prepared_healthy, self.real_datalist, self.phase1_model(self.encoder_seed)],
            outputs=[params],
            description=f"tf_aug: learn class-wise intensities a_c, b_c through F ({tf['epochs']} epochs)",
            run_id="training",
        )
        n = self.num_synthetic()
        synth_dir = self.stage_dir("tf_aug_synthesise")
        synth = self._bundle_stage(
            "tf_aug_synthesise",
            "tf_aug",
            ["common.yaml", "inference.yaml"],
            {
                **common,
                "output_dir": str(synth_dir),
                "intensity_params": str(params),
                "synthesis_dir": str(synth_dir / "coarse"),
                "num_cases": n,
                "qc_cases": int(self.cfg["qc_cases"]),
            },
            inputs=[self.prepared_healthy, self.real_datalist, params],
            outputs=[self.coarse_datalist],
            description=f"tf_aug: synthesise {n} coarse tumour cases on healthy scans",
        )
        stages = [train, synth]
        if self.needs("tf_aug_mass"):
            mass_dir = self.stage_dir("tf_aug_synthesise_mass")
            stages.append(
                self._bundle_stage(
                    "tf_aug_synthesise_mass",
                    "tf_aug",
                    ["common.yaml", "inference.yaml"],
                    {
                        **common,
                        "output_dir": str(mass_dir),
                        "intensity_params": str(params),
                        "synthesis_dir": str(mass_dir / "coarse"),
                        "num_cases": n,
                        "qc_cases": int(self.cfg["qc_cases"]),
                        "mass_effect": True,
                    },
                    inputs=[self.prepared_healthy, self.real_datalist, params],
                    outputs=[self.mass_coarse_datalist],
                    description=f"tf_aug: synthesise {n} coarse tumour cases with mass effect",
                )
            )
        return stages

    def _gan_common(self) -> dict[str, Any]:
        gan = self.cfg["tf_gan"]
        return {
            "modalities": list(self.cfg["modalities"]),
            "real_datalist": str(self.real_datalist),
            "coarse_datalist": str(self.coarse_datalist),
            "patch_size": list(gan["patch_size"]),
            "gen_channels": list(gan["gen_channels"]),
            "disc_channels": list(gan["disc_channels"]),
            "seed": self.encoder_seed,
            **gan["overrides"],
        }

    def tf_gan_stages(self) -> list[Stage]:
        gan = self.cfg["tf_gan"]
        train_dir = self.stage_dir("tf_gan_train")
        generator = train_dir / "models" / "model.pt"
        train = self._bundle_stage(
            "tf_gan_train",
            "tf_gan",
            ["common.yaml", "train.yaml"],
            {
                **self._gan_common(),
                **self._encoder(),
                "output_dir": str(train_dir),
                "max_epochs": int(gan["epochs"]),
            },
            inputs=[self.coarse_datalist, self.real_datalist, self.phase1_model(self.encoder_seed)],
            outputs=[generator],
            description=f"tf_gan: adversarial refinement training ({gan['epochs']} epochs)",
            run_id="training",
        )
        refine_dir = self.stage_dir("tf_gan_refine")
        refine = self._bundle_stage(
            "tf_gan_refine",
            "tf_gan",
            ["common.yaml", "inference.yaml"],
            {
                **self._gan_common(),
                "output_dir": str(refine_dir),
                "generator_checkpoint": str(generator),
                "refined_dir": str(refine_dir / "refined"),
            },
            inputs=[self.coarse_datalist, generator],
            outputs=[self.refined_datalist],
            description="tf_gan: refine every coarse case (sliding window, Gaussian blending)",
        )
        return [train, refine]

    def pix2pix_stages(self) -> list[Stage]:
        gan = self.cfg["tf_gan"]
        train_dir = self.stage_dir("pix2pix_train")
        generator = train_dir / "models" / "pix2pix" / "model.pt"
        train = self._bundle_stage(
            "pix2pix_train",
            "tf_gan",
            ["common.yaml", "train.yaml", "train_pix2pix.yaml"],
            {
                **self._gan_common(),
                "output_dir": str(train_dir),
                "max_epochs": int(gan["epochs"]),
            },
            inputs=[self.real_datalist],
            outputs=[generator],
            description=f"Pix2Pix baseline: label map -> image ({gan['epochs']} epochs)",
            run_id="training",
        )
        synth_dir = self.stage_dir("pix2pix_synthesise")
        synth = self._bundle_stage(
            "pix2pix_synthesise",
            "tf_gan",
            ["inference.yaml", "inference_pix2pix.yaml"],
            {
                **self._gan_common(),
                "output_dir": str(synth_dir),
                "generator_checkpoint": str(generator),
                "synthetic_dir": str(synth_dir / "pix2pix"),
            },
            inputs=[self.coarse_datalist, generator],
            outputs=[self.pix2pix_datalist],
            description="Pix2Pix baseline: images for the augmented masks",
        )
        return [train, synth]

    def subset_stage(self) -> Stage:
        """Datalists of the first N synthetic cases per real case: the ablation's refined subsets, and the
        base-ratio subsets of every synthesised datalist the arms use."""
        wanted = {("refined", float(r)) for r in self.cfg["synthetic_per_real"]}
        sources = {"refined": self.refined_datalist}
        if self.needs("tf_aug"):
            sources["coarse"] = self.coarse_datalist
        if self.needs("pix2pix"):
            sources["pix2pix"] = self.pix2pix_datalist
        wanted |= {(kind, self.base_ratio) for kind in sources}
        wanted = {(k, r) for k, r in wanted if k in sources}

        def write_subsets() -> None:
            for kind, r in sorted(wanted):
                data = read_datalist(sources[kind])
                items = data["training"][: self.num_subset(r)]
                subset = {**data, "training": items, "description": f"first {len(items)} {kind} cases ({r:g}/real)"}
                write_datalist(self.subset_datalist(r, kind), subset)

        return Stage(
            "synthetic_subsets",
            function=write_subsets,
            inputs=[*sources.values(), self.real_datalist],
            outputs=[self.subset_datalist(r, k) for k, r in sorted(wanted)],
            description=f"synthetic datalists with N cases per real case: {sorted(wanted)}",
            key=json.dumps(sorted(wanted)),
        )

    def arm_overrides(self, arm: str) -> dict[str, Any]:
        """dtss_mas_seg phase-2 settings that define an arm (which data; the protocol is in :meth:`arm_stages`)."""
        off = {"use_dtss": False, "use_mas": False, "synthetic_datalists": [], "use_carvemix": False}
        syn = {"synthetic_per_case": self.base_ratio}
        if arm == "baseline":
            return off
        if arm == "carvemix":
            return {**off, "use_carvemix": True}
        if arm == "dtss":
            return {**off, "use_dtss": True}
        if arm == "dtss_mas":
            return {**off, "use_dtss": True, "use_mas": True}
        if arm == "tf_aug":
            return {**off, **syn, "synthetic_datalists": [str(self.synthetic_datalist("coarse"))]}
        if arm == "tf_aug+mass":
            return {**off, **syn, "synthetic_datalists": [str(self.mass_coarse_datalist)]}
        if arm in ("dtss+mass", "dtss_mas+mass"):
            return {**self.arm_overrides(arm[: -len("+mass")]), "dtss_mass_effect": True}
        if arm == "pix2pix":
            return {**off, **syn, "synthetic_datalists": [str(self.synthetic_datalist("pix2pix"))]}
        if arm == "tf":
            return {**off, **syn, "synthetic_datalists": [str(self.synthetic_datalist("refined"))]}
        if arm == "tf_mas":
            refined = str(self.synthetic_datalist("refined"))
            return {**off, **syn, "synthetic_datalists": [refined], "use_mas": True, "synthetic_mas": True}
        if arm.startswith("tf_syn"):
            # r synthetic cases per real case: the subset has round(r n_real) cases and every epoch uses
            # floor(r n_real) of them beside the n_real real samples (the union of the TF paper's ablation)
            r = float(arm[len("tf_syn") :])
            return {**off, "synthetic_per_case": r, "synthetic_datalists": [str(self.subset_datalist(r))]}
        raise ValueError(f"unknown arm {arm!r}")

    def arm_train_overrides(self, arm: str, seed: int) -> dict[str, Any]:
        """dtss_mas_seg overrides of an arm's training stage under the experiment's protocol."""
        epochs = self.arm_epochs(arm)
        base = {
            **self._seg_common(seed),
            **self.arm_overrides(arm),
            "output_dir": str(self.stage_dir(f"seg_{arm}_s{seed}")),
            "phase2_start_epoch": 0,
            "max_epochs": epochs,
        }
        if self.cfg["protocol"] == "tf":
            # from scratch, as long as the baseline, with phase 1's learning rate and validation schedule
            return {
                **base,
                "init_checkpoint": None,
                "lr_phase2": "@lr_phase1",
                "val_interval": max(1, min(int(self.cfg["seg"]["val_interval"]), epochs)),
            }
        # continue the seed's phase-1 model; validate (and keep the model) at the end of the short continuation
        return {**base, "init_checkpoint": str(self.phase1_model(seed)), "val_interval": epochs}

    def arm_stages(self, arm: str, seed: int) -> list[Stage]:
        model = self.arm_model(arm, seed)
        stages = []
        if self.arm_epochs(arm) > 0:
            overrides = self.arm_train_overrides(arm, seed)
            init = [Path(overrides["init_checkpoint"])] if overrides["init_checkpoint"] else []
            how = PROTOCOLS[self.cfg["protocol"]]
            stages.append(
                self._bundle_stage(
                    f"seg_{arm}_s{seed}",
                    "dtss_mas_seg",
                    ["common.yaml", "train.yaml"],
                    overrides,
                    inputs=[self.real_datalist, *init, *map(Path, overrides["synthetic_datalists"])],
                    outputs=[model],
                    description=f"dtss_mas_seg arm {arm} ({ARMS.get(arm, 'synthetic-volume ablation')}), seed {seed}: "
                    f"{how}",
                    run_id="training",
                )
            )
        eval_name = f"evaluate_{arm}_s{seed}"
        evaluate = self._bundle_stage(
            eval_name,
            "dtss_mas_seg",
            ["common.yaml", "evaluate.yaml"],
            {
                **self._seg_common(seed),
                "output_dir": str(self.stage_dir(eval_name)),
                "model_path": str(model),
                "eval_datalist": str(self.real_datalist),
                "eval_section": self.cfg["eval_section"],
                "eval_dir": str(self.stage_dir(eval_name)),
            },
            inputs=[self.real_datalist, model],
            outputs=[self.metrics(arm, seed)],
            description=f"evaluate arm {arm}, seed {seed} on '{self.cfg['eval_section']}' (ET/TC/WT Dice, HD95)",
        )
        return [*stages, evaluate]

    def model_stages(self) -> list[Stage]:
        seeds = [int(s) for s in self.cfg["seeds"]]
        stages = [self.phase1_stage(s) for s in seeds]
        if self.needs("tf_aug"):
            stages += self.tf_aug_stages()
        if self.needs("tf_gan"):
            stages += self.tf_gan_stages()
        if self.needs("pix2pix"):
            stages += self.pix2pix_stages()
        if self.cfg["synthetic_per_real"]:
            stages.append(self.subset_stage())
        for arm in self.arms:
            for seed in seeds:
                stages += self.arm_stages(arm, seed)
        return stages

    def count_model_stages(self) -> int:
        """Number of stages after the data stages (for the progress lines, before datalists exist)."""
        trained = sum(self.arm_epochs(a) > 0 for a in self.arms)
        n = len(self.cfg["seeds"]) * (1 + len(self.arms) + trained) + 1
        n += 2 * sum(self.needs(p) for p in ("tf_aug", "tf_gan", "pix2pix")) + int(self.needs("tf_aug_mass"))
        return n + (1 if self.cfg["synthetic_per_real"] else 0)

    def report_stage(self, write: Callable[[Experiment], dict[str, Path]]) -> Stage:
        seeds = [int(s) for s in self.cfg["seeds"]]
        metrics = [self.metrics(a, s) for a in self.arms for s in seeds]
        return Stage(
            "report",
            function=lambda: write(self),
            inputs=metrics,
            outputs=[self.stage_dir("report") / "report.md", self.stage_dir("report") / "report.html"],
            description="comparison report (Markdown + HTML), Dice plot, QC montages",
            key=self.cfg["title"],
        )


def run_experiment(cfg: dict[str, Any], from_stage: str | None = None, log: Callable[[str], None] = print) -> Path:
    """Run the whole chain for a loaded pipeline config; returns the report's Markdown path.

    The work dir is locked for the run (:func:`~custom_components.pipeline.runner.workdir_lock`). A forced
    ``from_stage`` is recorded in ``<workdir>/forced_from.json`` until the run completes, so a rerun after an
    interruption still redoes every stage from it on.
    """
    exp = Experiment(cfg)
    exp.work.mkdir(parents=True, exist_ok=True)
    with workdir_lock(exp.work):
        record = exp.work / FORCED_RECORD
        if from_stage is None and record.is_file():
            # an interrupted forced run: every stage from the recorded one on is still to be redone
            from_stage = json.loads(record.read_text()).get("from")
            log(f"continuing the interrupted forced run (--from {from_stage}, recorded in {record})")
        if from_stage is not None:
            atomic_write_text(record, json.dumps({"from": from_stage}) + "\n")
        report = _run_experiment(exp, from_stage, log)
        record.unlink(missing_ok=True)
    return report


def _run_experiment(exp: Experiment, from_stage: str | None, log: Callable[[str], None]) -> Path:

    data = exp.data_stages()
    data_names = [s.name for s in data]
    total = len(data) + exp.count_model_stages()
    run_stages(data, exp.work, from_stage if from_stage in data_names else None, log=log, numbering=(0, total))
    rest = [*exp.model_stages(), exp.report_stage(write_experiment_report)]
    names = [s.name for s in data + rest]
    if from_stage is not None and from_stage not in names:
        raise ValueError(f"--from {from_stage!r} is not a stage; stages: {', '.join(names)}")
    # a forced rerun of a data stage forces everything after it too
    rerun_from = rest[0].name if from_stage in data_names else from_stage
    run_stages(rest, exp.work, rerun_from, log=log, numbering=(len(data), total))
    return exp.stage_dir("report") / "report.md"
